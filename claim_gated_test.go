package compute_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/internal/testdb"
)

// claimN claims up to n jobs of queue and fails the test on error.
func claimN(t testing.TB, q *compute.Queue, queue string, n int) []*compute.Job {
	t.Helper()
	jobs, err := q.Claim(t.Context(), queue, n)
	if err != nil {
		t.Fatalf("claim %s: %v", queue, err)
	}
	return jobs
}

func complete(t testing.TB, q *compute.Queue, jobs ...*compute.Job) {
	t.Helper()
	done := make([]compute.Completion, len(jobs))
	for i, j := range jobs {
		done[i] = compute.Completion{Job: j}
	}
	if err := q.Complete(t.Context(), done...); err != nil {
		t.Fatal(err)
	}
}

func keyed(queue string, counts map[string]int) []compute.Job {
	var jobs []compute.Job
	for key, n := range counts {
		for range n {
			jobs = append(jobs, compute.Job{Queue: queue, PartitionKey: key})
		}
	}
	return jobs
}

func byKey(jobs []*compute.Job) map[string]int {
	m := make(map[string]int)
	for _, j := range jobs {
		m[j.PartitionKey]++
	}
	return m
}

// TestPausedQueueClaimsNothingUntilResumed checks Pause and Resume through
// Claim, and that settings round-trip and keep Paused apart.
func TestPausedQueueClaimsNothingUntilResumed(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	ctx := t.Context()
	enqueueAll(t, q, slices.Repeat([]compute.Job{{Queue: "p"}}, 3))
	if err := q.Pause(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	if got := claimN(t, q, "p", 10); len(got) != 0 {
		t.Fatalf("a paused queue gave %d jobs", len(got))
	}
	// Settings leave Paused alone.
	setSettings(t, q, "p", compute.QueueSettings{MaxRunning: 5})
	s, err := q.GetQueueSettings(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	if !s.Paused || s.MaxRunning != 5 {
		t.Fatalf("settings = %+v, want paused with MaxRunning 5", s)
	}
	if err := q.Resume(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	if got := claimN(t, q, "p", 10); len(got) != 3 {
		t.Fatalf("a resumed queue gave %d jobs, want 3", len(got))
	}
}

// TestMaxRunningHoldsAcrossClaimers checks the queue-wide cap with many
// concurrent claimers (separate pools, as separate processes would have):
// the running count never exceeds it, and it is reached.
func TestMaxRunningHoldsAcrossClaimers(t *testing.T) {
	t.Parallel()
	conn := testdb.New(t)
	admin := openQueue(t, conn, compute.WithMigrate())
	setSettings(t, admin, "cap", compute.QueueSettings{MaxRunning: 7})
	enqueueAll(t, admin, slices.Repeat([]compute.Job{{Queue: "cap"}}, 400))

	var mu sync.Mutex
	running, peak, done := 0, 0, 0
	var wg sync.WaitGroup
	for w := range 6 {
		q := openQueue(t, conn, compute.WithWorkerID(fmt.Sprintf("w%d", w)))
		wg.Go(func() {
			for {
				jobs, err := q.Claim(t.Context(), "cap", 5)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				running += len(jobs)
				peak = max(peak, running)
				finished := done == 400
				mu.Unlock()
				if finished {
					return
				}
				if len(jobs) == 0 {
					time.Sleep(time.Millisecond) // another claimer holds the cap
					continue
				}
				time.Sleep(2 * time.Millisecond) // the work, so claims overlap
				// Count down before completing: the database may free the
				// slot as soon as Complete commits. So this count is never
				// above the database's, and a peak above 7 is a violation.
				mu.Lock()
				running -= len(jobs)
				done += len(jobs)
				mu.Unlock()
				complete(t, q, jobs...)
			}
		})
	}
	wg.Wait()
	if peak > 7 {
		t.Fatalf("peak running %d exceeds MaxRunning 7", peak)
	}
	if peak < 7 {
		t.Fatalf("peak running %d never reached MaxRunning 7: the test shows nothing", peak)
	}
}

// TestKeyMaxRunningCapsEachKey checks the per-key cap in one claim and
// across claims.
func TestKeyMaxRunningCapsEachKey(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	setSettings(t, q, "k", compute.QueueSettings{KeyMaxRunning: 3})
	enqueueAll(t, q, keyed("k", map[string]int{"acme": 10, "globex": 2, "": 5}))

	first := claimN(t, q, "k", 100)
	if got, want := byKey(first), map[string]int{"acme": 3, "globex": 2, "": 3}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("first claim by key = %v, want %v", got, want)
	}
	if again := claimN(t, q, "k", 100); len(again) != 0 {
		t.Fatalf("claim at the cap gave %v", byKey(again))
	}
	var acme []*compute.Job
	for _, j := range first {
		if j.PartitionKey == "acme" {
			acme = append(acme, j)
		}
	}
	complete(t, q, acme[:2]...)
	if got := byKey(claimN(t, q, "k", 100)); fmt.Sprint(got) != fmt.Sprint(map[string]int{"acme": 2}) {
		t.Fatalf("after two acme jobs finished, claim gave %v, want acme:2", got)
	}
}

// TestFairClaimRotatesKeys checks round-robin: one claim of n takes an equal
// share from each key, and successive small claims rotate through the keys
// instead of draining the first.
func TestFairClaimRotatesKeys(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	setSettings(t, q, "f", compute.QueueSettings{Fair: true})
	enqueueAll(t, q, keyed("f", map[string]int{"big": 1000}))
	enqueueAll(t, q, keyed("f", map[string]int{"small1": 3, "small2": 3}))

	if got := byKey(claimN(t, q, "f", 6)); fmt.Sprint(got) != fmt.Sprint(map[string]int{"big": 2, "small1": 2, "small2": 2}) {
		t.Fatalf("one claim of 6 = %v, want 2 from each key", got)
	}
	var order []string
	for range 6 {
		for _, j := range claimN(t, q, "f", 1) {
			order = append(order, j.PartitionKey)
		}
	}
	// After the claim of 6 stopped at small2, single claims rotate: big,
	// small1, small2, big, then small1 and small2 are empty.
	want := []string{"big", "small1", "small2", "big", "big", "big"}
	if !slices.Equal(order, want) {
		t.Fatalf("single claims took keys %v, want %v", order, want)
	}
	// Uneven backlogs: slots the small keys cannot use go to the big one.
	if got := byKey(claimN(t, q, "f", 50)); got["big"] != 50 {
		t.Fatalf("a claim of 50 with only big left = %v", got)
	}
}

// TestRateLimitCountsStartsInSlidingWindow checks the queue-wide and
// per-key start limits.
func TestRateLimitCountsStartsInSlidingWindow(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	setSettings(t, q, "r", compute.QueueSettings{RateLimit: 5, RatePeriod: time.Hour})
	enqueueAll(t, q, slices.Repeat([]compute.Job{{Queue: "r"}}, 20))
	got := claimN(t, q, "r", 20)
	if len(got) != 5 {
		t.Fatalf("first claim gave %d, want the rate limit of 5", len(got))
	}
	complete(t, q, got...)
	if again := claimN(t, q, "r", 20); len(again) != 0 {
		t.Fatalf("a claim within the period gave %d more", len(again))
	}
	// Backdate the starts past the period: the window slides on.
	mustExec(t, q.Pool(), `UPDATE compute.starts SET at = at - interval '61 minutes' WHERE queue = 'r'`)
	if again := claimN(t, q, "r", 20); len(again) != 5 {
		t.Fatalf("after the period a claim gave %d, want 5", len(again))
	}
	if n := queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.starts WHERE queue = 'r'`); n != 5 {
		t.Fatalf("starts log holds %d rows, want the 5 inside the window", n)
	}

	setSettings(t, q, "rk", compute.QueueSettings{KeyRateLimit: 2, RatePeriod: time.Hour})
	enqueueAll(t, q, keyed("rk", map[string]int{"a": 5, "b": 5}))
	if got := byKey(claimN(t, q, "rk", 10)); fmt.Sprint(got) != fmt.Sprint(map[string]int{"a": 2, "b": 2}) {
		t.Fatalf("per-key rate limit gave %v, want 2 each", got)
	}
}

// TestSettingsRejectBadValues checks the validation of QueueSettings.
func TestSettingsRejectBadValues(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	for _, s := range []compute.QueueSettings{
		{MaxRunning: -1},
		{RateLimit: 3},
		{RatePeriod: time.Second},
		{AgeAfter: time.Millisecond},
		// The columns are int4: a larger number failed to encode, a 500
		// in the dashboard rather than a bad value.
		{MaxRunning: math.MaxInt32 + 1},
		{KeyMaxRunning: math.MaxInt32 + 1},
		{RateLimit: math.MaxInt32 + 1, RatePeriod: time.Second},
		{KeyRateLimit: math.MaxInt32 + 1, RatePeriod: time.Second},
	} {
		if err := q.SetQueueSettings(t.Context(), "x", s); !errors.Is(err, compute.ErrInvalidOption) {
			t.Errorf("SetQueueSettings(%+v) = %v, want ErrInvalidOption", s, err)
		}
	}
	if err := q.Pause(context.Background(), "bad name!"); !errors.Is(err, compute.ErrInvalidQueue) {
		t.Errorf("Pause(bad name) = %v", err)
	}
}

// TestWorkerPauseLetsRunningJobsFinishAndResumeWakesAtOnce checks Pause and
// Resume against a running worker whose poll interval is a minute, so only
// the notification can wake it: a running job finishes after Pause, no new
// job starts, and Resume starts the rest at once.
func TestWorkerPauseLetsRunningJobsFinishAndResumeWakesAtOnce(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	ctx := t.Context()
	started := make(chan compute.JobID, 10)
	release := make(chan struct{})
	r := startWorker(t, q, compute.WorkerConfig{
		PollInterval: time.Minute,
		Queues: map[string]compute.QueueConfig{"pz": {Concurrency: 1, Handler: func(ctx context.Context, job *compute.Job) ([]string, error) {
			started <- job.ID
			<-release
			return nil, nil
		}}},
	})
	defer r.stop(t)
	ids := enqueueAll(t, q, slices.Repeat([]compute.Job{{Queue: "pz"}}, 3))
	first := receive(t, started, liveness, "the first job to start")
	if err := q.Pause(ctx, "pz"); err != nil {
		t.Fatal(err)
	}
	close(release) // the running job finishes while paused
	awaitStatus(t, q, first, compute.StatusComplete)
	// Prove that the worker's claims run while paused, without timing: hold
	// the queue's claim lock and wake the worker with a new job; its claim
	// waits for the lock. Doing it twice shows the first claim, after the
	// pause, ran to its end.
	for range 2 {
		lock := holdClaimLock(t, q, "pz")
		enqueue(t, q, compute.Job{Queue: "pz"})
		waitUntil(t, liveness, "the worker's claim to wait for the lock", func() bool {
			return queryOne[int64](t, q.Pool(), `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted`) > 0
		})
		if err := lock.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case id := <-started:
		t.Fatalf("job %s started while the queue was paused", id)
	default:
	}
	if err := q.Resume(ctx, "pz"); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		receive(t, started, 5*time.Second, "a job to start after Resume (well before the 1-minute poll)")
	}
	for _, id := range ids {
		awaitStatus(t, q, id, compute.StatusComplete)
	}
}

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

// TestStartCountsFollowTheStarts: the running counts of migration 13 are
// what a rate-limited claim reads, so they must equal the starts within
// the window, for the queue and per key, after claims, after starts age
// out, and after a writer of an older version that deletes and inserts in
// one statement.
func TestStartCountsFollowTheStarts(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	ctx := context.Background()
	setSettings(t, q, "rl", compute.QueueSettings{RateLimit: 1000, KeyRateLimit: 1000, RatePeriod: time.Hour})
	var jobs []compute.Job
	for i := range 30 {
		j := compute.Job{Queue: "rl"}
		if i%3 != 0 {
			j.PartitionKey = fmt.Sprintf("k%d", i%2)
		}
		jobs = append(jobs, j)
	}
	enqueueAll(t, q, jobs)
	check := func(when string) {
		t.Helper()
		mismatch := queryOne[int64](t, q.Pool(), `
			WITH real AS (
				SELECT queue, grouping(partition_key) = 1 AS whole_queue, partition_key, count(*) AS n
				FROM compute.starts GROUP BY GROUPING SETS ((queue), (queue, partition_key))
			)
			SELECT count(*) FROM real FULL JOIN compute.start_counts c
			  ON c.queue = real.queue AND c.whole_queue = real.whole_queue
			 AND c.partition_key IS NOT DISTINCT FROM real.partition_key
			WHERE real.n IS DISTINCT FROM c.n`)
		if mismatch != 0 {
			t.Errorf("%s: %d counts differ from the starts they count", when, mismatch)
		}
	}
	for range 3 {
		if _, err := q.Claim(ctx, "rl", 7); err != nil {
			t.Fatal(err)
		}
	}
	check("after three claims")
	// Age half of the starts out of the window; the next claim drops them.
	mustExec(t, q.Pool(), `UPDATE compute.starts SET at = at - interval '2 hours'
		WHERE ctid IN (SELECT ctid FROM compute.starts WHERE queue = 'rl' LIMIT 10)`)
	if _, err := q.Claim(ctx, "rl", 3); err != nil {
		t.Fatal(err)
	}
	if n := queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.starts WHERE at < now() - interval '1 hour'`); n != 0 {
		t.Errorf("%d starts older than the period are left after a claim", n)
	}
	check("after starts aged out and a claim")
	// An older worker records starts and drops old ones in one statement.
	mustExec(t, q.Pool(), `
		WITH gone AS (DELETE FROM compute.starts WHERE queue = 'rl' AND at <= now() - interval '1 hour')
		INSERT INTO compute.starts (queue, partition_key, at)
		SELECT 'rl', k, now() FROM unnest(ARRAY['k0', NULL, 'new']::text[]) AS t(k)`)
	check("after an older worker's statement")
}
