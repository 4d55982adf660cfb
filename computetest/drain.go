package computetest

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/computeplatform/compute"
)

// Counts is what [Drain]'s attempts came to, one count per handler call.
// For each job Drain ran (and that still exists after it), its last attempt counts as Complete or Failed
// when the job ended so (a Cancel while it ran counts as Failed), its
// snoozes during the drain as Snoozed, and its other attempts as Retried,
// including a last one that left it queued for a later retry.
type Counts struct {
	Complete, Retried, Snoozed, Failed int
}

// Attempts is the number of handler calls: the sum of the counts.
func (c Counts) Attempts() int { return c.Complete + c.Retried + c.Snoozed + c.Failed }

// DrainTimeout bounds Drain: queues still not drained after it fail the
// test.
const DrainTimeout = time.Minute

// drainPoll is how often Drain looks whether the queues are drained, and
// its Worker's poll interval, so that a job that becomes due while Drain
// works (a short Snooze or backoff) is taken at once.
const drainPoll = 20 * time.Millisecond

// drainedSQL says whether the queues are drained: no job the worker could
// still take (queued and due) or is still working on (in progress). A job
// queued to run later does not count, so a retry waiting out its backoff
// ends the drain. Both parts read partial indexes on status. "Due" is
// clock_timestamp(), read after the statement's snapshot: now() is taken
// before it, so a retry written with a 1µs backoff by a statement that
// started after this one's now() but committed before its snapshot would
// look due later, and end the drain too early.
const drainedSQL = `SELECT count(*) FROM compute.jobs
WHERE queue = ANY($1::text[]) AND (status = 'in-progress' OR (status = 'queued' AND run_at <= clock_timestamp()))`

// Drain works the queues named in handlers with a real [compute.Worker],
// each queue with its handler (and opts, which apply to every queue as
// they do in [WorkOne]), until none of them holds a job that is running or
// queued and due; then it stops the Worker and returns what the attempts
// came to (see [Counts]). Jobs enqueued while it works, by the handlers or
// anyone else, are worked too; jobs due later (a retry's backoff, a long
// Snooze, a RunAt in the future) are left queued. The Worker polls every
// 20 ms, so a job that becomes due while Drain works is taken promptly.
//
// Drain fails the test when the queues are not drained within [DrainTimeout]
// (a paused queue, a handler that snoozes for ever, or a job held by
// another worker's lease), or when the Worker cannot run.
func Drain(t testing.TB, q *compute.Queue, handlers map[string]compute.Handler, opts ...WorkOption) Counts {
	t.Helper()
	if len(handlers) == 0 {
		t.Fatalf("computetest: Drain needs a handler for at least one queue")
	}
	cfg := workConfig{}
	for _, o := range opts {
		o(&cfg)
	}
	var (
		mu    sync.Mutex
		calls = map[compute.JobID]*calledJob{} // written by the handlers, read after the Worker stopped
	)
	queues := make(map[string]compute.QueueConfig, len(handlers))
	for name, h := range handlers {
		if h == nil {
			t.Fatalf("computetest: Drain: the handler of queue %q is nil", name)
		}
		queues[name] = compute.QueueConfig{
			Handler: func(ctx context.Context, job *compute.Job) ([]string, error) {
				mu.Lock()
				c := calls[job.ID]
				if c == nil {
					c = &calledJob{snoozes: job.Snoozes}
					calls[job.ID] = c
				}
				c.calls++
				mu.Unlock()
				return h(ctx, job)
			},
			Timeout:     cfg.timeout,
			MaxAttempts: cfg.maxAttempts,
			Backoff:     cfg.backoff,
		}
	}
	w, err := compute.NewWorker(q, compute.WorkerConfig{
		Queues:                 queues,
		Middleware:             cfg.middleware,
		PollInterval:           drainPoll,
		LongTransactionWarning: -1,
	})
	if err != nil {
		t.Fatalf("computetest: Drain: making the Worker: %v", err)
	}

	ctx := t.Context()
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	ran := make(chan error, 1)
	go func() { ran <- w.Run(runCtx) }()
	stop := func() {
		shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_ = w.Shutdown(shutdownCtx) // Run's error, below, is the one that matters
		if err := <-ran; err != nil {
			t.Fatalf("computetest: Drain: the Worker stopped with %v", err)
		}
	}

	names := slices.Sorted(maps.Keys(handlers))
	deadline := time.Now().Add(DrainTimeout)
	tick := time.NewTicker(drainPoll)
	defer tick.Stop()
	for {
		var left int
		if err := q.Pool().QueryRow(ctx, drainedSQL, names).Scan(&left); err != nil {
			stop()
			t.Fatalf("computetest: Drain: looking whether queues %q are drained: %v", names, err)
		}
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			stop()
			t.Fatalf("computetest: Drain: queues %q still hold %d running or runnable jobs after %s (paused? a handler that snoozes for ever? Queue.Explain says why a job waits)", names, left, DrainTimeout)
		}
		select {
		case err := <-ran:
			t.Fatalf("computetest: Drain: the Worker stopped early with %v", err)
		case <-ctx.Done():
			stop()
			t.Fatalf("computetest: Drain: the test ended while draining queues %q", names)
		case <-tick.C:
		}
	}
	stop()

	mu.Lock() // the Worker has stopped, but a handler it abandoned may still run
	defer mu.Unlock()
	var counts Counts
	for id, c := range calls {
		job, err := q.Get(ctx, id)
		if errors.Is(err, compute.ErrNotFound) {
			continue // deleted meanwhile: nothing to tell its attempts by
		}
		if err != nil {
			t.Fatalf("computetest: Drain: reading job %s after the drain: %v", id, err)
		}
		last := 0
		switch job.Status {
		case compute.StatusComplete:
			counts.Complete, last = counts.Complete+1, 1
		case compute.StatusFailed:
			counts.Failed, last = counts.Failed+1, 1
		}
		snoozed := job.Snoozes - c.snoozes
		counts.Snoozed += snoozed
		counts.Retried += c.calls - last - snoozed
	}
	return counts
}

// calledJob is what Drain's handler wrapper saw of one job.
type calledJob struct {
	calls   int // handler calls
	snoozes int // the job's Snoozes at the first call
}
