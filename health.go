package compute

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
)

// Health is a Worker's answer to "am I healthy", for a liveness or
// readiness probe; see [Worker.Health] and [Worker.HealthHandler].
type Health struct {
	// Live is false when a handler is stuck: it has run past its queue's
	// Timeout and a further 2 s without returning (it ignores its
	// context), so its slot is lost until the process restarts.
	Live bool `json:"live"`
	// Ready is true while Run works (it was called and has not begun to
	// stop), the worker's last successful statement is less than one
	// lease ([WithLease]) old, and neither its claims (of some queue) nor
	// its outcome writes have been failing for a lease or longer. A
	// running worker sends a statement at least every third of a lease
	// (the registry refresh), so a stale one means the database does not
	// answer it; failing claims or writes mean it answers but the worker
	// cannot take or finish jobs (a lock, a permission, a trigger).
	Ready bool `json:"ready"`
	// Running is true from Run's start until it begins to stop.
	Running bool `json:"running"`
	// Listening is true while the worker's listener delivers
	// notifications; false with PollOnly, or while it reconnects (jobs are
	// then found by polling). It does not make the worker unready.
	Listening bool `json:"listening"`
	// LastContact is when the last statement of the worker's loops
	// (claims, outcome writes, renewals, registry refreshes, maintenance)
	// succeeded (an idle worker's polls count); LastClaim and LastWrite
	// when the last claim and outcome write did. Zero means never.
	LastContact time.Time `json:"last_contact"`
	LastClaim   time.Time `json:"last_claim"`
	LastWrite   time.Time `json:"last_write"`
	// ClaimsFailing is when the claims of some queue began to fail
	// without a success since (the earliest such queue), WritesFailing
	// when outcome writes did; zero (and left out of the JSON) while they
	// succeed.
	ClaimsFailing time.Time `json:"claims_failing,omitzero"`
	WritesFailing time.Time `json:"writes_failing,omitzero"`
	// Running jobs, and those of them that are stuck (see Live).
	Jobs  int `json:"jobs"`
	Stuck int `json:"stuck"`
}

// healthState is what Health reads: the worker's loops store into it
// (each its own field), Health loads; times are Unix nanoseconds. The
// claims' failures are per queue (queueState.claimsFailing), since one
// queue's fetcher succeeding says nothing of another's.
type healthState struct {
	running       atomic.Bool
	listening     atomic.Bool
	contact       atomic.Int64
	claim         atomic.Int64
	write         atomic.Int64
	writesFailing atomic.Int64 // the completer's
}

// ok records a successful statement now, and in also (claim or write),
// ending the streak of failures that failing (if not nil) holds.
func (h *healthState) ok(also, failing *atomic.Int64) {
	now := time.Now().UnixNano()
	h.contact.Store(now)
	if also != nil {
		also.Store(now)
	}
	if failing != nil {
		failing.Store(0)
	}
}

// failed records a failed claim or write: failing holds when their
// streak of failures began.
func (h *healthState) failed(failing *atomic.Int64) {
	failing.CompareAndSwap(0, time.Now().UnixNano())
}

func unixTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// Health reports the worker's health now. It is safe for concurrent use
// and sends no statement: it reads what the worker's loops recorded.
func (w *Worker) Health() Health {
	h := Health{
		Running:     w.health.running.Load(),
		Listening:   w.health.listening.Load(),
		LastContact: unixTime(w.health.contact.Load()),
		LastClaim:   unixTime(w.health.claim.Load()),
		LastWrite:   unixTime(w.health.write.Load()),
	}
	for _, qs := range w.queues {
		if since := qs.claimsFailing.Load(); since != 0 && (h.ClaimsFailing.IsZero() || since < h.ClaimsFailing.UnixNano()) {
			h.ClaimsFailing = unixTime(since)
		}
	}
	h.WritesFailing = unixTime(w.health.writesFailing.Load())
	h.Jobs, h.Stuck = w.running.stuck(w.queues, handlerReturnWait)
	h.Live = h.Stuck == 0
	lease := w.q.opts.lease
	recent := func(t time.Time) bool { return !t.IsZero() && time.Since(t) < lease }
	failingLong := func(since time.Time) bool { return !since.IsZero() && !recent(since) }
	h.Ready = h.Running && recent(h.LastContact) && !failingLong(h.ClaimsFailing) && !failingLong(h.WritesFailing)
	return h
}

// HealthHandler returns an http.Handler for probes. A request whose path
// ends in /readyz is a readiness probe: 200 when [Health].Ready, else
// 503. Any other path is a liveness probe (mount it at /healthz): 200
// when [Health].Live, else 503. A database that does not answer makes
// the worker unready but not dead, since a restart would not bring it
// back. The body is the Health as JSON. Mount it at both paths:
//
//	mux.Handle("/healthz", w.HealthHandler())
//	mux.Handle("/readyz", w.HealthHandler())
func (w *Worker) HealthHandler() http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		h := w.Health()
		good := h.Live
		if strings.HasSuffix(r.URL.Path, "/readyz") {
			good = h.Ready
		}
		rw.Header().Set("Content-Type", "application/json")
		rw.Header().Set("Cache-Control", "no-store")
		if !good {
			rw.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(rw).Encode(h)
	})
}

// stuck counts the jobs whose handlers have not returned, and those of
// them that ran past their queue's Timeout plus grace.
func (s *runningSet) stuck(queues map[string]*queueState, grace time.Duration) (jobs, stuck int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.jobs {
		if r.finished {
			continue
		}
		jobs++
		if qs := queues[r.job.Queue]; qs != nil && qs.cfg.Timeout > 0 && time.Since(r.started) > qs.cfg.Timeout+grace {
			stuck++
		}
	}
	return jobs, stuck
}
