package compute_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/computeplatform/compute"
)

// TestWorkerOfManyQueuesRunsJobsFoundByItsPoll: a polling worker serving
// 100 queues, some with rules, finds jobs written by plain SQL after it
// went idle (its one poll per interval wakes their fetchers, whose claims
// are batched), runs each once, keeps a paused queue's jobs and a
// MaxRunning cap, and runs the paused queue's jobs once it is resumed.
func TestWorkerOfManyQueuesRunsJobsFoundByItsPoll(t *testing.T) {
	ctx := t.Context()
	q := newQueue(t)
	setSettings(t, q, "q0", compute.QueueSettings{MaxRunning: 2})
	setSettings(t, q, "q1", compute.QueueSettings{Fair: true})
	if err := q.Pause(ctx, "q2"); err != nil {
		t.Fatal(err)
	}
	var (
		mu      sync.Mutex
		runs    = map[compute.JobID]int{}
		running int // jobs of q0 running now
		most    int // the most of them that ran at once
	)
	handle := func(ctx context.Context, job *compute.Job) ([]string, error) {
		mu.Lock()
		runs[job.ID]++
		if job.Queue == "q0" {
			running++
			most = max(most, running)
		}
		mu.Unlock()
		time.Sleep(time.Millisecond) // let q0's jobs overlap if the cap allowed it
		mu.Lock()
		if job.Queue == "q0" {
			running--
		}
		mu.Unlock()
		return nil, nil
	}
	cfg := compute.WorkerConfig{Queues: map[string]compute.QueueConfig{}, PollOnly: true, PollInterval: 50 * time.Millisecond}
	for i := range 100 {
		cfg.Queues[fmt.Sprintf("q%d", i)] = compute.QueueConfig{Handler: handle, Concurrency: 3}
	}
	startWorker(t, q, cfg)
	// Five jobs per queue, by plain SQL, with distinct partition keys for
	// the fair queue.
	mustExec(t, q.Pool(), `INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed, partition_key)
		SELECT decode(md5('job' || g), 'hex'), 'queued', 'q' || (g % 100), '{}', '{}', now(), now(), 'k' || (g % 3)
		FROM generate_series(0, 499) g`)
	finished := func(queue string) int64 {
		return queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.jobs WHERE status = 'complete' AND queue LIKE $1`, queue)
	}
	waitUntil(t, liveness, "the jobs of 99 queues to complete", func() bool { return finished("%") == 495 })
	if got := finished("q2"); got != 0 {
		t.Errorf("%d jobs of the paused queue ran", got)
	}
	if err := q.Resume(ctx, "q2"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, liveness, "the resumed queue's jobs to complete", func() bool { return finished("%") == 500 })
	mu.Lock()
	defer mu.Unlock()
	for id, n := range runs {
		if n != 1 {
			t.Errorf("job %s ran %d times", id, n)
		}
	}
	if len(runs) != 500 {
		t.Errorf("%d jobs ran, want 500", len(runs))
	}
	if most > 2 {
		t.Errorf("%d jobs of the queue with MaxRunning 2 ran at once", most)
	}
}
