package computetest

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"testing"
	"time"

	"github.com/computeplatform/compute"
)

// Result is what became of one attempt of a job.
type Result string

// The results of an attempt, as [WorkOne] reports them and [Drain] counts them.
const (
	// Complete: the handler succeeded and the job is complete.
	Complete Result = "complete"
	// Retried: the attempt failed with attempts left; the job is queued
	// again after its backoff.
	Retried Result = "retried"
	// Snoozed: the handler returned compute.Snooze; the job is queued
	// again after the snooze without spending an attempt.
	Snoozed Result = "snoozed"
	// Failed: the job failed for good (compute.Permanent, attempts
	// spent, or bad output file names).
	Failed Result = "failed"
	// Lost: the claim was lost while the handler ran (the job was
	// cancelled, or its lease ran out); nothing was written.
	Lost Result = "lost"
)

// Outcome is what [WorkOne] did with one job.
type Outcome struct {
	// Job is the job as stored after the outcome was written (read with
	// Queue.Get), so Status, RunAt, Attempt, Snoozes, Errors and
	// OutputFiles show the write.
	Job *compute.Job
	// Result says what became of the attempt.
	Result Result
	// Err is the attempt's error as the Worker would record it: the
	// handler's error, wrapped when it timed out, panicked (with the
	// stack) or spent the queue's MaxAttempts; nil when it succeeded.
	Err error
	// Outputs are the output files the handler returned.
	Outputs []string
}

// WorkOption sets how [WorkOne] and [Drain] run handlers, as the fields of
// [compute.QueueConfig] and [compute.WorkerConfig] do for a Worker.
type WorkOption func(*workConfig)

type workConfig struct {
	timeout     time.Duration
	maxAttempts int
	backoff     func(attempt int) time.Duration
	middleware  []compute.Middleware
}

// WithTimeout is QueueConfig.Timeout: the handler's context ends after d
// and the attempt fails.
func WithTimeout(d time.Duration) WorkOption { return func(c *workConfig) { c.timeout = d } }

// WithMaxAttempts is QueueConfig.MaxAttempts: an attempt that fails when
// the job has spent n attempts fails it for good.
func WithMaxAttempts(n int) WorkOption { return func(c *workConfig) { c.maxAttempts = n } }

// WithBackoff is QueueConfig.Backoff: the wait before the next attempt
// after a failed one, given the attempts spent; nil means compute.Backoff.
func WithBackoff(f func(attempt int) time.Duration) WorkOption {
	return func(c *workConfig) { c.backoff = f }
}

// WithMiddleware is WorkerConfig.Middleware: it wraps the handler, the
// first entry outermost.
func WithMiddleware(m ...compute.Middleware) WorkOption {
	return func(c *workConfig) { c.middleware = append(c.middleware, m...) }
}

// errLeaseLost and errTimeout are the causes WorkOne cancels a handler's
// context with; errTimeout's text is the Worker's, since it is recorded.
var (
	errLeaseLost = errors.New("computetest: the job was cancelled or its lease was lost")
	errTimeout   = errors.New("compute: job timed out")
)

// WorkOne claims one runnable job of queue with [compute.Queue.Claim] (so the
// queue's rules, priorities and run times apply) and runs h on it as a
// [compute.Worker] would: through the middleware, with the timeout, renewing
// the lease while h runs, turning a panic into the attempt's error with
// its stack, and then writing the outcome with Complete or Fail, fenced by
// the claim. A plain error is retried after the backoff while attempts
// remain, compute.Permanent fails the job, compute.Snooze queues it again
// without spending an attempt, and output file names Complete refuses fail
// the job for good. The attempt is reported to the Queue's Observer
// ([compute.WithObserver]) as a Worker's is: JobStarted, TraceAttempt
// (the handler gets its context, so a span) and JobFinished; the claim and
// the write go through the Queue's own calls, which report nothing. It fails the test when no job is runnable (listing the
// queue's jobs) or a database call fails, not when the handler does: that
// is the Outcome.
//
// It differs from a Worker in what a single synchronous call cannot do: the
// handler's context is the test's (t.Context), not cancelled by a
// notification or a worker's shutdown; a lost lease is found at the next
// renewal (a third of the lease) or at the write; and nothing is logged.
func WorkOne(t testing.TB, q *compute.Queue, queue string, h compute.Handler, opts ...WorkOption) Outcome {
	t.Helper()
	cfg := workConfig{backoff: compute.Backoff}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.backoff == nil {
		cfg.backoff = compute.Backoff
	}
	for i := len(cfg.middleware) - 1; i >= 0; i-- {
		h = cfg.middleware[i](h)
	}
	ctx := t.Context()
	claimed, err := q.Claim(ctx, queue, 1)
	if err != nil {
		t.Fatalf("computetest: claiming a job of queue %q: %v", queue, err)
	}
	if len(claimed) == 0 {
		tx, err := q.Pool().Begin(ctx)
		if err != nil {
			t.Fatalf("computetest: no runnable job in queue %q (and listing its jobs failed: %v)", queue, err)
		}
		defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
		found, err := lookup(ctx, tx, foundInsteadSQL, queue)
		switch {
		case err != nil:
			t.Fatalf("computetest: no runnable job in queue %q (and listing its jobs failed: %v)", queue, err)
		case len(found) == 0:
			t.Fatalf("computetest: no runnable job in queue %q: it holds no jobs at all", queue)
		}
		t.Fatalf("computetest: no runnable job in queue %q (paused, or its jobs run later or are not queued); its jobs, newest first:%s", queue, list(found))
	}
	job := claimed[0]

	obs := q.Observer()
	handlerCtx, end := observeStart(ctx, obs, job)
	start := time.Now()
	out := Outcome{}
	out.Outputs, out.Err = run(handlerCtx, q, job, h, cfg)
	ran := time.Since(start)
	handlerErr := out.Err
	lost := errors.Is(out.Err, errLeaseLost)
	recorded := out.Err
	if !lost {
		recorded, lost = write(t, q, job, out.Outputs, out.Err, cfg)
	}
	stored, err := q.Get(ctx, job.ID)
	if err != nil {
		t.Fatalf("computetest: reading job %s back after its attempt: %v", job.ID, err)
	}
	out.Job = stored
	switch {
	case lost:
		out.Result = Lost
	case recorded == nil && stored.Status == compute.StatusComplete:
		out.Result = Complete
	case stored.Snoozes > job.Snoozes:
		out.Result = Snoozed // the handler's own error: a Worker does not wrap a Snooze
		recorded = out.Err
	case stored.Status == compute.StatusFailed:
		out.Result = Failed
	default:
		out.Result = Retried
	}
	out.Err = recorded
	observeEnd(obs, end, job.Queue, out.Result, ran, handlerErr)
	return out
}

// outcomes maps WorkOne's results to the Worker's outcomes, for the Observer.
var outcomes = map[Result]compute.Outcome{
	Complete: compute.OutcomeComplete, Retried: compute.OutcomeRetry, Snoozed: compute.OutcomeSnoozed,
	Failed: compute.OutcomeFailed, Lost: compute.OutcomeLost,
}

// observeStart reports a claimed job to the Queue's Observer as a
// Worker's job goroutine does (JobStarted, TraceAttempt) and returns the
// handler's context and the end of the attempt's trace.
func observeStart(ctx context.Context, obs *compute.Observer, job *compute.Job) (context.Context, func(compute.Outcome, error)) {
	if obs == nil {
		return ctx, nil
	}
	if obs.JobStarted != nil && !job.Grabbed.IsZero() && !job.RunAt.IsZero() {
		obs.JobStarted(job.Queue, max(job.Grabbed.Sub(job.RunAt), 0))
	}
	if obs.TraceAttempt != nil {
		return obs.TraceAttempt(ctx, job)
	}
	return ctx, nil
}

// observeEnd reports the attempt's outcome, as a Worker does once the
// handler returned: its trace ends and JobFinished is called.
func observeEnd(obs *compute.Observer, end func(compute.Outcome, error), queue string, result Result, ran time.Duration, handlerErr error) {
	if end != nil {
		end(outcomes[result], handlerErr)
	}
	if obs != nil && obs.JobFinished != nil {
		obs.JobFinished(queue, outcomes[result], ran)
	}
}

// run calls the handler as the Worker's call does, renewing the lease
// meanwhile; an attempt whose lease is lost returns an error matching
// errLeaseLost.
func run(ctx context.Context, q *compute.Queue, job *compute.Job, h compute.Handler, cfg workConfig) (outputs []string, err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	renewing := make(chan struct{})
	defer func() { <-renewing }()
	defer cancel(nil) // stops the renewals before run waits for them
	go func() {
		defer close(renewing)
		renew(ctx, cancel, q, job)
	}()

	callCtx := ctx
	if cfg.timeout > 0 {
		var stop context.CancelFunc
		callCtx, stop = context.WithTimeoutCause(ctx, cfg.timeout, errTimeout)
		defer stop()
	}
	func() {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
			}
		}()
		outputs, err = h(callCtx, job)
	}()
	switch {
	case context.Cause(ctx) == errLeaseLost:
		return outputs, fmt.Errorf("%w: result discarded", errLeaseLost)
	case context.Cause(callCtx) == errTimeout:
		if err == nil {
			err = errors.New("returned after the deadline")
		}
		err = fmt.Errorf("%w after %s: %w", errTimeout, cfg.timeout, err)
	}
	return outputs, err
}

// renew extends the job's lease every third of it, as a Worker's heartbeat
// does, until ctx ends; when the job is no longer the claim's (cancelled,
// or the lease ran out) it cancels the handler with errLeaseLost. Other
// errors are retried at the next round.
func renew(ctx context.Context, cancel context.CancelCauseFunc, q *compute.Queue, job *compute.Job) {
	lease := job.LeaseExpires.Sub(job.Grabbed)
	tick := time.NewTicker(max(lease/3, 100*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if err := q.Heartbeat(ctx, job); errors.Is(err, compute.ErrLeaseLost) {
				cancel(errLeaseLost)
				return
			}
		}
	}
}

// write records the attempt as the Worker's finish does. It returns the
// error it recorded (the handler's, wrapped when the queue's MaxAttempts
// is spent or the output names were refused) and whether the claim was
// lost before the write.
func write(t testing.TB, q *compute.Queue, job *compute.Job, outputs []string, handlerErr error, cfg workConfig) (recorded error, lost bool) {
	t.Helper()
	ctx := context.WithoutCancel(t.Context())
	recorded = handlerErr
	if recorded == nil {
		err := q.Complete(ctx, compute.Completion{Job: job, OutputFiles: outputs})
		switch {
		case err == nil:
			return nil, false
		case errors.Is(err, compute.ErrLeaseLost):
			return nil, true
		case !errors.Is(err, compute.ErrInvalidFiles):
			t.Fatalf("computetest: completing job %s: %v", job.ID, err)
		}
		// Names Complete refuses fail this job for good, as in a Worker,
		// which checks them itself; Complete's error names the job first
		// ("job <id>: ..."), the Worker's does not, so that layer goes.
		if inner := errors.Unwrap(err); inner != nil {
			err = inner
		}
		recorded = compute.Permanent(fmt.Errorf("handler returned %w", err))
	}
	// A Snooze cannot be told apart from outside the library, but Fail
	// sorts it out: it overrides both the Permanent and the RetryIn set
	// here, which the Worker does not set for it.
	if cfg.maxAttempts > 0 && job.Spent() >= cfg.maxAttempts {
		recorded = compute.Permanent(fmt.Errorf("queue allows %d attempts: %w", cfg.maxAttempts, recorded))
	}
	err := q.Fail(ctx, compute.Failure{
		Job:     job,
		Err:     recorded,
		RetryIn: max(cfg.backoff(job.Spent()), time.Microsecond), // 0 would mean Fail's default
	})
	switch {
	case errors.Is(err, compute.ErrLeaseLost):
		return recorded, true
	case err != nil:
		t.Fatalf("computetest: recording the failed attempt of job %s: %v", job.ID, err)
	}
	return recorded, false
}
