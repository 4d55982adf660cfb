package compute

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/computeplatform/compute/internal/backoff"
)

// maintain runs one round of the worker's cluster-wide housekeeping:
// stale leases, retention, priority aging, the worker registry, and a
// warning about long transactions that hold back vacuum. Every
// step is safe to run from many processes at once. Failures are logged.
func (w *Worker) maintain(ctx context.Context) {
	callCtx, cancel := context.WithTimeout(ctx, w.callTimeout())
	defer cancel()
	if n, err := w.q.RequeueStale(callCtx); err != nil {
		w.logFailure(ctx, "requeue of stale jobs failed", err)
	} else {
		w.health.ok(nil, nil)
		if n > 0 {
			w.log.Info("requeued stale jobs", "jobs", n)
			w.obs.rescued(n)
		}
	}
	r := w.cfg.Retention
	if r.ExpireAfter > 0 {
		n, err := w.q.Expire(callCtx, r.ExpireAfter)
		w.logRound(ctx, "expired unread finished jobs", n, err)
	}
	for status, age := range map[Status]time.Duration{
		StatusExpired: r.DeleteExpiredAfter, StatusComplete: r.DeleteCompleteAfter, StatusFailed: r.DeleteFailedAfter,
	} {
		if age > 0 {
			n, err := w.q.Purge(callCtx, status, age)
			w.logRound(ctx, "deleted old "+string(status)+" jobs", n, err)
		}
	}
	if r.JournalAfter > 0 {
		n, err := w.q.purgeJournal(callCtx, r.JournalAfter)
		w.logRound(ctx, "deleted old journal events", n, err)
		// Copied events sort after every event this server writes, so
		// the purge never reaches them.
		if _, err := w.q.Head(callCtx); errors.Is(err, ErrJournalFromAnotherCluster) {
			w.log.Warn("the journal purge keeps events copied from another cluster until Queue.RebaseJournal runs", "err", err)
		}
	}
	n, err := w.q.ageQueues(callCtx)
	w.logRound(ctx, "raised the priority of waiting jobs", n, err)
	_, err = w.q.pool.Exec(callCtx, forgetWorkersSQL)
	w.logRound(ctx, "", 0, err)
	w.checkHorizon(callCtx)
}

// logRound logs what a maintenance step did, or its failure.
func (w *Worker) logRound(ctx context.Context, did string, n int, err error) {
	switch {
	case err != nil:
		w.logFailure(ctx, "maintenance failed", err)
	case n > 0:
		w.log.Info(did, "jobs", n)
	}
}

func (w *Worker) logFailure(ctx context.Context, msg string, err error) {
	if ctx.Err() == nil {
		w.log.Warn(msg, "err", err)
	}
}

// maintenance runs the maintenance round (see maintain) every MaintenanceInterval
// (with jitter), and once at start.
func (w *Worker) maintenance(ctx context.Context) {
	for {
		w.maintain(ctx)
		if !backoff.Sleep(ctx, w.cfg.MaintenanceInterval/2+rand.N(w.cfg.MaintenanceInterval/2+1)) {
			return
		}
	}
}

// horizonCheckEvery spaces the maintenance round's horizon checks.
const horizonCheckEvery = time.Minute

// checkHorizon warns, at most once per check, about a holder of the xmin
// horizon older than the configured limit.
func (w *Worker) checkHorizon(ctx context.Context) {
	if w.cfg.LongTransactionWarning < 0 || time.Since(w.horizonChecked) < horizonCheckEvery {
		return
	}
	w.horizonChecked = time.Now()
	h, err := w.q.OldestHorizon(ctx)
	if err != nil {
		w.logFailure(ctx, "could not check for long transactions", err)
		return
	}
	if h != nil && h.Held > w.cfg.LongTransactionWarning {
		w.log.Warn("a long-running transaction holds back vacuum: claims slow down and the journal waits until it ends",
			"kind", h.Kind, "who", h.Who, "detail", h.Detail, "held", h.Held.Round(time.Second), "xids_behind", h.XIDs)
	}
}
