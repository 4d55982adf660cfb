package compute

import (
	"context"
	"time"
)

// registerWorkerSQL records (or refreshes) a running worker and the queues it
// serves.
const registerWorkerSQL = `
INSERT INTO compute.workers (worker, queues) VALUES ($1, $2)
ON CONFLICT (worker) DO UPDATE SET queues = excluded.queues, seen = now()`

// unregisterWorkerSQL removes a worker that stopped cleanly.
const unregisterWorkerSQL = `DELETE FROM compute.workers WHERE worker = $1`

// forgetWorkersSQL drops registry rows of workers that vanished without
// unregistering (killed processes) an hour ago.
const forgetWorkersSQL = `DELETE FROM compute.workers WHERE seen < now() - interval '1 hour'`

// refreshRegistry records this worker and its queues in compute.workers at
// once and then at every heartbeat interval, until ctx ends.
func (w *Worker) refreshRegistry(ctx context.Context) {
	interval := w.heartbeatInterval()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		w.register(ctx, interval)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// register records this worker and its queues in compute.workers (for
// Explain and operators); the heartbeat loop refreshes it.
func (w *Worker) register(ctx context.Context, timeout time.Duration) {
	names := make([]string, 0, len(w.queues))
	for name := range w.queues {
		names = append(names, name)
	}
	callCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if _, err := w.q.pool.Exec(callCtx, registerWorkerSQL, w.q.opts.workerID, names); err != nil {
		w.logFailure(ctx, "worker registry update failed", err)
	} else {
		w.health.ok(nil, nil)
	}
}

// unregister removes this worker from compute.workers after a clean stop.
func (w *Worker) unregister() {
	ctx, cancel := context.WithTimeout(w.final, 5*time.Second)
	defer cancel()
	if _, err := w.q.pool.Exec(ctx, unregisterWorkerSQL, w.q.opts.workerID); err != nil {
		w.log.Warn("could not remove this worker from the registry; it ages out in an hour", "err", err)
	}
}

// workerFresh is how recently a worker must have renewed its registry row to
// count as serving its queues: three refreshes.
const workerFresh = 3 * registryRefresh

// registryRefresh is the longest time between a running worker's registry
// refreshes.
const registryRefresh = 20 * time.Second
