package compute_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/computeplatform/compute"
)

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
