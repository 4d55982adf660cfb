package compute_test

// Regression tests for defects a review found in the coordination features.

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/computeplatform/compute"
)

// claimBehindLock starts a Claim that must wait for the held claim lock, and
// returns once it waits.
func claimBehindLock(t *testing.T, q *compute.Queue, queue string) <-chan []*compute.Job {
	t.Helper()
	done := make(chan []*compute.Job, 1)
	go func() {
		jobs, err := q.Claim(t.Context(), queue, 1)
		if err != nil {
			t.Error(err)
		}
		done <- jobs
	}()
	waitUntil(t, liveness, "the claim to wait for the lock", func() bool {
		return queryOne[int64](t, q.Pool(), `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted`) > 0
	})
	return done
}

// TestGatedClaimReadsCursorAfterLockWait: a claim that waited for another
// claimer must see the round-robin cursor that claimer committed.
func TestGatedClaimReadsCursorAfterLockWait(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	setSettings(t, q, "f", compute.QueueSettings{Fair: true})
	enqueueAll(t, q, keyed("f", map[string]int{"a": 3, "b": 3, "c": 3}))
	other := holdClaimLock(t, q, "f")
	mustExec(t, other.(db), `UPDATE compute.queues SET fair_cursor = 'a' WHERE name = 'f'`)
	done := claimBehindLock(t, q, "f")
	if err := other.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := byKey(receive(t, done, liveness, "the claim")); got["b"] != 1 {
		t.Fatalf("after the other claim served key a, this one took %v, want key b", got)
	}
}

// TestRateLimitCountsStartsFromAfterLockWait: a start is stamped when the
// claim ran, not when its transaction began waiting for the lock, so it
// stays in the window for the whole period.
func TestRateLimitCountsStartsFromAfterLockWait(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	setSettings(t, q, "r", compute.QueueSettings{RateLimit: 1, RatePeriod: time.Second})
	enqueueAll(t, q, []compute.Job{{Queue: "r"}, {Queue: "r"}})
	other := holdClaimLock(t, q, "r")
	done := claimBehindLock(t, q, "r")
	time.Sleep(1500 * time.Millisecond) // the other claimer is slow: longer than the period
	if err := other.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	first := receive(t, done, liveness, "the claim")
	second := claimN(t, q, "r", 1)
	if len(first)+len(second) != 1 {
		t.Fatalf("%d and %d starts back to back under RateLimit 1 per second", len(first), len(second))
	}
}

// TestRetentionCountsAgeFromFinish: a job that waited long in the queue
// and finished just now is not old.
func TestRetentionCountsAgeFromFinish(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	id := enqueue(t, q, compute.Job{Queue: "p"})
	mustExec(t, q.Pool(), `UPDATE compute.jobs SET created = now() - interval '2 days', last_accessed = now() - interval '2 days' WHERE job_id = $1`, id[:])
	complete(t, q, claimOne(t, q, "p"))
	if n, err := q.Purge(t.Context(), compute.StatusComplete, time.Hour); err != nil || n != 0 {
		t.Fatalf("Purge(complete, 1h) of a job that just finished: %d, %v", n, err)
	}
	if n, err := q.Expire(t.Context(), time.Hour); err != nil || n != 0 {
		t.Fatalf("Expire(1h) of a job that just finished: %d, %v", n, err)
	}
}

// TestWaitAndFollowEndWhenQueueCloses: both return ErrClosed promptly.
func TestWaitAndFollowEndWhenQueueCloses(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	id := enqueue(t, q, compute.Job{Queue: "nobody"})
	waitErr, followErr := make(chan error, 1), make(chan error, 1)
	go func() { _, err := q.Wait(t.Context(), id); waitErr <- err }()
	go func() {
		followErr <- q.Follow(t.Context(), compute.Cursor{}, func([]compute.Event) error { return nil })
	}()
	time.Sleep(200 * time.Millisecond) // let both start waiting
	q.Close()
	for _, ch := range []chan error{waitErr, followErr} {
		if err := receive(t, ch, 3*time.Second, "a return after Close"); !errors.Is(err, compute.ErrClosed) {
			t.Errorf("after Close: %v, want ErrClosed", err)
		}
	}
}

// TestFairWorkerRunsRunnableKeyPastScheduledOne: a worker with one slot
// serves key b although key a's only job is due in an hour.
func TestFairWorkerRunsRunnableKeyPastScheduledOne(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	setSettings(t, q, "f", compute.QueueSettings{Fair: true})
	enqueue(t, q, compute.Job{Queue: "f", PartitionKey: "a", Delay: time.Hour})
	id := enqueue(t, q, compute.Job{Queue: "f", PartitionKey: "b"})
	r := startWorker(t, q, compute.WorkerConfig{Queues: map[string]compute.QueueConfig{"f": {Concurrency: 1, Handler: idle}}})
	defer r.stop(t)
	awaitStatus(t, q, id, compute.StatusComplete)
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

// TestNotifyOffSilencesJournalNotifications: with MetaNotify off, status
// changes send no compute_events notification, even while a listener is
// announced (migration 7), and new jobs no compute_jobs one.
func TestNotifyOffSilencesJournalNotifications(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	ctx := t.Context()
	for key, value := range map[string]string{compute.MetaNotify: "off", "journal_listened_until": farFuture} {
		if err := q.SetMeta(ctx, key, value); err != nil {
			t.Fatal(err)
		}
	}
	conn, err := q.Pool().Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	mustExec(t, conn, `LISTEN compute_events; LISTEN compute_jobs`)
	enqueue(t, q, compute.Job{Queue: "quiet"})
	complete(t, q, claimOne(t, q, "quiet"))
	if got := notifiedBeforeProbe(t, q, conn); len(got) > 0 {
		t.Fatalf("notifications on %v with notify off", got)
	}
}

// farFuture is a journal_listened_until value (Unix seconds) that keeps the
// journal's notifications on for the whole test.
const farFuture = "99999999999"

// TestOldestHorizonNamesAnIdleTransaction: an idle transaction holding a
// snapshot is found, with its application name, and a Worker warns about it.
func TestOldestHorizonNamesAnIdleTransaction(t *testing.T) {
	t.Parallel()
	logs := &syncBuffer{warned: make(chan struct{})}
	q := newQueue(t, compute.WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	ctx := t.Context()
	conn, err := q.Pool().Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	mustExec(t, conn, `SET application_name = 'report-job'`)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	mustExec(t, tx, `SET TRANSACTION ISOLATION LEVEL REPEATABLE READ`)
	mustExec(t, tx, `SELECT count(*) FROM compute.jobs`)
	h, err := q.OldestHorizon(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h == nil || h.Kind != "session" || !strings.Contains(h.Detail, "report-job") {
		t.Fatalf("OldestHorizon = %+v, want the report-job session", h)
	}
	r := startWorker(t, q, compute.WorkerConfig{
		Queues:                 map[string]compute.QueueConfig{"x": {Handler: idle}},
		LongTransactionWarning: time.Nanosecond,
	})
	defer r.stop(t)
	waitUntil(t, liveness, "the warning", func() bool { return strings.Contains(logs.String(), "report-job") })
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestJournalOffWritesNoEvents: MetaJournal off stops the journal, and
// turning it on again resumes it.
func TestJournalOffWritesNoEvents(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	ctx := t.Context()
	if err := q.SetMeta(ctx, compute.MetaJournal, "off"); err != nil {
		t.Fatal(err)
	}
	enqueue(t, q, compute.Job{Queue: "off"})
	complete(t, q, claimOne(t, q, "off"))
	if n := queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.events`); n != 0 {
		t.Fatalf("%d journal rows with the journal off", n)
	}
	if err := q.DeleteMeta(ctx, compute.MetaJournal); err != nil {
		t.Fatal(err)
	}
	enqueue(t, q, compute.Job{Queue: "on"})
	if n := queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.events`); n != 1 {
		t.Fatalf("%d journal rows after turning it back on, want 1", n)
	}
}
