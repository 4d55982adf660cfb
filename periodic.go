package compute

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/robfig/cron/v3"

	"github.com/computeplatform/compute/internal/backoff"
)

// PeriodicJob is a job a Worker enqueues on a schedule. Every process may
// list the same periodic jobs: each tick's job gets an id derived from Name
// and the tick time, so the cluster creates it once however many processes
// see the tick, start, stop or restart around it. The job's RunAt is its
// tick, which the handler can read.
//
// When the clock of a CRON_TZ zone changes, a schedule behaves as in the
// cron daemons (Vixie/ISC cron, cronie). If neither its minute nor its hour
// field starts with '*' (and it is not @hourly), it ticks once for a local
// time the clock repeats, at the first occurrence (1:30 when the clocks go
// back), and once for the local times the clock skips, at the jump (2:30
// when the clocks go forward ticks at the new 3:00). Other schedules follow
// the clock: "0 * * * *" ticks at both 1:00s and at no 2:00. Processes agree
// on these ticks as long as they share the tz database's rules for the zone.
type PeriodicJob struct {
	// Name identifies the schedule across the cluster (at most 64 bytes);
	// renaming it starts a new schedule.
	Name string
	// Cron is a standard 5-field cron expression ("*/15 * * * *") or a
	// descriptor (@hourly, @daily, @weekly, @monthly, @yearly), in UTC
	// unless prefixed with "CRON_TZ=Area/City ". Set Cron or Every.
	Cron string
	// Every is a plain interval of at least one second. Ticks are
	// multiples of it since the Unix epoch, so every process agrees on them.
	Every time.Duration
	// Job is what to enqueue at each tick. Its ID, RunAt, Delay,
	// ContentID and Unique must be unset: the schedule sets them.
	Job Job
	// CatchUp is how many ticks missed while no worker ran are enqueued
	// when a worker starts (the most recent ones); default 0: none, at
	// most 10,000. A worker that wakes up late (its process was
	// suspended, or the clock jumped forward) likewise enqueues the tick
	// it woke for and at most CatchUp of the ticks it slept through.
	CatchUp int
}

// schedule is a checked PeriodicJob with its next-tick function.
type schedule struct {
	PeriodicJob
	after func(t time.Time) time.Time // the first tick after t; zero if none
	next  time.Time                   // the next tick to enqueue; zero if none
}

const (
	maxPeriodicName = 64
	// maxCatchUp bounds PeriodicJob.CatchUp: a catch-up is one transaction.
	maxCatchUp = 10000
	// cronHorizon is how far back a walk over cron ticks starts at most,
	// and maxCronWalk bounds its steps: a 5-field cron schedule ticks at
	// most once a minute (576,000 times in 400 days), plus one tick per
	// clock change.
	cronHorizon = 400 * day
	maxCronWalk = 600_000
)

// newSchedules checks the periodic jobs of a WorkerConfig.
func newSchedules(jobs []PeriodicJob, maxConfig int) ([]*schedule, error) {
	names := make(map[string]bool)
	var out []*schedule
	for i, p := range jobs {
		bad := func(format string, args ...any) error {
			return fmt.Errorf("%w: periodic job %d (%q): %s", ErrInvalidOption, i, p.Name, fmt.Sprintf(format, args...))
		}
		switch {
		case p.Name == "" || len(p.Name) > maxPeriodicName:
			return nil, bad("Name must be 1 to %d bytes", maxPeriodicName)
		case names[p.Name]:
			return nil, bad("Name is used twice")
		case (p.Cron == "") == (p.Every == 0):
			return nil, bad("set exactly one of Cron and Every")
		case p.Every != 0 && p.Every < time.Second:
			return nil, bad("Every must be at least 1s, got %s", p.Every)
		case p.CatchUp < 0 || p.CatchUp > maxCatchUp:
			return nil, bad("CatchUp %d is outside 0..%d; to replay a longer backlog, enqueue its jobs yourself", p.CatchUp, maxCatchUp)
		case p.Job.ContentID || p.Job.Unique != (Unique{}) || !p.Job.RunAt.IsZero() || p.Job.Delay != 0:
			return nil, bad("the Job's ContentID, Unique, RunAt and Delay must be unset; the schedule sets them")
		}
		if err := validText(p.Name, "periodic job name", ErrInvalidOption); err != nil {
			return nil, err
		}
		if err := validJob(&p.Job, maxConfig); err != nil {
			return nil, bad("%v", err)
		}
		names[p.Name] = true
		s := &schedule{PeriodicJob: p}
		if p.Every != 0 {
			every := p.Every
			s.after = func(t time.Time) time.Time { return time.Unix(0, (t.UnixNano()/int64(every)+1)*int64(every)).UTC() }
		} else {
			c, err := parseCron(p.Cron)
			if err != nil {
				return nil, bad("%v", err)
			}
			s.after = c.after
			if s.after(time.Now()).IsZero() {
				return nil, bad("cron expression %q never fires: no time in the next five years matches it; check its days against its months", p.Cron)
			}
		}
		out = append(out, s)
	}
	return out, nil
}

// cronSchedule is a parsed cron expression.
type cronSchedule struct {
	spec *cron.SpecSchedule
	loc  *time.Location // where its fields are read: CRON_TZ's zone, or UTC
	// fixed: neither the minute nor the hour field starts with '*', and
	// the expression is not @hourly. The cron daemons apply their
	// clock-change rule to these schedules only.
	fixed bool
}

// parseCron parses a Cron field.
func parseCron(expr string) (*cronSchedule, error) {
	fields := expr
	if strings.HasPrefix(expr, "TZ=") || strings.HasPrefix(expr, "CRON_TZ=") {
		i := strings.IndexByte(expr, ' ')
		if i < 0 { // robfig/cron would panic
			return nil, fmt.Errorf("cron expression %q has a time zone and no schedule; write CRON_TZ=Area/City, a space, then the schedule", expr)
		}
		fields = expr[i+1:]
	}
	parsed, err := cron.ParseStandard(expr)
	if err != nil {
		return nil, fmt.Errorf("cron expression %q: %v", expr, err)
	}
	spec, ok := parsed.(*cron.SpecSchedule)
	if !ok { // @every, also after a CRON_TZ= prefix
		return nil, fmt.Errorf("cron expression %q: @every counts from when each process started, so processes would disagree on ticks; use the Every field", expr)
	}
	// Without CRON_TZ, robfig/cron reads the fields in the zone of the
	// time it is given, which is always UTC here.
	c := &cronSchedule{spec: spec, loc: spec.Location}
	if c.loc == time.Local {
		c.loc = time.UTC
	}
	wild := func(field string) bool { return strings.HasPrefix(field, "*") || strings.HasPrefix(field, "?") }
	if f := strings.Fields(fields); len(f) < 2 {
		c.fixed = !slices.Contains(f, "@hourly")
	} else {
		c.fixed = !wild(f[0]) && !wild(f[1])
	}
	return c, nil
}

// after returns the schedule's first tick after t, or the zero time if
// none comes within five years. Ticks are robfig/cron's (so their job ids
// are what they always were), with the cron daemons' rule for a fixed
// schedule where its zone's clock changes: a tick whose local time came
// already is dropped, and local times the clock skipped tick once, at the
// jump.
func (c *cronSchedule) after(t time.Time) time.Time {
	for skips := 0; ; skips++ {
		next := c.spec.Next(t.UTC())
		if next.IsZero() || !c.fixed {
			return next
		}
		if jump := c.jumpBetween(t, next); !jump.IsZero() {
			return jump
		}
		end := c.repeatedUntil(next)
		if end.IsZero() || skips == 8 { // each skip passes a change: 8 is ample
			return next
		}
		t = end.Add(-time.Second) // robfig/cron's next tick is then end or later
	}
}

// jumpBetween returns the first moment in (t, next] at which the clock
// jumped forward over a local time the schedule matches, or the zero time.
func (c *cronSchedule) jumpBetween(t, next time.Time) time.Time {
	at := t.In(c.loc)
	for range 32 { // next is at most five years on: a zone changes 2 or 4 times a year
		_, change := at.ZoneBounds()
		if change.IsZero() || change.After(next) {
			break
		}
		_, before := change.Add(-time.Second).Zone()
		_, after := change.Zone()
		if skipped := time.Duration(after-before) * time.Second; skipped > 0 {
			// Read in the old offset, the skipped local times are the
			// instants [change, change+skipped).
			old := *c.spec
			old.Location = time.FixedZone("", before)
			if m := old.Next(change.Add(-time.Second)); !m.IsZero() && m.Before(change.Add(skipped)) {
				return change.UTC()
			}
		}
		at = change
	}
	return time.Time{}
}

// repeatedUntil returns, when tick's local time came already (the clock
// went back less than that long before tick), the end of that repeated
// span; else the zero time.
func (c *cronSchedule) repeatedUntil(tick time.Time) time.Time {
	change, _ := tick.In(c.loc).ZoneBounds()
	if change.IsZero() {
		return time.Time{}
	}
	_, before := change.Add(-time.Second).Zone()
	_, after := change.Zone()
	if back := time.Duration(before-after) * time.Second; back > 0 && tick.Sub(change) < back {
		return change.Add(back).UTC()
	}
	return time.Time{}
}

// periodicJobID is the id of one tick's job: the same name and tick give the
// same id in every process. Built like contentJobID, with its own prefix.
func periodicJobID(name string, tick time.Time) JobID {
	h := sha256.New()
	var n [8]byte
	for _, f := range []string{"compute.periodic.v1", name} {
		binary.BigEndian.PutUint64(n[:], uint64(len(f)))
		h.Write(n[:])
		h.Write([]byte(f))
	}
	binary.BigEndian.PutUint64(n[:], uint64(tick.UnixNano()))
	h.Write(n[:])
	var id JobID
	copy(id[:], h.Sum(nil))
	id[6] = id[6]&0x0f | 0x80
	id[8] = id[8]&0x3f | 0x80
	return id
}

// lastTicksSQL reads the last tick the cluster enqueued per schedule.
const lastTicksSQL = `SELECT name, last_tick FROM compute.periodic WHERE name = ANY($1)`

// saveTicksSQL records the latest enqueued tick per schedule, never moving back.
const saveTicksSQL = `
INSERT INTO compute.periodic AS p (name, last_tick)
SELECT * FROM unnest($1::text[], $2::timestamptz[])
ON CONFLICT (name) DO UPDATE SET last_tick = greatest(p.last_tick, excluded.last_tick)`

// tick is one schedule's job due at one time.
type tick struct {
	s  *schedule
	at time.Time
}

// enqueuePeriodic is the scheduler loop: it enqueues missed ticks up to
// each schedule's CatchUp at start, then each tick as it comes. A failed
// enqueue is retried with backoff; while it keeps failing, only the latest
// 1+CatchUp ticks of a schedule are kept for the retry.
func (w *Worker) enqueuePeriodic(ctx context.Context) {
	now := time.Now()
	var due []tick
	for _, s := range w.schedules {
		s.next = s.after(now)
	}
	if missed, err := w.missedTicks(ctx, now); err != nil {
		w.logFailure(ctx, "reading the last periodic ticks failed; no catch-up", err)
	} else {
		due = missed
	}
	failures := 0
	for {
		if len(due) > 0 {
			callCtx, cancel := context.WithTimeout(ctx, w.callTimeout())
			err := w.enqueueTicks(callCtx, due)
			cancel()
			if err == nil {
				due, failures = nil, 0
			} else {
				failures++
				w.logFailure(ctx, "periodic enqueue failed; retrying", err)
				due = keepLatest(due)
			}
		}
		wait := time.Hour
		for _, s := range w.schedules {
			if !s.next.IsZero() {
				wait = min(wait, time.Until(s.next))
			}
		}
		if len(due) > 0 {
			wait = min(wait, backoff.Wait(failures, 30*time.Second))
		}
		if !backoff.Sleep(ctx, max(wait, 0)) {
			return
		}
		now = time.Now()
		for _, s := range w.schedules {
			for _, at := range s.due(now) {
				due = append(due, tick{s, at})
			}
		}
	}
}

// due returns the schedule's ticks that have come by now, oldest first, and
// moves next past now. Of the ticks a late wake-up slept through (a
// suspended process, a clock stepped forward) it keeps the latest
// 1+CatchUp, as a starting worker does.
func (s *schedule) due(now time.Time) []time.Time {
	if s.next.IsZero() || s.next.After(now) {
		return nil
	}
	ticks := s.latestTicks(s.next, now, 1+s.CatchUp)
	if len(ticks) <= s.CatchUp {
		ticks = append([]time.Time{s.next}, ticks...)
	}
	if s.next = s.after(now); !s.next.After(now) {
		s.next = time.Time{} // no next tick: never wait for one
	}
	return ticks
}

// keepLatest trims the ticks waiting for a retry to each schedule's latest
// 1+CatchUp, in place.
func keepLatest(due []tick) []tick {
	left := make(map[*schedule]int) // ticks of the schedule from here on
	for _, t := range due {
		left[t.s]++
	}
	kept := due[:0]
	for _, t := range due {
		if left[t.s] <= 1+t.s.CatchUp {
			kept = append(kept, t)
		}
		left[t.s]--
	}
	return kept
}

// missedTicks lists, per schedule with CatchUp, the latest CatchUp ticks
// after the cluster's last enqueued one and up to now.
func (w *Worker) missedTicks(ctx context.Context, now time.Time) ([]tick, error) {
	var names []string
	for _, s := range w.schedules {
		if s.CatchUp > 0 {
			names = append(names, s.Name)
		}
	}
	if len(names) == 0 {
		return nil, nil
	}
	last := make(map[string]time.Time)
	err := w.q.do(ctx, "compute: periodic catch-up", func(ctx context.Context) error {
		rows, err := w.q.pool.Query(ctx, lastTicksSQL, names)
		if err != nil {
			return err
		}
		var name string
		var at time.Time
		_, err = pgx.ForEachRow(rows, []any{&name, &at}, func() error { last[name] = at; return nil })
		return err
	})
	if err != nil {
		return nil, err
	}
	var due []tick
	for _, s := range w.schedules {
		from, ok := last[s.Name]
		if s.CatchUp == 0 || !ok {
			continue
		}
		for _, t := range s.latestTicks(from, now, s.CatchUp) {
			due = append(due, tick{s, t})
		}
	}
	return due, nil
}

// latestTicks returns the schedule's latest n ticks after from and up to
// now, oldest first. Interval ticks are computed. Cron ticks are walked
// over the last hour, then twice as far back each time until the walk finds
// n ticks or reaches from (at most cronHorizon back), so a catch-up costs
// about the ticks it returns, not every tick since from.
func (s *schedule) latestTicks(from, now time.Time, n int) []time.Time {
	if n <= 0 || !now.After(from) {
		return nil
	}
	if s.Every > 0 {
		every := int64(s.Every)
		last := now.UnixNano() / every // ticks are multiples of every
		first := max(last-int64(n)+1, 0)
		if !time.Unix(0, first*every).After(from) {
			first = from.UnixNano()/every + 1
		}
		ticks := make([]time.Time, 0, max(last-first+1, 0))
		for i := first; i <= last; i++ {
			ticks = append(ticks, time.Unix(0, i*every).UTC())
		}
		return ticks
	}
	start := later(from, now.Add(-cronHorizon))
	for back := time.Hour; ; back *= 2 {
		if w := now.Add(-back); w.After(start) {
			if ticks := s.walkTicks(w, now, n); len(ticks) == n {
				return ticks
			}
			continue
		}
		return s.walkTicks(start, now, n)
	}
}

// walkTicks returns the latest n ticks after from and up to now, walking
// them all, for at most maxCronWalk steps.
func (s *schedule) walkTicks(from, now time.Time, n int) []time.Time {
	var ticks []time.Time
	t := from
	for range maxCronWalk {
		next := s.after(t)
		if next.IsZero() || !next.After(t) || next.After(now) {
			break
		}
		t, ticks = next, append(ticks, next)
		if len(ticks) == 2*n { // keep the latest n, in amortized O(1)
			ticks = append(ticks[:0], ticks[n:]...)
		}
	}
	return ticks[max(len(ticks)-n, 0):]
}

// later returns the later of a and b.
func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// enqueueTicks enqueues the jobs of due ticks and records the latest tick
// per schedule, in one transaction. Ticks another process enqueued already
// are duplicates and create nothing.
func (w *Worker) enqueueTicks(ctx context.Context, due []tick) error {
	jobs := make([]Job, len(due))
	latest := make(map[string]time.Time)
	for i, t := range due {
		jobs[i] = t.s.Job
		jobs[i].RunAt = t.at
		if t.at.After(latest[t.s.Name]) {
			latest[t.s.Name] = t.at
		}
	}
	b, err := w.q.prepare(jobs)
	if err != nil {
		return err
	}
	for i, t := range due {
		b.ids[i], b.chosen[i] = periodicJobID(t.s.Name, t.at), true
	}
	b.content = true
	var names []string
	var ticks []time.Time
	for name, at := range latest {
		names, ticks = append(names, name), append(ticks, at)
	}
	var made []Enqueued
	err = w.q.do(ctx, "compute: periodic enqueue", func(ctx context.Context) error {
		b.reset()
		return w.q.readCommitted(ctx, func(tx pgx.Tx) error {
			if err := b.write(ctx, tx); err != nil {
				return err
			}
			made = b.results
			_, err := tx.Exec(ctx, saveTicksSQL, names, ticks)
			return err
		})
	})
	for i, r := range made {
		if !r.Duplicate {
			w.log.Info("periodic job enqueued", "schedule", due[i].s.Name, "tick", due[i].at, "job", r.ID)
		}
	}
	return err
}
