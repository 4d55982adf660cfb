package computetest_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/computetest"
)

// returns is a handler that returns outputs and err.
func returns(outputs []string, err error) compute.Handler {
	return func(context.Context, *compute.Job) ([]string, error) { return outputs, err }
}

// attempt is one handler behaviour and what WorkOne should make of it.
type attempt struct {
	name    string
	h       compute.Handler
	opts    []computetest.WorkOption
	result  computetest.Result
	status  compute.Status
	errText string // in Outcome.Err and, unless snoozed, in the job's errors
}

// attempts are the behaviours the WorkOne tests run, each on a job of its own.
func attempts() []attempt {
	boom := errors.New("boom")
	return []attempt{
		{"success", returns([]string{"out.png"}, nil), nil, computetest.Complete, compute.StatusComplete, ""},
		{"plain error", returns(nil, boom), nil, computetest.Retried, compute.StatusQueued, "boom"},
		{"permanent", returns(nil, compute.Permanent(boom)), nil, computetest.Failed, compute.StatusFailed, "permanent: boom"},
		{"snooze", returns(nil, compute.Snooze(time.Hour)), nil, computetest.Snoozed, compute.StatusQueued, "snoozed"},
		{"snooze at the queue's last attempt", returns(nil, compute.Snooze(time.Hour)),
			[]computetest.WorkOption{computetest.WithMaxAttempts(1)}, computetest.Snoozed, compute.StatusQueued, "snoozed"},
		{"queue's MaxAttempts spent", returns(nil, boom), []computetest.WorkOption{computetest.WithMaxAttempts(1)},
			computetest.Failed, compute.StatusFailed, "queue allows 1 attempts: boom"},
		{"queue's backoff", returns(nil, boom), []computetest.WorkOption{computetest.WithBackoff(func(int) time.Duration { return time.Hour })},
			computetest.Retried, compute.StatusQueued, "boom"},
		{"panic", func(context.Context, *compute.Job) ([]string, error) { panic("kaput") }, nil,
			computetest.Retried, compute.StatusQueued, "panic: kaput"},
		{"timeout", func(ctx context.Context, _ *compute.Job) ([]string, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}, []computetest.WorkOption{computetest.WithTimeout(50 * time.Millisecond)},
			computetest.Retried, compute.StatusQueued, "compute: job timed out after 50ms: context deadline exceeded"},
		{"bad output name", returns([]string{"out.png", ""}, nil), nil, computetest.Failed, compute.StatusFailed,
			"permanent: handler returned compute: invalid file names: output files[1] is empty"},
	}
}

func TestWorkOneWritesWhatAWorkerWould(t *testing.T) {
	t.Parallel()
	for _, tc := range attempts() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			q := computetest.NewQueue(t)
			id := enqueue(t, q, compute.Job{Queue: "emails", Config: `{}`})[0]
			out := computetest.WorkOne(t, q, "emails", tc.h, tc.opts...)
			if out.Result != tc.result || out.Job.ID != id || out.Job.Status != tc.status || out.Job.Attempt != 1 {
				t.Fatalf("WorkOne = %s, job %s %s attempt %d; want %s, job %s %s attempt 1 (err %v)",
					out.Result, out.Job.ID, out.Job.Status, out.Job.Attempt, tc.result, id, tc.status, out.Err)
			}
			if tc.errText == "" {
				if out.Err != nil || !slices.Equal(out.Job.OutputFiles, []string{"out.png"}) {
					t.Fatalf("success: err %v, stored outputs %q; want nil and [out.png]", out.Err, out.Job.OutputFiles)
				}
				return
			}
			if out.Err == nil || !strings.Contains(out.Err.Error(), tc.errText) {
				t.Fatalf("Outcome.Err = %v, want it to contain %q", out.Err, tc.errText)
			}
			if tc.result == computetest.Snoozed {
				if out.Job.Snoozes != 1 || len(out.Job.Errors) != 0 || time.Until(out.Job.RunAt) < 50*time.Minute {
					t.Fatalf("snoozed job: snoozes %d, errors %v, run_at in %s; want 1, none, an hour", out.Job.Snoozes, out.Job.Errors, time.Until(out.Job.RunAt))
				}
				return
			}
			if len(out.Job.Errors) != 1 || !strings.Contains(out.Job.Errors[0].Error, tc.errText) {
				t.Fatalf("stored errors %+v, want one holding %q", out.Job.Errors, tc.errText)
			}
			if tc.result == computetest.Retried && !out.Job.RunAt.After(out.Job.Grabbed) {
				t.Fatalf("retried job runs at %s, not after its claim at %s: no backoff", out.Job.RunAt, out.Job.Grabbed)
			}
		})
	}
}

func TestWorkOneTakesTheClaimOrderAndBackoff(t *testing.T) {
	t.Parallel()
	q := computetest.NewQueue(t)
	ids := enqueue(t, q,
		compute.Job{Queue: "emails", Config: `{"n": 1}`, Priority: 5},
		compute.Job{Queue: "emails", Config: `{"n": 2}`, Priority: 1},
		compute.Job{Queue: "emails", Config: `{"n": 3}`, Delay: time.Hour},
	)
	var seen []string
	record := func(_ context.Context, job *compute.Job) ([]string, error) {
		seen = append(seen, job.Config)
		return nil, errors.New("again")
	}
	first := computetest.WorkOne(t, q, "emails", record, computetest.WithBackoff(func(int) time.Duration { return 0 }))
	second := computetest.WorkOne(t, q, "emails", record) // the same job: its backoff was zero (1µs)
	third := computetest.WorkOne(t, q, "emails", record)  // the other: the first now waits out the default backoff
	if first.Job.ID != ids[1] || second.Job.ID != ids[1] || second.Job.Attempt != 2 || third.Job.ID != ids[0] {
		t.Fatalf("WorkOne took %s, %s (attempt %d), %s; want the priority-1 job twice, then the priority-5 job",
			first.Job.ID, second.Job.ID, second.Job.Attempt, third.Job.ID)
	}
	if delay := time.Until(second.Job.RunAt); delay < 500*time.Millisecond {
		t.Fatalf("with the default backoff the retry runs in %s; want Backoff(2), about two seconds", delay)
	}
	if !slices.Equal(seen, []string{`{"n": 2}`, `{"n": 2}`, `{"n": 1}`}) {
		t.Fatalf("the handler saw configs %q", seen)
	}
}

func TestWorkOneRunsMiddlewareFirstOutermost(t *testing.T) {
	t.Parallel()
	q := computetest.NewQueue(t)
	enqueue(t, q, compute.Job{Queue: "emails", Config: `{}`})
	var order []string
	wrap := func(name string) compute.Middleware {
		return func(next compute.Handler) compute.Handler {
			return func(ctx context.Context, job *compute.Job) ([]string, error) {
				order = append(order, name+" in")
				out, err := next(ctx, job)
				order = append(order, name+" out")
				return out, err
			}
		}
	}
	h := func(context.Context, *compute.Job) ([]string, error) {
		order = append(order, "handler")
		return nil, nil
	}
	out := computetest.WorkOne(t, q, "emails", h, computetest.WithMiddleware(wrap("a"), wrap("b")))
	if out.Result != computetest.Complete || !slices.Equal(order, []string{"a in", "b in", "handler", "b out", "a out"}) {
		t.Fatalf("result %s, calls %q; want complete, a around b around the handler", out.Result, order)
	}
}

func TestWorkOneLosesACancelledJob(t *testing.T) {
	t.Parallel()
	q := computetest.NewQueue(t, compute.WithLease(time.Second)) // renewals every third of a second
	id := enqueue(t, q, compute.Job{Queue: "emails", Config: `{}`})[0]
	h := func(ctx context.Context, job *compute.Job) ([]string, error) {
		if err := q.Cancel(ctx, job.ID, "changed my mind"); err != nil {
			return nil, err
		}
		<-ctx.Done() // the next renewal finds the job is no longer ours
		return []string{"late.png"}, nil
	}
	out := computetest.WorkOne(t, q, "emails", h)
	if out.Result != computetest.Lost || out.Job.ID != id || out.Job.Status != compute.StatusFailed || len(out.Job.OutputFiles) != 0 {
		t.Fatalf("WorkOne = %s, job %s %s with outputs %q; want lost, the job failed by the cancel, nothing written",
			out.Result, out.Job.ID, out.Job.Status, out.Job.OutputFiles)
	}
}

func TestWorkOneFailsWithoutARunnableJob(t *testing.T) {
	t.Parallel()
	q := computetest.NewQueue(t)
	h := returns(nil, nil)
	msg := failure(t, func(tb testing.TB) { computetest.WorkOne(tb, q, "emails", h) })
	if !strings.Contains(msg, `no runnable job in queue "emails": it holds no jobs at all`) {
		t.Errorf("WorkOne on an empty queue failed with %q", msg)
	}
	id := enqueue(t, q, compute.Job{Queue: "emails", Config: `{"later": true}`, Delay: time.Hour})[0]
	msg = failure(t, func(tb testing.TB) { computetest.WorkOne(tb, q, "emails", h) })
	if !strings.Contains(msg, `no runnable job in queue "emails"`) || !strings.Contains(msg, id.String()) {
		t.Errorf("WorkOne with only a later job failed with %q; want it to list job %s", msg, id)
	}
}

// TestWorkOneWritesWhatAWorkerWrites runs the same handler on two jobs, one
// through a real Worker (Drain) and one through WorkOne, and compares what
// each attempt left in the database.
func TestWorkOneWritesWhatAWorkerWrites(t *testing.T) {
	t.Parallel()
	for _, tc := range attempts() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			q := computetest.NewQueue(t)
			ids := enqueue(t, q, compute.Job{Queue: "worker", Config: `{}`}, compute.Job{Queue: "workone", Config: `{}`})
			computetest.Drain(t, q, map[string]compute.Handler{"worker": tc.h}, tc.opts...)
			computetest.WorkOne(t, q, "workone", tc.h, tc.opts...)
			var jobs [2]*compute.Job
			for i, id := range ids {
				job, err := q.Get(t.Context(), id)
				if err != nil {
					t.Fatal(err)
				}
				jobs[i] = job
			}
			w, o := jobs[0], jobs[1]
			if w.Status != o.Status || w.Attempt != o.Attempt || w.Snoozes != o.Snoozes ||
				!slices.Equal(w.OutputFiles, o.OutputFiles) || len(w.Errors) != len(o.Errors) {
				t.Fatalf("Worker wrote %s attempt %d snoozes %d outputs %q errors %d; WorkOne wrote %s attempt %d snoozes %d outputs %q errors %d",
					w.Status, w.Attempt, w.Snoozes, w.OutputFiles, len(w.Errors), o.Status, o.Attempt, o.Snoozes, o.OutputFiles, len(o.Errors))
			}
			if len(w.Errors) > 0 {
				// The first line: a panic's stack differs in its frames.
				first := func(s string) string { line, _, _ := strings.Cut(s, "\n"); return line }
				if a, b := first(w.Errors[0].Error), first(o.Errors[0].Error); a != b {
					t.Fatalf("Worker recorded %q, WorkOne %q", a, b)
				}
			}
			// Both wait the same time to run again, give or take the
			// backoff's jitter and the time between the two writes.
			if w.Status == compute.StatusQueued {
				wWait, oWait := w.RunAt.Sub(w.Grabbed), o.RunAt.Sub(o.Grabbed)
				if wWait < oWait*3/4-time.Second || wWait > oWait*4/3+time.Second {
					t.Fatalf("Worker's job runs again %s after its claim, WorkOne's %s", wWait, oWait)
				}
			}
		})
	}
}
