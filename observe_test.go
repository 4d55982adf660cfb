package compute_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/computeplatform/compute"
)

// recorder is an Observer that keeps what it is told.
type recorder struct {
	mu        sync.Mutex
	enqueued  int
	claimed   int
	waits     map[string][]time.Duration   // by queue
	outcomes  map[string][]compute.Outcome // by queue
	wrote     map[string]int               // jobs by kind
	listening []bool
}

func (r *recorder) observer() *compute.Observer {
	r.waits, r.outcomes, r.wrote = map[string][]time.Duration{}, map[string][]compute.Outcome{}, map[string]int{}
	return &compute.Observer{
		Enqueued: func(n int, _ time.Duration, err error) {
			r.mu.Lock()
			defer r.mu.Unlock()
			if err == nil {
				r.enqueued += n
			}
		},
		Claimed: func(_ string, n int, _ time.Duration, _ error) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.claimed += n
		},
		JobStarted: func(queue string, wait time.Duration) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.waits[queue] = append(r.waits[queue], wait)
		},
		JobFinished: func(queue string, o compute.Outcome, _ time.Duration) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.outcomes[queue] = append(r.outcomes[queue], o)
		},
		Wrote: func(kind string, n int, _ time.Duration, err error) {
			r.mu.Lock()
			defer r.mu.Unlock()
			if err == nil {
				r.wrote[kind] += n
			}
		},
		Listening: func(on bool) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.listening = append(r.listening, on)
		},
	}
}

// outcomesOf returns a copy of the outcomes reported for queue.
func (r *recorder) outcomesOf(queue string) []compute.Outcome {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]compute.Outcome(nil), r.outcomes[queue]...)
}

// TestObserverSeesEachOutcome runs one job per kind of ending, each in a
// queue of its own, and checks the outcome the Observer was told for
// each, the enqueue and claim counts, the written batches, the listener's
// state and the wait of a job that was due an hour before its claim.
func TestObserverSeesEachOutcome(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	q := newQueue(t, compute.WithObserver(rec.observer()))
	ranOnce := make(map[string]bool)
	var mu sync.Mutex
	first := func(queue string) bool {
		mu.Lock()
		defer mu.Unlock()
		was := ranOnce[queue]
		ranOnce[queue] = true
		return !was
	}
	started := make(chan struct{}, 1)
	handlers := map[string]compute.Handler{
		"ok": func(context.Context, *compute.Job) ([]string, error) { return nil, nil },
		"retry": func(_ context.Context, job *compute.Job) ([]string, error) {
			if first(job.Queue) {
				return nil, errors.New("not yet")
			}
			return nil, nil
		},
		"permanent": func(context.Context, *compute.Job) ([]string, error) {
			return nil, compute.Permanent(errors.New("never"))
		},
		"snooze": func(_ context.Context, job *compute.Job) ([]string, error) {
			if first(job.Queue) {
				return nil, compute.Snooze(time.Millisecond)
			}
			return nil, nil
		},
		"cancel": func(ctx context.Context, _ *compute.Job) ([]string, error) {
			started <- struct{}{}
			<-ctx.Done()
			return nil, ctx.Err()
		},
	}
	cfg := compute.WorkerConfig{PollInterval: 50 * time.Millisecond, Queues: map[string]compute.QueueConfig{}}
	for name, h := range handlers {
		cfg.Queues[name] = compute.QueueConfig{Handler: h, Backoff: quickBackoff}
	}
	w := startWorker(t, q, cfg)
	waitUntil(t, liveness, "the listener", func() bool { return w.Health().Listening })
	var cancelID compute.JobID
	for name := range handlers {
		job := compute.Job{Queue: name}
		if name == "ok" {
			job.RunAt = time.Now().Add(-time.Hour)
		}
		id := enqueue(t, q, job)
		if name == "cancel" {
			cancelID = id
		}
	}
	receive(t, started, liveness, "the job to cancel to start")
	if err := q.Cancel(context.Background(), cancelID, "test"); err != nil {
		t.Fatal(err)
	}
	want := map[string][]compute.Outcome{
		"ok":        {compute.OutcomeComplete},
		"retry":     {compute.OutcomeRetry, compute.OutcomeComplete},
		"permanent": {compute.OutcomeFailed},
		"snooze":    {compute.OutcomeSnoozed, compute.OutcomeComplete},
		"cancel":    {compute.OutcomeCancelled},
	}
	for queue, outcomes := range want {
		waitUntil(t, liveness, "the outcomes of "+queue, func() bool { return len(rec.outcomesOf(queue)) >= len(outcomes) })
	}
	w.stop(t)
	for queue, outcomes := range want {
		if got := rec.outcomesOf(queue); !slices.Equal(got, outcomes) {
			t.Errorf("queue %s: outcomes %v, want %v", queue, got, outcomes)
		}
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.enqueued != 5 || rec.claimed != 7 {
		t.Errorf("enqueued %d and claimed %d jobs, want 5 and 7", rec.enqueued, rec.claimed)
	}
	// Complete: ok, retry, snooze; Fail: retry, permanent, snooze.
	if rec.wrote["complete"] != 3 || rec.wrote["fail"] != 3 {
		t.Errorf("wrote %v, want 3 completions and 3 failures", rec.wrote)
	}
	if len(rec.waits["ok"]) != 1 || rec.waits["ok"][0] < time.Hour {
		t.Errorf("waits of the job due an hour ago: %v, want one of at least 1h", rec.waits["ok"])
	}
	if len(rec.listening) == 0 || !rec.listening[0] {
		t.Errorf("listener states %v, want a first true", rec.listening)
	}
}
