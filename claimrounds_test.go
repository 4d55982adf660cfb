package compute_test

import (
	"context"
	"testing"
	"time"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/internal/testdb"
)

// fairQueueWithFuse makes the fair queue: keys a (10 jobs), b and c,
// one attempt each. The gated claim of 9 takes 3 of a, b and c in its first
// round, and its second round meets a's fourth job, whose claim a trigger
// fails once with errcode (the fuse is a sequence: it burns even though the
// failing statement rolls back).
func fairQueueWithFuse(t *testing.T, q *compute.Queue, errcode string) []compute.JobID {
	t.Helper()
	ctx := context.Background()
	if err := q.SetQueueSettings(ctx, "fq", compute.QueueSettings{Fair: true}); err != nil {
		t.Fatal(err)
	}
	var jobs []compute.Job
	for i := range 10 {
		j := compute.Job{Queue: "fq", PartitionKey: "a", MaxAttempts: 1, Config: "{}"}
		if i >= 3 {
			j.Priority, j.Config = 1, `{"fuse": true}`
		}
		jobs = append(jobs, j)
	}
	jobs = append(jobs, compute.Job{Queue: "fq", PartitionKey: "b", MaxAttempts: 1}, compute.Job{Queue: "fq", PartitionKey: "c", MaxAttempts: 1})
	ids := enqueueAll(t, q, jobs)
	installFuse(t, q, errcode)
	return ids
}

// installFuse makes the first claim of a job whose config is
// {"fuse": true} fail with errcode, once.
func installFuse(t *testing.T, q *compute.Queue, errcode string) {
	t.Helper()
	mustExec(t, q.Pool(), `CREATE SEQUENCE public.fuse`)
	mustExec(t, q.Pool(), `CREATE FUNCTION public.blow() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF nextval('public.fuse') = 1 THEN
				RAISE EXCEPTION 'the fuse blew' USING ERRCODE = '`+errcode+`';
			END IF;
			RETURN NEW;
		END $$`)
	mustExec(t, q.Pool(), `CREATE TRIGGER fuse BEFORE UPDATE ON compute.jobs FOR EACH ROW
		WHEN (OLD.status = 'queued' AND NEW.status = 'in-progress' AND NEW.config = '{"fuse": true}')
		EXECUTE FUNCTION public.blow()`)
}

// TestGatedClaimKeepsEarlierRoundsAcrossARetry: the gated claim commits
// round by round. When a later round fails with an error the library
// retries (a serialization failure here), the retry must add to the jobs
// of the committed rounds, not replace them. Before, the retry's result
// overwrote them: Claim returned fewer jobs than it had put in progress,
// and those were held by nobody until their leases ran out.
func TestGatedClaimKeepsEarlierRoundsAcrossARetry(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	fairQueueWithFuse(t, q, "40001")
	jobs, err := q.Claim(context.Background(), "fq", 9)
	if err != nil {
		t.Fatalf("claim: %v", err)
	}
	inProgress := queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.jobs WHERE status = 'in-progress'`)
	if int64(len(jobs)) != inProgress || len(jobs) != 9 {
		t.Fatalf("Claim returned %d jobs and %d are in progress; want 9 and 9", len(jobs), inProgress)
	}
}

// TestWorkerRunsJobsOfAGatedClaimThatFailedLater is the report:
// the second round of a gated claim fails (the backend's statement errors
// out), and the worker must still run the jobs the first round committed.
// Before, the fetcher dropped every job of a claim that returned an error:
// with one attempt each, those jobs failed with "lease expired" without
// ever running.
func TestWorkerRunsJobsOfAGatedClaimThatFailedLater(t *testing.T) {
	t.Parallel()
	q := newQueue(t, withTestLog(t), compute.WithLease(time.Second))
	ids := fairQueueWithFuse(t, q, "XX000")
	runs := &runCounter{runs: make(map[compute.JobID]int)}
	startWorker(t, q, compute.WorkerConfig{PollInterval: 50 * time.Millisecond, MaintenanceInterval: 100 * time.Millisecond,
		Queues: map[string]compute.QueueConfig{"fq": {Concurrency: 9, Handler: runs.handle}}})
	waitUntil(t, liveness, "every job to finish", func() bool {
		return queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.jobs WHERE status IN ('queued', 'in-progress')`) == 0
	})
	for _, id := range ids {
		if st := status(t, q, id); st != compute.StatusComplete || runs.of(id) != 1 {
			t.Errorf("job %s: %s after %d runs, want complete after 1", id, st, runs.of(id))
		}
	}
}

// TestWorkerAdoptsTheJobsOfAClaimWhoseReplyWasLost: a claim can commit
// while its reply is lost with the connection. After a failed claim the
// worker asks the database which of the queue's jobs it holds and runs
// those it does not know, instead of leaving them to their leases (a
// minute here, longer than the test waits). The lost claim is played by a
// second Queue with the worker's id; the worker's own first claim then
// fails (a fuse trigger).
func TestWorkerAdoptsTheJobsOfAClaimWhoseReplyWasLost(t *testing.T) {
	t.Parallel()
	connString := testdb.New(t)
	q := openQueue(t, connString, compute.WithMigrate(), withTestLog(t), compute.WithLease(time.Minute))
	lost := openQueue(t, connString, compute.WithWorkerID(q.WorkerID()))
	ids := enqueueAll(t, q, []compute.Job{{Queue: "a"}, {Queue: "a"}, {Queue: "a"}})
	if held, err := lost.Claim(context.Background(), "a", 3); err != nil || len(held) != 3 {
		t.Fatalf("the lost claim: %d jobs, %v", len(held), err)
	}
	ids = append(ids, enqueue(t, q, compute.Job{Queue: "a", Config: `{"fuse": true}`}))
	installFuse(t, q, "XX000")
	runs := &runCounter{runs: make(map[compute.JobID]int)}
	startWorker(t, q, compute.WorkerConfig{PollInterval: 50 * time.Millisecond, MaintenanceInterval: time.Hour,
		Queues: map[string]compute.QueueConfig{"a": {Handler: runs.handle}}})
	for _, id := range ids {
		if job := awaitStatus(t, q, id, compute.StatusComplete, compute.StatusFailed); job.Status != compute.StatusComplete || runs.of(id) != 1 {
			t.Errorf("job %s: %s after %d runs, want complete after 1", id, job.Status, runs.of(id))
		}
	}
}

// TestClaimReturnsNoJobWhenItsCommitFails: the fast claim's rows can arrive
// while its pipeline's commit then fails (here a deferred trigger raises at
// commit; in the fault tests, a terminated backend). Those jobs are still
// queued, so Claim must not hand them out: running them, and then the
// same attempt again after the next claim, ran attempts twice in the same
// process (seen in TestTerminateBackends).
func TestClaimReturnsNoJobWhenItsCommitFails(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	ids := enqueueAll(t, q, []compute.Job{{Queue: "c"}, {Queue: "c"}})
	mustExec(t, q.Pool(), `CREATE SEQUENCE public.commit_fuse`)
	mustExec(t, q.Pool(), `CREATE FUNCTION public.fail_commit() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF nextval('public.commit_fuse') = 1 THEN
				RAISE EXCEPTION 'the commit fails';
			END IF;
			RETURN NULL;
		END $$`)
	mustExec(t, q.Pool(), `CREATE CONSTRAINT TRIGGER fail_commit AFTER UPDATE ON compute.jobs
		DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
		WHEN (OLD.status = 'queued' AND NEW.status = 'in-progress') EXECUTE FUNCTION public.fail_commit()`)
	jobs, err := q.Claim(context.Background(), "c", 2)
	if err == nil || len(jobs) != 0 {
		t.Fatalf("claim whose commit failed: %d jobs, %v; want no job and the error", len(jobs), err)
	}
	for _, id := range ids {
		if st := status(t, q, id); st != compute.StatusQueued {
			t.Errorf("job %s is %s after the failed claim, want queued", id, st)
		}
	}
	if jobs, err := q.Claim(context.Background(), "c", 2); err != nil || len(jobs) != 2 {
		t.Errorf("the next claim: %d jobs, %v; want both", len(jobs), err)
	}
}
