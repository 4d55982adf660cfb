package compute

import (
	"slices"
	"testing"
	"time"

	"github.com/robfig/cron/v3"
)

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

// TestTickWalksEndWhenTheScheduleHasNoNextTick checks that the scheduler's
// tick walks return when the next-tick function finds no tick (robfig/cron
// returns the zero time for "0 0 30 2 *") or does not move on, and that the
// scheduler then has no next tick to wait for. They looped for ever: a core
// at 100%, memory growing, SIGTERM ignored.
func TestTickWalksEndWhenTheScheduleHasNoNextTick(t *testing.T) {
	t.Parallel()
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
	t.Parallel()
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
	t.Parallel()
	a, b := &schedule{PeriodicJob: PeriodicJob{Name: "a", CatchUp: 1}}, &schedule{PeriodicJob: PeriodicJob{Name: "b"}}
	t0 := at(t, "2026-01-15T10:00:00Z")
	tk := func(s *schedule, minutes int) tick { return tick{s, t0.Add(time.Duration(minutes) * time.Minute)} }
	got := keepLatest([]tick{tk(a, 0), tk(b, 0), tk(a, 1), tk(b, 1), tk(a, 2), tk(b, 2), tk(a, 3)})
	if want := []tick{tk(a, 2), tk(b, 2), tk(a, 3)}; !slices.Equal(got, want) {
		t.Errorf("keepLatest kept %v, want %v", got, want)
	}
}
