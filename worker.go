package compute

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Handler runs one job. It returns the job's output files, or an error:
// a plain error fails the attempt (retried with backoff while attempts
// remain), Permanent(err) fails the job now, and Snooze(d) runs it again
// after d without spending an attempt. A panic fails the attempt with the
// panic value and stack. ctx is cancelled when the job must stop: it was
// cancelled, its lease was lost, its timeout passed, or the worker is
// shutting down past its grace period. Handlers must return soon after.
type Handler func(ctx context.Context, job *Job) (outputFiles []string, err error)

// Middleware wraps every handler call, for metrics, tracing or logging
// around each job without changing the handlers.
type Middleware func(next Handler) Handler

// QueueConfig says how a Worker serves one queue.
type QueueConfig struct {
	// Handler runs the queue's jobs. Required.
	Handler Handler
	// Concurrency is how many of the queue's jobs run at once in this
	// worker; 0 means 10, at most 10,000. A job's slot frees when its
	// handler returns; the worker claims nothing more for the queue while
	// Concurrency finished jobs wait for their outcome to be written.
	Concurrency int
	// Timeout, when set, cancels a job's context after this long and
	// fails the attempt.
	Timeout time.Duration
	// MaxAttempts, when set, fails a job for good after this many
	// attempts even if the job itself allows more.
	MaxAttempts int
	// Backoff gives the wait before the next attempt after a failed one;
	// nil means the package's Backoff.
	Backoff func(attempt int) time.Duration
}

// WorkerConfig configures a Worker. Zero fields take their defaults.
type WorkerConfig struct {
	// Queues maps each queue name to how it is served. Required.
	Queues map[string]QueueConfig
	// Middleware wraps every handler call, the first entry outermost.
	Middleware []Middleware
	// PollInterval bounds how long a queue waits before looking for jobs
	// when no notification came: each wait is random in [1/2, 1] of it.
	// Default 1 s.
	PollInterval time.Duration
	// PollOnly turns off LISTEN, for PgBouncer in transaction mode; jobs
	// are then found by polling alone.
	PollOnly bool
	// StopTimeout is how long running jobs may finish after Run's context
	// ends, before their contexts are cancelled and they are handed back.
	// Default 30 s. (Shutdown takes its own deadline.)
	StopTimeout time.Duration
	// RescueInterval is how often this worker runs its maintenance round:
	// it hands back other workers' expired jobs (Queue.RequeueStale),
	// applies Retention and priority aging, and tidies the worker
	// registry. Default 10 s.
	RescueInterval time.Duration
	// Retention says how long finished jobs are kept; zero fields take
	// Retention's defaults (expire after 7 days unread, delete a week
	// later).
	Retention Retention
	// Periodic lists jobs to enqueue on a schedule. Every worker process
	// may list the same ones: each tick is enqueued once in the cluster.
	Periodic []PeriodicJob
	// LongTransactionWarning: once a minute the maintenance round looks
	// for the oldest transaction holding back vacuum (Queue.OldestHorizon)
	// and logs a warning when it is older than this. Default 1 minute
	// (under load a held snapshot slowed claims threefold within 10 s and
	// tenfold within a minute); negative turns the check off.
	LongTransactionWarning time.Duration
}

// Worker runs handlers for named queues with bounded concurrency: it claims
// jobs in batches, wakes on notifications (and polls), renews the leases of
// running jobs, writes outcomes in batches, hands back expired jobs of dead
// workers, and shuts down gracefully. Make one with NewWorker, then call Run.
type Worker struct {
	q      *Queue
	cfg    WorkerConfig
	log    *slog.Logger
	queues map[string]*queueState
	// schedules are the periodic jobs, checked by NewWorker.
	schedules []*schedule
	// horizonChecked is when the maintenance round last looked for long
	// transactions; only the rescue goroutine touches it.
	horizonChecked time.Time
	// writeGap is the package's writeGap; tests of the completer widen it.
	writeGap time.Duration
	// writing is held while the completer or the heartbeat loop sends its
	// statements. Both update this worker's rows, and PostgreSQL locks
	// the rows of an UPDATE ... FROM unnest(...) in no fixed order, so the
	// two deadlocked when they overlapped on a job that finished during a
	// renewal (seen in the bench's steady state; each deadlock stalls both
	// for deadlock_timeout, a second by default, before one is retried).
	writing sync.Mutex

	// stop is closed by Shutdown; shutdownCtx is Shutdown's deadline. Run
	// reads both; stopOnce guards the close.
	stop        chan struct{}
	stopOnce    sync.Once
	shutdownCtx context.Context
	done        chan struct{} // closed when Run returns

	// recheck (cap 1) asks the heartbeat loop for a renewal round now: a
	// compute_cancel notification named a job this worker runs. Any role
	// may send one, so it only makes the worker ask the database, whose
	// fenced renewal says which jobs are no longer ours.
	recheck chan struct{}
	// final ends the last writes of a stop (hand-backs, outcomes, the
	// registry row): Run cancels it stopGiveUp after the grace period, so
	// a stop ends whatever the database does.
	final       context.Context
	cancelFinal context.CancelFunc

	// mu guards the fields below. Written by Run, the job goroutines, the
	// completer, the heartbeat loop and the listener; read by all of them.
	mu       sync.Mutex
	started  bool
	running  map[JobID]*runningJob // claimed and not yet written back
	outcomes []outcome             // waiting for the completer
	flush    chan struct{}         // cap 1: outcomes were added
}

// queueState is one queue's serving state. wake and freed have capacity 1:
// a send that finds them full is already pending.
type queueState struct {
	name    string
	cfg     QueueConfig
	handler Handler
	slots   chan struct{} // one entry per job whose handler has not returned
	wake    chan struct{} // a notification or reconnect
	freed   chan struct{} // a slot was released or outcomes were written
	// unwritten counts the queue's finished jobs whose outcome waits for
	// the completer. The fetcher claims nothing while it reaches
	// Concurrency, so the jobs a worker holds (running or unwritten) stay
	// under twice Concurrency however far the completer falls behind.
	unwritten atomic.Int32
}

// runningJob is a claimed job until its outcome is written. cancel and
// renewed are set at start and then touched only under Worker.mu.
type runningJob struct {
	job      *Job
	cancel   context.CancelCauseFunc
	renewed  time.Time // when the last successful lease renewal was sent
	lost     bool      // the lease is gone: never write an outcome
	finished bool      // the handler returned and its outcome is queued
}

// outcome is a finished attempt on its way to the database.
type outcome struct {
	job     *Job
	qs      *queueState // whose unwritten count the outcome is in
	outputs []string
	err     error         // nil: complete
	retryIn time.Duration // for a failed attempt: when it may run again
}

// Causes of a job context's cancellation.
var (
	errShutdown  = errors.New("compute: worker shutting down")
	errLeaseLost = errors.New("compute: lease lost or job cancelled")
	errTimeout   = errors.New("compute: job timed out")
)

// ErrWorkerStarted is returned by a second call to Run.
var ErrWorkerStarted = errors.New("compute: worker already started; make a new Worker to run again")

// NewWorker checks cfg and returns a Worker for the queue q. Mistakes in cfg
// (no queues, a bad queue name, a missing handler, values out of range) fail
// with ErrInvalidOption.
func NewWorker(q *Queue, cfg WorkerConfig) (*Worker, error) {
	if q == nil {
		return nil, fmt.Errorf("%w: NewWorker needs a Queue", ErrInvalidOption)
	}
	if len(cfg.Queues) == 0 {
		return nil, fmt.Errorf("%w: WorkerConfig.Queues is empty; name at least one queue and its handler", ErrInvalidOption)
	}
	if cfg.PollInterval < 0 || cfg.StopTimeout < 0 || cfg.RescueInterval < 0 {
		return nil, fmt.Errorf("%w: WorkerConfig durations must not be negative", ErrInvalidOption)
	}
	cfg.PollInterval = cmpOr(cfg.PollInterval, time.Second)
	cfg.StopTimeout = cmpOr(cfg.StopTimeout, 30*time.Second)
	cfg.RescueInterval = cmpOr(cfg.RescueInterval, 10*time.Second)
	cfg.Retention = cfg.Retention.withDefaults()
	cfg.LongTransactionWarning = cmpOr(cfg.LongTransactionWarning, time.Minute)
	w := &Worker{
		q: q, cfg: cfg, log: q.opts.logger.With(slog.String("worker", q.opts.workerID)),
		queues:   make(map[string]*queueState, len(cfg.Queues)),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
		running:  make(map[JobID]*runningJob),
		flush:    make(chan struct{}, 1),
		recheck:  make(chan struct{}, 1),
		writeGap: writeGap,
	}
	w.final, w.cancelFinal = context.WithCancel(context.Background())
	for name, qc := range cfg.Queues {
		if err := validQueue(name); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidOption, err)
		}
		if qc.Handler == nil {
			return nil, fmt.Errorf("%w: queue %q has no Handler", ErrInvalidOption, name)
		}
		if qc.Concurrency < 0 || qc.Timeout < 0 || qc.MaxAttempts < 0 {
			return nil, fmt.Errorf("%w: queue %q: Concurrency, Timeout and MaxAttempts must not be negative", ErrInvalidOption, name)
		}
		if qc.Concurrency > maxClaim {
			return nil, fmt.Errorf("%w: queue %q: Concurrency %d is over %d, the most jobs one claim takes; run more workers (or more Worker values in this process) to run more of the queue's jobs at once",
				ErrInvalidOption, name, qc.Concurrency, maxClaim)
		}
		qc.Concurrency = cmpOr(qc.Concurrency, 10)
		if qc.Backoff == nil {
			qc.Backoff = Backoff
		}
		h := qc.Handler
		for i := len(cfg.Middleware) - 1; i >= 0; i-- {
			h = cfg.Middleware[i](h)
		}
		w.queues[name] = &queueState{
			name: name, cfg: qc, handler: h,
			slots: make(chan struct{}, qc.Concurrency),
			wake:  make(chan struct{}, 1),
			freed: make(chan struct{}, 1),
		}
	}
	var err error
	if w.schedules, err = newSchedules(cfg.Periodic, q.opts.maxConfig); err != nil {
		return nil, err
	}
	return w, nil
}

func cmpOr[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Run works jobs until ctx ends or Shutdown is called, then stops
// gracefully: it stops claiming, lets running jobs finish (for StopTimeout
// after ctx ends, or until Shutdown's deadline), then cancels the rest and
// hands them back to the queue at once, writes every outcome, and returns.
// Database outages while running are logged and retried, never returned.
// Run returns nil after a graceful stop and ErrWorkerStarted if called twice.
func (w *Worker) Run(ctx context.Context) error {
	w.mu.Lock()
	if w.started {
		w.mu.Unlock()
		return ErrWorkerStarted
	}
	w.started = true
	w.mu.Unlock()
	defer close(w.done)
	select {
	case <-w.stop: // Shutdown came first
		return nil
	default:
	}

	// Contexts: fetching ends at the stop signal; jobs keep running until
	// the grace period ends (their context keeps ctx's values, not its
	// cancellation); the completer, heartbeat and rescue loops run until
	// the last job is written back.
	fetchCtx, stopFetching := context.WithCancel(ctx)
	defer stopFetching()
	jobsCtx, cancelJobs := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancelJobs(errShutdown)
	backgroundCtx, stopBackground := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBackground()
	// Claims outlive the stop signal (see fetch) until the grace period
	// ends.
	claimsCtx, abortClaims := context.WithCancel(context.WithoutCancel(ctx))
	defer abortClaims()
	defer w.cancelFinal()

	var fetchers, jobs, background sync.WaitGroup
	if !w.cfg.PollOnly {
		l := &listener{q: w.q, log: w.log, wake: w.wakeQueue, wakeAll: w.wakeAll, cancelJob: w.cancelRunning,
			channels: []string{channelJobs, channelCancel}, idle: 10 * time.Second, probeWait: 5 * time.Second}
		fetchers.Go(func() { l.run(fetchCtx) })
	}
	for _, qs := range w.queues {
		fetchers.Go(func() { w.fetch(fetchCtx, claimsCtx, jobsCtx, &jobs, qs) })
	}
	fetchers.Go(func() { w.rescue(fetchCtx) })
	if len(w.schedules) > 0 {
		fetchers.Go(func() { w.enqueuePeriodic(fetchCtx) })
	}
	background.Go(func() { w.heartbeat(backgroundCtx) })
	completerDone := make(chan struct{})
	go func() { defer close(completerDone); w.complete(backgroundCtx) }()
	w.log.Info("worker started", "queues", len(w.queues))

	// Wait for the stop signal, then for running jobs until the grace
	// period ends.
	var grace context.Context
	select {
	case <-ctx.Done():
		var endGrace context.CancelFunc
		grace, endGrace = context.WithTimeout(context.Background(), w.cfg.StopTimeout)
		// A Shutdown during this grace period brings its own deadline:
		// whichever ends first ends the grace period.
		var watch sync.WaitGroup
		defer watch.Wait()
		defer endGrace()
		watch.Go(func() {
			select {
			case <-w.stop:
				select {
				case <-w.shutdownCtx.Done():
					endGrace()
				case <-grace.Done():
				}
			case <-grace.Done():
			}
		})
	case <-w.stop:
		grace = w.shutdownCtx
	}
	w.log.Info("worker stopping: no new jobs")
	stopFetching()
	// A claim in flight is waited for (see fetch) until the grace period
	// ends; then it is abandoned.
	if !waitFor(&fetchers, grace.Done()) {
		abortClaims()
		fetchers.Wait()
	}
	// From the grace period's end the stop has stopGiveUp, whatever the
	// database does (see stopGiveUp).
	graceOver := !waitFor(&jobs, grace.Done())
	giveUp := time.AfterFunc(stopGiveUp, w.cancelFinal)
	defer giveUp.Stop()
	if graceOver {
		w.log.Warn("grace period over: cancelling running jobs and handing them back")
		cancelJobs(errShutdown)
		// Handlers that honour their context return within a moment and
		// hand their job back themselves; the rest are abandoned here and
		// their jobs handed back for them.
		moment, cancel := context.WithTimeout(w.final, handlerReturnWait)
		if !waitFor(&jobs, moment.Done()) {
			w.abandonRunning()
		}
		cancel()
	}
	// Every outcome is queued now (or abandoned): let the completer drain
	// them, then stop the heartbeats.
	stopBackground()
	<-completerDone
	background.Wait()
	w.unregister()
	w.log.Info("worker stopped")
	return nil
}

// stopGiveUp bounds a stop after its grace period: handlers get
// handlerReturnWait of it to return, and the hand-backs, the outcome writes
// and the registry clean-up the rest. What is not written by then is
// logged; those jobs run again when their leases expire.
const (
	stopGiveUp        = 15 * time.Second
	handlerReturnWait = 2 * time.Second
)

// shutdownMargin is how long Shutdown waits for Run after its own context
// ended: enough for handlers that honour cancellation to return and hand
// their jobs back on a healthy database. Run may go on writing for the
// rest of stopGiveUp.
const shutdownMargin = 5 * time.Second

// Shutdown stops the worker like http.Server.Shutdown: no new jobs are
// claimed, running jobs may finish until ctx ends, then their contexts are
// cancelled and their jobs handed back to the queue. It returns when Run has
// returned, or ctx.Err() if the grace period had to cut jobs short; once ctx
// has ended it waits at most 5 s more, whatever the database does (Run
// itself then goes on writing outcomes for at most 15 s after the grace
// period, and logs the jobs it could not write). Calling
// it twice, or before Run, is safe; a Run that starts after Shutdown
// returns at once.
func (w *Worker) Shutdown(ctx context.Context) error {
	w.stopOnce.Do(func() {
		w.shutdownCtx = ctx
		close(w.stop)
	})
	w.mu.Lock()
	started := w.started
	w.mu.Unlock()
	if !started {
		return nil
	}
	select {
	case <-w.done:
		return ctx.Err()
	case <-ctx.Done():
	}
	// The grace period is over: Run cancels the jobs and hands them back.
	// Wait a moment for that, not for a database that does not answer.
	t := time.NewTimer(shutdownMargin)
	defer t.Stop()
	select {
	case <-w.done:
	case <-t.C:
		w.log.Warn("Shutdown returns before Run: outcomes are still being written", "for at most", stopGiveUp-shutdownMargin)
	}
	return ctx.Err()
}

// waitFor waits for wg until stop fires; it reports whether wg finished.
func waitFor(wg *sync.WaitGroup, stop <-chan struct{}) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-stop:
		return false
	}
}

// fetch is one queue's claim loop. It claims as many jobs as there are free
// slots in one statement, and then waits for a reason to claim again: a
// notification, a freed slot while a backlog is likely, or the jittered
// poll timer. Claim errors are logged and retried with backoff. Whatever a
// claim returns is run, even alongside an error (the gated claim commits
// round by round). After an error, a claim may still have committed
// without its reply reaching us; until the worker has looked, each turn
// first adopts the queue's jobs that the database says this worker holds
// and it does not know of (adopt).
func (w *Worker) fetch(ctx, claimsCtx, jobsCtx context.Context, jobs *sync.WaitGroup, qs *queueState) {
	more := true   // jobs may be waiting: claim as soon as a slot is free
	gated := false // the queue has rules: a freed slot may lift a limit
	failures := 0
	var unsure time.Time // when a claim whose outcome is unknown was sent
	for {
		free := cap(qs.slots) - len(qs.slots)
		if !unsure.IsZero() && free > 0 {
			if err := w.adopt(ctx, jobsCtx, jobs, qs, unsure); err == nil {
				unsure = time.Time{}
				free = cap(qs.slots) - len(qs.slots)
			} else if ctx.Err() == nil {
				w.log.Warn("looking for the jobs of an interrupted claim failed; retrying", "queue", qs.name, "err", err)
			}
		}
		if more && free > 0 && !qs.heldBack() {
			// A stop does not cut the claim short: a claim abandoned in
			// flight may still commit on the server, and its jobs would
			// wait in progress for their leases to run out. What it
			// returns after a stop is handed back at once.
			claimCtx, cancel := context.WithTimeout(claimsCtx, w.callTimeout())
			sent := time.Now() // the leases start no earlier
			claimed, isGated, err := w.q.claim(claimCtx, qs.name, free)
			cancel()
			if ctx.Err() != nil {
				w.handBack(claimed)
				return
			}
			for _, job := range claimed {
				qs.slots <- struct{}{}
				w.start(jobsCtx, jobs, qs, job, sent)
			}
			if err != nil {
				failures++
				if !errors.Is(err, ErrInvalid) {
					unsure = sent
				}
				w.log.Warn("claim failed; retrying", "queue", qs.name, "err", err, "claimed", len(claimed))
				if !sleep(ctx, backoffWait(failures, 30*time.Second)) {
					return
				}
				continue
			}
			failures, gated = 0, isGated
			// A full batch means more may be waiting: claim again as soon
			// as a slot frees up.
			more = len(claimed) == free
		}
		poll := time.NewTimer(w.cfg.PollInterval/2 + rand.N(w.cfg.PollInterval/2+1))
		select {
		case <-ctx.Done():
			poll.Stop()
			return
		case <-qs.wake:
			more = true
		case <-qs.freed:
			// Under a cluster-wide cap a short batch means "at the
			// limit", and this slot's job counted against it.
			more = more || gated
		case <-poll.C:
			more = true
		}
		poll.Stop()
	}
}

// adopt starts the jobs of qs that the database says this worker holds and
// that it does not run: those of a claim that committed while its reply was
// lost. They are this worker's by their fencing token, and their leases
// started no earlier than sent. It takes no more than the free slots; the
// rest wait for the next turn (it reports an error so the turn comes).
func (w *Worker) adopt(ctx, jobsCtx context.Context, jobs *sync.WaitGroup, qs *queueState, sent time.Time) error {
	callCtx, cancel := context.WithTimeout(ctx, w.callTimeout())
	defer cancel()
	held, err := w.q.heldJobs(callCtx, qs.name)
	if err != nil {
		return err
	}
	w.mu.Lock()
	unknown := held[:0]
	for _, j := range held {
		if r := w.running[j.ID]; r == nil || r.job.Attempt != j.Attempt {
			unknown = append(unknown, j)
		}
	}
	w.mu.Unlock()
	free := cap(qs.slots) - len(qs.slots)
	if len(unknown) > 0 {
		w.log.Warn("adopting jobs of a claim whose reply was lost", "queue", qs.name, "jobs", min(len(unknown), free))
	}
	for i, job := range unknown {
		if i == free {
			return fmt.Errorf("compute: %d jobs of an interrupted claim wait for free slots", len(unknown)-free)
		}
		qs.slots <- struct{}{}
		w.start(jobsCtx, jobs, qs, job, sent)
	}
	return nil
}

// callTimeout bounds the fetch and rescue loops' database calls: a call
// stuck on a dead or blackholed connection is abandoned (and the connection
// with it) well before another lease could run out.
func (w *Worker) callTimeout() time.Duration {
	return min(30*time.Second, w.q.opts.lease)
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// start registers a claimed job and runs its handler in a goroutine owned
// by jobs (Run waits for it). sent is when the claim was sent: the lease
// counts from then by the local clock.
func (w *Worker) start(jobsCtx context.Context, jobs *sync.WaitGroup, qs *queueState, job *Job, sent time.Time) {
	ctx, cancel := context.WithCancelCause(jobsCtx)
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
	jobs.Go(func() {
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
	signal(w.flush)
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

// release gives back one slot and tells the fetcher.
func (qs *queueState) release() {
	<-qs.slots
	signal(qs.freed)
}

// maxWrite caps the outcomes one completer round writes.
const maxWrite = 5000

// writeGap is the least time from the start of one completer round to the
// start of the next, while Run's context lasts. Under light load a round
// takes a millisecond or two, and without the gap the completer wrote
// outcomes a few at a time: at 2,000 one-job enqueues a second, 20,000
// jobs took 7,100 Complete statements (2.8 jobs each), with the gap 2,400
// to 2,800 (7 to 8 each), and each statement is a trigger, a journal row
// and a commit. Rounds that take longer than the gap (a burn-down's) never
// wait, and neither does a round that a fetcher waits for (gather). A
// finished job's outcome is written at most this much later; the pick-up
// of new jobs is not delayed.
const writeGap = 5 * time.Millisecond

// complete is the completer loop: it writes queued outcomes in batches,
// one Complete and one Fail statement per round, rounds at least writeGap
// apart (outcomes that arrive meanwhile go into the next one).
// Failed writes are retried with backoff; after ctx ends it drains what is
// queued, until w.final ends (stopGiveUp after the grace period): then it
// logs the jobs it could not write (their leases expire and they run
// again elsewhere) and returns.
func (w *Worker) complete(ctx context.Context) {
	var last time.Time // when the last round started
	for {
		select {
		case <-w.flush:
		case <-ctx.Done():
		}
		w.gather(ctx, w.writeGap-time.Since(last))
		last = time.Now()
		// At most maxWrite outcomes per round, so one write stays well
		// inside its timeout however far the completer fell behind.
		w.mu.Lock()
		n := min(len(w.outcomes), maxWrite)
		batch := slices.Clone(w.outcomes[:n])
		w.outcomes = w.outcomes[n:]
		more := len(w.outcomes) > 0
		w.mu.Unlock()
		if more {
			signal(w.flush)
		}
		for failures := 0; len(batch) > 0; failures++ {
			err := w.write(batch)
			if err == nil {
				break
			}
			if w.final.Err() == nil {
				w.log.Warn("writing job outcomes failed; retrying", "jobs", len(batch), "err", err)
			}
			if !sleep(w.final, backoffWait(failures+1, 5*time.Second)) {
				w.mu.Lock()
				batch = append(batch, w.outcomes...)
				w.outcomes = nil
				w.mu.Unlock()
				w.log.Error("could not write job outcomes before stopping; their leases will expire and they will run again",
					"jobs", len(batch), "ids", outcomeIDs(batch, 20), "err", err)
				return
			}
		}
		if ctx.Err() != nil {
			w.mu.Lock()
			idle := len(w.outcomes) == 0
			w.mu.Unlock()
			if idle {
				return
			}
		}
	}
}

// outcomeIDs lists the job ids of up to n outcomes, for a log line.
func outcomeIDs(batch []outcome, n int) []string {
	ids := make([]string, 0, min(len(batch), n))
	for _, o := range batch[:min(len(batch), n)] {
		ids = append(ids, o.job.ID.String())
	}
	return ids
}

// gather lets outcomes queue up for d (the rest of writeGap), but returns
// at once when ctx ends (shutdown writes without delay) or when a queue's
// fetcher is held back by its unwritten outcomes: it claims nothing until
// this write, so waiting would only idle it.
func (w *Worker) gather(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	for !w.heldBack() {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			return
		case <-w.flush: // another outcome: look again
		}
	}
}

// heldBack reports whether some queue's fetcher waits for the completer.
func (w *Worker) heldBack() bool {
	for _, qs := range w.queues {
		if qs.heldBack() {
			return true
		}
	}
	return false
}

// heldBack reports whether Concurrency of the queue's outcomes wait
// unwritten: its fetcher then claims nothing until the completer writes.
func (qs *queueState) heldBack() bool {
	return int(qs.unwritten.Load()) >= cap(qs.slots)
}

// write sends one batch of outcomes and forgets the jobs it wrote. Jobs whose
// lease was lost meanwhile are skipped; a LeaseLostError from the database
// is logged, not retried.
func (w *Worker) write(batch []outcome) error {
	var done []Completion
	var failed []Failure
	w.mu.Lock()
	for _, o := range batch {
		if r := w.running[o.job.ID]; r == nil || r.job != o.job || r.lost {
			continue // lost, or superseded by a newer attempt of ours
		}
		if o.err == nil {
			done = append(done, Completion{Job: o.job, OutputFiles: o.outputs})
			continue
		}
		failed = append(failed, Failure{Job: o.job, Err: o.err, RetryIn: o.retryIn})
	}
	w.mu.Unlock()
	ctx, cancel := context.WithTimeout(w.final, 10*time.Second)
	defer cancel()
	w.writing.Lock()
	errDone := w.q.Complete(ctx, done...)
	errFailed := w.q.Fail(ctx, failed...)
	w.writing.Unlock()
	for _, err := range []error{errDone, errFailed} {
		var lost *LeaseLostError
		if errors.As(err, &lost) {
			w.log.Warn("outcomes not written: lease lost", "jobs", len(lost.IDs), "err", lost)
		} else if err != nil {
			return err
		}
	}
	w.mu.Lock()
	for _, o := range batch {
		w.forgetLocked(o.job)
	}
	w.mu.Unlock()
	var last *queueState
	for _, o := range batch {
		o.qs.unwritten.Add(-1)
		if o.qs != last { // batches are mostly one queue's: one signal each
			signal(o.qs.freed)
			last = o.qs
		}
	}
	return nil
}

// heartbeat renews the leases of every job this worker holds, in one
// statement, three times per lease (at least every 20 s), and refreshes
// the worker's registry row. It also renews at once when the listener
// heard of a cancel of a job this worker runs (recheck). A job the
// database says is no longer ours is cancelled; when renewals keep
// failing, a job whose lease has run out by our own clock is cancelled
// too, because another worker may be running it by now.
func (w *Worker) heartbeat(ctx context.Context) {
	// Three renewals per lease, and at least every 20 s so the worker
	// registry (which Explain reads as "seen in the last minute") stays
	// fresh with long leases.
	interval := min(w.q.opts.lease/3, registryRefresh)
	t := time.NewTicker(interval)
	defer t.Stop()
	w.register(ctx, interval)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.register(ctx, interval)
		case <-w.recheck:
		}
		w.renew(ctx, interval)
	}
}

// renew is one renewal round of the heartbeat loop; timeout bounds it.
func (w *Worker) renew(ctx context.Context, timeout time.Duration) {
	w.mu.Lock()
	// Jobs whose outcome waits for the completer are left out: the
	// completer writes them within moments. A job that finishes after
	// this look is still renewed, which is why the renewal holds
	// w.writing.
	held := make([]*Job, 0, len(w.running))
	for _, r := range w.running {
		if !r.lost && !r.finished {
			held = append(held, r.job)
		}
	}
	w.mu.Unlock()
	if len(held) == 0 {
		return
	}
	sent := time.Now()
	callCtx, cancel := context.WithTimeout(ctx, timeout)
	lost := make(map[JobID]bool)
	var err error
	w.writing.Lock()
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
	w.writing.Unlock()
	cancel()
	if err != nil {
		w.log.Warn("lease renewal failed", "jobs", len(held), "err", err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, j := range held {
		r := w.running[j.ID]
		if r == nil || r.job != j {
			continue // written back, or replaced by a newer attempt
		}
		if err == nil && !lost[j.ID] {
			r.renewed = sent
		}
		if lost[j.ID] || time.Since(r.renewed) > w.q.opts.lease {
			r.lost = true
			r.cancel(errLeaseLost)
		}
	}
}

// rescue runs the maintenance round (see maintain) every RescueInterval
// (with jitter), and once at start.
func (w *Worker) rescue(ctx context.Context) {
	for {
		w.maintain(ctx)
		if !sleep(ctx, w.cfg.RescueInterval/2+rand.N(w.cfg.RescueInterval/2+1)) {
			return
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
	if _, err := w.q.pool.Exec(callCtx, registerWorker, w.q.opts.workerID, names); err != nil {
		w.logFailure(ctx, "worker registry update failed", err)
	}
}

// unregister removes this worker from compute.workers after a clean stop.
func (w *Worker) unregister() {
	ctx, cancel := context.WithTimeout(w.final, 5*time.Second)
	defer cancel()
	if _, err := w.q.pool.Exec(ctx, unregisterWorker, w.q.opts.workerID); err != nil {
		w.log.Warn("could not remove this worker from the registry; it ages out in an hour", "err", err)
	}
}

// wakeQueue is the listener's hook for a notification about queue.
func (w *Worker) wakeQueue(queue string) {
	if qs := w.queues[queue]; qs != nil {
		signal(qs.wake)
	}
}

// wakeAll wakes every queue's fetcher after the listener (re)connected.
func (w *Worker) wakeAll() {
	for name := range w.queues {
		w.wakeQueue(name)
	}
}

// cancelRunning is the listener's hook for a compute_cancel notification
// about a job. Any role may send one, and a late one may name an earlier
// attempt of a job this worker runs again, so it only makes the heartbeat
// loop renew at once: a job the database says is no longer this worker's
// is cancelled then, and its result is not written.
func (w *Worker) cancelRunning(id JobID) {
	w.mu.Lock()
	r := w.running[id]
	w.mu.Unlock()
	if r != nil {
		signal(w.recheck)
	}
}

// handBack returns jobs to the queue in one Fail, their attempt not spent:
// jobs a claim returned after the worker began to stop, or jobs whose
// handlers ignored their cancelled contexts. Jobs whose lease is already
// gone are left alone.
func (w *Worker) handBack(jobs []*Job) {
	if len(jobs) == 0 {
		return
	}
	back := make([]Failure, len(jobs))
	for i, j := range jobs {
		back[i] = Failure{Job: j, Err: Snooze(0)}
	}
	ctx, cancel := context.WithTimeout(w.final, 10*time.Second)
	defer cancel()
	if err := w.q.Fail(ctx, back...); err != nil && !errors.Is(err, ErrLeaseLost) {
		w.log.Error("handing back jobs failed; their leases will expire", "jobs", len(jobs), "err", err)
	}
}

// abandonRunning hands back the jobs whose handlers did not return after
// their contexts were cancelled at shutdown, and marks them lost so
// whatever those handlers return later is never written.
func (w *Worker) abandonRunning() {
	var back []*Job
	w.mu.Lock()
	for _, r := range w.running {
		if !r.lost && !r.finished {
			r.lost = true
			back = append(back, r.job)
		}
	}
	w.mu.Unlock()
	if len(back) > 0 {
		w.log.Warn("handlers ignored cancellation; handing their jobs back", "jobs", len(back))
	}
	w.handBack(back)
}
