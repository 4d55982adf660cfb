package compute_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

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
