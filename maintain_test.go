package compute_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/internal/testdb"
)

// idle is a handler for queues whose jobs the test does not care about.
func idle(ctx context.Context, job *compute.Job) ([]string, error) { return nil, nil }

// TestWorkerMaintenanceAppliesRetention checks the maintenance round:
// finished jobs unread for ExpireAfter become expired, expired ones past
// DeleteExpiredAfter are deleted, and DeleteFailedAfter deletes failed jobs
// directly; recent jobs are untouched.
func TestWorkerMaintenanceAppliesRetention(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	enqueueAll(t, q, slices.Repeat([]compute.Job{{Queue: "ret"}}, 6))
	jobs := claimN(t, q, "ret", 6)
	complete(t, q, jobs[:4]...)
	if err := q.Fail(t.Context(), compute.Failure{Job: jobs[4], Err: compute.Permanent(errors.New("x"))},
		compute.Failure{Job: jobs[5], Err: compute.Permanent(errors.New("x"))}); err != nil {
		t.Fatal(err)
	}
	// jobs[0]: complete, read 2 days ago: expires, not deleted yet.
	// jobs[1]: expired, read 3 days ago: deleted.
	// jobs[2]: complete, fresh: kept.
	// jobs[3]: expired, read a day ago: kept.
	// jobs[4]: failed, read 30 hours ago: deleted by DeleteFailedAfter
	// before it would expire. jobs[5]: failed now: kept.
	read := func(ago string, j *compute.Job) {
		mustExec(t, q.Pool(), `UPDATE compute.jobs SET last_accessed = now() - $1::interval WHERE job_id = $2`, ago, j.ID[:])
	}
	read("2 days", jobs[0])
	read("3 days", jobs[1])
	read("1 day", jobs[3])
	read("30 hours", jobs[4])
	mustExec(t, q.Pool(), `UPDATE compute.jobs SET status = 'expired' WHERE job_id = ANY($1)`, [][]byte{jobs[1].ID[:], jobs[3].ID[:]})

	r := startWorker(t, q, compute.WorkerConfig{
		Queues:              map[string]compute.QueueConfig{"other": {Handler: idle}},
		MaintenanceInterval: 20 * time.Millisecond,
		Retention: compute.Retention{ExpireAfter: 36 * time.Hour, DeleteExpiredAfter: 60 * time.Hour,
			DeleteFailedAfter: 24 * time.Hour},
	})
	defer r.stop(t)
	statusOf := func(id compute.JobID) string {
		return queryOne[string](t, q.Pool(), `SELECT coalesce((SELECT status FROM compute.jobs WHERE job_id = $1), 'deleted')`, id[:])
	}
	waitUntil(t, liveness, "retention to apply", func() bool {
		return statusOf(jobs[0].ID) == "expired" && statusOf(jobs[1].ID) == "deleted" && statusOf(jobs[4].ID) == "deleted"
	})
	for _, c := range []struct {
		i    int
		want string
	}{{2, "complete"}, {3, "expired"}, {5, "failed"}} {
		if got := statusOf(jobs[c.i].ID); got != c.want {
			t.Errorf("job %d: %s, want %s", c.i, got, c.want)
		}
	}
}

// TestPurgeRejectsLiveStatuses checks Purge's arguments.
func TestPurgeRejectsLiveStatuses(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	for _, s := range []compute.Status{compute.StatusQueued, compute.StatusInProgress, "bogus"} {
		if _, err := q.Purge(t.Context(), s, time.Hour); !errors.Is(err, compute.ErrInvalidOption) {
			t.Errorf("Purge(%s) = %v, want ErrInvalidOption", s, err)
		}
	}
	if _, err := q.Purge(t.Context(), compute.StatusComplete, 0); !errors.Is(err, compute.ErrInvalidOption) {
		t.Errorf("Purge with age 0 = %v", err)
	}
}

// TestPriorityAgingRaisesWaitingJobs checks AgeAfter: a job that waited
// longer than AgeAfter moves one step towards 0 per turn, one turn per
// AgeAfter across the cluster (two workers here), and young jobs stay.
func TestPriorityAgingRaisesWaitingJobs(t *testing.T) {
	t.Parallel()
	conn := testdb.New(t)
	q := openQueue(t, conn, compute.WithMigrate())
	setSettings(t, q, "age", compute.QueueSettings{AgeAfter: time.Hour})
	ids := enqueueAll(t, q, []compute.Job{{Queue: "age", Priority: 5}, {Queue: "age", Priority: 5}, {Queue: "age", Priority: 0}})
	mustExec(t, q.Pool(), `UPDATE compute.jobs SET run_at = now() - interval '3 hours' WHERE job_id = ANY($1)`,
		[][]byte{ids[0][:], ids[2][:]})
	// Due once: the last turn was more than AgeAfter ago.
	mustExec(t, q.Pool(), `UPDATE compute.queues SET aged_at = now() - interval '61 minutes'`)
	cfg := compute.WorkerConfig{Queues: map[string]compute.QueueConfig{"other": {Handler: idle}}, MaintenanceInterval: 20 * time.Millisecond}
	r1 := startWorker(t, q, cfg)
	defer r1.stop(t)
	r2 := startWorker(t, openQueue(t, conn), cfg)
	defer r2.stop(t)
	// Read the priority with a plain SELECT: Get updates last_accessed and
	// so locks the row for a moment, and aging skips locked rows (that job
	// would wait a whole AgeAfter for the next turn).
	priority := func(id compute.JobID) int {
		return int(queryOne[int16](t, q.Pool(), `SELECT priority FROM compute.jobs WHERE job_id = $1`, id[:]))
	}
	waitUntil(t, liveness, "the old job to age", func() bool { return priority(ids[0]) < 5 })
	// Let both workers run more rounds; the turn is taken, so no second step.
	turn := queryOne[time.Time](t, q.Pool(), `SELECT aged_at FROM compute.queues WHERE name = 'age'`)
	// Proof that later rounds ran: each hands back a job whose lease we
	// backdate.
	enqueue(t, q, compute.Job{Queue: "stale"})
	for range 3 {
		stale := claimOne(t, q, "stale")
		backdateLease(t, q, stale.ID)
		awaitStatus(t, q, stale.ID, compute.StatusQueued)
	}
	if p := priority(ids[0]); p != 4 {
		t.Errorf("old job priority %d, want 4 (one step per turn)", p)
	}
	if p := priority(ids[1]); p != 5 {
		t.Errorf("young job priority %d, want 5", p)
	}
	if p := priority(ids[2]); p != 0 {
		t.Errorf("priority-0 job moved to %d", p)
	}
	if again := queryOne[time.Time](t, q.Pool(), `SELECT aged_at FROM compute.queues WHERE name = 'age'`); !again.Equal(turn) {
		t.Errorf("a second aging turn ran within AgeAfter")
	}
}

// TestWorkerRegistersItselfWhileRunning checks compute.workers.
func TestWorkerRegistersItselfWhileRunning(t *testing.T) {
	t.Parallel()
	q := newQueue(t, compute.WithWorkerID("registry-test"))
	r := startWorker(t, q, compute.WorkerConfig{Queues: map[string]compute.QueueConfig{"a": {Handler: idle}, "b": {Handler: idle}}})
	waitUntil(t, liveness, "the worker row", func() bool {
		return queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.workers WHERE worker = 'registry-test'`) == 1
	})
	queues := queryOne[[]string](t, q.Pool(), `SELECT queues::text[] FROM compute.workers WHERE worker = 'registry-test'`)
	slices.Sort(queues)
	if !slices.Equal(queues, []string{"a", "b"}) {
		t.Errorf("registered queues %v", queues)
	}
	r.stop(t)
	if n := queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.workers`); n != 0 {
		t.Errorf("%d registry rows after a clean stop", n)
	}
}
