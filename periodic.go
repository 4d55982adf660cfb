package compute

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/robfig/cron/v3"
)

// PeriodicJob is a job a Worker enqueues on a schedule. Every process may
// list the same periodic jobs: each tick's job gets an id derived from Name
// and the tick time, so the cluster creates it once however many processes
// see the tick, start, stop or restart around it. The job's RunAt is its
// tick, which the handler can read.
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
	// when a worker starts (the most recent ones). Default 0: none.
	CatchUp int
}

// schedule is a checked PeriodicJob with its next-tick function.
type schedule struct {
	PeriodicJob
	after func(t time.Time) time.Time // the first tick after t
	next  time.Time                   // the next tick to enqueue
}

const maxPeriodicName = 64

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
		case p.CatchUp < 0:
			return nil, bad("CatchUp must not be negative")
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
			if strings.HasPrefix(strings.TrimSpace(p.Cron), "@every") {
				return nil, bad("@every counts from when each process started, so processes would disagree on ticks; use the Every field")
			}
			sched, err := cron.ParseStandard(p.Cron)
			if err != nil {
				return nil, bad("cron expression %q: %v", p.Cron, err)
			}
			s.after = func(t time.Time) time.Time { return sched.Next(t.UTC()) }
		}
		out = append(out, s)
	}
	return out, nil
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

// lastTicks reads the last tick the cluster enqueued per schedule.
const lastTicks = `SELECT name, last_tick FROM compute.periodic WHERE name = ANY($1)`

// saveTicks records the latest enqueued tick per schedule, never moving back.
const saveTicks = `
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
			wait = min(wait, time.Until(s.next))
		}
		if len(due) > 0 {
			wait = min(wait, backoffWait(failures, 30*time.Second))
		}
		if !sleep(ctx, max(wait, 0)) {
			return
		}
		now = time.Now()
		for _, s := range w.schedules {
			for !s.next.After(now) {
				due = append(due, tick{s, s.next})
				s.next = s.after(s.next)
			}
		}
	}
}

// keepLatest trims the ticks waiting for a retry to each schedule's latest
// 1+CatchUp.
func keepLatest(due []tick) []tick {
	count := make(map[*schedule]int)
	var kept []tick
	for i := len(due) - 1; i >= 0; i-- {
		t := due[i]
		if count[t.s] <= t.s.CatchUp {
			count[t.s]++
			kept = append([]tick{t}, kept...)
		}
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
		rows, err := w.q.pool.Query(ctx, lastTicks, names)
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
		for _, t := range s.latestTicks(from, now) {
			due = append(due, tick{s, t})
		}
	}
	return due, nil
}

// latestTicks returns the schedule's latest CatchUp ticks after from and up
// to now, oldest first. Interval ticks are computed; cron ticks are walked,
// from at most 400 days back (a cron schedule ticks at most once a minute,
// so that is under 600,000 steps).
func (s *schedule) latestTicks(from, now time.Time) []time.Time {
	var ticks []time.Time
	if s.Every > 0 {
		last := time.Unix(0, now.UnixNano()/int64(s.Every)*int64(s.Every)).UTC()
		for t := last; t.After(from) && len(ticks) < s.CatchUp; t = t.Add(-s.Every) {
			ticks = append([]time.Time{t}, ticks...)
		}
		return ticks
	}
	if horizon := now.Add(-400 * day); from.Before(horizon) {
		from = horizon
	}
	for t := s.after(from); !t.After(now); t = s.after(t) {
		ticks = append(ticks, t)
		if len(ticks) > s.CatchUp {
			ticks = ticks[1:]
		}
	}
	return ticks
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
			_, err := tx.Exec(ctx, saveTicks, names, ticks)
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
