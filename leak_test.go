package compute_test

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/computeplatform/compute"
)

// ourGoroutines returns the stacks of the goroutines running code of this
// module's library (the root package and internal/listen), but not the
// test's own.
func ourGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var ours []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if (strings.Contains(g, "computeplatform/compute.") || strings.Contains(g, "computeplatform/compute/internal/listen.")) &&
			!strings.Contains(g, "_test.go") {
			ours = append(ours, g)
		}
	}
	return ours
}

// TestCloseLeavesNoGoroutines: through PgBouncer with a direct URL, a
// Worker (its listener, loops and registry), Wait and Follow (the journal
// hub's listener) run, then the Worker stops and the Queue closes; no
// goroutine of the library is left. Not parallel: it reads every
// goroutine of the process.
func TestCloseLeavesNoGoroutines(t *testing.T) {
	if n := len(ourGoroutines()); n != 0 {
		t.Skipf("%d goroutines of the library run before the test (another test's)", n)
	}
	direct, pooled := behindBouncer(t)
	rec, obsOpt := newListeningRecorder()
	q, err := compute.Open(t.Context(), pooled, compute.WithDirectURL(direct), obsOpt)
	if err != nil {
		t.Fatal(err)
	}
	w, err := compute.NewWorker(q, compute.WorkerConfig{
		PollInterval: 100 * time.Millisecond,
		Queues:       map[string]compute.QueueConfig{"leak": {Handler: func(context.Context, *compute.Job) ([]string, error) { return nil, nil }}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- w.Run(context.Background()) }()
	receive(t, rec.on, liveness, "the worker's listener to deliver")
	id := enqueue(t, q, compute.Job{Queue: "leak"})
	if _, err := q.Wait(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	followed := make(chan error, 1)
	go func() { followed <- q.Follow(ctx, compute.Cursor{}, func([]compute.Event) error { return nil }) }()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.Shutdown(shutdownCtx); err != nil {
		t.Fatal(err)
	}
	if err := receive(t, ran, liveness, "Run to return"); err != nil {
		t.Fatal(err)
	}
	stop()
	receive(t, followed, liveness, "Follow to return")
	q.Close()
	deadline := time.Now().Add(liveness)
	for left := ourGoroutines(); len(left) > 0; left = ourGoroutines() {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines of the library left %s after Close:\n%s", len(left), liveness, strings.Join(left, "\n\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
