package compute_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/internal/testdb"
)

// TestV1PlainSQLInsertIsClaimable inserts a job the way a v1 program does,
// with plain SQL and only the contract's columns, and runs it through Claim
// and Complete.
func TestV1PlainSQLInsertIsClaimable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	id := compute.JobID{0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10}
	mustExec(t, q.Pool(), `
		INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed)
		VALUES ($1, 'queued', 'legacy', '{"size": 3}', ARRAY['in put.txt', 'b,"c"'], now(), now())`, id[:])

	job := claimOne(t, q, "legacy")
	if job.ID != id || job.Config != `{"size": 3}` || !slices.Equal(job.InputFiles, []string{"in put.txt", `b,"c"`}) {
		t.Errorf("claimed %s config %q files %q; want the inserted job", job.ID, job.Config, job.InputFiles)
	}
	if job.Status != compute.StatusInProgress || job.Attempt != 1 || job.MaxAttempts != compute.DefaultMaxAttempts ||
		job.Priority != 0 || job.Worker != q.WorkerID() || job.Grabbed.IsZero() || job.LeaseExpires.IsZero() {
		t.Errorf("claimed job %+v: want in-progress, attempt 1 of %d, priority 0, worker %q, grabbed and leased",
			job, compute.DefaultMaxAttempts, q.WorkerID())
	}
	if err := q.Complete(ctx, compute.Completion{Job: job, OutputFiles: []string{"out.png"}}); err != nil {
		t.Fatalf("complete: %v", err)
	}
	// A v1 reader sees the result in the v1 columns.
	var (
		st       string
		outputs  []string
		finished bool
	)
	err := q.Pool().QueryRow(ctx, `SELECT status, output_files, finished IS NOT NULL FROM compute.jobs WHERE job_id = $1`, id[:]).
		Scan(&st, &outputs, &finished)
	if err != nil || st != "complete" || !slices.Equal(outputs, []string{"out.png"}) || !finished {
		t.Errorf("after complete: status %q outputs %q finished %v err %v", st, outputs, finished, err)
	}
}

// TestEnqueueTxRolledBackLeavesNothing checks that a job enqueued in a
// transaction is invisible to claims while the transaction is open and gone
// after a rollback.
func TestEnqueueTxRolledBackLeavesNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	tx, err := q.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	id, err := q.EnqueueTx(ctx, tx, compute.Job{Queue: "tx"})
	if err != nil {
		t.Fatalf("enqueue in tx: %v", err)
	}
	if n := queryOne[int64](t, tx, `SELECT count(*) FROM compute.jobs WHERE job_id = $1`, id[:]); n != 1 {
		t.Fatalf("the transaction itself sees %d rows of its job, want 1", n)
	}
	if jobs, err := q.Claim(ctx, "tx", 10); err != nil || len(jobs) != 0 {
		t.Errorf("claim while the enqueue is uncommitted: %d jobs, err %v; want none", len(jobs), err)
	}
	if _, err := q.Get(ctx, id); !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("get while uncommitted: %v, want ErrNotFound", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if n := countJobs(t, q); n != 0 {
		t.Errorf("%d jobs after rollback, want 0", n)
	}
	if jobs, err := q.Claim(ctx, "tx", 10); err != nil || len(jobs) != 0 {
		t.Errorf("claim after rollback: %d jobs, err %v; want none", len(jobs), err)
	}
}

// TestEnqueueTxCommittedIsClaimable checks that a job enqueued in a
// transaction that commits exists and can be claimed.
func TestEnqueueTxCommittedIsClaimable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	var id compute.JobID
	err := pgx.BeginFunc(ctx, q.Pool(), func(tx pgx.Tx) error {
		var err error
		id, err = q.EnqueueTx(ctx, tx, compute.Job{Queue: "tx", Config: "c"})
		return err
	})
	if err != nil {
		t.Fatalf("enqueue in committed tx: %v", err)
	}
	if job := claimOne(t, q, "tx"); job.ID != id || job.Config != "c" {
		t.Errorf("claimed %s %q, want %s", job.ID, job.Config, id)
	}
}

// TestConcurrentClaimersClaimEachJobOnce runs 8 claimers, each with its own
// Queue, pool and worker id, over 10,000 jobs: every job is claimed by
// exactly one of them, and all end complete.
func TestConcurrentClaimersClaimEachJobOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	connString := testdb.New(t)
	q := openQueue(t, connString, compute.WithMigrate())
	const total, claimers = 10000, 8
	ids, err := q.EnqueueMany(ctx, slices.Repeat([]compute.Job{{Queue: "race"}}, total))
	if err != nil {
		t.Fatal(err)
	}

	claimed := make([][]compute.JobID, claimers)
	errs := make([]error, claimers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for c := range claimers {
		cq := openQueue(t, connString, compute.WithWorkerID(fmt.Sprintf("claimer-%d", c)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for {
				jobs, err := cq.Claim(ctx, "race", 37)
				if err != nil || len(jobs) == 0 {
					errs[c] = err
					return
				}
				done := make([]compute.Completion, len(jobs))
				for i, j := range jobs {
					if j.Worker != cq.WorkerID() || j.Attempt != 1 {
						errs[c] = fmt.Errorf("job %s claimed by %s has worker %q attempt %d", j.ID, cq.WorkerID(), j.Worker, j.Attempt)
						return
					}
					claimed[c] = append(claimed[c], j.ID)
					done[i] = compute.Completion{Job: j}
				}
				if err := cq.Complete(ctx, done...); err != nil {
					errs[c] = err
					return
				}
			}
		}()
	}
	close(start)
	wg.Wait()
	for c, err := range errs {
		if err != nil {
			t.Errorf("claimer %d: %v", c, err)
		}
	}

	seen := make(map[compute.JobID]int, total)
	for c, list := range claimed {
		t.Logf("claimer %d claimed %d jobs", c, len(list))
		for _, id := range list {
			if prev, dup := seen[id]; dup {
				t.Errorf("job %s claimed by claimer %d and claimer %d", id, prev, c)
			}
			seen[id] = c
		}
	}
	for _, id := range ids {
		if _, ok := seen[id]; !ok {
			t.Errorf("job %s was never claimed", id)
		}
	}
	if len(seen) != total {
		t.Errorf("%d distinct jobs claimed, want %d", len(seen), total)
	}
	if n := queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.jobs WHERE status = 'complete' AND attempt = 1`); n != total {
		t.Errorf("%d jobs complete after one attempt, want %d", n, total)
	}
}

// wantLeaseLost checks that err reports exactly id as lost.
func wantLeaseLost(t *testing.T, what string, err error, id compute.JobID) {
	t.Helper()
	var lost *compute.LeaseLostError
	if !errors.Is(err, compute.ErrLeaseLost) || !errors.As(err, &lost) {
		t.Errorf("%s: got %v, want a LeaseLostError", what, err)
		return
	}
	if !slices.Equal(lost.IDs, []compute.JobID{id}) {
		t.Errorf("%s: lost ids %v, want [%s]", what, lost.IDs, id)
	}
}

// TestStaleHolderIsFenced lets a holder's lease run out, has the job
// requeued and claimed again, and checks that the old holder's Heartbeat,
// Complete and Fail change nothing and report the lease lost, while the
// new holder completes. It covers a second worker and the same worker
// claiming again (only the attempt tells the claims apart).
func TestStaleHolderIsFenced(t *testing.T) {
	t.Parallel()
	connString := testdb.New(t)
	first := openQueue(t, connString, compute.WithMigrate(), compute.WithWorkerID("first"))
	second := openQueue(t, connString, compute.WithWorkerID("second"))

	for _, tc := range []struct {
		name  string
		again *compute.Queue // who claims after the requeue
	}{
		{"other worker", second},
		{"same worker", first},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			queue := strings.ReplaceAll(tc.name, " ", "-")
			id := enqueue(t, first, compute.Job{Queue: queue})
			stale := claimOne(t, first, queue)
			backdateLease(t, first, id)
			if n, err := first.RequeueStale(ctx); err != nil || n != 1 {
				t.Fatalf("requeue stale: %d, %v; want 1", n, err)
			}
			fresh := claimOne(t, tc.again, queue)
			if fresh.ID != id || fresh.Attempt != stale.Attempt+1 {
				t.Fatalf("second claim got %s attempt %d, want %s attempt %d", fresh.ID, fresh.Attempt, id, stale.Attempt+1)
			}
			before := takeSnapshot(t, first, id)

			wantLeaseLost(t, "stale heartbeat", first.Heartbeat(ctx, stale), id)
			wantLeaseLost(t, "stale complete", first.Complete(ctx, compute.Completion{Job: stale, OutputFiles: []string{"stale.out"}}), id)
			wantLeaseLost(t, "stale fail", first.Fail(ctx, compute.Failure{Job: stale, Err: compute.Permanent(errors.New("stale"))}), id)
			if after := takeSnapshot(t, first, id); !after.equal(before) {
				t.Errorf("stale writes changed the job:\nbefore %+v\nafter  %+v", before, after)
			}

			if err := tc.again.Heartbeat(ctx, fresh); err != nil {
				t.Errorf("new holder's heartbeat: %v", err)
			}
			if err := tc.again.Complete(ctx, compute.Completion{Job: fresh, OutputFiles: []string{"fresh.out"}}); err != nil {
				t.Fatalf("new holder's complete: %v", err)
			}
			after := takeSnapshot(t, first, id)
			if after.Status != "complete" || !slices.Equal(after.Outputs, []string{"fresh.out"}) {
				t.Errorf("after the new holder's complete: %+v, want complete with fresh.out", after)
			}
		})
	}
}

// TestBatchWithOneStaleJobWritesTheOthers checks that a Complete of several
// jobs writes the held ones and reports only the lost one.
func TestBatchWithOneStaleJobWritesTheOthers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	if _, err := q.EnqueueMany(ctx, slices.Repeat([]compute.Job{{Queue: "batch"}}, 3)); err != nil {
		t.Fatal(err)
	}
	jobs, err := q.Claim(ctx, "batch", 3)
	if err != nil || len(jobs) != 3 {
		t.Fatalf("claim: %d jobs, %v", len(jobs), err)
	}
	if err := q.Cancel(ctx, jobs[1].ID, "gone"); err != nil {
		t.Fatal(err)
	}
	err = q.Complete(ctx, compute.Completion{Job: jobs[0]}, compute.Completion{Job: jobs[1]}, compute.Completion{Job: jobs[2]})
	wantLeaseLost(t, "complete of a batch with a cancelled job", err, jobs[1].ID)
	for i, want := range []compute.Status{compute.StatusComplete, compute.StatusFailed, compute.StatusComplete} {
		if got := status(t, q, jobs[i].ID); got != want {
			t.Errorf("job %d: %s, want %s", i, got, want)
		}
	}
}

// TestCompleteAfterCancelIsFenced checks that cancelling a running job
// takes it from its holder: the holder's Complete and Heartbeat report the
// lease lost and the job stays failed with the reason.
func TestCompleteAfterCancelIsFenced(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	id := enqueue(t, q, compute.Job{Queue: "cancel"})
	job := claimOne(t, q, "cancel")
	if err := q.Cancel(ctx, id, "user pressed stop"); err != nil {
		t.Fatalf("cancel running job: %v", err)
	}
	before := takeSnapshot(t, q, id)
	wantLeaseLost(t, "complete after cancel", q.Complete(ctx, compute.Completion{Job: job, OutputFiles: []string{"x"}}), id)
	wantLeaseLost(t, "heartbeat after cancel", q.Heartbeat(ctx, job), id)
	after := takeSnapshot(t, q, id)
	if !after.equal(before) || after.Status != "failed" || after.Outputs != nil || !strings.Contains(after.Errors, "user pressed stop") {
		t.Errorf("after a fenced complete: %+v; want failed with the cancel reason and no outputs", after)
	}
}

// TestRequeueStale checks the four cases of a lease: expired with attempts
// left (queued again, expiry recorded), expired with attempts spent
// (failed), not expired (untouched), and a v1 in-progress row without a
// lease (untouched: its v1 program owns it).
func TestRequeueStale(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	retry := enqueue(t, q, compute.Job{Queue: "stale", Priority: 1})
	spent := enqueue(t, q, compute.Job{Queue: "stale", Priority: 2, MaxAttempts: 1})
	live := enqueue(t, q, compute.Job{Queue: "stale", Priority: 3})
	for _, want := range []compute.JobID{retry, spent, live} {
		if got := claimOne(t, q, "stale"); got.ID != want {
			t.Fatalf("claimed %s, want %s", got.ID, want)
		}
	}
	v1 := compute.JobID{0xa1, 15: 0xa1}
	mustExec(t, q.Pool(), `
		INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed, grabbed)
		VALUES ($1, 'in-progress', 'stale', NULL, '{}', now() - interval '1 day', now() - interval '1 day', now() - interval '1 day')`, v1[:])
	backdateLease(t, q, retry)
	backdateLease(t, q, spent)
	liveBefore := takeSnapshot(t, q, live)
	v1Before := takeSnapshot(t, q, v1)

	if n, err := q.RequeueStale(ctx); err != nil || n != 2 {
		t.Fatalf("requeue stale: %d, %v; want 2", n, err)
	}

	var (
		st, msg        string
		attempt, nErrs int
		leaseNull, due bool
	)
	err := q.Pool().QueryRow(ctx, `
		SELECT status, attempt, lease_expires IS NULL, run_at <= now(), jsonb_array_length(errors), errors->0->>'error'
		FROM compute.jobs WHERE job_id = $1`, retry[:]).Scan(&st, &attempt, &leaseNull, &due, &nErrs, &msg)
	if err != nil || st != "queued" || attempt != 1 || !leaseNull || !due || nErrs != 1 || !strings.Contains(msg, "lease expired") {
		t.Errorf("expired with attempts left: status %s attempt %d lease cleared %v due %v errors %d %q (%v); want queued, due, expiry recorded",
			st, attempt, leaseNull, due, nErrs, msg, err)
	}
	if again := claimOne(t, q, "stale"); again.ID != retry || again.Attempt != 2 {
		t.Errorf("requeued job claimed as %s attempt %d, want %s attempt 2", again.ID, again.Attempt, retry)
	}

	var finished bool
	err = q.Pool().QueryRow(ctx, `SELECT status, finished IS NOT NULL, jsonb_array_length(errors) FROM compute.jobs WHERE job_id = $1`, spent[:]).
		Scan(&st, &finished, &nErrs)
	if err != nil || st != "failed" || !finished || nErrs != 1 {
		t.Errorf("expired with attempts spent: status %s finished %v errors %d (%v); want failed with the expiry recorded", st, finished, nErrs, err)
	}
	if got := takeSnapshot(t, q, live); !got.equal(liveBefore) {
		t.Errorf("job with a live lease changed:\nbefore %+v\nafter  %+v", liveBefore, got)
	}
	if got := takeSnapshot(t, q, v1); !got.equal(v1Before) {
		t.Errorf("v1 in-progress row without a lease changed:\nbefore %+v\nafter  %+v", v1Before, got)
	}
	if n, err := q.RequeueStale(ctx); err != nil || n != 0 {
		t.Errorf("second requeue: %d, %v; want 0", n, err)
	}
}

// TestContentIDConcurrentSubmittersCreateOneRow has 8 submitters, each with
// its own pool, enqueue the same content-id job at once, alone and inside
// batches (twice in one batch, even): one row, one id for all.
func TestContentIDConcurrentSubmittersCreateOneRow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	connString := testdb.New(t)
	q := openQueue(t, connString, compute.WithMigrate())
	same := compute.Job{Queue: "dedup", Config: `{"render": "page 1"}`, InputFiles: []string{"a.pdf", "b.pdf"}, ContentID: true}

	const submitters = 8
	got := make([][]compute.JobID, submitters)
	errs := make([]error, submitters)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for s := range submitters {
		sq := openQueue(t, connString)
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			id, err := sq.Enqueue(ctx, same)
			if err != nil {
				errs[s] = err
				return
			}
			ids, err := sq.EnqueueMany(ctx, []compute.Job{{Queue: "dedup"}, same, {Queue: "dedup"}, same})
			if err != nil {
				errs[s] = err
				return
			}
			got[s] = []compute.JobID{id, ids[1], ids[3]}
		}()
	}
	close(start)
	wg.Wait()

	for s, err := range errs {
		if err != nil {
			t.Errorf("submitter %d: %v", s, err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	want := got[0][0]
	for s := range submitters {
		for _, id := range got[s] {
			if id != want {
				t.Errorf("submitter %d got id %s, want %s for all", s, id, want)
			}
		}
	}
	if n := queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.jobs WHERE job_id = $1`, want[:]); n != 1 {
		t.Errorf("%d rows for the content-id job, want 1", n)
	}
	if n := countJobs(t, q); n != 1+2*submitters {
		t.Errorf("%d jobs, want %d (one shared plus two plain per submitter)", n, 1+2*submitters)
	}

	// Submitting again after the job finished creates nothing either.
	job := claimOne(t, q, "dedup")
	for job.ID != want {
		if err := q.Complete(ctx, compute.Completion{Job: job}); err != nil {
			t.Fatal(err)
		}
		job = claimOne(t, q, "dedup")
	}
	if err := q.Complete(ctx, compute.Completion{Job: job}); err != nil {
		t.Fatal(err)
	}
	if id := enqueue(t, q, same); id != want || status(t, q, want) != compute.StatusComplete {
		t.Errorf("resubmitting a complete content-id job gave %s (status %s), want %s still complete", id, status(t, q, want), want)
	}

	// Any difference in what the job is gives another id.
	variants := []compute.Job{
		{Queue: "dedup", Config: `{"render": "page 2"}`, InputFiles: same.InputFiles, ContentID: true},
		{Queue: "dedup2", Config: same.Config, InputFiles: same.InputFiles, ContentID: true},
		{Queue: "dedup", Config: same.Config, InputFiles: []string{"a.pdf"}, ContentID: true},
		{Queue: "dedup", Config: same.Config, ContentID: true},
	}
	seen := map[compute.JobID]bool{want: true}
	for _, v := range variants {
		id := enqueue(t, q, v)
		if seen[id] {
			t.Errorf("job %+v got id %s, which another content shares", v, id)
		}
		seen[id] = true
	}
}

// failedJob claims one job of queue and fails it with f (Job filled in),
// returning the claimed job.
func failedJob(t *testing.T, q *compute.Queue, queue string, f compute.Failure) *compute.Job {
	t.Helper()
	job := claimOne(t, q, queue)
	f.Job = job
	if err := q.Fail(context.Background(), f); err != nil {
		t.Fatalf("fail %s: %v", job.ID, err)
	}
	return job
}

// TestFailRequeuesAfterRetryIn checks that a failed attempt with attempts
// left goes back to queued, due RetryIn after the database's now(), with
// the error recorded and the attempt kept.
func TestFailRequeuesAfterRetryIn(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	id := enqueue(t, q, compute.Job{Queue: "fail"})
	failedJob(t, q, "fail", compute.Failure{Err: errors.New("disk full"), RetryIn: time.Hour})

	var (
		st, msg        string
		attempt, nErrs int
		untilDue       float64 // seconds from the database's now() to run_at
		afterFail      float64 // seconds from the recorded failure to run_at
	)
	err := q.Pool().QueryRow(ctx, `
		SELECT status, attempt, jsonb_array_length(errors), errors->-1->>'error',
		       extract(epoch FROM run_at - now()), extract(epoch FROM run_at - (errors->-1->>'at')::timestamptz)
		FROM compute.jobs WHERE job_id = $1`, id[:]).Scan(&st, &attempt, &nErrs, &msg, &untilDue, &afterFail)
	if err != nil {
		t.Fatal(err)
	}
	if st != "queued" || attempt != 1 || nErrs != 1 || msg != "disk full" {
		t.Errorf("after fail: status %s attempt %d errors %d %q; want queued, attempt 1, the error recorded", st, attempt, nErrs, msg)
	}
	if untilDue <= 3600-60 || untilDue > 3600 {
		t.Errorf("run_at is %.3fs after now(), want about 3600s", untilDue)
	}
	if afterFail != 3600 {
		t.Errorf("run_at is %.6fs after the failure was recorded, want exactly 3600s", afterFail)
	}
	if jobs, err := q.Claim(ctx, "fail", 10); err != nil || len(jobs) != 0 {
		t.Errorf("claim before the retry is due: %d jobs, %v; want none", len(jobs), err)
	}
}

// TestFailWithoutRetryInUsesBackoff checks that a zero RetryIn schedules
// the retry Backoff(attempt) after the failure.
func TestFailWithoutRetryInUsesBackoff(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	id := enqueue(t, q, compute.Job{Queue: "fail"})
	failedJob(t, q, "fail", compute.Failure{Err: errors.New("flaky")})
	wait := queryOne[float64](t, q.Pool(), `
		SELECT extract(epoch FROM run_at - (errors->-1->>'at')::timestamptz) FROM compute.jobs WHERE job_id = $1`, id[:])
	if wait < 1 || wait > 1.25 {
		t.Errorf("retry %.6fs after the first failure, want Backoff(1), 1s to 1.25s", wait)
	}
}

// TestFailOutcomes checks Permanent, spent attempts and Snooze.
func TestFailOutcomes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)

	t.Run("permanent fails now", func(t *testing.T) {
		id := enqueue(t, q, compute.Job{Queue: "permanent"})
		failedJob(t, q, "permanent", compute.Failure{Err: compute.Permanent(errors.New("bad input")), RetryIn: time.Second})
		s := takeSnapshot(t, q, id)
		if s.Status != "failed" || s.Attempt != 1 || !strings.Contains(s.Errors, "bad input") {
			t.Errorf("after a permanent failure: %+v, want failed at attempt 1 with the error", s)
		}
	})

	t.Run("last attempt fails", func(t *testing.T) {
		id := enqueue(t, q, compute.Job{Queue: "last", MaxAttempts: 2})
		failedJob(t, q, "last", compute.Failure{Err: errors.New("one"), RetryIn: time.Microsecond})
		mustExec(t, q.Pool(), `UPDATE compute.jobs SET run_at = now() - interval '1 second' WHERE job_id = $1`, id[:])
		failedJob(t, q, "last", compute.Failure{Err: errors.New("two")})
		s := takeSnapshot(t, q, id)
		if s.Status != "failed" || s.Attempt != 2 || !strings.Contains(s.Errors, "one") || !strings.Contains(s.Errors, "two") {
			t.Errorf("after the last attempt failed: %+v, want failed at attempt 2 with both errors", s)
		}
	})

	t.Run("snooze spends no attempt", func(t *testing.T) {
		id := enqueue(t, q, compute.Job{Queue: "snooze", MaxAttempts: 3})
		failedJob(t, q, "snooze", compute.Failure{Err: compute.Snooze(time.Hour)})
		var (
			st               string
			attempt, snoozes int
			max, nErrs       int
			untilDue         float64
		)
		err := q.Pool().QueryRow(ctx, `
			SELECT status, attempt, snoozes, max_attempts, jsonb_array_length(errors), extract(epoch FROM run_at - now())
			FROM compute.jobs WHERE job_id = $1`, id[:]).Scan(&st, &attempt, &snoozes, &max, &nErrs, &untilDue)
		if err != nil {
			t.Fatal(err)
		}
		if st != "queued" || attempt != 1 || snoozes != 1 || max != 3 || nErrs != 0 {
			t.Errorf("after snooze: status %s attempt %d snoozes %d max_attempts %d errors %d; want queued, attempt 1, 1 snooze, max 3, no error",
				st, attempt, snoozes, max, nErrs)
		}
		if untilDue <= 3600-60 || untilDue > 3600 {
			t.Errorf("snoozed job due in %.3fs, want about 3600s", untilDue)
		}
	})
}

// TestRetryAndCancelFollowStatus checks which statuses Retry and Cancel
// accept and what they do.
func TestRetryAndCancelFollowStatus(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)

	retried := enqueue(t, q, compute.Job{Queue: "manage", MaxAttempts: 1})
	failedJob(t, q, "manage", compute.Failure{Err: errors.New("boom")})
	if got := status(t, q, retried); got != compute.StatusFailed {
		t.Fatalf("job with its one attempt failed is %s, want failed", got)
	}
	if err := q.Retry(ctx, retried); err != nil {
		t.Fatalf("retry of a failed job: %v", err)
	}
	again := claimOne(t, q, "manage")
	if again.ID != retried || again.Attempt != 2 || again.MaxAttempts < 2 {
		t.Errorf("retried job claimed as %s attempt %d of %d; want %s, attempt 2 with room for it", again.ID, again.Attempt, again.MaxAttempts, retried)
	}
	if err := q.Complete(ctx, compute.Completion{Job: again}); err != nil {
		t.Fatal(err)
	}

	queued := enqueue(t, q, compute.Job{Queue: "manage"})
	if err := q.Retry(ctx, queued); !errors.Is(err, compute.ErrWrongStatus) {
		t.Errorf("retry of a queued job: %v, want ErrWrongStatus", err)
	}
	if err := q.Cancel(ctx, queued, "not needed"); err != nil {
		t.Fatalf("cancel of a queued job: %v", err)
	}
	job, err := q.Get(ctx, queued)
	if err != nil {
		t.Fatal(err)
	}
	if job.Status != compute.StatusFailed || job.Finished.IsZero() || len(job.Errors) != 1 || !strings.Contains(job.Errors[0].Error, "not needed") {
		t.Errorf("cancelled job: status %s finished %v errors %+v; want failed with the reason", job.Status, job.Finished, job.Errors)
	}
	if jobs, err := q.Claim(ctx, "manage", 10); err != nil || len(jobs) != 0 {
		t.Errorf("claim after cancel: %d jobs, %v; want none", len(jobs), err)
	}

	if err := q.Cancel(ctx, retried, "too late"); !errors.Is(err, compute.ErrWrongStatus) {
		t.Errorf("cancel of a complete job: %v, want ErrWrongStatus", err)
	}
	if err := q.Retry(ctx, retried); !errors.Is(err, compute.ErrWrongStatus) {
		t.Errorf("retry of a complete job: %v, want ErrWrongStatus", err)
	}
	if got := status(t, q, retried); got != compute.StatusComplete {
		t.Errorf("complete job became %s after refused cancel and retry", got)
	}
}

// TestClaimOrdersByPriorityThenRunAt checks that Claim hands out smaller
// priorities first and, within one priority, earlier run times first.
func TestClaimOrdersByPriorityThenRunAt(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	priorities := []int{5, -3, 0, 32767, -32768, 100, 0, 7}
	jobs := make([]compute.Job, len(priorities))
	for i, p := range priorities {
		jobs[i] = compute.Job{Queue: "prio", Priority: p}
	}
	if _, err := q.EnqueueMany(ctx, jobs); err != nil {
		t.Fatal(err)
	}
	var got []int
	for range priorities {
		got = append(got, claimOne(t, q, "prio").Priority)
	}
	want := slices.Sorted(slices.Values(priorities))
	if !slices.Equal(got, want) {
		t.Errorf("claimed priorities %v, want %v", got, want)
	}

	now := time.Now()
	ids, err := q.EnqueueMany(ctx, []compute.Job{
		{Queue: "runat", RunAt: now.Add(-1 * time.Hour)},
		{Queue: "runat", RunAt: now.Add(-3 * time.Hour)},
		{Queue: "runat", RunAt: now.Add(-2 * time.Hour)},
		{Queue: "runat", RunAt: now.Add(-4 * time.Hour), Priority: 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := q.Claim(ctx, "runat", 3)
	if err != nil || len(batch) != 3 {
		t.Fatalf("claim 3: %d jobs, %v", len(batch), err)
	}
	for i, want := range []compute.JobID{ids[1], ids[2], ids[0]} {
		if batch[i].ID != want {
			t.Errorf("claim position %d: %s, want %s (earliest run_at first within a priority)", i, batch[i].ID, want)
		}
	}
	if last := claimOne(t, q, "runat"); last.ID != ids[3] {
		t.Errorf("last claim %s, want the priority 1 job %s", last.ID, ids[3])
	}
}

// TestScheduledJobNotClaimableUntilDue checks that jobs with a Delay or a
// future RunAt wait, and become claimable once their run_at has come (made
// to come by moving run_at back with SQL).
func TestScheduledJobNotClaimableUntilDue(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	delayed := enqueue(t, q, compute.Job{Queue: "later", Delay: time.Hour})
	at := enqueue(t, q, compute.Job{Queue: "later", RunAt: time.Now().Add(time.Hour)})

	// Delay counts from the database's now() at insert.
	if d := queryOne[float64](t, q.Pool(), `SELECT extract(epoch FROM run_at - created) FROM compute.jobs WHERE job_id = $1`, delayed[:]); d != 3600 {
		t.Errorf("delayed job's run_at is %.6fs after created, want 3600s", d)
	}
	if jobs, err := q.Claim(ctx, "later", 10); err != nil || len(jobs) != 0 {
		t.Fatalf("claim before due: %d jobs, %v; want none", len(jobs), err)
	}
	for _, id := range []compute.JobID{delayed, at} {
		mustExec(t, q.Pool(), `UPDATE compute.jobs SET run_at = now() - interval '1 millisecond' WHERE job_id = $1`, id[:])
		if got := claimOne(t, q, "later"); got.ID != id {
			t.Errorf("claimed %s once due, want %s", got.ID, id)
		}
		if jobs, err := q.Claim(ctx, "later", 10); err != nil || len(jobs) != 0 {
			t.Errorf("claim with nothing else due: %d jobs, %v; want none", len(jobs), err)
		}
	}
}

// lastAccessed reads a job's last_accessed from the table.
func lastAccessed(t *testing.T, q *compute.Queue, id compute.JobID) time.Time {
	t.Helper()
	return queryOne[time.Time](t, q.Pool(), `SELECT last_accessed FROM compute.jobs WHERE job_id = $1`, id[:])
}

// TestGetTouchesLastAccessed checks that Get records the read of a finished
// job, that it writes nothing to a queued or running job (a write would
// lock the row, and claims skip locked rows), and that List never writes.
func TestGetTouchesLastAccessed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	id := enqueue(t, q, compute.Job{Queue: "read"})
	// version is the row's creating transaction: any write changes it.
	version := func() string {
		return queryOne[string](t, q.Pool(), `SELECT xmin::text FROM compute.jobs WHERE job_id = $1`, id[:])
	}
	for _, want := range []compute.Status{compute.StatusQueued, compute.StatusInProgress} {
		if want == compute.StatusInProgress {
			claimOne(t, q, "read")
		}
		before, old := version(), lastAccessed(t, q, id)
		job, err := q.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if job.Status != want || job.ID != id {
			t.Fatalf("Get returned job %s in status %s; want %s in %s", job.ID, job.Status, id, want)
		}
		if after := version(); after != before || !lastAccessed(t, q, id).Equal(old) {
			t.Errorf("Get wrote the row of a job in status %s (xmin %s, then %s)", want, before, after)
		}
	}

	job, err := q.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Complete(ctx, compute.Completion{Job: job}); err != nil {
		t.Fatal(err)
	}
	mustExec(t, q.Pool(), `UPDATE compute.jobs SET last_accessed = now() - interval '1 day' WHERE job_id = $1`, id[:])
	old := lastAccessed(t, q, id)
	job, err = q.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	touched := lastAccessed(t, q, id)
	if job.Status != compute.StatusComplete || touched.Sub(old) < 23*time.Hour || !job.LastAccessed.Equal(touched) {
		t.Errorf("complete job: last_accessed %v before Get, %v after (job says %v, status %s); want it moved to now",
			old, touched, job.LastAccessed, job.Status)
	}
	if _, err := q.List(ctx, compute.ListOptions{Queue: "read"}); err != nil {
		t.Fatal(err)
	}
	if after := lastAccessed(t, q, id); !after.Equal(touched) {
		t.Errorf("List changed last_accessed from %v to %v", touched, after)
	}
	if _, err := q.Get(ctx, compute.JobID{1}); !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("Get of an unknown id: %v; want ErrNotFound", err)
	}
}

// TestExpireMarksUnreadFinishedJobs checks that Expire marks complete and
// failed jobs unread for longer than the retention as expired, and leaves
// fresh, recently read and live jobs alone.
func TestExpireMarksUnreadFinishedJobs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	ids, err := q.EnqueueMany(ctx, []compute.Job{
		{Queue: "exp", Priority: 0}, // old complete
		{Queue: "exp", Priority: 1}, // old failed
		{Queue: "exp", Priority: 2}, // fresh complete
		{Queue: "exp", Priority: 3}, // old complete, read again
		{Queue: "exp", Priority: 4}, // old in-progress
		{Queue: "exp2"},             // old queued
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		job := claimOne(t, q, "exp")
		switch i {
		case 1:
			err = q.Fail(ctx, compute.Failure{Job: job, Err: compute.Permanent(nil)})
		case 4:
			err = nil
		default:
			err = q.Complete(ctx, compute.Completion{Job: job})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, i := range []int{0, 1, 3, 4, 5} {
		mustExec(t, q.Pool(), `UPDATE compute.jobs SET last_accessed = now() - interval '2 hours' WHERE job_id = $1`, ids[i][:])
	}
	if _, err := q.Get(ctx, ids[3]); err != nil {
		t.Fatal(err)
	}

	if n, err := q.Expire(ctx, time.Hour); err != nil || n != 2 {
		t.Errorf("expire: %d, %v; want 2", n, err)
	}
	want := []compute.Status{compute.StatusExpired, compute.StatusExpired, compute.StatusComplete,
		compute.StatusComplete, compute.StatusInProgress, compute.StatusQueued}
	for i, w := range want {
		if got := status(t, q, ids[i]); got != w {
			t.Errorf("job %d: %s, want %s", i, got, w)
		}
	}
	if n, err := q.Expire(ctx, time.Hour); err != nil || n != 0 {
		t.Errorf("second expire: %d, %v; want 0", n, err)
	}
}

// TestListPagesThroughEachJobOnce walks a queue with keyset pagination,
// with and without a status filter, and checks that every job appears
// exactly once, in id order, and that Counts agrees.
func TestListPagesThroughEachJobOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	idsA, err := q.EnqueueMany(ctx, slices.Repeat([]compute.Job{{Queue: "a"}}, 250))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.EnqueueMany(ctx, slices.Repeat([]compute.Job{{Queue: "b"}}, 30)); err != nil {
		t.Fatal(err)
	}
	running, err := q.Claim(ctx, "a", 40)
	if err != nil || len(running) != 40 {
		t.Fatalf("claim 40: %d, %v", len(running), err)
	}
	isRunning := make(map[compute.JobID]bool)
	for _, j := range running {
		isRunning[j.ID] = true
	}

	walk := func(opts compute.ListOptions) []compute.JobID {
		var ids []compute.JobID
		for pages := 0; ; pages++ {
			if pages > 1000 {
				t.Fatalf("list %+v does not end", opts)
			}
			page, err := q.List(ctx, opts)
			if err != nil {
				t.Fatalf("list %+v: %v", opts, err)
			}
			if len(page) > opts.Limit {
				t.Fatalf("page of %d jobs, limit %d", len(page), opts.Limit)
			}
			if len(page) == 0 {
				return ids
			}
			for _, j := range page {
				if j.Queue != opts.Queue || opts.Status != "" && j.Status != opts.Status {
					t.Errorf("list %+v returned a job of %s in %s", opts, j.Queue, j.Status)
				}
				ids = append(ids, j.ID)
			}
			opts.After = page[len(page)-1].ID
		}
	}
	byID := func(a, b compute.JobID) int { return strings.Compare(string(a[:]), string(b[:])) }

	var wantQueued []compute.JobID
	for _, id := range idsA {
		if !isRunning[id] {
			wantQueued = append(wantQueued, id)
		}
	}
	slices.SortFunc(wantQueued, byID)
	if got := walk(compute.ListOptions{Queue: "a", Status: compute.StatusQueued, Limit: 7}); !slices.Equal(got, wantQueued) {
		t.Errorf("walking queued jobs of a gave %d ids, want the %d queued ones once each in id order", len(got), len(wantQueued))
	}
	wantAll := slices.SortedFunc(slices.Values(idsA), byID)
	if got := walk(compute.ListOptions{Queue: "a", Limit: 13}); !slices.Equal(got, wantAll) {
		t.Errorf("walking all jobs of a gave %d ids, want the %d once each in id order", len(got), len(wantAll))
	}
	if got := walk(compute.ListOptions{Queue: "a", Status: compute.StatusInProgress, Limit: 100}); len(got) != 40 {
		t.Errorf("walking in-progress jobs of a gave %d ids, want 40", len(got))
	}

	counts, err := q.Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]map[compute.Status]int64{
		"a": {compute.StatusQueued: 210, compute.StatusInProgress: 40},
		"b": {compute.StatusQueued: 30},
	}
	if fmt.Sprint(counts) != fmt.Sprint(want) {
		t.Errorf("counts %v, want %v", counts, want)
	}
}

// TestMetaRoundTrip checks GetMeta, SetMeta (an upsert) and DeleteMeta, with
// lengths counted in characters as VARCHAR counts them.
func TestMetaRoundTrip(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	if _, err := q.GetMeta(ctx, "colour"); !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("get of a missing key: %v, want ErrNotFound", err)
	}
	if err := q.SetMeta(ctx, "colour", "red"); err != nil {
		t.Fatal(err)
	}
	if v, err := q.GetMeta(ctx, "colour"); err != nil || v != "red" {
		t.Errorf("get: %q, %v; want red", v, err)
	}
	if err := q.SetMeta(ctx, "colour", "blue"); err != nil {
		t.Fatalf("set of an existing key: %v", err)
	}
	if v, err := q.GetMeta(ctx, "colour"); err != nil || v != "blue" {
		t.Errorf("get after upsert: %q, %v; want blue", v, err)
	}
	if n := queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.meta WHERE key = 'colour'`); n != 1 {
		t.Errorf("%d rows for the key, want 1", n)
	}

	// Three characters (nine bytes) and 256 characters (512 bytes) fit.
	key, value := "日本語", strings.Repeat("é", 256)
	if err := q.SetMeta(ctx, key, value); err != nil {
		t.Fatalf("set of a multibyte key and value at the limits: %v", err)
	}
	if v, err := q.GetMeta(ctx, key); err != nil || v != value {
		t.Errorf("get of the multibyte key: %d bytes, %v", len(v), err)
	}

	if err := q.DeleteMeta(ctx, "colour"); err != nil {
		t.Fatal(err)
	}
	if _, err := q.GetMeta(ctx, "colour"); !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("get after delete: %v, want ErrNotFound", err)
	}
	if err := q.DeleteMeta(ctx, "colour"); err != nil {
		t.Errorf("delete of a missing key: %v, want nil", err)
	}
	if v, err := q.GetMeta(ctx, key); err != nil || v != value {
		t.Errorf("deleting one key touched another: %v", err)
	}
}

// trickyNames are file names that need quoting or escaping in an array
// literal or in SQL.
var trickyNames = []string{
	`quote"d.txt`, `back\slash`, `ends with \`, `\"`, "com,ma", "{braces}", "}", "{", "sp ace",
	" leading", "trailing ", "NULL", "null", "'single'", "tab\there", "new\nline",
	"ünïcødé 日本語 🎉", "a;b", "$1", "--", `""`,
}

// TestEnqueueManyTenThousandKeepsFiles submits 10,000 jobs in one call and
// checks that every one landed with its config and input files intact.
func TestEnqueueManyTenThousandKeepsFiles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	const total = 10000
	jobs := make([]compute.Job, total)
	for i := range jobs {
		files := append([]string{fmt.Sprintf("input-%d.dat", i)}, trickyNames[i%len(trickyNames):]...)
		jobs[i] = compute.Job{Queue: "bulk", Config: fmt.Sprintf(`{"n": %d, "s": "\"'\\"}`, i), InputFiles: files}
	}
	ids, err := q.EnqueueMany(ctx, jobs)
	if err != nil {
		t.Fatal(err)
	}
	if n := countJobs(t, q); n != total {
		t.Fatalf("%d jobs after enqueueing %d", n, total)
	}
	want := make(map[compute.JobID]*compute.Job, total)
	for i, id := range ids {
		want[id] = &jobs[i]
	}
	if len(want) != total {
		t.Fatalf("%d distinct ids for %d jobs", len(want), total)
	}
	rows, err := q.Pool().Query(ctx, `SELECT job_id, config, input_files FROM compute.jobs`)
	if err != nil {
		t.Fatal(err)
	}
	var (
		id     []byte
		config string
		files  []string
		bad    int
	)
	_, err = pgx.ForEachRow(rows, []any{&id, &config, &files}, func() error {
		w := want[compute.JobID(id)]
		if w == nil || w.Config != config || !slices.Equal(w.InputFiles, files) {
			if bad++; bad <= 5 {
				t.Errorf("job %x: config %q files %q; want %+v", id, config, files, w)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if bad > 0 {
		t.Errorf("%d of %d jobs differ from what was enqueued", bad, total)
	}
}

// TestListIncludesAllZeroJobID lists a queue holding a job whose id is
// sixteen zero bytes, which a v1 program may insert: the first page (After
// is the zero id, "start at the beginning") must include it.
func TestListIncludesAllZeroJobID(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	var zero compute.JobID
	mustExec(t, q.Pool(), `
		INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed)
		VALUES ($1, 'queued', 'zero', NULL, '{}', now(), now())`, zero[:])
	other := enqueue(t, q, compute.Job{Queue: "zero"})
	page, err := q.List(ctx, compute.ListOptions{Queue: "zero"})
	if err != nil {
		t.Fatal(err)
	}
	var got []compute.JobID
	for _, j := range page {
		got = append(got, j.ID)
	}
	if !slices.Equal(got, []compute.JobID{zero, other}) {
		t.Errorf("list gave %v, want [%s %s]", got, zero, other)
	}
}

// TestOneJobAndBatchInsertsStoreTheSame enqueues jobs with every field set
// alone (the one-row insert) and in a batch (the unnest insert) and
// requires the same rows, apart from ids and times. A content-id job goes
// through the returning form of each, and a second submit of it is a
// duplicate either way. Last, a fresh connection's prepared statements show
// that one job took the one-row statement and two the array one.
func TestOneJobAndBatchInsertsStoreTheSame(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	runAt := time.Now().Add(time.Hour).Truncate(time.Microsecond)
	files := []string{`a b.png`, `c,d`, `{e}`, `"f"`, `g\h`, `ünï`}
	jobs := []compute.Job{
		{Queue: "same", Config: `{"x": [1, "two"]}`, InputFiles: files, Priority: 7, RunAt: runAt,
			MaxAttempts: 3, Unique: compute.Unique{Key: "k1"}, PartitionKey: "tenant"},
		{Queue: "same", Config: "plain text", Delay: 90 * time.Minute},
		{Queue: "same", Config: "by content", ContentID: true, InputFiles: files},
	}
	// row is what a job stored: every column but id and times, and the
	// run time relative to the insert.
	row := func(id compute.JobID) string {
		return queryOne[string](t, q.Pool(), `
SELECT concat_ws(' | ', status, queue, config, input_files::text, priority, max_attempts, attempt,
       coalesce(unique_key, '<null>'), coalesce(partition_key, '<null>'),
       CASE WHEN run_at = created THEN 'now' WHEN run_at - created = interval '90 minutes' THEN 'delayed 90m'
            ELSE (extract(epoch FROM run_at) * 1e6)::bigint::text END)
FROM compute.jobs WHERE job_id = $1`, id[:])
	}
	var alone []string
	for i, j := range jobs {
		id, err := q.Enqueue(ctx, j)
		if err != nil {
			t.Fatalf("job %d alone: %v", i, err)
		}
		alone = append(alone, row(id))
	}
	if r, err := q.Submit(ctx, jobs[2]); err != nil || len(r) != 1 || !r[0].Duplicate {
		t.Errorf("second submit of the content-id job alone: %+v, %v; want a duplicate", r, err)
	}
	if _, err := q.Pool().Exec(ctx, `DELETE FROM compute.jobs`); err != nil {
		t.Fatal(err)
	}
	ids, err := q.EnqueueMany(ctx, jobs)
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		if got := row(id); got != alone[i] {
			t.Errorf("job %d stored\n  alone:    %s\n  in batch: %s", i, alone[i], got)
		}
	}
	if alone[0] != fmt.Sprintf(`queued | same | {"x": [1, "two"]} | {"a b.png","c,d","{e}","\"f\"","g\\h",ünï} | 7 | 3 | 0 | k1 | tenant | %d`, runAt.UnixMicro()) {
		t.Errorf("job 0 stored %s", alone[0])
	}
	r, err := q.Submit(ctx, jobs[1:]...)
	if err != nil || len(r) != 2 || r[0].Duplicate || !r[1].Duplicate {
		t.Errorf("second submit of the content-id job in a batch: %+v, %v; want it alone a duplicate", r, err)
	}

	// Which statement ran: a new connection's statement cache holds only
	// what this test prepares on it.
	conn, err := pgx.ConnectConfig(ctx, q.Pool().Config().ConnConfig.Copy())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	prepared := func(step string, wantArrays int) {
		t.Helper()
		var arrays, rows int
		if err := tx.QueryRow(ctx, `SELECT count(*) FILTER (WHERE statement LIKE '%unnest($1::bytea[]%'),
			count(*) FILTER (WHERE statement LIKE '%FROM (SELECT $1::bytea, $2::text%')
			FROM pg_prepared_statements WHERE statement NOT LIKE '%pg_prepared_statements%'`).Scan(&arrays, &rows); err != nil {
			t.Fatal(err)
		}
		if arrays != wantArrays || rows != 1 {
			t.Errorf("after %s: %d array and %d one-row insert statements prepared; want %d and 1", step, arrays, rows, wantArrays)
		}
	}
	if _, err := q.EnqueueTx(ctx, tx, compute.Job{Queue: "same"}); err != nil {
		t.Fatal(err)
	}
	prepared("one job", 0)
	if _, err := q.EnqueueManyTx(ctx, tx, []compute.Job{{Queue: "same"}, {Queue: "same"}}); err != nil {
		t.Fatal(err)
	}
	prepared("two jobs", 1)
}
