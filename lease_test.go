package compute_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/internal/testdb"
)

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

// TestFencedWritesLockRowsInIDOrder checks that Complete, Fail and
// Heartbeat update their rows, and so lock them, in job id order whatever
// order they are given, so a lease renewal overlapping a completion of the
// same jobs makes one wait for the other instead of deadlocking (a deadlock
// stalls both for deadlock_timeout before one is retried). A row trigger
// records the order in which each statement updates its rows.
func TestFencedWritesLockRowsInIDOrder(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	q := newQueue(t, withTestLog(t))
	pool := q.Pool()
	enqueueAll(t, q, slices.Repeat([]compute.Job{{Queue: "ordered"}}, 300))
	jobs, err := q.Claim(ctx, "ordered", 300)
	if err != nil || len(jobs) != 300 {
		t.Fatalf("claimed %d jobs (%v), want 300", len(jobs), err)
	}
	// In a table this small the planner may read every in-progress row
	// through the primary key, in id order, whatever order the arrays
	// have; with more rows and statistics it walks the arrays and probes
	// the key for each, as in production. Those are the plans checked.
	if _, err := q.EnqueueMany(ctx, slices.Repeat([]compute.Job{{Queue: "other"}}, 20000)); err != nil {
		t.Fatal(err)
	}
	mustExec(t, pool, `ANALYZE compute.jobs`)
	mustExec(t, pool, `CREATE TABLE public.updated (xid xid8, seq bigint GENERATED ALWAYS AS IDENTITY, job_id bytea)`)
	mustExec(t, pool, `CREATE FUNCTION public.record_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.updated (xid, job_id) VALUES (pg_current_xact_id(), NEW.job_id);
    RETURN NEW;
END $$`)
	mustExec(t, pool, `CREATE TRIGGER record_update BEFORE UPDATE ON compute.jobs FOR EACH ROW EXECUTE FUNCTION public.record_update()`)

	shuffled := func(jobs []*compute.Job) []*compute.Job {
		s := slices.Clone(jobs)
		rand.Shuffle(len(s), func(i, j int) { s[i], s[j] = s[j], s[i] })
		return s
	}
	if err := q.Heartbeat(ctx, shuffled(jobs)...); err != nil {
		t.Fatal(err)
	}
	var done []compute.Completion
	for _, j := range shuffled(jobs[:100]) {
		done = append(done, compute.Completion{Job: j})
	}
	if err := q.Complete(ctx, done...); err != nil {
		t.Fatal(err)
	}
	var failed []compute.Failure
	for _, j := range shuffled(jobs[100:200]) {
		failed = append(failed, compute.Failure{Job: j, Err: errors.New("boom")})
	}
	if err := q.Fail(ctx, failed...); err != nil {
		t.Fatal(err)
	}
	// The first 100 are complete now: a renewal of all 300 updates the
	// last 100 and reports the first 200 lost.
	var lost *compute.LeaseLostError
	if err := q.Heartbeat(ctx, shuffled(jobs)...); !errors.As(err, &lost) || len(lost.IDs) != 200 {
		t.Fatalf("renewal of 100 held and 200 written jobs: %v, want 200 lost", err)
	}

	statements := queryOne[int64](t, pool, `SELECT count(DISTINCT xid) FROM public.updated`)
	rows := queryOne[int64](t, pool, `SELECT count(*) FROM public.updated`)
	if statements != 4 || rows != 300+100+100+100 {
		t.Fatalf("the trigger saw %d statements updating %d rows, want 4 updating 600: the test checked too little", statements, rows)
	}
	backwards := queryOne[int64](t, pool, `SELECT count(*) FROM (
    SELECT job_id < lag(job_id) OVER (PARTITION BY xid ORDER BY seq) AS back FROM public.updated) s
WHERE back`)
	if backwards != 0 {
		t.Errorf("%d rows were updated after a row with a greater job id in the same statement; want every statement in id order", backwards)
	}
}
