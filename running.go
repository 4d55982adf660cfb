package compute

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"time"
)

// runningJob is a claimed job until its outcome is written. cancel and
// renewed are set at start and then touched only under Worker.mu.
type runningJob struct {
	job      *Job
	cancel   context.CancelCauseFunc
	renewed  time.Time // when the last successful lease renewal was sent
	lost     bool      // the lease is gone: never write an outcome
	finished bool      // the handler returned and its outcome is queued
}

// launch registers a claimed job and runs its handler in a goroutine owned
// by jobs (Run waits for it). sent is when the claim was sent: the lease
// counts from then by the local clock.
func (w *Worker) launch(jobs *group, qs *queueState, job *Job, sent time.Time) {
	ctx, cancel := context.WithCancelCause(jobs.ctx)
	w.mu.Lock()
	if old := w.running[job.ID]; old != nil {
		// This worker claimed the job again after its own lease ran out
		// (a stall or an outage longer than the lease): the old attempt
		// is fenced off and must stop.
		old.lost = true
		old.cancel(errLeaseLost)
	}
	w.running[job.ID] = &runningJob{job: job, cancel: cancel, renewed: sent}
	w.mu.Unlock()
	// The slot is the handler's: it frees when the handler has returned
	// and its outcome is queued, whatever became of the job.
	jobs.wg.Go(func() {
		defer cancel(nil)
		defer qs.release()
		outputs, err := w.call(ctx, qs, job)
		w.finish(ctx, qs, job, outputs, err)
	})
}

// call runs the handler with the queue's timeout and turns a panic into
// the attempt's error, with its stack.
func (w *Worker) call(ctx context.Context, qs *queueState, job *Job) (outputs []string, err error) {
	if qs.cfg.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, qs.cfg.Timeout, errTimeout)
		defer cancel()
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
		}
	}()
	outputs, err = qs.handler(ctx, job)
	if context.Cause(ctx) == errTimeout {
		if err == nil {
			err = errors.New("returned after the deadline")
		}
		err = fmt.Errorf("%w after %s: %w", errTimeout, qs.cfg.Timeout, err)
	}
	return outputs, err
}

// finish decides what a finished attempt writes and queues it for the
// completer.
func (w *Worker) finish(ctx context.Context, qs *queueState, job *Job, outputs []string, err error) {
	cause := context.Cause(ctx)
	if err == nil {
		// Bad output names would make Complete reject the whole batch
		// they are written in: they fail this job alone, for good.
		if bad := validFiles(outputs, "output files"); bad != nil {
			err = Permanent(fmt.Errorf("handler returned %w", bad))
		}
	}
	switch {
	case cause == errLeaseLost:
		w.forget(job)
		w.log.Warn("job lost its lease or was cancelled; result discarded", "job", job.ID, "queue", job.Queue)
		return
	case err != nil && cause == errShutdown:
		err = Snooze(0) // interrupted by our own shutdown: hand back, attempt not spent
	}
	o := outcome{job: job, qs: qs, outputs: outputs, err: err}
	var snooze *snoozeError
	if err != nil && !errors.As(err, &snooze) {
		if qs.cfg.MaxAttempts > 0 && job.Spent() >= qs.cfg.MaxAttempts {
			o.err = Permanent(fmt.Errorf("queue allows %d attempts: %w", qs.cfg.MaxAttempts, err))
		}
		// The queue's backoff; at least 1µs, since 0 would mean Fail's default.
		o.retryIn = max(qs.cfg.Backoff(job.Spent()), time.Microsecond)
		first, _, _ := strings.Cut(o.err.Error(), "\n")
		w.log.Info("job attempt failed", "job", job.ID, "queue", job.Queue, "attempt", job.Spent(), "err", first)
	}
	w.mu.Lock()
	if r := w.running[job.ID]; r != nil && r.job == job {
		r.finished = true
	}
	qs.unwritten.Add(1)
	w.outcomes = append(w.outcomes, o)
	w.mu.Unlock()
	signal(w.outcomesAdded)
}

// signal makes a non-blocking send on a capacity-1 channel: a full channel
// already holds a pending signal.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// forget drops a job's attempt from the running set, unless a newer
// attempt of the same job replaced it there.
func (w *Worker) forget(job *Job) {
	w.mu.Lock()
	w.forgetLocked(job)
	w.mu.Unlock()
}

// forgetLocked is forget with w.mu held.
func (w *Worker) forgetLocked(job *Job) {
	if r := w.running[job.ID]; r != nil && r.job == job {
		delete(w.running, job.ID)
	}
}
