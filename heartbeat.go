package compute

import (
	"context"
	"errors"
	"slices"
	"time"
)

// heartbeat renews the leases of every job this worker holds, in one
// statement, three times per lease (at least every 20 s). It also renews
// at once when the listener heard of a cancel of a job this worker runs
// (recheck). A job the
// database says is no longer ours is cancelled; when renewals keep
// failing, a job whose lease has run out by our own clock is cancelled
// too, because another worker may be running it by now.
func (w *Worker) heartbeat(ctx context.Context) {
	interval := w.heartbeatInterval()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-w.recheck:
		}
		w.renew(ctx, interval)
	}
}

// heartbeatInterval is three renewals per lease, and at least every 20 s so
// the worker registry (which Explain reads as "seen in the last minute")
// stays fresh with long leases.
func (w *Worker) heartbeatInterval() time.Duration {
	return min(w.q.opts.lease/3, registryRefresh)
}

// renew is one renewal round of the heartbeat loop; timeout bounds it.
func (w *Worker) renew(ctx context.Context, timeout time.Duration) {
	// Jobs whose outcome waits for the completer are left out: the
	// completer writes them within moments. A job that finishes after
	// this look is still renewed, maybe while the completer writes it:
	// both lock their rows in id order (see inIDOrder), so one waits for
	// the other and neither deadlocks.
	held := w.running.unfinished()
	if len(held) == 0 {
		return
	}
	sent := time.Now()
	callCtx, cancel := context.WithTimeout(ctx, timeout)
	lost := make(map[JobID]bool)
	var err error
	for chunk := range slices.Chunk(held, maxWrite) {
		var chunkLost *LeaseLostError
		if e := w.q.Heartbeat(callCtx, chunk...); errors.As(e, &chunkLost) {
			for _, id := range chunkLost.IDs {
				lost[id] = true
			}
		} else if e != nil {
			err = e
		}
	}
	cancel()
	if err != nil {
		w.log.Warn("lease renewal failed", "jobs", len(held), "err", err)
	} else {
		w.health.ok(nil, nil)
	}
	marked := w.running.renewed(held, sent, err == nil, lost, w.q.opts.lease)
	w.obs.renewed(len(held), marked, time.Since(sent), err)
}

// cancelRunning is the listener's hook for a compute_cancel notification
// about a job. Any role may send one, and a late one may name an earlier
// attempt of a job this worker runs again, so it only makes the heartbeat
// loop renew at once: a job the database says is no longer this worker's
// is cancelled then, and its result is not written.
func (w *Worker) cancelRunning(id JobID) {
	if w.running.has(id) {
		signal(w.recheck)
	}
}
