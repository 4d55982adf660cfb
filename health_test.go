package compute_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/computeplatform/compute"
)

// probe sends a GET for path to h and returns the status and the Health
// of the body.
func probe(t *testing.T, h http.Handler, path string) (int, compute.Health) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	var got compute.Health
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatalf("%s: body %q: %v", path, rec.Body.String(), err)
	}
	return rec.Code, got
}

// TestWorkerHealthReportsAStuckHandler: a worker that runs is ready and
// live; a handler that ignores its context past its queue's Timeout (and
// the 2 s a cancelled handler gets to return) makes /healthz answer 503
// while /readyz stays 200, until the handler returns. Before Run and
// after it stopped, /readyz is 503.
func TestWorkerHealthReportsAStuckHandler(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	release := make(chan struct{})
	w, err := compute.NewWorker(q, compute.WorkerConfig{PollInterval: 50 * time.Millisecond, Queues: map[string]compute.QueueConfig{
		"q": {Timeout: 100 * time.Millisecond, Handler: func(context.Context, *compute.Job) ([]string, error) {
			<-release // ignores its context
			return nil, nil
		}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	h := w.HealthHandler()
	if code, _ := probe(t, h, "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz before Run: %d, want 503", code)
	}
	r := runWorker(t, w, context.Background())
	waitUntil(t, liveness, "the worker to be ready after a claim", func() bool {
		got := w.Health()
		return got.Ready && !got.LastClaim.IsZero()
	})
	if code, got := probe(t, h, "/readyz"); code != http.StatusOK || !got.Running {
		t.Errorf("/readyz of a running worker: %d %+v, want 200 and running", code, got)
	}
	enqueue(t, q, compute.Job{Queue: "q"})
	waitUntil(t, liveness, "the handler to be stuck", func() bool { return w.Health().Stuck == 1 })
	if code, got := probe(t, h, "/healthz"); code != http.StatusServiceUnavailable || got.Live || got.Jobs != 1 {
		t.Errorf("/healthz with a stuck handler: %d %+v, want 503, not live, 1 job", code, got)
	}
	if code, _ := probe(t, h, "/readyz"); code != http.StatusOK {
		t.Errorf("/readyz with a stuck handler: %d, want 200", code)
	}
	close(release)
	waitUntil(t, liveness, "the handler to return", func() bool { return w.Health().Jobs == 0 })
	if code, got := probe(t, h, "/healthz"); code != http.StatusOK || !got.Live {
		t.Errorf("/healthz once the handler returned: %d %+v, want 200", code, got)
	}
	waitUntil(t, liveness, "the outcome to be written", func() bool { return !w.Health().LastWrite.IsZero() })
	r.stop(t)
	if code, got := probe(t, h, "/readyz"); code != http.StatusServiceUnavailable || got.Running {
		t.Errorf("/readyz after Run: %d %+v, want 503, not running", code, got)
	}
}

// TestWorkerUnreadyWhileTheDatabaseIsAway: a worker whose database stops
// answering (a blackholed proxy) becomes unready within about a lease,
// stays live, and is ready again once the database answers.
func TestWorkerUnreadyWhileTheDatabaseIsAway(t *testing.T) {
	t.Parallel()
	p, connString := proxied(t)
	q := openQueue(t, connString, compute.WithMigrate(), compute.WithLease(2*time.Second))
	w := startWorker(t, q, compute.WorkerConfig{PollInterval: 100 * time.Millisecond, Queues: map[string]compute.QueueConfig{
		"q": {Handler: func(context.Context, *compute.Job) ([]string, error) { return nil, nil }},
	}})
	h := w.HealthHandler()
	waitUntil(t, liveness, "the worker to be ready and listening", func() bool {
		got := w.Health()
		return got.Ready && got.Listening
	})
	p.Blackhole(true)
	p.CutAll()
	waitUntil(t, liveness, "the worker to be unready", func() bool { return !w.Health().Ready })
	code, got := probe(t, h, "/readyz")
	if code != http.StatusServiceUnavailable || !got.Running {
		t.Errorf("/readyz while the database is away: %d %+v, want 503 and running", code, got)
	}
	if time.Since(got.LastContact) < 2*time.Second {
		t.Errorf("unready with a last contact %s ago, within the 2 s lease", time.Since(got.LastContact))
	}
	if code, _ := probe(t, h, "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz while the database is away: %d, want 200 (a restart would not help)", code)
	}
	waitUntil(t, liveness, "the listener to report polling", func() bool { return !w.Health().Listening })
	p.Blackhole(false)
	waitUntil(t, liveness, "the worker to be ready again", func() bool { return w.Health().Ready })
}

// TestWorkerUnreadyWhileClaimsOrWritesFail: a database that answers the
// worker's other statements (registry, maintenance) but refuses its claims,
// or its outcome writes, makes the worker unready within about a lease, and
// ready again once they succeed.
func TestWorkerUnreadyWhileClaimsOrWritesFail(t *testing.T) {
	t.Parallel()
	for _, refused := range []string{"in-progress", "complete"} {
		t.Run(refused, func(t *testing.T) {
			t.Parallel()
			q := newQueue(t, compute.WithLease(2*time.Second))
			w := startWorker(t, q, compute.WorkerConfig{PollInterval: 100 * time.Millisecond, Queues: map[string]compute.QueueConfig{
				"q": {Handler: func(context.Context, *compute.Job) ([]string, error) { return nil, nil }},
			}})
			waitUntil(t, liveness, "the worker to be ready and listening", func() bool {
				got := w.Health()
				return got.Ready && got.Listening
			})
			// Updates of a job to the refused status fail: the claim's
			// (in-progress) or Complete's (complete).
			mustExec(t, q.Pool(), `CREATE FUNCTION compute.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
				BEGIN
					IF NEW.status = TG_ARGV[0] THEN RAISE EXCEPTION 'refused by the test'; END IF;
					RETURN NEW;
				END $$`)
			mustExec(t, q.Pool(), `CREATE TRIGGER refuse BEFORE UPDATE ON compute.jobs FOR EACH ROW EXECUTE FUNCTION compute.refuse('`+refused+`')`)
			enqueue(t, q, compute.Job{Queue: "q"})
			waitUntil(t, liveness, "the worker to be unready", func() bool { return !w.Health().Ready })
			got := w.Health()
			if failing := map[string]time.Time{"in-progress": got.ClaimsFailing, "complete": got.WritesFailing}[refused]; failing.IsZero() || !got.Running {
				t.Errorf("unready while updates to %s fail: %+v, want running, and the failures' start", refused, got)
			}
			mustExec(t, q.Pool(), `DROP TRIGGER refuse ON compute.jobs`)
			waitUntil(t, liveness, "the worker to be ready again", func() bool { return w.Health().Ready })
		})
	}
}

// TestWorkerNotListeningAfterRun: once Run returned, Health (and so the
// Observer's listener gauge) no longer says the worker listens.
func TestWorkerNotListeningAfterRun(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	q := newQueue(t, compute.WithObserver(rec.observer()))
	w := startWorker(t, q, compute.WorkerConfig{Queues: map[string]compute.QueueConfig{
		"q": {Handler: func(context.Context, *compute.Job) ([]string, error) { return nil, nil }},
	}})
	waitUntil(t, liveness, "the listener", func() bool { return w.Health().Listening })
	w.stop(t)
	if w.Health().Listening {
		t.Error("Health says listening after Run returned")
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if n := len(rec.listening); n == 0 || rec.listening[n-1] {
		t.Errorf("the Observer's listener states %v, want a last false", rec.listening)
	}
}
