package compute_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/internal/testdb"
	"github.com/jackc/pgx/v5"
)

// TestUniqueKeyScopes checks each scope: which earlier jobs make a new one
// a duplicate, and that Submit reports the existing id.
func TestUniqueKeyScopes(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	ctx := t.Context()
	submit := func(j compute.Job) compute.Enqueued {
		t.Helper()
		res, err := q.Submit(ctx, j)
		if err != nil {
			t.Fatal(err)
		}
		return res[0]
	}

	active := compute.Job{Queue: "u", Unique: compute.Unique{Key: "invoice:1"}}
	first := submit(active)
	if first.Duplicate {
		t.Fatal("the first job with a key was reported a duplicate")
	}
	if again := submit(active); !again.Duplicate || again.ID != first.ID {
		t.Fatalf("second submit = %+v, want a duplicate of %s", again, first.ID)
	}
	running := claimOne(t, q, "u")
	if again := submit(active); !again.Duplicate || again.ID != first.ID {
		t.Fatalf("while in progress: %+v, want a duplicate", again)
	}
	complete(t, q, running)
	if after := submit(active); after.Duplicate {
		t.Fatal("UniqueWhileActive: a finished job still blocked its key")
	}

	queued := compute.Job{Queue: "uq", Unique: compute.Unique{Key: "k", Scope: compute.UniqueWhileQueued}}
	a := submit(queued)
	if b := submit(queued); !b.Duplicate || b.ID != a.ID {
		t.Fatalf("UniqueWhileQueued while queued: %+v", b)
	}
	claimOne(t, q, "uq")
	if c := submit(queued); c.Duplicate {
		t.Fatal("UniqueWhileQueued: a running job blocked its key")
	}

	window := compute.Job{Queue: "uw", Unique: compute.Unique{Key: "k", Scope: compute.UniqueWithinWindow, Window: time.Hour}}
	w1 := submit(window)
	complete(t, q, claimOne(t, q, "uw"))
	if w2 := submit(window); !w2.Duplicate || w2.ID != w1.ID {
		t.Fatalf("UniqueWithinWindow: a finished job inside the window did not count: %+v", w2)
	}
	mustExec(t, q.Pool(), `UPDATE compute.jobs SET created = created - interval '2 hours' WHERE queue = 'uw'`)
	if w3 := submit(window); w3.Duplicate {
		t.Fatal("UniqueWithinWindow: a job older than the window still counted")
	}

	// Same key in another queue is another job; in one batch the second
	// copy follows the first.
	res, err := q.Submit(ctx,
		compute.Job{Queue: "other", Unique: compute.Unique{Key: "invoice:1"}},
		compute.Job{Queue: "other", Unique: compute.Unique{Key: "invoice:1"}},
		compute.Job{Queue: "other"})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Duplicate || !res[1].Duplicate || res[1].ID != res[0].ID || res[2].Duplicate {
		t.Fatalf("batch results = %+v", res)
	}
	if n := queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.jobs WHERE queue = 'other'`); n != 2 {
		t.Fatalf("batch created %d jobs, want 2", n)
	}
	// Content ids report duplicates through Submit too.
	c1, _ := q.Submit(ctx, compute.Job{Queue: "c", Config: "x", ContentID: true})
	c2, _ := q.Submit(ctx, compute.Job{Queue: "c", Config: "x", ContentID: true})
	if c1[0].Duplicate || !c2[0].Duplicate || c1[0].ID != c2[0].ID {
		t.Fatalf("content id results %+v then %+v", c1, c2)
	}
}

// TestUniqueKeyConcurrentSubmittersCreateOneJob races submitters in
// separate pools (as separate processes), single and in overlapping batches
// in opposite key orders (which would deadlock without ordered locks): each
// key ends with exactly one active job, and every submitter got its id.
func TestUniqueKeyConcurrentSubmittersCreateOneJob(t *testing.T) {
	t.Parallel()
	conn := testdb.New(t)
	openQueue(t, conn, compute.WithMigrate())
	const keys = 50
	var mu sync.Mutex
	seen := make(map[string]map[compute.JobID]bool)
	var wg sync.WaitGroup
	for s := range 8 {
		q := openQueue(t, conn)
		wg.Go(func() {
			var jobs []compute.Job
			for k := range keys {
				if s%2 == 1 {
					k = keys - 1 - k
				}
				jobs = append(jobs, compute.Job{Queue: "race", Unique: compute.Unique{Key: fmt.Sprint("key-", k)}})
			}
			for round := range 5 {
				var res []compute.Enqueued
				var err error
				if round%2 == 0 {
					res, err = q.Submit(t.Context(), jobs...)
				} else {
					res = make([]compute.Enqueued, len(jobs))
					for i, j := range jobs {
						var r []compute.Enqueued
						if r, err = q.Submit(t.Context(), j); err != nil {
							break
						}
						res[i] = r[0]
					}
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				for i, r := range res {
					k := jobs[i].Unique.Key
					if seen[k] == nil {
						seen[k] = make(map[compute.JobID]bool)
					}
					seen[k][r.ID] = true
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	q := openQueue(t, conn)
	if n := queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.jobs WHERE queue = 'race'`); n != keys {
		t.Fatalf("%d jobs for %d keys", n, keys)
	}
	for k, ids := range seen {
		if len(ids) != 1 {
			t.Errorf("key %s: submitters were told %d different ids", k, len(ids))
		}
	}
}

// TestUniqueKeyInCallerTransaction checks EnqueueTx with a key: the lock is
// held until the caller's transaction ends, a rollback frees the key, and a
// REPEATABLE READ transaction is refused with a clear error.
func TestUniqueKeyInCallerTransaction(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	ctx := t.Context()
	job := compute.Job{Queue: "tx", Unique: compute.Unique{Key: "order:7"}}

	tx, err := q.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	inTx, err := q.SubmitTx(ctx, tx, job)
	if err != nil {
		t.Fatal(err)
	}
	// A second submitter waits for the key until the first commits, then
	// sees its job.
	got := make(chan compute.Enqueued, 1)
	go func() {
		res, err := q.Submit(ctx, job)
		if err != nil {
			t.Error(err)
		}
		got <- res[0]
	}()
	select {
	case r := <-got:
		t.Fatalf("the second submitter did not wait for the key: %+v", r)
	case <-time.After(200 * time.Millisecond):
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if r := receive(t, got, liveness, "the second submit"); !r.Duplicate || r.ID != inTx[0].ID {
		t.Fatalf("after commit the second submit = %+v, want duplicate of %s", r, inTx[0].ID)
	}

	rr, err := q.Pool().BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	if err != nil {
		t.Fatal(err)
	}
	defer rr.Rollback(ctx)
	if _, err := q.SubmitTx(ctx, rr, compute.Job{Queue: "tx", Unique: compute.Unique{Key: "other"}}); !errors.Is(err, compute.ErrInvalidOption) {
		t.Fatalf("unique job in REPEATABLE READ: %v, want ErrInvalidOption", err)
	}
}

// TestUniqueRejectsBadRequests checks the validation of Unique and
// PartitionKey.
func TestUniqueRejectsBadRequests(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	long := string(make([]byte, 300))
	for _, j := range []compute.Job{
		{Queue: "x", Unique: compute.Unique{Scope: compute.UniqueWhileQueued}},
		{Queue: "x", Unique: compute.Unique{Key: "k"}, ContentID: true},
		{Queue: "x", Unique: compute.Unique{Key: "k", Scope: compute.UniqueWithinWindow}},
		{Queue: "x", Unique: compute.Unique{Key: "k", Window: time.Second}},
		{Queue: "x", Unique: compute.Unique{Key: "k", Scope: 9}},
		{Queue: "x", Unique: compute.Unique{Key: "a\x00b"}},
		{Queue: "x", PartitionKey: long},
	} {
		if _, err := q.Enqueue(t.Context(), j); !errors.Is(err, compute.ErrInvalidJob) {
			t.Errorf("Enqueue(%+v) = %v, want ErrInvalidJob", j.Unique, err)
		}
	}
	if n := countJobs(t, q); n != 0 {
		t.Fatalf("bad jobs wrote %d rows", n)
	}
}

// BenchmarkUniqueSubmitWithHistory submits one unique job per iteration
// whose key has no live job, the path of every unique Submit that creates a
// job, with the key's history empty and with 200,000 complete jobs of the
// key. The lookup reads only the key's live jobs, so both cost the same.
// Each job is marked complete between iterations, untimed, so the next
// Submit finds the key free again.
func BenchmarkUniqueSubmitWithHistory(b *testing.B) {
	for _, history := range []int{0, 200000} {
		b.Run(fmt.Sprintf("history=%d", history), func(b *testing.B) {
			q := newQueue(b)
			mustExec(b, q.Pool(), `
INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed, finished, unique_key)
SELECT uuid_send(gen_random_uuid()), 'complete', 'u', '{}', '{}', now() - interval '1 day', now(), now(), 'k'
FROM generate_series(1, $1::int)`, history)
			mustExec(b, q.Pool(), `VACUUM ANALYZE compute.jobs`)
			job := compute.Job{Queue: "u", Unique: compute.Unique{Key: "k"}}
			b.ResetTimer()
			for range b.N {
				res, err := q.Submit(b.Context(), job)
				if err != nil {
					b.Fatal(err)
				}
				if res[0].Duplicate {
					b.Fatal("the key's finished history made a new job a duplicate")
				}
				b.StopTimer()
				mustExec(b, q.Pool(), `UPDATE compute.jobs SET status = 'complete', finished = now() WHERE job_id = $1`, res[0].ID[:])
				b.StartTimer()
			}
		})
	}
}

// TestUniqueBatchTakesABoundedNumberOfLocks submits 100,000 unique jobs in
// a caller's transaction, on a server with the default
// max_locks_per_transaction: one advisory lock per key exhausted the
// cluster's shared lock table ("out of shared memory") beyond about 10,000
// keys, failing the batch and, while it was open, other sessions of every
// database. The transaction holds at most 1,024 advisory locks; a
// concurrent submitter of one of its keys waits for its commit and then
// gets its job, and submitting the batch again creates nothing.
func TestUniqueBatchTakesABoundedNumberOfLocks(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	conn := testdb.New(t)
	q := openQueue(t, conn, compute.WithMigrate())
	if n := queryOne[string](t, q.Pool(), `SHOW max_locks_per_transaction`); n != "64" {
		t.Logf("max_locks_per_transaction is %s, not the default 64", n)
	}
	const n = 100000
	jobs := make([]compute.Job, n)
	for i := range jobs {
		jobs[i] = compute.Job{Queue: "bulk", Unique: compute.Unique{Key: fmt.Sprint("key-", i)}}
	}
	tx, err := q.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	ids, err := q.EnqueueManyTx(ctx, tx, jobs)
	if err != nil {
		t.Fatalf("EnqueueManyTx of %d unique jobs: %v", n, err)
	}
	if held := queryOne[int64](t, tx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()`); held > 1024 {
		t.Errorf("the caller's transaction holds %d advisory locks, want at most 1,024", held)
	}

	other := openQueue(t, conn)
	got := make(chan []compute.Enqueued, 1)
	go func() {
		res, err := other.Submit(ctx, jobs[n/2])
		if err != nil {
			t.Error(err)
		}
		got <- res
	}()
	waitUntil(t, liveness, "the other submitter waiting for the key", func() bool {
		return queryOne[int64](t, q.Pool(), `SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
			WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()`) == 1
	})
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if res := receive(t, got, liveness, "the other submit"); len(res) != 1 || !res[0].Duplicate || res[0].ID != ids[n/2] {
		t.Fatalf("the other submit = %+v, want a duplicate of %s", res, ids[n/2])
	}

	again, err := q.Submit(ctx, jobs...)
	if err != nil {
		t.Fatalf("Submit of the same %d unique jobs: %v", n, err)
	}
	for i, r := range again {
		if !r.Duplicate || r.ID != ids[i] {
			t.Fatalf("job %d submitted again = %+v, want a duplicate of %s", i, r, ids[i])
		}
	}
	if c := countJobs(t, q); c != n {
		t.Fatalf("%d jobs, want %d", c, n)
	}
}

// TestUniqueWindowCountsFromTheEnqueueNotTheTransactionStart enqueues with
// UniqueWithinWindow inside a caller's transaction that is two seconds old.
// The job's created is when SubmitTx ran, not when the transaction began,
// so right after the commit a submit of the same key is a duplicate within
// a one-second window; and the lookup measures the window back from its own
// statement, so a job created two seconds earlier is outside a half-second
// window. Both used now(), the transaction's start.
func TestUniqueWindowCountsFromTheEnqueueNotTheTransactionStart(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	ctx := t.Context()
	halfSecond := func(key string) compute.Job {
		return compute.Job{Queue: "w", Unique: compute.Unique{Key: key, Scope: compute.UniqueWithinWindow, Window: 500 * time.Millisecond}}
	}
	second := compute.Job{Queue: "w", Unique: compute.Unique{Key: "late", Scope: compute.UniqueWithinWindow, Window: time.Second}}

	tx, err := q.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	early, err := q.Submit(ctx, halfSecond("early"))
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, tx, `SELECT pg_sleep(2)`) // a long transaction
	if res, err := q.SubmitTx(ctx, tx, halfSecond("early")); err != nil || res[0].Duplicate {
		t.Errorf("a job created 2 s before the lookup counted within a 500 ms window: %+v, %v (the first was %s)", res, err, early[0].ID)
	}
	before := queryOne[time.Time](t, tx, `SELECT clock_timestamp()`)
	late, err := q.SubmitTx(ctx, tx, second)
	if err != nil {
		t.Fatal(err)
	}
	if created := queryOne[time.Time](t, tx, `SELECT created FROM compute.jobs WHERE job_id = $1`, late[0].ID[:]); created.Before(before) {
		t.Errorf("created %s is before SubmitTx ran (%s): the transaction's start", created, before)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if again, err := q.Submit(ctx, second); err != nil || !again[0].Duplicate || again[0].ID != late[0].ID {
		t.Errorf("a submit right after the commit = %+v, %v; want a duplicate of %s within the 1 s window", again, err, late[0].ID)
	}
}
