package compute

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"sync"
	"time"
)

// runningJob is a claimed job until its outcome is written. Its fields
// are touched only under its runningSet's lock.
type runningJob struct {
	job     *Job
	cancel  context.CancelCauseFunc
	started time.Time // when its claim was sent
	renewed time.Time // when the last successful lease renewal was sent
	lost    bool      // the lease is gone: never write an outcome
	// cancelHeard: a cancel notification named the job, so a loss the
	// recheck finds is reported as a cancel.
	cancelHeard bool
	finished    bool // the handler returned and its outcome is queued
}

// runningSet is the jobs this worker claimed and has not written back, one
// attempt per job id. The fetchers add to it, the job goroutines mark
// their jobs finished, the heartbeat marks them renewed or lost, and the
// completer drops them once written. Each method takes its lock once.
type runningSet struct {
	mu   sync.Mutex
	jobs map[JobID]*runningJob
}

// add records a claimed job whose lease counts from sent. An older attempt
// of the same job (this worker claimed it again after its own lease ran
// out: a stall or an outage longer than the lease) is fenced off: it is
// marked lost and cancelled.
func (s *runningSet) add(job *Job, cancel context.CancelCauseFunc, sent time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.jobs[job.ID]; old != nil {
		old.lost = true
		old.cancel(errLeaseLost)
	}
	s.jobs[job.ID] = &runningJob{job: job, cancel: cancel, started: sent, renewed: sent}
}

// markFinished records that job's handler returned and its outcome is queued.
func (s *runningSet) markFinished(job *Job) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.jobs[job.ID]; r != nil && r.job == job {
		r.finished = true
	}
}

// forget drops the attempts of jobs from the set, unless a newer attempt of
// the same job replaced them there.
func (s *runningSet) forget(jobs ...*Job) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, job := range jobs {
		if r := s.jobs[job.ID]; r != nil && r.job == job {
			delete(s.jobs, job.ID)
		}
	}
}

// holds reports whether job is still this worker's to write: neither lost
// nor replaced by a newer attempt.
func (s *runningSet) holds(job *Job) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.jobs[job.ID]
	return r != nil && r.job == job && !r.lost
}

// knows reports whether the set has job's attempt.
func (s *runningSet) knows(job *Job) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.jobs[job.ID]
	return r != nil && r.job.Attempt == job.Attempt
}

// has reports whether the set has an attempt of the job id, and marks it
// as one a cancel notification named.
func (s *runningSet) has(id JobID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.jobs[id]; r != nil {
		r.cancelHeard = true
		return true
	}
	return false
}

// cancelHeard reports whether a cancel notification named job's attempt.
func (s *runningSet) cancelHeard(job *Job) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.jobs[job.ID]
	return r != nil && r.job == job && r.cancelHeard
}

// unfinished lists the jobs whose handlers still run and whose leases are
// still held: those a renewal must cover.
func (s *runningSet) unfinished() []*Job {
	s.mu.Lock()
	defer s.mu.Unlock()
	held := make([]*Job, 0, len(s.jobs))
	for _, r := range s.jobs {
		if !r.lost && !r.finished {
			held = append(held, r.job)
		}
	}
	return held
}

// renewed records a renewal round sent at sent for held: a job the database
// said is no longer ours (lost), and any job whose last successful renewal
// is older than lease by the local clock (ok is false when the round
// failed), is marked lost and cancelled. It returns how many it marked.
func (s *runningSet) renewed(held []*Job, sent time.Time, ok bool, lost map[JobID]bool, lease time.Duration) (marked int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, j := range held {
		r := s.jobs[j.ID]
		if r == nil || r.job != j {
			continue // written back, or replaced by a newer attempt
		}
		if lost[j.ID] && r.finished {
			// It finished during the renewal, and the completer may have
			// written it before the renewal reached its row: then the
			// database no longer counts it ours, though nothing was lost.
			// The completer's own fenced write reports a lease truly lost.
			continue
		}
		if ok && !lost[j.ID] {
			r.renewed = sent
		}
		if lost[j.ID] || time.Since(r.renewed) > lease {
			r.lost = true
			r.cancel(errLeaseLost)
			marked++
		}
	}
	return marked
}

// abandon marks lost every job whose handler has not returned, so that
// whatever it returns later is never written, and lists them.
func (s *runningSet) abandon() []*Job {
	s.mu.Lock()
	defer s.mu.Unlock()
	var back []*Job
	for _, r := range s.jobs {
		if !r.lost && !r.finished {
			r.lost = true
			back = append(back, r.job)
		}
	}
	return back
}

// launch registers a claimed job and runs its handler in a goroutine owned
// by jobs (Run waits for it). sent is when the claim was sent: the lease
// counts from then by the local clock.
func (w *Worker) launch(jobs *group, qs *queueState, job *Job, sent time.Time) {
	ctx, cancel := context.WithCancelCause(jobs.ctx)
	w.running.add(job, cancel, sent)
	// The slot is the handler's: it frees when the handler has returned
	// and its outcome is queued, whatever became of the job.
	w.obs.jobStarted(job)
	jobs.wg.Go(func() {
		defer cancel(nil)
		defer qs.release()
		// The handler's context may carry the Observer's span; finish
		// reads the cause of the worker's own.
		handlerCtx, end := w.obs.traceAttempt(ctx, job)
		start := time.Now()
		outputs, err := w.call(handlerCtx, qs, job)
		outcome := w.finish(ctx, qs, job, outputs, err)
		w.obs.jobFinished(qs.name, outcome, time.Since(start), err, end)
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
// completer; it returns the attempt's outcome, for the Observer.
func (w *Worker) finish(ctx context.Context, qs *queueState, job *Job, outputs []string, err error) Outcome {
	cause := context.Cause(ctx)
	if err == nil {
		// Bad output names would make Complete reject the whole batch
		// they are written in: they fail this job alone, for good.
		if bad := validFiles(outputs, "output files"); bad != nil {
			err = Permanent(fmt.Errorf("handler returned %w", bad))
		}
	}
	result := OutcomeComplete
	switch {
	case cause == errLeaseLost:
		result = OutcomeLost
		if w.running.cancelHeard(job) {
			result = OutcomeCancelled
		}
		w.running.forget(job)
		w.log.Warn("job lost its lease or was cancelled; result discarded", "job", job.ID, "queue", job.Queue)
		return result
	case err != nil && cause == errShutdown:
		err = Snooze(0) // interrupted by our own shutdown: hand back, attempt not spent
		result = OutcomeHandedBack
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
		result = OutcomeRetry
		if errors.Is(o.err, ErrPermanent) || job.Spent() >= job.MaxAttempts {
			result = OutcomeFailed
		}
	} else if err != nil && result != OutcomeHandedBack {
		result = OutcomeSnoozed
	}
	w.running.markFinished(job)
	w.addUnwritten(qs, 1)
	w.outcomes.push(o)
	return result
}

// signal makes a non-blocking send on a capacity-1 channel: a full channel
// already holds a pending signal.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
