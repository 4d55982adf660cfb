package compute

import (
	"context"
	"time"
)

// Observer receives the facts a Queue and its Workers learn as they run:
// for metrics (the otelcompute module turns them into OpenTelemetry
// instruments) or for logs of one's own. Set it with [WithObserver]; every
// field is optional, and a nil field (or no Observer) costs a nil check.
//
// The functions are called inline, from the goroutine that learned the
// fact (a job's goroutine, a fetcher, the completer, the heartbeat), and
// from many of them at once: they must be safe for concurrent use and
// return quickly, without blocking or calling the database, or they hold
// up the worker. Durations are measured by the local clock, except the
// wait of JobStarted. An err is the call's error, nil on success.
//
// Observer is a struct of functions rather than an interface, as
// net/http/httptrace's ClientTrace is, so that later versions can report
// more facts without breaking the Observers already written.
type Observer struct {
	// Enqueued reports one Submit or SubmitTx call (and so every Enqueue
	// variant): how many jobs it was given, and how long it took.
	Enqueued func(n int, d time.Duration, err error)
	// Claimed reports one claim of a Worker's fetcher for queue: how many
	// jobs it returned (jobs may come with an error) and how long it took.
	Claimed func(queue string, n int, d time.Duration, err error)
	// JobStarted reports a claimed job about to run. wait is from when
	// it became runnable (its run_at) to its claim, both by the database
	// clock.
	JobStarted func(queue string, wait time.Duration)
	// JobFinished reports an attempt whose handler returned: its outcome,
	// as the worker decided it before writing it, and the handler's run
	// time. A job whose handler never returns is not reported.
	JobFinished func(queue string, outcome Outcome, d time.Duration)
	// Wrote reports one batch write of outcomes: kind is "complete" (a
	// Complete), "fail" (a Fail: retries, failures and snoozes) or
	// "hand_back" (jobs a stopping worker returns). n is the batch's
	// size; an error matching [ErrLeaseLost] means some of its jobs were
	// no longer this worker's.
	Wrote func(kind string, n int, d time.Duration, err error)
	// Renewed reports one lease renewal round of a Worker's heartbeat: n
	// jobs renewed, lost of them found to be no longer this worker's (or
	// whose lease ran out by the local clock while renewals failed).
	Renewed func(n, lost int, d time.Duration, err error)
	// Rescued reports n expired jobs of dead or stalled workers that a
	// Worker's maintenance round handed back (Queue.RequeueStale).
	Rescued func(n int)
	// Listening reports a Worker's listener: true once it delivers
	// notifications, false while the worker finds jobs by polling only
	// (reported once at Run's start with PollOnly, or behind a pooler in
	// transaction mode without WithDirectURL).
	Listening func(listening bool)

	// TraceEnqueue, for tracing, is called once per Submit or SubmitTx
	// (and so every Enqueue variant) after the jobs were validated and
	// before they are written, with the caller's ctx and the jobs it was
	// given (to read during the call only). It returns the trace context to store with each job that
	// has no TraceContext of its own (a propagator's carrier, such as W3C
	// traceparent and tracestate; nil stores none), and end, called with
	// the call's error once the jobs are written or not (nil: not called).
	// A carrier that is larger than 1 KiB as JSON, or holds a NUL byte or
	// invalid UTF-8, is dropped: the jobs are stored without one, since a
	// trace must never cost a job.
	TraceEnqueue func(ctx context.Context, jobs []Job) (carrier map[string]string, end func(err error))
	// TraceAttempt, for tracing, is called as each attempt of a claimed
	// job starts, in the goroutine that runs its handler, with the
	// context the handler would get; job.TraceContext is the producer's
	// carrier, or nil. It returns the context to give the handler instead
	// (one that carries a span, say; it must not end sooner than ctx),
	// and end, called once the handler has returned and the worker
	// decided the attempt's outcome, with that outcome and the handler's
	// error (nil end: not called). A handler that never returns never
	// ends. computetest's WorkOne and Drain call it as a Worker does.
	TraceAttempt func(ctx context.Context, job *Job) (context.Context, func(outcome Outcome, err error))
}

// Outcome is how an attempt ended, as [Observer].JobFinished reports it.
type Outcome string

// The outcomes of an attempt.
const (
	OutcomeComplete   Outcome = "complete"    // the handler succeeded
	OutcomeRetry      Outcome = "retry"       // failed; the job runs again after its backoff
	OutcomeFailed     Outcome = "failed"      // failed for good: Permanent, or no attempts left
	OutcomeSnoozed    Outcome = "snoozed"     // the handler returned Snooze
	OutcomeCancelled  Outcome = "cancelled"   // the job was cancelled while it ran; nothing is written
	OutcomeLost       Outcome = "lost"        // the lease was lost; nothing is written
	OutcomeHandedBack Outcome = "handed_back" // a stopping worker cut it short and queued it again
)

// [WithObserver] sets the Observer of a Queue and of the Workers made on
// it; nil (the default) observes nothing.
func WithObserver(o *Observer) Option { return func(opts *options) { opts.observer = o } }

// Observer returns the Observer set with [WithObserver], or nil: for
// packages that run a job's attempt outside a Worker (computetest's
// WorkOne) and report it as a Worker would.
func (q *Queue) Observer() *Observer { return q.opts.observer }

// The Observer's calls, each a no-op on a nil Observer or field.

// traceEnqueue returns the Observer's encoded carrier for a batch of jobs
// ("" when none, or when it is dropped: see TraceEnqueue) and its end.
func (o *Observer) traceEnqueue(ctx context.Context, jobs []Job) (string, func(error)) {
	if o == nil || o.TraceEnqueue == nil {
		return "", nil
	}
	carrier, end := o.TraceEnqueue(ctx, jobs)
	enc, _ := encodeTraceContext(carrier)
	return enc, end
}

// enqueued reports a Submit of n jobs that took d, and ends its trace.
func (o *Observer) enqueued(n int, d time.Duration, err error, end func(error)) {
	if end != nil {
		end(err)
	}
	if o != nil && o.Enqueued != nil {
		o.Enqueued(n, d, err)
	}
}

func (o *Observer) claimed(queue string, n int, d time.Duration, err error) {
	if o != nil && o.Claimed != nil {
		o.Claimed(queue, n, d, err)
	}
}

func (o *Observer) jobStarted(job *Job) {
	if o != nil && o.JobStarted != nil && !job.Grabbed.IsZero() && !job.RunAt.IsZero() {
		o.JobStarted(job.Queue, max(job.Grabbed.Sub(job.RunAt), 0))
	}
}

// traceAttempt returns the context for job's handler and the end of its
// trace (nil when not traced).
func (o *Observer) traceAttempt(ctx context.Context, job *Job) (context.Context, func(Outcome, error)) {
	if o == nil || o.TraceAttempt == nil {
		return ctx, nil
	}
	return o.TraceAttempt(ctx, job)
}

// jobFinished reports an attempt's outcome and handler run time d, and
// ends its trace with the handler's err.
func (o *Observer) jobFinished(queue string, outcome Outcome, d time.Duration, err error, end func(Outcome, error)) {
	if end != nil {
		end(outcome, err)
	}
	if o != nil && o.JobFinished != nil {
		o.JobFinished(queue, outcome, d)
	}
}

func (o *Observer) wrote(kind string, n int, d time.Duration, err error) {
	if o != nil && o.Wrote != nil && n > 0 {
		o.Wrote(kind, n, d, err)
	}
}

func (o *Observer) renewed(n, lost int, d time.Duration, err error) {
	if o != nil && o.Renewed != nil {
		o.Renewed(n, lost, d, err)
	}
}

func (o *Observer) rescued(n int) {
	if o != nil && o.Rescued != nil && n > 0 {
		o.Rescued(n)
	}
}

func (o *Observer) listening(on bool) {
	if o != nil && o.Listening != nil {
		o.Listening(on)
	}
}
