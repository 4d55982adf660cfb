package compute_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/computeplatform/compute"
)

func explain(t *testing.T, q *compute.Queue, id compute.JobID) *compute.Explanation {
	t.Helper()
	e, err := q.Explain(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func wantReasons(t *testing.T, e *compute.Explanation, want ...compute.ReasonKind) {
	t.Helper()
	var got []compute.ReasonKind
	for _, r := range e.Reasons {
		got = append(got, r.Kind)
		if r.Text == "" {
			t.Errorf("reason %s has no text", r.Kind)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("reasons %v, want %v\n%s", got, want, e)
	}
}

// TestExplainNamesWhatHoldsAJobBack sets up each cause in turn and checks
// that Explain names it, and only it.
func TestExplainNamesWhatHoldsAJobBack(t *testing.T) {
	t.Parallel()
	q := newQueue(t, compute.WithWorkerID("explainer"))
	ctx := t.Context()
	// A worker registered for queue "e", so no-workers does not show.
	mustExec(t, q.Pool(), `INSERT INTO compute.workers (worker, queues) VALUES ('w1', '{e}')`)

	later := enqueue(t, q, compute.Job{Queue: "e", Delay: time.Hour})
	wantReasons(t, explain(t, q, later), compute.ReasonScheduled)

	ids := enqueueAll(t, q, []compute.Job{{Queue: "e", Priority: 0}, {Queue: "e", Priority: 0}, {Queue: "e", Priority: 5}})
	e := explain(t, q, ids[2])
	wantReasons(t, e, compute.ReasonBehind)
	if !strings.Contains(e.Reasons[0].Text, "2 runnable jobs of queue e") {
		t.Errorf("behind text %q does not count 2 jobs ahead", e.Reasons[0].Text)
	}
	wantReasons(t, explain(t, q, ids[0]), compute.ReasonBehind) // nothing holds it back: next claim

	if err := q.Pause(ctx, "e"); err != nil {
		t.Fatal(err)
	}
	wantReasons(t, explain(t, q, ids[0]), compute.ReasonPaused)
	if err := q.Resume(ctx, "e"); err != nil {
		t.Fatal(err)
	}

	setSettings(t, q, "e", compute.QueueSettings{MaxRunning: 1})
	running := claimN(t, q, "e", 5)
	if len(running) != 1 {
		t.Fatalf("claimed %d under MaxRunning 1", len(running))
	}
	wantReasons(t, explain(t, q, ids[1]), compute.ReasonQueueCap)
	wantReasons(t, explain(t, q, running[0].ID), compute.ReasonRunning)
	backdateLease(t, q, running[0].ID)
	wantReasons(t, explain(t, q, running[0].ID), compute.ReasonStaleLease)
	complete(t, q, running...)
	if e := explain(t, q, running[0].ID); !e.Has(compute.ReasonFinished) {
		t.Errorf("a lost-lease job: %s", e)
	}

	setSettings(t, q, "k", compute.QueueSettings{KeyMaxRunning: 1, KeyRateLimit: 1, RatePeriod: time.Hour})
	kids := enqueueAll(t, q, []compute.Job{{Queue: "k", PartitionKey: "acme"}, {Queue: "k", PartitionKey: "acme"}})
	claimN(t, q, "k", 5)
	wantReasons(t, explain(t, q, kids[1]), compute.ReasonKeyCap, compute.ReasonKeyRate, compute.ReasonNoWorkers)

	setSettings(t, q, "r", compute.QueueSettings{RateLimit: 1, RatePeriod: time.Hour})
	rids := enqueueAll(t, q, []compute.Job{{Queue: "r"}, {Queue: "r"}})
	complete(t, q, claimN(t, q, "r", 5)...)
	wantReasons(t, explain(t, q, rids[1]), compute.ReasonQueueRate, compute.ReasonNoWorkers)

	if _, err := q.Explain(ctx, compute.JobID{1}); !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("Explain of an unknown id: %v", err)
	}
}

// TestExplainSaysAWorkerOfAnotherQueueRescuesAStaleJob holds a job of queue
// q with an expired lease and a dead holder while the only live worker
// serves queue other: Explain must say that any running worker hands it
// back (every maintenance round rescues every queue), and that worker must
// then do so. With no worker at all, nothing will.
func TestExplainSaysAWorkerOfAnotherQueueRescuesAStaleJob(t *testing.T) {
	t.Parallel()
	q := newQueue(t, compute.WithWorkerID("dead-holder"))
	id := enqueue(t, q, compute.Job{Queue: "q"})
	if jobs := claimN(t, q, "q", 1); len(jobs) != 1 {
		t.Fatalf("claimed %d jobs, want 1", len(jobs))
	}
	backdateLease(t, q, id)

	e := explain(t, q, id)
	wantReasons(t, e, compute.ReasonStaleLease, compute.ReasonNoWorkers)
	if !strings.Contains(e.String(), "no worker at all has been seen in the last 1m0s, so nothing will hand it back until one runs") {
		t.Errorf("with no worker running: %s", e)
	}

	mustExec(t, q.Pool(), `INSERT INTO compute.workers (worker, queues) VALUES ('other-worker', '{other}')`)
	e = explain(t, q, id)
	wantReasons(t, e, compute.ReasonStaleLease, compute.ReasonNoWorkers)
	if s := e.String(); strings.Contains(s, "nothing will") ||
		!strings.Contains(e.Reasons[0].Text, "any running worker, whatever its queues (1 worker seen in the last 1m0s), hands it back") ||
		!strings.Contains(e.Reasons[1].Text, "no worker serving queue q has been seen in the last 1m0s, so once handed back it waits for one") {
		t.Errorf("with a worker of queue other running: %s", e)
	}

	// What Explain promised: a worker serving only queue other hands it back.
	startWorker(t, q, compute.WorkerConfig{Queues: map[string]compute.QueueConfig{
		"other": {Handler: func(context.Context, *compute.Job) ([]string, error) { return nil, nil }},
	}})
	waitUntil(t, 30*time.Second, "the worker of queue other to hand the job back", func() bool {
		return status(t, q, id) == compute.StatusQueued
	})
}
