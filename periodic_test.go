package compute_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/internal/testdb"
)

// ticks returns the RunAt of every job of queue, in order, and fails on a
// tick enqueued twice.
func ticks(t *testing.T, q *compute.Queue, queue string) []time.Time {
	t.Helper()
	rows, err := q.Pool().Query(t.Context(), `SELECT run_at, count(*) FROM compute.jobs WHERE queue = $1 GROUP BY 1 ORDER BY 1`, queue)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []time.Time
	for rows.Next() {
		var at time.Time
		var n int
		if err := rows.Scan(&at, &n); err != nil {
			t.Fatal(err)
		}
		if n != 1 {
			t.Errorf("tick %s enqueued %d times", at, n)
		}
		out = append(out, at)
	}
	return out
}

// TestPeriodicEnqueuesEachTickOnceAcrossWorkers runs three workers (separate
// pools, ids and schedulers) with the same schedule, restarts one of them
// mid-way, and checks that every tick became exactly one job and no tick in
// the span was skipped.
func TestPeriodicEnqueuesEachTickOnceAcrossWorkers(t *testing.T) {
	t.Parallel()
	conn := testdb.New(t)
	q := openQueue(t, conn, compute.WithMigrate())
	cfg := compute.WorkerConfig{
		Queues:   map[string]compute.QueueConfig{"unrelated": {Handler: idle}},
		Periodic: []compute.PeriodicJob{{Name: "beat", Every: time.Second, Job: compute.Job{Queue: "beats", Config: "{}"}}},
	}
	var workers []*runningWorker
	for range 3 {
		workers = append(workers, startWorker(t, openQueue(t, conn), cfg))
	}
	waitUntil(t, liveness, "two ticks", func() bool { return len(ticks(t, q, "beats")) >= 2 })
	workers[0].stop(t)
	workers[0] = startWorker(t, openQueue(t, conn), cfg)
	waitUntil(t, liveness, "two more ticks", func() bool { return len(ticks(t, q, "beats")) >= 4 })
	for _, w := range workers {
		w.stop(t)
	}
	got := ticks(t, q, "beats")
	for i, at := range got {
		if at.Nanosecond() != 0 {
			t.Errorf("tick %s is not on a whole second", at)
		}
		if i > 0 && at.Sub(got[i-1]) != time.Second {
			t.Errorf("ticks %s and %s are not one second apart: a tick was skipped", got[i-1], at)
		}
	}
	if last := queryOne[time.Time](t, q.Pool(), `SELECT last_tick FROM compute.periodic WHERE name = 'beat'`); !last.Equal(got[len(got)-1]) {
		t.Errorf("last_tick %s, want the latest tick %s", last, got[len(got)-1])
	}
}

// TestPeriodicCatchUpIsBoundedAndOffByDefault checks that a worker starting
// after missed ticks enqueues only the latest CatchUp of them, and none
// without CatchUp.
func TestPeriodicCatchUpIsBoundedAndOffByDefault(t *testing.T) {
	t.Parallel()
	conn := testdb.New(t)
	q := openQueue(t, conn, compute.WithMigrate())
	// The cluster last enqueued a tick 10 minutes ago; with a 1-minute
	// schedule, 10 ticks were missed.
	mustExec(t, q.Pool(), `INSERT INTO compute.periodic VALUES
		('minutely', date_trunc('minute', now()) - interval '10 minutes'),
		('no-catch-up', date_trunc('minute', now()) - interval '10 minutes')`)
	r := startWorker(t, q, compute.WorkerConfig{
		Queues: map[string]compute.QueueConfig{"unrelated": {Handler: idle}},
		Periodic: []compute.PeriodicJob{
			{Name: "minutely", Cron: "* * * * *", Job: compute.Job{Queue: "catch"}, CatchUp: 3},
			{Name: "no-catch-up", Every: time.Minute, Job: compute.Job{Queue: "nocatch"}},
		},
	})
	waitUntil(t, liveness, "the catch-up", func() bool { return len(ticks(t, q, "catch")) >= 3 })
	r.stop(t)
	got := ticks(t, q, "catch")
	now := queryOne[time.Time](t, q.Pool(), `SELECT date_trunc('minute', now())`)
	if len(got) != 3 && !(len(got) == 4 && got[3].After(now.Add(-time.Second))) {
		t.Fatalf("caught up %d ticks %v, want the latest 3", len(got), got)
	}
	if latest := got[2]; now.Sub(latest) > time.Minute {
		t.Errorf("caught-up ticks %v are not the latest ones before %s", got, now)
	}
	if n := len(ticks(t, q, "nocatch")); n > 1 {
		t.Errorf("a schedule without CatchUp enqueued %d missed ticks", n)
	}
}

// TestPeriodicRejectsBadSchedules checks NewWorker's validation.
func TestPeriodicRejectsBadSchedules(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	job := compute.Job{Queue: "p"}
	for _, p := range []compute.PeriodicJob{
		{Cron: "* * * * *", Job: job},
		{Name: "a", Job: job},
		{Name: "a", Cron: "* * * * *", Every: time.Minute, Job: job},
		{Name: "a", Cron: "61 * * * *", Job: job},
		{Name: "a", Cron: "@every 1m", Job: job},
		{Name: "a", Every: time.Millisecond, Job: job},
		{Name: "a", Every: time.Minute, Job: compute.Job{Queue: "p", ContentID: true}},
		{Name: "a", Every: time.Minute, Job: compute.Job{Queue: "bad queue"}},
		{Name: "a", Every: time.Minute, Job: job, CatchUp: -1},
		{Name: "a", Every: time.Minute, Job: job, CatchUp: 10001},
		{Name: "a", Cron: "CRON_TZ=UTC @every 1m", Job: job},
		{Name: "a", Cron: "CRON_TZ=UTC", Job: job},                       // panicked
		{Name: "a", Cron: "0 0 30 2 *", Job: job},                        // never fires; spun a core
		{Name: "a", Cron: "CRON_TZ=Europe/Paris 0 0 31 4,6 *", Job: job}, // never fires
	} {
		_, err := compute.NewWorker(q, compute.WorkerConfig{
			Queues: map[string]compute.QueueConfig{"p": {Handler: idle}}, Periodic: []compute.PeriodicJob{p}})
		if !errors.Is(err, compute.ErrInvalidOption) {
			t.Errorf("NewWorker with %+v = %v, want ErrInvalidOption", p, err)
		}
	}
	_, err := compute.NewWorker(q, compute.WorkerConfig{Queues: map[string]compute.QueueConfig{"p": {Handler: idle}},
		Periodic: []compute.PeriodicJob{{Name: "a", Cron: "0 0 30 2 *", Job: job}}})
	if err == nil || !strings.Contains(err.Error(), `"0 0 30 2 *"`) || !strings.Contains(err.Error(), "never") {
		t.Errorf("NewWorker with a schedule that never fires: %v, want an error that names the schedule and says it never fires", err)
	}
	dup := []compute.PeriodicJob{{Name: "a", Every: time.Minute, Job: job}, {Name: "a", Every: time.Hour, Job: job}}
	if _, err := compute.NewWorker(q, compute.WorkerConfig{Queues: map[string]compute.QueueConfig{"p": {Handler: idle}}, Periodic: dup}); !errors.Is(err, compute.ErrInvalidOption) {
		t.Errorf("two schedules named a: %v", err)
	}
}

// TestCatchUpAfterLongStopTakesLatestTicks: after 13 days at one tick a
// second (over a million missed ticks), CatchUp 2 enqueues the two latest.
func TestCatchUpAfterLongStopTakesLatestTicks(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	mustExec(t, q.Pool(), `INSERT INTO compute.periodic VALUES ('p', date_trunc('second', now()) - interval '13 days')`)
	r := startWorker(t, q, compute.WorkerConfig{
		Queues:   map[string]compute.QueueConfig{"other": {Handler: idle}},
		Periodic: []compute.PeriodicJob{{Name: "p", Every: time.Second, CatchUp: 2, Job: compute.Job{Queue: "per"}}},
	})
	waitUntil(t, liveness, "the catch-up", func() bool { return len(ticks(t, q, "per")) >= 2 })
	r.stop(t)
	oldest := queryOne[float64](t, q.Pool(), `SELECT extract(epoch FROM now() - min(run_at)) FROM compute.jobs WHERE queue = 'per'`)
	if oldest > 60 {
		t.Fatalf("the oldest caught-up tick is %.0f s old; want the latest ticks", oldest)
	}
}
