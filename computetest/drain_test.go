package computetest_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/computetest"
)

func TestDrainWorksTheQueuesAndCountsEachAttempt(t *testing.T) {
	t.Parallel()
	q := computetest.NewQueue(t)
	later := enqueue(t, q,
		compute.Job{Queue: "emails", Config: `{"n": 1}`},
		compute.Job{Queue: "emails", Config: `{"n": 2}`},
		compute.Job{Queue: "flaky", Config: `{}`},
		compute.Job{Queue: "doomed", Config: `{}`},
		compute.Job{Queue: "emails", Config: `{"later": true}`, Delay: time.Hour},
		compute.Job{Queue: "other", Config: `{}`}, // no handler: not drained
	)[4]

	var flakyCalls atomic.Int32
	counts := computetest.Drain(t, q, map[string]compute.Handler{
		"emails": func(ctx context.Context, job *compute.Job) ([]string, error) {
			if job.Config == `{"n": 1}` { // a handler that enqueues: Drain works that job too
				_, err := q.Enqueue(ctx, compute.Job{Queue: "emails", Config: `{"n": 3}`})
				return nil, err
			}
			return nil, nil
		},
		"flaky": func(context.Context, *compute.Job) ([]string, error) {
			switch flakyCalls.Add(1) {
			case 1:
				return nil, errors.New("try again")
			case 2:
				return nil, compute.Snooze(0)
			}
			return nil, nil
		},
		"doomed": returns(nil, compute.Permanent(errors.New("never"))),
	}, computetest.WithBackoff(func(int) time.Duration { return 0 })) // retries run at once

	want := computetest.Counts{Complete: 4, Retried: 1, Snoozed: 1, Failed: 1}
	if counts != want || counts.Attempts() != 7 {
		t.Fatalf("Drain = %+v (%d attempts), want %+v", counts, counts.Attempts(), want)
	}
	computetest.RequireEnqueued(t, q, computetest.Match{Queue: "emails", Config: `{"later": true}`}) // due later: left
	computetest.RequireEnqueued(t, q, computetest.Match{Queue: "other"})
	computetest.RequireNotEnqueued(t, q, computetest.Match{Queue: "flaky"})
	if job, err := q.Get(t.Context(), later); err != nil || job.Attempt != 0 {
		t.Fatalf("the job due later: %+v, %v; want it never claimed", job, err)
	}
	workers, err := q.Workers(t.Context())
	if err != nil || len(workers) != 0 {
		t.Fatalf("Workers after Drain = %+v, %v; want none: Drain stops its Worker", workers, err)
	}
}

func TestDrainLeavesARetryWaitingOutItsBackoff(t *testing.T) {
	t.Parallel()
	q := computetest.NewQueue(t)
	id := enqueue(t, q, compute.Job{Queue: "emails", Config: `{}`})[0]
	counts := computetest.Drain(t, q, map[string]compute.Handler{"emails": returns(nil, errors.New("down"))})
	if want := (computetest.Counts{Retried: 1}); counts != want {
		t.Fatalf("Drain = %+v, want %+v: one attempt, then the default backoff", counts, want)
	}
	job, err := q.Get(t.Context(), id)
	if err != nil || job.Status != compute.StatusQueued || job.Attempt != 1 || !job.RunAt.After(time.Now()) {
		t.Fatalf("after Drain the job is %+v (%v); want queued after its first attempt, due later", job, err)
	}
}

func TestDrainAppliesTheOptions(t *testing.T) {
	t.Parallel()
	q := computetest.NewQueue(t)
	enqueue(t, q, compute.Job{Queue: "emails", Config: `{}`})
	var wrapped atomic.Int32
	counts := computetest.Drain(t, q, map[string]compute.Handler{"emails": returns(nil, errors.New("down"))},
		computetest.WithBackoff(func(int) time.Duration { return 0 }),
		computetest.WithMaxAttempts(3),
		computetest.WithMiddleware(func(next compute.Handler) compute.Handler {
			return func(ctx context.Context, job *compute.Job) ([]string, error) {
				wrapped.Add(1)
				return next(ctx, job)
			}
		}))
	if want := (computetest.Counts{Retried: 2, Failed: 1}); counts != want || wrapped.Load() != 3 {
		t.Fatalf("Drain = %+v with %d middleware calls, want %+v and 3: the queue's MaxAttempts ends it", counts, wrapped.Load(), want)
	}
}

func TestDrainOfEmptyQueuesReturnsAtOnce(t *testing.T) {
	t.Parallel()
	q := computetest.NewQueue(t)
	if counts := computetest.Drain(t, q, map[string]compute.Handler{"emails": returns(nil, nil)}); counts != (computetest.Counts{}) {
		t.Fatalf("Drain of an empty queue = %+v, want zero counts", counts)
	}
}
