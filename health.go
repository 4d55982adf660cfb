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
	// stop) and the worker's last successful statement is less than one
	// lease ([WithLease]) old. A running worker sends one at least every
	// third of a lease (the registry refresh), so a stale one means the
	// database does not answer it.
	Ready bool `json:"ready"`
	// Running is true from Run's start until it begins to stop.
	Running bool `json:"running"`
	// Listening is true while the worker's listener delivers
	// notifications; false with PollOnly, or while it reconnects (jobs are
	// then found by polling). It does not make the worker unready.
	Listening bool `json:"listening"`
	// LastContact is when the last statement of the worker's loops
	// (claims, outcome writes, renewals, registry refreshes, maintenance)
	// succeeded; LastClaim when the worker last looked for jobs (a claim,
	// or its poll of all its queues), LastWrite when an outcome write last
	// succeeded. Zero means never.
	LastContact time.Time `json:"last_contact"`
	LastClaim   time.Time `json:"last_claim"`
	LastWrite   time.Time `json:"last_write"`
	// Running jobs, and those of them that are stuck (see Live).
	Jobs  int `json:"jobs"`
	Stuck int `json:"stuck"`
}

// healthState is what Health reads: the worker's loops store into it
// (each its own field), Health loads; times are Unix nanoseconds.
type healthState struct {
	running   atomic.Bool
	listening atomic.Bool
	contact   atomic.Int64
	claim     atomic.Int64
	write     atomic.Int64
}

// ok records a successful statement now, and in also (claim or write).
func (h *healthState) ok(also *atomic.Int64) {
	now := time.Now().UnixNano()
	h.contact.Store(now)
	if also != nil {
		also.Store(now)
	}
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
	h.Jobs, h.Stuck = w.running.stuck(w.queues, handlerReturnWait)
	h.Live = h.Stuck == 0
	h.Ready = h.Running && !h.LastContact.IsZero() && time.Since(h.LastContact) < w.q.opts.lease
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
