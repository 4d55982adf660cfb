package compute

import (
	"encoding/hex"
	"slices"
	"testing"
	"time"

	"github.com/robfig/cron/v3"
)

// The tests in this file are not parallel: a paused parallel test of
// package compute looks like a leaked library goroutine to the worker
// tests' goroutine-leak checks.

// testSchedule checks one periodic job as NewWorker does.
func testSchedule(t *testing.T, p PeriodicJob) *schedule {
	t.Helper()
	p.Name, p.Job = "s", Job{Queue: "p"}
	s, err := newSchedules([]PeriodicJob{p}, defaultMaxConfig)
	if err != nil {
		t.Fatal(err)
	}
	return s[0]
}

// at parses an RFC 3339 instant.
func at(t *testing.T, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatal(err)
	}
	return v.UTC()
}

// walk returns every tick of next after from and up to to.
func walk(next func(time.Time) time.Time, from, to time.Time) []time.Time {
	var out []time.Time
	for t := next(from); !t.IsZero() && !t.After(to); t = next(t) {
		out = append(out, t.UTC())
	}
	return out
}

// TestCronTicksAcrossClockChangesFollowCronDaemons walks CRON_TZ schedules
// over America/New_York's clock changes (back at 2025-11-02 06:00Z, 2:00
// EDT to 1:00 EST; forward at 2026-03-08 07:00Z, 2:00 EST to 3:00 EDT) with
// fixed instants. As in Vixie/ISC cron and cronie: a fixed-time schedule
// ticks once in the repeated hour, at the first occurrence, and once for
// the skipped hour, at the jump; a schedule with '*' in its minute or hour
// field (or @hourly) follows the clock.
func TestCronTicksAcrossClockChangesFollowCronDaemons(t *testing.T) {
	if _, err := time.LoadLocation("America/New_York"); err != nil {
		t.Fatalf("the tz database has no America/New_York: %v", err)
	}
	const ny = "CRON_TZ=America/New_York "
	for _, tc := range []struct {
		cron     string
		from, to string
		want     []string
	}{
		// Clocks go back: 1:30 local comes twice; it ticks at the first.
		{ny + "30 1 * * *", "2025-11-01T12:00:00Z", "2025-11-03T12:00:00Z",
			[]string{"2025-11-02T05:30:00Z", "2025-11-03T06:30:00Z"}},
		{ny + "0,30 1 * * *", "2025-11-02T04:00:00Z", "2025-11-02T12:00:00Z",
			[]string{"2025-11-02T05:00:00Z", "2025-11-02T05:30:00Z"}},
		// Started during the second 1 AM, after the first 1:30 passed.
		{ny + "30 1 * * *", "2025-11-02T06:10:00Z", "2025-11-03T12:00:00Z",
			[]string{"2025-11-03T06:30:00Z"}},
		// Clocks go forward: 2:30 local never comes; it ticks at the jump,
		// once however many of its times were skipped.
		{ny + "30 2 * * *", "2026-03-07T12:00:00Z", "2026-03-09T12:00:00Z",
			[]string{"2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"}},
		{ny + "0,30 2 * * *", "2026-03-08T00:00:00Z", "2026-03-09T12:00:00Z",
			[]string{"2026-03-08T07:00:00Z", "2026-03-09T06:00:00Z", "2026-03-09T06:30:00Z"}},
		// The jump is also 3:00's own tick: one job.
		{ny + "0 2,3 * * *", "2026-03-08T00:00:00Z", "2026-03-09T12:00:00Z",
			[]string{"2026-03-08T07:00:00Z", "2026-03-09T06:00:00Z", "2026-03-09T07:00:00Z"}},
		// A skipped midnight (America/Sao_Paulo, 2018-11-04 00:00 -03 to
		// 01:00 -02 at 03:00Z): @daily ticks at the jump.
		{"CRON_TZ=America/Sao_Paulo @daily", "2018-11-03T12:00:00Z", "2018-11-05T12:00:00Z",
			[]string{"2018-11-04T03:00:00Z", "2018-11-05T02:00:00Z"}},
		// '*' in the minute or hour field: ticks follow the clock, twice in
		// the repeated hour and none in the skipped one.
		{ny + "0 * * * *", "2025-11-02T04:30:00Z", "2025-11-02T07:30:00Z",
			[]string{"2025-11-02T05:00:00Z", "2025-11-02T06:00:00Z", "2025-11-02T07:00:00Z"}},
		{ny + "@hourly", "2026-03-08T05:30:00Z", "2026-03-08T08:30:00Z",
			[]string{"2026-03-08T06:00:00Z", "2026-03-08T07:00:00Z", "2026-03-08T08:00:00Z"}},
		{ny + "*/30 2 * * *", "2026-03-08T00:00:00Z", "2026-03-09T12:00:00Z",
			[]string{"2026-03-09T06:00:00Z", "2026-03-09T06:30:00Z"}},
		// UTC has no clock changes.
		{"30 1 * * *", "2025-11-01T12:00:00Z", "2025-11-03T12:00:00Z",
			[]string{"2025-11-02T01:30:00Z", "2025-11-03T01:30:00Z"}},
	} {
		s := testSchedule(t, PeriodicJob{Cron: tc.cron})
		var want []time.Time
		for _, w := range tc.want {
			want = append(want, at(t, w))
		}
		if got := walk(s.after, at(t, tc.from), at(t, tc.to)); !slices.Equal(got, want) {
			t.Errorf("%q from %s to %s ticked at\n%v, want\n%v", tc.cron, tc.from, tc.to, got, want)
		}
	}
}

// TestCronTicksAwayFromClockChangesAreUnchanged checks, over a year of
// America/New_York, that every tick more than three hours from a clock
// change is robfig/cron's own: its job id (a hash of the name and the
// instant) is what earlier versions gave it, so no deployed schedule runs a
// tick again.
func TestCronTicksAwayFromClockChangesAreUnchanged(t *testing.T) {
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Fatalf("the tz database has no America/New_York: %v", err)
	}
	from, to := at(t, "2025-06-01T00:00:00Z"), at(t, "2026-06-01T00:00:00Z")
	var changes []time.Time
	for x := from.In(ny); ; {
		_, end := x.ZoneBounds()
		if end.IsZero() || end.After(to) {
			break
		}
		changes, x = append(changes, end), end
	}
	if len(changes) != 2 {
		t.Fatalf("found clock changes %v in a year of America/New_York, want 2", changes)
	}
	farFromChanges := func(ticks []time.Time) []time.Time {
		return slices.DeleteFunc(ticks, func(tick time.Time) bool {
			for _, c := range changes {
				if tick.Sub(c).Abs() <= 3*time.Hour {
					return true
				}
			}
			return false
		})
	}
	for _, expr := range []string{"30 1 * * *", "30 2 * * *", "0,30 1-3 * * *", "15 4 * * 1-5", "0 0 1 * *", "@daily", "@weekly", "0 * * * *", "*/15 * * * *"} {
		for _, tz := range []string{"", "CRON_TZ=America/New_York "} {
			old, err := cron.ParseStandard(tz + expr)
			if err != nil {
				t.Fatal(err)
			}
			s := testSchedule(t, PeriodicJob{Cron: tz + expr})
			want := farFromChanges(walk(func(t time.Time) time.Time { return old.Next(t.UTC()) }, from, to))
			got := farFromChanges(walk(s.after, from, to))
			if len(want) < 12 || !slices.Equal(got, want) {
				t.Errorf("%q: %d ticks away from the clock changes, want robfig/cron's %d (first difference at %d)",
					tz+expr, len(got), len(want), firstDifference(got, want))
			}
		}
	}
}

func firstDifference(a, b []time.Time) int {
	for i := range min(len(a), len(b)) {
		if !a[i].Equal(b[i]) {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestPeriodicJobIDIsStable pins the derivation of a tick's job id: every
// process, of every version, must give a tick the same id, or a restart
// across an upgrade enqueues ticks again.
func TestPeriodicJobIDIsStable(t *testing.T) {
	id := periodicJobID("nightly", at(t, "2025-11-02T05:30:00Z"))
	if got, want := hex.EncodeToString(id[:]), "19f980301e5e8df698a58c39af4ada6e"; got != want {
		t.Errorf("periodicJobID = %s, want %s", got, want)
	}
}

// TestTickWalksEndWhenTheScheduleHasNoNextTick checks that the scheduler's
// tick walks return when the next-tick function finds no tick (robfig/cron
// returns the zero time for "0 0 30 2 *") or does not move on, and that the
// scheduler then has no next tick to wait for. They looped for ever: a core
// at 100%, memory growing, SIGTERM ignored.
func TestTickWalksEndWhenTheScheduleHasNoNextTick(t *testing.T) {
	now := at(t, "2026-01-15T10:00:00Z")
	for name, after := range map[string]func(time.Time) time.Time{
		"the zero time": func(time.Time) time.Time { return time.Time{} },
		"its argument":  func(t time.Time) time.Time { return t },
	} {
		s := &schedule{PeriodicJob: PeriodicJob{Name: "never", Cron: "0 0 30 2 *", CatchUp: 3}, after: after}
		s.next = s.after(now.Add(-time.Hour))
		done := make(chan [2]int)
		go func() {
			done <- [2]int{len(s.due(now)), len(s.latestTicks(now.Add(-48*time.Hour), now, 3))}
		}()
		select {
		case n := <-done:
			// The one tick the function gave (as next) may be due.
			if n[0] > 1 || n[1] > 0 {
				t.Errorf("with a next-tick function returning %s: due gave %d ticks and latestTicks %d, want at most 1 and 0", name, n[0], n[1])
			}
			if !s.next.IsZero() && !s.next.After(now) {
				t.Errorf("with a next-tick function returning %s: the next tick is %s, not after %s: the scheduler would spin", name, s.next, now)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("with a next-tick function returning %s, due or latestTicks did not return within 10s", name)
		}
	}
}

// TestDueAfterASuspensionKeepsTheLatestTicks checks what the scheduler
// enqueues when it wakes long after its tick (the process was suspended, or
// the clock stepped forward): the latest 1+CatchUp ticks, as a worker that
// starts does, not every tick it slept through.
func TestDueAfterASuspensionKeepsTheLatestTicks(t *testing.T) {
	start := at(t, "2026-01-15T10:00:00Z").Add(500 * time.Millisecond)
	woke := start.Add(72 * time.Hour)
	for _, tc := range []struct {
		name string
		p    PeriodicJob
		want []time.Time
	}{
		{"every second, CatchUp 2", PeriodicJob{Every: time.Second, CatchUp: 2},
			[]time.Time{woke.Add(-2500 * time.Millisecond), woke.Add(-1500 * time.Millisecond), woke.Add(-500 * time.Millisecond)}},
		{"every minute (cron), no CatchUp", PeriodicJob{Cron: "* * * * *"}, []time.Time{woke.Truncate(time.Minute)}},
		{"daily, CatchUp 5", PeriodicJob{Cron: "0 0 * * *", CatchUp: 5},
			[]time.Time{at(t, "2026-01-16T00:00:00Z"), at(t, "2026-01-17T00:00:00Z"), at(t, "2026-01-18T00:00:00Z")}},
	} {
		s := testSchedule(t, tc.p)
		s.next = s.after(start)
		if got := s.due(woke); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %d ticks due after 72h asleep (the latest %v), want %v", tc.name, len(got), got[max(len(got)-5, 0):], tc.want)
		}
		next := s.after(woke)
		if !s.next.Equal(next) {
			t.Errorf("%s: next tick %s after the wake-up, want %s", tc.name, s.next, next)
		}
		if got := s.due(next); !slices.Equal(got, []time.Time{next}) {
			t.Errorf("%s: the next wake-up, at %s, gave %v, want its one tick", tc.name, next, got)
		}
	}
}

// BenchmarkLatestTicks measures a catch-up of the largest CatchUp from an
// interval schedule and from a once-a-minute cron schedule whose last tick is
// a year old.
func BenchmarkLatestTicks(b *testing.B) {
	now := time.Date(2026, 1, 15, 10, 0, 0, 0, time.UTC)
	for name, p := range map[string]PeriodicJob{"every second": {Every: time.Second}, "every minute (cron)": {Cron: "* * * * *"}} {
		s := &schedule{PeriodicJob: p}
		if p.Every > 0 {
			s.after = func(t time.Time) time.Time {
				return time.Unix(0, (t.UnixNano()/int64(time.Second)+1)*int64(time.Second)).UTC()
			}
		} else {
			sched, _ := cron.ParseStandard(p.Cron)
			s.after = func(t time.Time) time.Time { return sched.Next(t.UTC()) }
		}
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if n := len(s.latestTicks(now.Add(-365*day), now, 10000)); n != 10000 {
					b.Fatalf("%d ticks", n)
				}
			}
		})
	}
}

// TestKeepLatestKeepsEachSchedulesLatestTicksInOrder checks the trim of
// ticks waiting for a retry: each schedule's latest 1+CatchUp, in their
// order.
func TestKeepLatestKeepsEachSchedulesLatestTicksInOrder(t *testing.T) {
	a, b := &schedule{PeriodicJob: PeriodicJob{Name: "a", CatchUp: 1}}, &schedule{PeriodicJob: PeriodicJob{Name: "b"}}
	t0 := at(t, "2026-01-15T10:00:00Z")
	tk := func(s *schedule, minutes int) tick { return tick{s, t0.Add(time.Duration(minutes) * time.Minute)} }
	got := keepLatest([]tick{tk(a, 0), tk(b, 0), tk(a, 1), tk(b, 1), tk(a, 2), tk(b, 2), tk(a, 3)})
	if want := []tick{tk(a, 2), tk(b, 2), tk(a, 3)}; !slices.Equal(got, want) {
		t.Errorf("keepLatest kept %v, want %v", got, want)
	}
}
