package compute

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
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
	// MaxAttempts, when set, fails a job for good once it has spent this
	// many attempts (Job.Spent), even if the job itself allows more.
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
	// Default 1 s. A worker polls all its queues with one statement, so
	// an idle worker costs about one statement per poll however many
	// queues it serves.
	PollInterval time.Duration
	// PollOnly turns off LISTEN; jobs are then found by polling alone.
	// Behind a pooler in transaction mode without [WithDirectURL] the
	// worker does not LISTEN anyway (see Connection poolers in the
	// package documentation).
	PollOnly bool
	// StopTimeout is how long running jobs may finish after Run's context
	// ends, before their contexts are cancelled and they are handed back.
	// Default 30 s. (Shutdown takes its own deadline.)
	StopTimeout time.Duration
	// MaintenanceInterval is how often this worker runs its maintenance
	// round: it hands back expired jobs of any queue (Queue.RequeueStale),
	// applies Retention and priority aging, tidies the worker registry and
	// looks for long transactions. Default 10 s.
	MaintenanceInterval time.Duration
	// RescueInterval is the old name of MaintenanceInterval, used when
	// that is zero.
	//
	// Deprecated: use MaintenanceInterval.
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
	// heldQueues counts the queues whose fetchers are held back by their
	// unwritten outcomes (addUnwritten keeps it).
	heldQueues atomic.Int32
	// writesInFlight counts the completer rounds under way; wroteOne (cap
	// 1) is signalled when one ends. fullWrite is the batch a completer
	// loop writes beside another's round without waiting for it: the
	// worker's total Concurrency, at most maxWrite.
	writesInFlight atomic.Int32
	wroteOne       chan struct{}
	fullWrite      int
	// failingRounds counts the completer rounds whose writes fail and are
	// being retried (see wroteOK).
	failingRounds atomic.Int32
	// lastRound is when the latest completer round started (nanoseconds
	// after roundClock, by the monotonic clock; markRound, sinceRound):
	// the completer loops share the gap between rounds.
	lastRound atomic.Int64

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

	// claims batches the fetchers' claims (see claimBatch).
	claims claimBatch

	// obs is the Queue's Observer (nil: none); health is what Health
	// reads, stored by the loops that learn it.
	obs    *Observer
	health healthState

	started  atomic.Bool  // Run was called
	running  runningSet   // claimed and not yet written back
	outcomes outcomeQueue // finished attempts waiting for the completer
}

// Causes of a job context's cancellation.
var (
	errShutdown  = errors.New("compute: worker shutting down")
	errLeaseLost = errors.New("compute: lease lost or job cancelled")
	errTimeout   = errors.New("compute: job timed out")
)

// [ErrWorkerStarted] is returned by a second call to Run.
var ErrWorkerStarted = errors.New("compute: worker already started; make a new Worker to run again")

// NewWorker checks cfg and returns a Worker for the queue q. Mistakes in cfg
// (no queues, a bad queue name, a missing handler, values out of range) fail
// with [ErrInvalidOption].
func NewWorker(q *Queue, cfg WorkerConfig) (*Worker, error) {
	if q == nil {
		return nil, fmt.Errorf("%w: NewWorker needs a Queue", ErrInvalidOption)
	}
	if len(cfg.Queues) == 0 {
		return nil, fmt.Errorf("%w: WorkerConfig.Queues is empty; name at least one queue and its handler", ErrInvalidOption)
	}
	if cfg.PollInterval < 0 || cfg.StopTimeout < 0 || cfg.MaintenanceInterval < 0 || cfg.RescueInterval < 0 {
		return nil, fmt.Errorf("%w: WorkerConfig durations must not be negative", ErrInvalidOption)
	}
	cfg.PollInterval = cmpOr(cfg.PollInterval, time.Second)
	cfg.StopTimeout = cmpOr(cfg.StopTimeout, 30*time.Second)
	cfg.MaintenanceInterval = cmpOr(cfg.MaintenanceInterval, cmpOr(cfg.RescueInterval, 10*time.Second))
	cfg.Retention = cfg.Retention.withDefaults()
	cfg.LongTransactionWarning = cmpOr(cfg.LongTransactionWarning, time.Minute)
	w := &Worker{
		q: q, cfg: cfg, log: q.opts.logger.With(slog.String("worker", q.opts.workerID)),
		queues:   make(map[string]*queueState, len(cfg.Queues)),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
		running:  runningSet{jobs: make(map[JobID]*runningJob)},
		outcomes: outcomeQueue{added: make(chan struct{}, 1)},
		recheck:  make(chan struct{}, 1),
		wroteOne: make(chan struct{}, 1),
		writeGap: writeGap,
		obs:      q.opts.observer,
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
			return nil, fmt.Errorf("%w: queue %q: Concurrency %d is over %d, the most jobs one claim takes; run more worker processes, or Workers on other Queues, to run more of the queue's jobs at once",
				ErrInvalidOption, name, qc.Concurrency, maxClaim)
		}
		qc.Concurrency = cmpOr(qc.Concurrency, 10)
		w.fullWrite = min(w.fullWrite+qc.Concurrency, maxWrite)
		if qc.Backoff == nil {
			qc.Backoff = Backoff
		}
		h := qc.Handler
		for i := len(cfg.Middleware) - 1; i >= 0; i-- {
			h = cfg.Middleware[i](h)
		}
		w.queues[name] = &queueState{
			name: name, cfg: qc, handler: h,
			slots:    make(chan struct{}, qc.Concurrency),
			notified: make(chan struct{}, 1),
			freed:    make(chan struct{}, 1),
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
// Run returns nil after a graceful stop and [ErrWorkerStarted] if called twice.
// It returns an error matching [ErrInvalidOption] at once when another
// running Worker of the same Queue serves one of its queues: Workers of one
// Queue share its worker id, by which the database knows whose jobs are
// whose, so each queue is served by one of them (give it more Concurrency,
// or open another Queue).
func (w *Worker) Run(ctx context.Context) error {
	if !w.started.CompareAndSwap(false, true) {
		return ErrWorkerStarted
	}
	defer close(w.done)
	select {
	case <-w.stop: // Shutdown came first
		return nil
	default:
	}
	names := slices.Sorted(maps.Keys(w.queues))
	if err := w.q.serve(names); err != nil {
		return err
	}
	defer w.q.unserve(names)

	// Three groups of goroutines, stopped in this order. intake claims and
	// schedules work and ends at the stop signal. jobs run the handlers;
	// their context keeps ctx's values but not its cancellation, so they
	// can finish during the grace period. writers (the completer, the
	// heartbeat and the registry refresh) write leases and outcomes until
	// the last job is written back. A claim in flight has a context of its
	// own, which outlives the stop signal until the grace period ends (see
	// fetch).
	intake := newGroup(ctx)
	defer intake.cancel(nil)
	jobs := newGroup(context.WithoutCancel(ctx))
	defer jobs.cancel(errShutdown)
	writers := newGroup(context.WithoutCancel(ctx))
	defer writers.cancel(nil)
	claimsCtx, abortClaims := context.WithCancel(context.WithoutCancel(ctx))
	defer abortClaims()
	defer w.cancelFinal()

	if !w.cfg.PollOnly && w.q.canListen() {
		l := w.q.newListener(w.log, []string{channelJobs, channelCancel}, w.notified, w.wakeAll)
		l.Listening = w.listening
		intake.Go(l.Run)
	} else {
		w.obs.listening(false)
	}
	w.health.running.Store(true)
	for _, qs := range w.queues {
		intake.Go(func(ctx context.Context) { w.fetch(ctx, claimsCtx, jobs, qs) })
	}
	if !w.pollsByClaim() {
		intake.Go(w.pollDue)
	}
	intake.Go(w.maintenance)
	if len(w.schedules) > 0 {
		intake.Go(w.enqueuePeriodic)
	}
	writers.Go(w.heartbeat)
	writers.Go(w.refreshRegistry)
	for range completers {
		writers.Go(w.writeOutcomes)
	}
	w.log.Info("worker started", "queues", len(w.queues))

	grace, endGrace := w.gracePeriod(ctx)
	defer endGrace()
	// From the grace period's end, or from when the last job is done if
	// that comes first, the stop has stopGiveUp, whatever the database
	// does (see stopGiveUp). The clock starts before the intake is joined:
	// even a claim abandoned at the grace period's end may hand jobs back.
	var giveUp atomic.Pointer[time.Timer]
	var armOnce sync.Once
	arm := func() { armOnce.Do(func() { giveUp.Store(time.AfterFunc(stopGiveUp, w.cancelFinal)) }) }
	stopArming := context.AfterFunc(grace, arm)
	defer func() {
		stopArming()
		armOnce.Do(func() {}) // an arm racing this return is now a no-op
		if t := giveUp.Load(); t != nil {
			t.Stop()
		}
	}()
	w.health.running.Store(false)
	w.log.Info("worker stopping: no new jobs")
	intake.cancel(nil)
	// A claim in flight is waited for (see fetch) until the grace period
	// ends; then it is abandoned.
	if !intake.waitUntil(grace.Done()) {
		abortClaims()
		intake.wg.Wait()
	}
	if !w.cfg.PollOnly {
		w.listening(false) // the listener stopped without saying so
	}
	graceOver := !jobs.waitUntil(grace.Done())
	arm()
	if graceOver {
		w.log.Warn("grace period over: cancelling running jobs and handing them back")
		jobs.cancel(errShutdown)
		// Handlers that honour their context return within a moment and
		// hand their job back themselves; the rest are abandoned here and
		// their jobs handed back for them.
		moment, cancel := context.WithTimeout(w.final, handlerReturnWait)
		if !jobs.waitUntil(moment.Done()) {
			w.abandonRunning()
		}
		cancel()
	}
	// Every outcome is queued now (or abandoned): the completer drains
	// them, and the heartbeat and registry loops stop.
	writers.cancel(nil)
	writers.wg.Wait()
	w.unregister()
	w.log.Info("worker stopped")
	return nil
}

// gracePeriod waits for the stop signal (ctx ends, or Shutdown is called)
// and returns the grace period that follows: StopTimeout after ctx ended,
// or Shutdown's own context; a Shutdown during a StopTimeout grace period
// ends it when its context ends first. Call end when the stop is done.
func (w *Worker) gracePeriod(ctx context.Context) (grace context.Context, end func()) {
	select {
	case <-w.stop:
		return w.shutdownCtx, func() {}
	case <-ctx.Done():
	}
	grace, endGrace := context.WithTimeout(context.Background(), w.cfg.StopTimeout)
	var watch sync.WaitGroup
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
	return grace, func() { endGrace(); watch.Wait() }
}

// group is goroutines that share one context and are stopped together:
// cancel ends the context, and wg joins them.
type group struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup
}

// newGroup returns a group whose context is derived from parent.
func newGroup(parent context.Context) *group {
	ctx, cancel := context.WithCancelCause(parent)
	return &group{ctx: ctx, cancel: cancel}
}

// Go runs f with the group's context in a goroutine of the group.
func (g *group) Go(f func(ctx context.Context)) { g.wg.Go(func() { f(g.ctx) }) }

// waitUntil waits for the group's goroutines until stop fires; it reports
// whether they all returned.
func (g *group) waitUntil(stop <-chan struct{}) bool { return waitFor(&g.wg, stop) }

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
	if !w.started.Load() {
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
