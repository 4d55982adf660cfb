package computetest_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/computetest"
)

// An Example has no *testing.T, so these make one of their own: exampleT
// runs the cleanups when the example ends and panics where a test would
// fail. In your tests, pass the test's t.
type exampleT struct {
	testing.TB // methods the helpers never call
	cleanups   []func()
}

func (e *exampleT) Helper()                           {}
func (e *exampleT) Context() context.Context          { return context.Background() }
func (e *exampleT) Cleanup(f func())                  { e.cleanups = append(e.cleanups, f) }
func (e *exampleT) Fatalf(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }
func (e *exampleT) Fatal(args ...any)                 { panic(fmt.Sprint(args...)) }
func (e *exampleT) Error(args ...any)                 { panic(fmt.Sprint(args...)) }
func (e *exampleT) Skip(args ...any)                  { panic(fmt.Sprint(args...)) }

func (e *exampleT) done() {
	for i := len(e.cleanups) - 1; i >= 0; i-- {
		e.cleanups[i]()
	}
}

func ExampleNewQueue() {
	t := &exampleT{} // in a test: its t
	defer t.done()

	q := computetest.NewQueue(t) // a fresh database, dropped at the end of the test
	id, err := q.Enqueue(t.Context(), compute.Job{Queue: "emails", Config: `{"to": "ada@example.com"}`})
	if err != nil {
		t.Fatal(err)
	}
	job, err := q.Get(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println(job.Queue, job.Status)
	// Output: emails queued
}

func ExampleRequireEnqueued() {
	t := &exampleT{}
	defer t.done()
	q := computetest.NewQueue(t)

	// The code under test enqueues a welcome email for a new customer.
	signup := func(ctx context.Context, email string) error {
		_, err := q.Enqueue(ctx, compute.Job{
			Queue:        "emails",
			Config:       fmt.Sprintf(`{"to": %q, "template": "welcome", "lang": "en"}`, email),
			PartitionKey: "acme",
		})
		return err
	}
	if err := signup(t.Context(), "ada@example.com"); err != nil {
		t.Fatal(err)
	}

	jobs := computetest.RequireEnqueued(t, q, computetest.Match{
		Queue:  "emails",
		Config: `{"to": "ada@example.com", "template": "welcome"}`, // a subset of the config
	})
	fmt.Println(len(jobs), jobs[0].PartitionKey)
	computetest.RequireNotEnqueued(t, q, computetest.Match{Queue: "emails", Config: `{"template": "goodbye"}`})
	// Output: 1 acme
}

func ExampleRequireEnqueuedTx() {
	t := &exampleT{}
	defer t.done()
	q := computetest.NewQueue(t)

	tx, err := q.Pool().Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(t.Context())
	if _, err := q.EnqueueTx(t.Context(), tx, compute.Job{Queue: "invoices", Config: `{"order": 42}`}); err != nil {
		t.Fatal(err)
	}
	// Inside the transaction the job is there; outside, not before the commit.
	computetest.RequireEnqueuedTx(t, tx, computetest.Match{Queue: "invoices", Config: `{"order": 42}`})
	computetest.RequireNotEnqueued(t, q, computetest.Match{Queue: "invoices"})
	fmt.Println("visible only inside the transaction")
	// Output: visible only inside the transaction
}

func ExampleWorkOne() {
	t := &exampleT{}
	defer t.done()
	q := computetest.NewQueue(t)
	if _, err := q.Enqueue(t.Context(), compute.Job{Queue: "thumbnails", Config: `{"width": 256}`}); err != nil {
		t.Fatal(err)
	}

	out := computetest.WorkOne(t, q, "thumbnails", func(ctx context.Context, job *compute.Job) ([]string, error) {
		return []string{"thumb-256.png"}, nil
	})
	fmt.Println(out.Result, out.Job.Status, out.Job.OutputFiles)

	if _, err := q.Enqueue(t.Context(), compute.Job{Queue: "thumbnails", Config: `{"width": -1}`}); err != nil {
		t.Fatal(err)
	}
	out = computetest.WorkOne(t, q, "thumbnails", func(ctx context.Context, job *compute.Job) ([]string, error) {
		return nil, errors.New("unreachable storage")
	})
	fmt.Println(out.Result, out.Job.Status, out.Job.Errors[0].Error)
	// Output:
	// complete complete [thumb-256.png]
	// retried queued unreachable storage
}

func ExampleDrain() {
	t := &exampleT{}
	defer t.done()
	q := computetest.NewQueue(t)
	for _, width := range []int{64, 128, -1} {
		if _, err := q.Enqueue(t.Context(), compute.Job{Queue: "thumbnails", Config: fmt.Sprintf(`{"width": %d}`, width)}); err != nil {
			t.Fatal(err)
		}
	}

	counts := computetest.Drain(t, q, map[string]compute.Handler{
		"thumbnails": func(ctx context.Context, job *compute.Job) ([]string, error) {
			if job.Config == `{"width": -1}` {
				return nil, compute.Permanent(errors.New("negative width"))
			}
			return []string{"thumb.png"}, nil
		},
	})
	fmt.Printf("%+v\n", counts)
	// Output: {Complete:2 Retried:0 Snoozed:0 Failed:1}
}
