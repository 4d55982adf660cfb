package compute_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/internal/testdb"
)

// concurrencyProbe counts one queue's handlers running at once.
type concurrencyProbe struct {
	limit, total int64
	running      atomic.Int64
	finished     atomic.Int64
	max          atomic.Int64
}

func (p *concurrencyProbe) handle(ctx context.Context, job *compute.Job) ([]string, error) {
	n := p.running.Add(1)
	for m := p.max.Load(); n > m && !p.max.CompareAndSwap(m, n); m = p.max.Load() {
	}
	// Hold the slot until all the queue's slots are busy (or no more jobs
	// can come), then a moment longer, so that a handler started beyond
	// the limit would overlap the others and show in max. The cap only
	// keeps a slow claim from stalling the test.
	hold := time.NewTimer(time.Second)
	defer hold.Stop()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	var overlap <-chan time.Time
wait:
	for {
		if overlap == nil && (p.running.Load() >= p.limit || p.finished.Load()+p.running.Load() >= p.total) {
			overlap = time.After(20 * time.Millisecond)
		}
		select {
		case <-ctx.Done():
			p.running.Add(-1)
			return nil, ctx.Err()
		case <-hold.C:
			break wait
		case <-overlap:
			break wait
		case <-tick.C:
		}
	}
	p.finished.Add(1)
	p.running.Add(-1)
	return []string{"out/" + job.Config}, nil
}

func TestWorkerKeepsEachQueueWithinItsConcurrencyAndStoresOutputs(t *testing.T) {
	t.Parallel()
	q := newQueue(t, withTestLog(t))
	probes := map[string]*concurrencyProbe{
		"narrow": {limit: 2, total: 30},
		"wide":   {limit: 7, total: 70},
	}
	queues := make(map[string]compute.QueueConfig)
	var jobs []compute.Job
	for name, p := range probes {
		queues[name] = compute.QueueConfig{Concurrency: int(p.limit), Handler: p.handle}
		for i := range p.total {
			jobs = append(jobs, compute.Job{Queue: name, Config: fmt.Sprintf("%s-%d", name, i)})
		}
	}
	// Enqueued before the worker starts, so its first claims fill every slot.
	enqueueAll(t, q, jobs)
	startWorker(t, q, compute.WorkerConfig{Queues: queues, PollInterval: 100 * time.Millisecond})

	waitUntil(t, liveness, "every job to complete", func() bool {
		counts, err := q.Counts(context.Background())
		if err != nil {
			t.Fatalf("counts: %v", err)
		}
		for name, p := range probes {
			if counts[name][compute.StatusComplete] != p.total {
				return false
			}
		}
		return true
	})
	for name, p := range probes {
		if got := p.max.Load(); got != p.limit {
			t.Errorf("queue %s: at most %d handlers ran at once, want exactly its Concurrency %d", name, got, p.limit)
		}
		done, err := q.List(context.Background(), compute.ListOptions{Queue: name, Status: compute.StatusComplete, Limit: 1000})
		if err != nil {
			t.Fatalf("list %s: %v", name, err)
		}
		if int64(len(done)) != p.total {
			t.Fatalf("queue %s: %d complete jobs listed, want %d", name, len(done), p.total)
		}
		for _, job := range done {
			if want := []string{"out/" + job.Config}; !slices.Equal(job.OutputFiles, want) {
				t.Errorf("job %s (%s): outputs %q, want %q", job.ID, job.Config, job.OutputFiles, want)
			}
			if job.Attempt != 1 || len(job.Errors) != 0 {
				t.Errorf("job %s: attempt %d with %d errors, want one clean attempt", job.ID, job.Attempt, len(job.Errors))
			}
		}
	}
}

// TestWorkerStopsClaimingWhileOutcomesWaitUnwritten holds every Complete
// back (a row trigger waits for an advisory lock the test holds), so
// finished jobs pile up unwritten, while the first handler blocks. A
// handler's slot frees when it returns, so more than Concurrency handlers
// run although no outcome is written; but once twice Concurrency outcomes
// wait, the worker must claim no more: it holds at most three times
// Concurrency jobs, however far writes fall behind. When the lock goes,
// every job completes.
func TestWorkerStopsClaimingWhileOutcomesWaitUnwritten(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	connString := testdb.New(t)
	q := openQueue(t, connString, compute.WithMigrate(), withTestLog(t))
	holder, err := pgx.Connect(ctx, connString)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(ctx)
	mustExec(t, holder, `CREATE FUNCTION public.hold_completions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'complete' THEN
        PERFORM pg_advisory_xact_lock_shared(4242);
    END IF;
    RETURN NEW;
END $$`)
	mustExec(t, holder, `CREATE TRIGGER hold_completions BEFORE UPDATE ON compute.jobs
FOR EACH ROW EXECUTE FUNCTION public.hold_completions()`)
	mustExec(t, holder, `SELECT pg_advisory_lock(4242)`)
	locked := true
	defer func() {
		if locked {
			mustExec(t, holder, `SELECT pg_advisory_unlock(4242)`)
		}
	}()

	const concurrency, total = 4, 60
	jobs := make([]compute.Job, total)
	for i := range jobs {
		jobs[i] = compute.Job{Queue: "held"}
	}
	enqueueAll(t, q, jobs)
	var calls atomic.Int64
	unblock := make(chan struct{})
	r := startWorker(t, q, compute.WorkerConfig{PollInterval: 20 * time.Millisecond, Queues: map[string]compute.QueueConfig{
		"held": {Concurrency: concurrency, Handler: func(ctx context.Context, _ *compute.Job) ([]string, error) {
			if calls.Add(1) == 1 {
				select { // the first job keeps its slot
				case <-unblock:
				case <-ctx.Done():
				}
			}
			return nil, nil
		}},
	}})

	// Wait until a Complete is stuck on the lock, then give the fetcher
	// many polls' worth of chances to claim past the bound.
	waitUntil(t, liveness, "a Complete waiting for the advisory lock", func() bool {
		return queryOne[bool](t, holder, `SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND NOT granted)`)
	})
	// Slots free as handlers return: with one handler blocked and no
	// outcome written, the worker still runs more than Concurrency jobs.
	waitUntil(t, liveness, "more than Concurrency handler calls with no outcome written", func() bool {
		return calls.Load() > concurrency
	})
	time.Sleep(300 * time.Millisecond)
	held := queryOne[int64](t, holder, `SELECT count(*) FROM compute.jobs WHERE status = 'in-progress'`)
	if got := calls.Load(); got > 3*concurrency || held > 3*concurrency {
		t.Fatalf("with writes held back, %d handlers ran and %d jobs are in progress; want at most %d (three times Concurrency)", got, held, 3*concurrency)
	}
	if held < concurrency {
		t.Fatalf("%d jobs in progress while writes are held back, want at least Concurrency %d", held, concurrency)
	}

	close(unblock)
	mustExec(t, holder, `SELECT pg_advisory_unlock(4242)`)
	locked = false
	waitUntil(t, liveness, "every job to complete", func() bool {
		return queryOne[int64](t, holder, `SELECT count(*) FROM compute.jobs WHERE status = 'complete'`) == total
	})
	r.stop(t)
	if got := calls.Load(); got != total {
		t.Errorf("%d handler calls for %d jobs, want one each", got, total)
	}
}

func TestWorkerServesQuietQueueWhileAnotherHasBacklog(t *testing.T) {
	t.Parallel()
	q := newQueue(t, withTestLog(t))
	var busyDone atomic.Int64
	busy := func(ctx context.Context, job *compute.Job) ([]string, error) {
		// Stands for real work: slow enough that 5,000 jobs make a backlog.
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		busyDone.Add(1)
		return nil, nil
	}
	quick := func(ctx context.Context, job *compute.Job) ([]string, error) { return []string{"quick"}, nil }

	backlog := make([]compute.Job, 5000)
	for i := range backlog {
		backlog[i] = compute.Job{Queue: "busy", Config: fmt.Sprint(i)}
	}
	enqueueAll(t, q, backlog)
	startWorker(t, q, compute.WorkerConfig{Queues: map[string]compute.QueueConfig{
		"busy":  {Concurrency: 4, Handler: busy},
		"quiet": {Concurrency: 2, Handler: quick},
	}})
	waitUntil(t, liveness, "the busy queue to be under way", func() bool { return busyDone.Load() >= 20 })

	ids := enqueueAll(t, q, slices.Repeat([]compute.Job{{Queue: "quiet"}}, 5))
	for _, id := range ids {
		if job := awaitStatus(t, q, id, compute.StatusComplete); !slices.Equal(job.OutputFiles, []string{"quick"}) {
			t.Errorf("quiet job %s: outputs %q", id, job.OutputFiles)
		}
	}
	counts, err := q.Counts(context.Background())
	if err != nil {
		t.Fatalf("counts: %v", err)
	}
	if counts["busy"][compute.StatusQueued] == 0 {
		t.Fatalf("the busy queue had no backlog left when the quiet queue finished (%v): the test proves nothing", counts["busy"])
	}
	t.Logf("quiet queue done while busy had %d queued and %d done", counts["busy"][compute.StatusQueued], busyDone.Load())
}

func TestWorkerRetriesFailedAttemptsUntilOneSucceeds(t *testing.T) {
	t.Parallel()
	job := runToEnd(t, compute.QueueConfig{Backoff: quickBackoff,
		Handler: func(ctx context.Context, job *compute.Job) ([]string, error) {
			if job.Attempt < 3 {
				return nil, fmt.Errorf("transient failure on attempt %d", job.Attempt)
			}
			return []string{"done"}, nil
		}}, compute.Job{})[0]
	if job.Status != compute.StatusComplete || job.Attempt != 3 || !slices.Equal(job.OutputFiles, []string{"done"}) {
		t.Fatalf("got %s at attempt %d with outputs %q, want complete at attempt 3 with [done]", job.Status, job.Attempt, job.OutputFiles)
	}
	if len(job.Errors) != 2 {
		t.Fatalf("%d errors recorded, want 2:%s", len(job.Errors), errorsText(job))
	}
	for i, e := range job.Errors {
		if want := fmt.Sprintf("transient failure on attempt %d", i+1); e.Attempt != i+1 || e.Error != want {
			t.Errorf("error %d: attempt %d %q, want attempt %d %q", i, e.Attempt, e.Error, i+1, want)
		}
	}
}

func TestWorkerFailsJobWhenItsAttemptsAreSpent(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	job := runToEnd(t, compute.QueueConfig{Backoff: quickBackoff,
		Handler: func(ctx context.Context, job *compute.Job) ([]string, error) {
			calls.Add(1)
			return nil, errors.New("always broken")
		}}, compute.Job{MaxAttempts: 2})[0]
	if job.Status != compute.StatusFailed || job.Attempt != 2 || len(job.Errors) != 2 {
		t.Fatalf("got %s at attempt %d with %d errors, want failed at attempt 2 with 2 errors:%s", job.Status, job.Attempt, len(job.Errors), errorsText(job))
	}
	if job.Finished.IsZero() {
		t.Error("failed job has no finished time")
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("handler called %d times, want 2", n)
	}
}

func TestWorkerFailsPermanentErrorAtOnce(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	job := runToEnd(t, compute.QueueConfig{Backoff: quickBackoff,
		Handler: func(ctx context.Context, job *compute.Job) ([]string, error) {
			calls.Add(1)
			return nil, compute.Permanent(errors.New("bad input"))
		}}, compute.Job{})[0]
	if job.Status != compute.StatusFailed || job.Attempt != 1 || len(job.Errors) != 1 {
		t.Fatalf("got %s at attempt %d with %d errors, want failed at attempt 1 with 1 error:%s", job.Status, job.Attempt, len(job.Errors), errorsText(job))
	}
	if !strings.Contains(job.Errors[0].Error, "bad input") {
		t.Errorf("recorded error %q does not carry the handler's error", job.Errors[0].Error)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("handler called %d times, want 1", n)
	}
}

func TestWorkerSnoozeRequeuesWithoutSpendingAnAttempt(t *testing.T) {
	t.Parallel()
	q := newQueue(t, withTestLog(t))
	var calls atomic.Int32
	startWorker(t, q, compute.WorkerConfig{PollInterval: 50 * time.Millisecond, Queues: map[string]compute.QueueConfig{
		"q": {Backoff: quickBackoff, Handler: func(ctx context.Context, job *compute.Job) ([]string, error) {
			switch job.Config {
			case "later":
				return nil, compute.Snooze(time.Hour)
			default:
				calls.Add(1)
				if job.Attempt <= 2 {
					return nil, compute.Snooze(time.Millisecond)
				}
				return nil, errors.New("real failure")
			}
		}},
	}})

	// Two snoozes, then real failures: with MaxAttempts 2 the job fails
	// only after two real failures, because a snooze spends no attempt:
	// four claims, two of them snoozes, two attempts spent.
	id := enqueue(t, q, compute.Job{Queue: "q", MaxAttempts: 2})
	job := awaitStatus(t, q, id, compute.StatusComplete, compute.StatusFailed)
	if job.Status != compute.StatusFailed || job.Attempt != 4 || job.Snoozes != 2 || job.Spent() != 2 || job.MaxAttempts != 2 {
		t.Fatalf("got %s after %d claims, %d snoozes, max attempts %d; want failed after 4 claims, 2 snoozes, max 2:%s",
			job.Status, job.Attempt, job.Snoozes, job.MaxAttempts, errorsText(job))
	}
	if len(job.Errors) != 2 || job.Errors[0].Attempt != 1 || job.Errors[1].Attempt != 2 {
		t.Fatalf("want errors for spent attempts 1 and 2 only (a snooze records none):%s", errorsText(job))
	}
	if n := calls.Load(); n != 4 {
		t.Errorf("handler called %d times, want 4", n)
	}

	// A snooze waits its duration: the job is queued again, run an hour
	// from now.
	id = enqueue(t, q, compute.Job{Queue: "q", Config: "later"})
	waitUntil(t, liveness, "the snoozed job to be queued again", func() bool {
		job = getJob(t, q, id)
		return job.Status == compute.StatusQueued && job.Attempt == 1
	})
	if job.MaxAttempts != compute.DefaultMaxAttempts || job.Snoozes != 1 || len(job.Errors) != 0 || !job.LeaseExpires.IsZero() {
		t.Errorf("snoozed job: max attempts %d, %d snoozes, %d errors, lease %v; want %d, 1, none, none",
			job.MaxAttempts, job.Snoozes, len(job.Errors), job.LeaseExpires, compute.DefaultMaxAttempts)
	}
	if !queryOne[bool](t, q.Pool(), `SELECT run_at > now() + interval '59 minutes' FROM compute.jobs WHERE job_id = $1`, id[:]) {
		t.Errorf("snoozed job runs at %v, want an hour from now", job.RunAt)
	}
}

// TestWorkerQueueCapAndBackoffCountOnlySpentAttempts: the queue's own
// MaxAttempts and its backoff see the attempts spent, not the claims. A job
// snoozed twice and then failing once has spent one of its queue's two
// attempts: it is retried (after the backoff for attempt 1), not failed.
func TestWorkerQueueCapAndBackoffCountOnlySpentAttempts(t *testing.T) {
	t.Parallel()
	q := newQueue(t, withTestLog(t))
	backoffs := make(chan int, 10)
	startWorker(t, q, compute.WorkerConfig{PollInterval: 50 * time.Millisecond, Queues: map[string]compute.QueueConfig{
		"q": {MaxAttempts: 2,
			Backoff: func(attempt int) time.Duration { backoffs <- attempt; return time.Hour },
			Handler: func(ctx context.Context, job *compute.Job) ([]string, error) {
				if job.Attempt <= 2 {
					return nil, compute.Snooze(time.Millisecond)
				}
				return nil, errors.New("real failure")
			}},
	}})
	id := enqueue(t, q, compute.Job{Queue: "q"})
	if got := receive(t, backoffs, liveness, "the backoff of the first real failure"); got != 1 {
		t.Errorf("backoff asked for attempt %d, want 1 (two snoozes spent none)", got)
	}
	var job *compute.Job
	waitUntil(t, liveness, "the failure to be written", func() bool {
		job = getJob(t, q, id)
		return job.Status == compute.StatusFailed || len(job.Errors) == 1
	})
	if job.Status != compute.StatusQueued || job.Spent() != 1 {
		t.Fatalf("after 2 snoozes and 1 failure under a queue cap of 2: %s with %d attempts spent, want queued with 1:%s",
			job.Status, job.Spent(), errorsText(job))
	}
}

func TestWorkerRecordsPanicWithStackAndKeepsRunning(t *testing.T) {
	t.Parallel()
	q := newQueue(t, withTestLog(t))
	startWorker(t, q, compute.WorkerConfig{PollInterval: 50 * time.Millisecond, Queues: map[string]compute.QueueConfig{
		"q": {Handler: func(ctx context.Context, job *compute.Job) ([]string, error) {
			if job.Config == "panic" {
				panic("kaboom")
			}
			return []string{"fine"}, nil
		}},
	}})
	id := enqueue(t, q, compute.Job{Queue: "q", Config: "panic", MaxAttempts: 1})
	job := awaitStatus(t, q, id, compute.StatusComplete, compute.StatusFailed)
	if job.Status != compute.StatusFailed || len(job.Errors) != 1 {
		t.Fatalf("panicking job: %s with %d errors, want failed with 1", job.Status, len(job.Errors))
	}
	msg := job.Errors[0].Error
	for _, want := range []string{"panic: kaboom", "runtime/debug.Stack", "worker_test.go"} {
		if !strings.Contains(msg, want) {
			t.Errorf("recorded error lacks %q (want the panic value and its stack):\n%s", want, msg)
		}
	}

	// The same worker goes on with other jobs.
	id = enqueue(t, q, compute.Job{Queue: "q"})
	if job := awaitStatus(t, q, id, compute.StatusComplete, compute.StatusFailed); job.Status != compute.StatusComplete {
		t.Fatalf("job after the panic: %s:%s", job.Status, errorsText(job))
	}
}

func TestWorkerTimeoutCancelsHandlerAndFailsAttempt(t *testing.T) {
	t.Parallel()
	seen := make(chan error, 2)
	jobs := runToEnd(t, compute.QueueConfig{Timeout: 200 * time.Millisecond,
		Handler: func(ctx context.Context, job *compute.Job) ([]string, error) {
			<-ctx.Done()
			seen <- ctx.Err()
			if job.Config == "returns-error" {
				return nil, ctx.Err()
			}
			return []string{"too-late"}, nil // a success after the deadline still fails
		}},
		compute.Job{Config: "returns-error", MaxAttempts: 1},
		compute.Job{Config: "returns-nil", MaxAttempts: 1})
	for range 2 {
		if err := receive(t, seen, liveness, "the handler's context error"); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("handler's ctx.Err() = %v, want DeadlineExceeded", err)
		}
	}
	for _, job := range jobs {
		if job.Status != compute.StatusFailed || len(job.Errors) != 1 || len(job.OutputFiles) != 0 {
			t.Errorf("%s: %s with outputs %q, want failed without outputs:%s", job.Config, job.Status, job.OutputFiles, errorsText(job))
			continue
		}
		if !strings.Contains(job.Errors[0].Error, "timed out") {
			t.Errorf("%s: recorded error %q does not name the timeout", job.Config, job.Errors[0].Error)
		}
	}
}

func TestWorkerQueueMaxAttemptsCapsJobAttempts(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	job := runToEnd(t, compute.QueueConfig{Backoff: quickBackoff, MaxAttempts: 2,
		Handler: func(ctx context.Context, job *compute.Job) ([]string, error) {
			calls.Add(1)
			return nil, errors.New("boom")
		}}, compute.Job{})[0] // the job itself allows 25
	if job.Status != compute.StatusFailed || job.Attempt != 2 || len(job.Errors) != 2 {
		t.Fatalf("got %s at attempt %d with %d errors, want failed at attempt 2:%s", job.Status, job.Attempt, len(job.Errors), errorsText(job))
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("handler called %d times, want 2", n)
	}
}

func TestWorkerMiddlewareWrapsEveryCallOutermostFirst(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	calls := make(map[compute.JobID][]string)
	record := func(id compute.JobID, event string) {
		mu.Lock()
		calls[id] = append(calls[id], event)
		mu.Unlock()
	}
	middleware := func(name string) compute.Middleware {
		return func(next compute.Handler) compute.Handler {
			return func(ctx context.Context, job *compute.Job) ([]string, error) {
				record(job.ID, fmt.Sprintf("%s>%d", name, job.Attempt))
				out, err := next(ctx, job)
				record(job.ID, fmt.Sprintf("<%s%d", name, job.Attempt))
				if err == nil && name == "outer" {
					out = append(out, "via-outer") // what the middleware returns is what is stored
				}
				return out, err
			}
		}
	}
	q := newQueue(t, withTestLog(t))
	startWorker(t, q, compute.WorkerConfig{
		PollInterval: 50 * time.Millisecond,
		Middleware:   []compute.Middleware{middleware("outer"), middleware("inner")},
		Queues: map[string]compute.QueueConfig{"q": {Backoff: quickBackoff,
			Handler: func(ctx context.Context, job *compute.Job) ([]string, error) {
				record(job.ID, fmt.Sprintf("handler%d", job.Attempt))
				if job.Config == "flaky" && job.Attempt == 1 {
					return nil, errors.New("first attempt fails")
				}
				return []string{"out"}, nil
			}}},
	})
	ids := enqueueAll(t, q, []compute.Job{{Queue: "q"}, {Queue: "q", Config: "flaky"}})
	attempt := func(n int) []string {
		return []string{fmt.Sprint("outer>", n), fmt.Sprint("inner>", n), fmt.Sprint("handler", n), fmt.Sprint("<inner", n), fmt.Sprint("<outer", n)}
	}
	want := map[compute.JobID][]string{ids[0]: attempt(1), ids[1]: append(attempt(1), attempt(2)...)}
	for _, id := range ids {
		job := awaitStatus(t, q, id, compute.StatusComplete, compute.StatusFailed)
		if !slices.Equal(job.OutputFiles, []string{"out", "via-outer"}) {
			t.Errorf("job %s: %s with outputs %q, want complete with [out via-outer]", id, job.Status, job.OutputFiles)
		}
		mu.Lock()
		got := calls[id]
		mu.Unlock()
		if !slices.Equal(got, want[id]) {
			t.Errorf("job %s: calls %q, want %q", id, got, want[id])
		}
	}
}

func TestWorkerFinishesRunningJobsWhenRunContextEnds(t *testing.T) {
	t.Parallel()
	q := newQueue(t, withTestLog(t))
	ids := enqueueAll(t, q, slices.Repeat([]compute.Job{{Queue: "g"}}, 5))
	started := make(chan *compute.Job, 5)
	release := make(chan struct{})
	cancelledEarly := make(chan error, 5)
	w, err := compute.NewWorker(q, compute.WorkerConfig{PollInterval: 50 * time.Millisecond, Queues: map[string]compute.QueueConfig{
		"g": {Concurrency: 2, Handler: func(ctx context.Context, job *compute.Job) ([]string, error) {
			started <- job
			<-release
			if ctx.Err() != nil {
				cancelledEarly <- context.Cause(ctx)
			}
			return []string{"finished"}, nil
		}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := runWorker(t, w, ctx)
	running := []*compute.Job{
		receive(t, started, liveness, "the first job to start"),
		receive(t, started, liveness, "the second job to start"),
	}
	cancel()
	close(release)
	r.wait(t) // Run returns nil once the running jobs are written back

	for _, job := range running {
		got := getJob(t, q, job.ID)
		if got.Status != compute.StatusComplete || !slices.Equal(got.OutputFiles, []string{"finished"}) {
			t.Errorf("running job %s: %s with outputs %q, want complete with [finished]", job.ID, got.Status, got.OutputFiles)
		}
	}
	select {
	case cause := <-cancelledEarly:
		t.Errorf("a running handler's context was cancelled during the grace period: %v", cause)
	default:
	}
	if n := len(started); n != 0 {
		t.Errorf("%d more jobs started after Run's context ended", n)
	}
	claimed := 0
	for _, id := range ids {
		if job := getJob(t, q, id); job.Attempt > 0 {
			claimed++
		} else if job.Status != compute.StatusQueued {
			t.Errorf("unclaimed job %s is %s, want queued", id, job.Status)
		}
	}
	if claimed != 2 {
		t.Errorf("%d jobs were claimed, want only the 2 running when Run's context ended", claimed)
	}
}

func TestWorkerStopDuringClaimLeavesNoJobInProgress(t *testing.T) {
	t.Parallel()
	// A stop that arrives while a claim statement runs must not strand the
	// jobs it claims: a job left in progress by a stopped worker would wait
	// for its lease to expire, and then fail if that was its last attempt
	// although it never ran. A trigger makes the claim take a second, so
	// the stop surely lands while it runs; the statement must then be
	// cancelled, or its jobs run or handed back.
	q := newQueue(t, withTestLog(t))
	mustExec(t, q.Pool(), `
		CREATE FUNCTION slow_claim() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN PERFORM pg_sleep(1); RETURN NEW; END $$;
		CREATE TRIGGER slow_claim BEFORE UPDATE ON compute.jobs FOR EACH ROW
		WHEN (OLD.status = 'queued' AND NEW.status = 'in-progress') EXECUTE FUNCTION slow_claim();`)
	id := enqueue(t, q, compute.Job{Queue: "c", MaxAttempts: 1})
	var calls atomic.Int32
	w, err := compute.NewWorker(q, compute.WorkerConfig{Queues: map[string]compute.QueueConfig{
		"c": {Handler: func(ctx context.Context, job *compute.Job) ([]string, error) { calls.Add(1); return nil, nil }},
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := runWorker(t, w, ctx)
	claimRunning := func() bool {
		return queryOne[bool](t, q.Pool(), `SELECT EXISTS (SELECT FROM pg_stat_activity
			WHERE datname = current_database() AND state = 'active' AND query LIKE '%picked AS MATERIALIZED%'
			  AND pid <> pg_backend_pid())`)
	}
	waitUntil(t, liveness, "the claim statement to run", claimRunning)
	cancel()
	r.wait(t)
	waitUntil(t, liveness, "the claim statement to end", func() bool { return !claimRunning() })

	job := getJob(t, q, id)
	switch {
	case job.Status == compute.StatusComplete && calls.Load() == 1:
		// The worker ran what it claimed before it stopped: fine.
	case job.Status == compute.StatusQueued && job.Spent() < job.MaxAttempts:
		// Handed back with its attempt: fine.
	default:
		t.Fatalf("after the worker stopped mid-claim the job is %s at attempt %d of %d, lease until %v, handler called %d times; "+
			"want it run or handed back, not stranded", job.Status, job.Attempt, job.MaxAttempts, job.LeaseExpires, calls.Load())
	}
}

func TestWorkerShutdownHandsInterruptedJobBackAtOnce(t *testing.T) {
	t.Parallel()
	q := newQueue(t, withTestLog(t)) // lease 30 s: a job left in progress would stay so for 30 s
	started := make(chan struct{}, 1)
	seen := make(chan error, 1)
	r := startWorker(t, q, compute.WorkerConfig{Queues: map[string]compute.QueueConfig{
		"s": {Handler: func(ctx context.Context, job *compute.Job) ([]string, error) {
			started <- struct{}{}
			<-ctx.Done()
			seen <- ctx.Err()
			return nil, ctx.Err()
		}},
	}})
	id := enqueue(t, q, compute.Job{Queue: "s"})
	receive(t, started, liveness, "the handler to start")

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := r.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want DeadlineExceeded (the grace period cut a job short)", err)
	}
	if err := receive(t, seen, liveness, "the handler to see cancellation"); err == nil {
		t.Error("handler's context was not cancelled")
	}
	r.wait(t)

	job := getJob(t, q, id)
	if job.Status != compute.StatusQueued || job.Attempt != 1 || job.Spent() != 0 || job.MaxAttempts != compute.DefaultMaxAttempts {
		t.Fatalf("after Shutdown: %s after %d claims, %d spent, of %d; want queued after 1 claim, none spent (attempt given back), of %d",
			job.Status, job.Attempt, job.Spent(), job.MaxAttempts, compute.DefaultMaxAttempts)
	}
	if !job.LeaseExpires.IsZero() || len(job.Errors) != 0 {
		t.Errorf("after Shutdown: lease %v and %d errors, want neither:%s", job.LeaseExpires, len(job.Errors), errorsText(job))
	}
}

func TestWorkerShutdownBoundsGraceAlsoAfterRunContextEnded(t *testing.T) {
	t.Parallel()
	// A program may end Run's context on the first signal and call
	// Shutdown with a short deadline on the second: Shutdown's deadline
	// must then cut the (long) StopTimeout short, as its doc says.
	q := newQueue(t, withTestLog(t))
	started := make(chan struct{}, 1)
	seen := make(chan error, 1)
	w, err := compute.NewWorker(q, compute.WorkerConfig{
		StopTimeout: 25 * time.Second, // longer than the wait below; short enough for cleanup if it fails
		Queues: map[string]compute.QueueConfig{"s": {Handler: func(ctx context.Context, job *compute.Job) ([]string, error) {
			started <- struct{}{}
			<-ctx.Done()
			seen <- ctx.Err()
			return nil, ctx.Err()
		}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, endRun := context.WithCancel(context.Background())
	defer endRun()
	r := runWorker(t, w, runCtx)
	id := enqueue(t, q, compute.Job{Queue: "s"})
	receive(t, started, liveness, "the handler to start")
	endRun()

	const grace = 200 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- w.Shutdown(ctx) }()
	if err := receive(t, stopped, grace+10*time.Second, "Shutdown to return after its deadline"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want DeadlineExceeded", err)
	}
	if err := receive(t, seen, liveness, "the handler to see cancellation"); err == nil {
		t.Error("handler's context was not cancelled")
	}
	r.wait(t)
	if job := getJob(t, q, id); job.Status != compute.StatusQueued || job.Spent() != 0 {
		t.Errorf("after Shutdown: %s with %d attempts spent, want handed back: queued with none", job.Status, job.Spent())
	}
}

func TestWorkerShutdownAbandonsHandlerThatIgnoresCancellation(t *testing.T) {
	t.Parallel()
	q := newQueue(t, withTestLog(t))
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	returned := make(chan struct{})
	r := startWorker(t, q, compute.WorkerConfig{Queues: map[string]compute.QueueConfig{
		"s": {Handler: func(ctx context.Context, job *compute.Job) ([]string, error) {
			defer close(returned)
			started <- struct{}{}
			<-release // ignores ctx
			return []string{"late-result"}, nil
		}},
	}})
	id := enqueue(t, q, compute.Job{Queue: "s"})
	receive(t, started, liveness, "the handler to start")

	const grace = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	begin := time.Now()
	stopped := make(chan error, 1)
	go func() { stopped <- r.Shutdown(ctx) }()
	// Liveness bound: the grace period, the worker's short wait for
	// handlers to honour cancellation, and a few statements.
	if err := receive(t, stopped, grace+10*time.Second, "Shutdown to return although a handler ignores its context"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want DeadlineExceeded", err)
	}
	t.Logf("Shutdown returned after %s with a %s deadline", time.Since(begin).Round(time.Millisecond), grace)
	r.wait(t)

	job := getJob(t, q, id)
	if job.Status != compute.StatusQueued || job.Attempt != 1 || job.Spent() != 0 {
		t.Fatalf("after Shutdown: %s after %d claims, %d spent; want handed back: queued after 1 claim, none spent",
			job.Status, job.Attempt, job.Spent())
	}

	close(release)
	receive(t, returned, liveness, "the abandoned handler to return")
	job = getJob(t, q, id)
	if job.Status != compute.StatusQueued || len(job.OutputFiles) != 0 {
		t.Fatalf("after the abandoned handler returned: %s with outputs %q, want still queued without outputs", job.Status, job.OutputFiles)
	}
	// The job is free for the next holder, whose result stands.
	next := claimOne(t, q, "s")
	if err := q.Complete(context.Background(), compute.Completion{Job: next, OutputFiles: []string{"second"}}); err != nil {
		t.Fatalf("complete by the next holder: %v", err)
	}
	if job = getJob(t, q, id); job.Status != compute.StatusComplete || !slices.Equal(job.OutputFiles, []string{"second"}) {
		t.Fatalf("final: %s with outputs %q, want complete with [second]", job.Status, job.OutputFiles)
	}
}

func TestWorkerShutdownTwiceIsSafe(t *testing.T) {
	t.Parallel()
	q := newQueue(t, withTestLog(t))
	r := startWorker(t, q, compute.WorkerConfig{Queues: map[string]compute.QueueConfig{
		"s": {Handler: func(ctx context.Context, job *compute.Job) ([]string, error) { return nil, nil }},
	}})
	awaitStatus(t, q, enqueue(t, q, compute.Job{Queue: "s"}), compute.StatusComplete) // Run is under way

	results := make(chan error, 2)
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() { results <- r.Shutdown(context.Background()) })
	}
	wg.Wait()
	close(results)
	for err := range results {
		if err != nil {
			t.Errorf("concurrent Shutdown = %v, want nil", err)
		}
	}
	if err := r.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown after Run returned = %v, want nil", err)
	}
	r.wait(t)
}

func TestWorkerShutdownBeforeRunMakesRunReturnAtOnce(t *testing.T) {
	t.Parallel()
	q := newQueue(t, withTestLog(t))
	var calls atomic.Int32
	w, err := compute.NewWorker(q, compute.WorkerConfig{Queues: map[string]compute.QueueConfig{
		"s": {Handler: func(ctx context.Context, job *compute.Job) ([]string, error) { calls.Add(1); return nil, nil }},
	}})
	if err != nil {
		t.Fatal(err)
	}
	id := enqueue(t, q, compute.Job{Queue: "s"})
	if err := w.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown before Run = %v, want nil", err)
	}
	ran := make(chan error, 1)
	go func() { ran <- w.Run(context.Background()) }()
	if err := receive(t, ran, liveness, "Run after Shutdown to return"); err != nil {
		t.Fatalf("Run after Shutdown = %v, want nil", err)
	}
	if job := getJob(t, q, id); job.Status != compute.StatusQueued || job.Attempt != 0 || calls.Load() != 0 {
		t.Errorf("job is %s at attempt %d after %d handler calls; a stopped worker must claim nothing", job.Status, job.Attempt, calls.Load())
	}
	if err := w.Run(context.Background()); !errors.Is(err, compute.ErrWorkerStarted) {
		t.Errorf("second Run = %v, want ErrWorkerStarted", err)
	}
}

func TestWorkerRunTwiceFailsWithErrWorkerStarted(t *testing.T) {
	t.Parallel()
	q := newQueue(t, withTestLog(t))
	r := startWorker(t, q, compute.WorkerConfig{Queues: map[string]compute.QueueConfig{
		"s": {Handler: func(ctx context.Context, job *compute.Job) ([]string, error) { return nil, nil }},
	}})
	awaitStatus(t, q, enqueue(t, q, compute.Job{Queue: "s"}), compute.StatusComplete) // Run is under way
	if err := r.Run(context.Background()); !errors.Is(err, compute.ErrWorkerStarted) {
		t.Errorf("Run while running = %v, want ErrWorkerStarted", err)
	}
	r.stop(t)
	if err := r.Run(context.Background()); !errors.Is(err, compute.ErrWorkerStarted) {
		t.Errorf("Run after Run returned = %v, want ErrWorkerStarted", err)
	}
}

// expireLease makes the lease of job's attempt run out by the database
// clock and hands the job back with RequeueStale from requeuer. The
// holder's heartbeat may renew the lease between the two statements, so it
// repeats until the job is queued again: by requeuer, or by the worker's own
// rescue, whose first run may come late.
func expireLease(t *testing.T, requeuer *compute.Queue, job *compute.Job) {
	t.Helper()
	waitUntil(t, liveness, "the expired job to be requeued", func() bool {
		mustExec(t, requeuer.Pool(), `UPDATE compute.jobs SET lease_expires = now() - interval '1 minute'
			WHERE job_id = $1 AND attempt = $2 AND status = 'in-progress'`, job.ID[:], job.Attempt)
		if _, err := requeuer.RequeueStale(context.Background()); err != nil {
			t.Fatalf("requeue stale: %v", err)
		}
		return queryOne[bool](t, requeuer.Pool(), `SELECT status <> 'in-progress' OR attempt <> $2 FROM compute.jobs WHERE job_id = $1`,
			job.ID[:], job.Attempt)
	})
}

func TestWorkerLostLeaseCancelsHandlerAndDiscardsItsResult(t *testing.T) {
	t.Parallel()
	connString := testdb.New(t)
	first := openQueue(t, connString, compute.WithMigrate(), withTestLog(t), compute.WithWorkerID("first-holder"),
		compute.WithLease(3*time.Second)) // heartbeat every second
	second := openQueue(t, connString, compute.WithWorkerID("second-holder"))

	started := make(chan *compute.Job, 1)
	cancelled := make(chan struct{})
	release := make(chan struct{})
	r := startWorker(t, first, compute.WorkerConfig{
		MaintenanceInterval: time.Hour, // only the test hands the job back
		Queues: map[string]compute.QueueConfig{"lq": {
			Concurrency: 1, // the held slot keeps this worker from claiming the job again
			Handler: func(ctx context.Context, job *compute.Job) ([]string, error) {
				started <- job
				<-ctx.Done()
				close(cancelled)
				<-release
				return []string{"from-first-holder"}, nil
			}}},
	})
	id := enqueue(t, first, compute.Job{Queue: "lq"})
	expireLease(t, second, receive(t, started, liveness, "the first holder's handler to start"))
	taken := claimOne(t, second, "lq")
	if taken.ID != id || taken.Attempt != 2 {
		t.Fatalf("second holder claimed %s at attempt %d, want %s at attempt 2", taken.ID, taken.Attempt, id)
	}
	receive(t, cancelled, liveness, "the first holder's handler to be cancelled at its next heartbeat")
	close(release)
	r.stop(t) // every outcome the first worker would write is written now

	job := getJob(t, first, id)
	if job.Status != compute.StatusInProgress || job.Worker != "second-holder" || job.Attempt != 2 || len(job.OutputFiles) != 0 {
		t.Fatalf("after the first holder stopped: %s by %q at attempt %d with outputs %q; want still in progress by second-holder at attempt 2",
			job.Status, job.Worker, job.Attempt, job.OutputFiles)
	}
	if len(job.Errors) != 1 || !strings.Contains(job.Errors[0].Error, "first-holder") {
		t.Errorf("want only the lease expiry of first-holder recorded:%s", errorsText(job))
	}
	if err := second.Complete(context.Background(), compute.Completion{Job: taken, OutputFiles: []string{"from-second-holder"}}); err != nil {
		t.Fatalf("second holder's complete: %v", err)
	}
	if job := getJob(t, first, id); job.Status != compute.StatusComplete || !slices.Equal(job.OutputFiles, []string{"from-second-holder"}) {
		t.Fatalf("final: %s with outputs %q, want complete with [from-second-holder]", job.Status, job.OutputFiles)
	}
}

func TestWorkerReclaimingItsOwnExpiredJobKeepsAttemptsApart(t *testing.T) {
	t.Parallel()
	// A worker whose lease on a job ran out (its heartbeats failed for a
	// while) may claim that job again while the stale attempt's handler is
	// still running. The two attempts have the same job id: the stale one
	// must be cancelled, and its end must not make the worker forget the
	// new one, which must keep its lease.
	connString := testdb.New(t)
	const lease = 3 * time.Second
	q := openQueue(t, connString, compute.WithMigrate(), withTestLog(t), compute.WithWorkerID("same-worker"), compute.WithLease(lease))
	requeuer := openQueue(t, connString)

	started := make(chan *compute.Job, 2)
	staleCancelled := make(chan struct{})
	releaseStale := make(chan struct{})
	r := startWorker(t, q, compute.WorkerConfig{
		MaintenanceInterval: time.Hour,
		PollInterval:        100 * time.Millisecond,
		Queues: map[string]compute.QueueConfig{"rq": {
			Concurrency: 2,
			Handler: func(ctx context.Context, job *compute.Job) ([]string, error) {
				started <- job
				<-ctx.Done()
				if job.Attempt == 1 {
					close(staleCancelled)
					<-releaseStale
				}
				return []string{fmt.Sprint("attempt-", job.Attempt)}, nil
			}}},
	})
	id := enqueue(t, q, compute.Job{Queue: "rq"})
	stale := receive(t, started, liveness, "attempt 1 to start")
	if stale.Attempt != 1 {
		t.Fatalf("first start is attempt %d", stale.Attempt)
	}
	expireLease(t, requeuer, stale)
	if job := receive(t, started, liveness, "the worker to claim its job again"); job.Attempt != 2 {
		t.Fatalf("second start is attempt %d, want 2", job.Attempt)
	}
	receive(t, staleCancelled, liveness, "the stale attempt's handler to be cancelled")

	close(releaseStale)
	var released time.Time
	if err := q.Pool().QueryRow(context.Background(), `SELECT now()`).Scan(&released); err != nil {
		t.Fatal(err)
	}
	// The new attempt's lease must still be renewed after the stale
	// attempt ended: wait for a renewal two heartbeats later.
	waitUntil(t, liveness, "attempt 2's lease to be renewed after the stale attempt ended", func() bool {
		job := getJob(t, q, id)
		if job.Status != compute.StatusInProgress || job.Attempt != 2 {
			t.Fatalf("job is %s at attempt %d, want in progress at attempt 2:%s", job.Status, job.Attempt, errorsText(job))
		}
		return job.LeaseExpires.After(released.Add(lease + 2*lease/3))
	})

	// Attempt 2 runs until its context ends: cut it short.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_ = r.Shutdown(ctx)
	r.wait(t)
}

// libraryGoroutines returns the stacks of goroutines running code of the
// compute package or of the pgx pool it opens.
func libraryGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var found []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "testing.tRunner(") {
			continue // a test itself (the package's internal tests are in package compute)
		}
		if strings.Contains(g, "github.com/computeplatform/compute.") || strings.Contains(g, "github.com/jackc/pgx/v5/pgxpool.") {
			found = append(found, g)
		}
	}
	return found
}

// waitNoLibraryGoroutines waits until no goroutine runs library code and
// fails the test with their stacks otherwise.
func waitNoLibraryGoroutines(t *testing.T, when string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		left := libraryGoroutines()
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s, %d goroutines still run library code:\n\n%s", when, len(left), strings.Join(left, "\n\n"))
		}
		<-tick.C
	}
}

// TestWorkerLeavesNoGoroutinesBehind is not parallel: it looks at every
// goroutine of the process. The worker runs a periodic schedule, and the
// queue has served Wait and Follow, so their goroutines are checked too.
func TestWorkerLeavesNoGoroutinesBehind(t *testing.T) {
	waitNoLibraryGoroutines(t, "before the test (another test leaked them)")
	q := openQueue(t, testdb.New(t), compute.WithMigrate(), withTestLog(t))
	started := make(chan struct{}, 1)
	r := startWorker(t, q, compute.WorkerConfig{
		MaintenanceInterval: 50 * time.Millisecond,
		Queues: map[string]compute.QueueConfig{
			"blocking": {Handler: func(ctx context.Context, job *compute.Job) ([]string, error) {
				started <- struct{}{}
				<-ctx.Done()
				return nil, ctx.Err()
			}},
			"quick": {Handler: func(ctx context.Context, job *compute.Job) ([]string, error) { return nil, nil }},
		},
		Periodic: []compute.PeriodicJob{{Name: "tick", Every: time.Second, Job: compute.Job{Queue: "quick"}}},
	})
	waitListener(t, q, 0)
	ids := enqueueAll(t, q, slices.Repeat([]compute.Job{{Queue: "quick"}}, 20))
	for _, id := range ids {
		awaitStatus(t, q, id, compute.StatusComplete)
	}
	// Wait and Follow start the queue's journal listener; Close must stop it.
	if _, err := q.Wait(t.Context(), ids[0]); err != nil {
		t.Fatal(err)
	}
	followCtx, stopFollow := context.WithTimeout(t.Context(), 50*time.Millisecond)
	_ = q.Follow(followCtx, compute.Cursor{}, func([]compute.Event) error { return nil })
	stopFollow()
	enqueue(t, q, compute.Job{Queue: "blocking"})
	receive(t, started, liveness, "the blocking handler to start")
	if len(libraryGoroutines()) == 0 {
		t.Fatal("no library goroutine found while the worker runs: the leak check cannot see them")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := r.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want DeadlineExceeded", err)
	}
	r.wait(t)
	q.Close()
	waitNoLibraryGoroutines(t, "after Run returned and the queue closed")
}

// TestWorkerWritesOutcomesInRoundsAtLeastAGapApart: the completer starts
// its rounds at least 5 ms apart (writeGap), however quickly jobs finish.
// Jobs are enqueued one at a time while the worker runs, so each is
// claimed and finished almost alone. The journal writes one row per
// statement, queue and status, so its complete rows count the Complete
// statements; without the gap there are nearly as many as jobs.
func TestWorkerWritesOutcomesInRoundsAtLeastAGapApart(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	r := startWorker(t, q, compute.WorkerConfig{Queues: map[string]compute.QueueConfig{
		"gap": {Handler: idle, Concurrency: 1000},
	}})
	defer r.stop(t)
	const total = 100
	start := time.Now()
	var last compute.JobID
	for range total {
		last = enqueue(t, q, compute.Job{Queue: "gap"})
	}
	awaitStatus(t, q, last, compute.StatusComplete)
	waitUntil(t, liveness, "every job complete", func() bool {
		return queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.jobs WHERE status = 'complete'`) == total
	})
	elapsed := time.Since(start)
	rounds := queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.events WHERE queue = 'gap' AND status = 'complete'`)
	if limit := int64(elapsed/(5*time.Millisecond)) + 1; rounds > limit {
		t.Fatalf("%d jobs written in %d Complete statements within %s; rounds 5 ms apart allow at most %d", total, rounds, elapsed, limit)
	}
	t.Logf("%d jobs written in %d Complete statements within %s", total, rounds, elapsed)
}

// TestWorkerWritesOutcomesDuringARenewal checks that a slow lease renewal
// does not hold up the completer: outcomes are written while it runs, and
// every job completes. The two used to be kept apart by a lock, as they
// deadlocked when they overlapped on a job that finished during a renewal;
// both now lock their rows in id order (TestFencedWritesLockRowsInIDOrder).
// The test slows every renewal down by 200 ms while jobs keep finishing,
// and reads back when each statement ran, by the database's clock.
func TestWorkerWritesOutcomesDuringARenewal(t *testing.T) {
	t.Parallel()
	connString := testdb.New(t)
	q := openQueue(t, connString, compute.WithMigrate(), compute.WithLease(1500*time.Millisecond), withTestLog(t))
	pool := q.Pool()
	mustExec(t, pool, `CREATE TABLE public.statements (kind text, began timestamptz, ended timestamptz)`)
	mustExec(t, pool, `CREATE FUNCTION public.statement_began() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('test.began', clock_timestamp()::text, true);
    IF position('SET lease_expires = now() +' in current_query()) > 0 THEN
        PERFORM pg_sleep(0.2);
    END IF;
    RETURN NULL;
END $$`)
	mustExec(t, pool, `CREATE FUNCTION public.statement_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.statements
    SELECT CASE WHEN position('SET lease_expires = now() +' in current_query()) > 0 THEN 'renewal'
                WHEN position('SET status = ''complete''' in current_query()) > 0 THEN 'complete' END,
           current_setting('test.began')::timestamptz, clock_timestamp();
    RETURN NULL;
END $$`)
	mustExec(t, pool, `CREATE TRIGGER statement_began BEFORE UPDATE ON compute.jobs
FOR EACH STATEMENT EXECUTE FUNCTION public.statement_began()`)
	mustExec(t, pool, `CREATE TRIGGER statement_ended AFTER UPDATE ON compute.jobs
FOR EACH STATEMENT EXECUTE FUNCTION public.statement_ended()`)

	// Jobs of 30 ms, four at a time, until the heartbeat (every lease/3 =
	// 500 ms) has renewed twice, each renewal taking at least 200 ms; then
	// the rest finish at once.
	jobs := make([]compute.Job, 1000)
	for i := range jobs {
		jobs[i] = compute.Job{Queue: "renewed"}
	}
	enqueueAll(t, q, jobs)
	enough := make(chan struct{})
	startWorker(t, q, compute.WorkerConfig{Queues: map[string]compute.QueueConfig{
		"renewed": {Concurrency: 4, Handler: func(ctx context.Context, _ *compute.Job) ([]string, error) {
			select {
			case <-time.After(30 * time.Millisecond):
			case <-enough:
			case <-ctx.Done():
			}
			return nil, nil
		}},
	}})
	waitUntil(t, liveness, "two lease renewals", func() bool {
		return queryOne[int64](t, pool, `SELECT count(*) FROM public.statements WHERE kind = 'renewal'`) >= 2
	})
	close(enough)
	waitUntil(t, liveness, "every job to complete", func() bool {
		return queryOne[int64](t, pool, `SELECT count(*) FROM compute.jobs WHERE status = 'complete'`) == int64(len(jobs))
	})
	renewals := queryOne[int64](t, pool, `SELECT count(*) FROM public.statements WHERE kind = 'renewal'`)
	if renewals < 2 {
		t.Fatalf("%d lease renewals, want at least 2: the test checked too little", renewals)
	}
	overlaps := queryOne[int64](t, pool, `SELECT count(*) FROM public.statements r JOIN public.statements c
ON r.kind = 'renewal' AND c.kind = 'complete' AND c.began < r.ended AND r.began < c.ended`)
	if overlaps == 0 {
		t.Fatalf("no Complete statement ran during any of the %d lease renewals of 200 ms: the completer waited for them", renewals)
	}
	t.Logf("%d Complete statements ran during the %d lease renewals", overlaps, renewals)
}

// TestWorkerRefusesAQueueAnotherWorkerOfItsQueueServes: Workers of one
// Queue share its worker id, by which the database knows whose jobs are
// whose; a second running Worker serving the same queue would take the
// first one's jobs for its own after a failed claim (found in review). Run
// refuses it at once; other queues, and the same queue once the first
// Worker stopped, are fine.
func TestWorkerRefusesAQueueAnotherWorkerOfItsQueueServes(t *testing.T) {
	t.Parallel()
	q := newQueue(t, withTestLog(t))
	idle := func(context.Context, *compute.Job) ([]string, error) { return nil, nil }
	first := startWorker(t, q, compute.WorkerConfig{Queues: map[string]compute.QueueConfig{"a": {Handler: idle}}})
	awaitStatus(t, q, enqueue(t, q, compute.Job{Queue: "a"}), compute.StatusComplete) // first is running
	second, err := compute.NewWorker(q, compute.WorkerConfig{Queues: map[string]compute.QueueConfig{"b": {Handler: idle}, "a": {Handler: idle}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := second.Run(context.Background()); !errors.Is(err, compute.ErrInvalidOption) || !strings.Contains(err.Error(), `"a"`) {
		t.Fatalf("a second Worker of the same Queue serving queue a: Run = %v, want ErrInvalidOption naming the queue", err)
	}
	other := startWorker(t, q, compute.WorkerConfig{Queues: map[string]compute.QueueConfig{"b": {Handler: idle}}})
	awaitStatus(t, q, enqueue(t, q, compute.Job{Queue: "b"}), compute.StatusComplete)
	other.stop(t)
	first.stop(t)
	again := startWorker(t, q, compute.WorkerConfig{Queues: map[string]compute.QueueConfig{"a": {Handler: idle}}})
	awaitStatus(t, q, enqueue(t, q, compute.Job{Queue: "a"}), compute.StatusComplete)
	again.stop(t)
}

// TestWorkerWritesOtherOutcomesWhileOneWriteWaits checks that the Worker
// writes outcomes in more than one statement at a time: a Complete that
// waits (here for a row lock an operator's transaction holds on its job)
// does not hold up the outcomes of the jobs that finish after it. With one
// completer loop, job B's completion waited behind job A's blocked write;
// and in a burn-down the Worker wrote no faster than one Complete statement
// at a time.
func TestWorkerWritesOtherOutcomesWhileOneWriteWaits(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	pool := q.Pool()
	finishA := make(chan struct{})
	r := startWorker(t, q, compute.WorkerConfig{Queues: map[string]compute.QueueConfig{
		"overlap": {Concurrency: 10, Handler: func(ctx context.Context, job *compute.Job) ([]string, error) {
			if job.Config == "A" {
				<-finishA
			}
			return nil, nil
		}},
	}})
	defer r.stop(t)
	a := enqueue(t, q, compute.Job{Queue: "overlap", Config: "A"})
	awaitStatus(t, q, a, compute.StatusInProgress)

	// Lock A's row, then let its handler return: the write of its outcome
	// waits for the lock.
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	mustExec(t, tx, `SELECT 1 FROM compute.jobs WHERE job_id = $1 FOR UPDATE`, a[:])
	close(finishA)
	waitUntil(t, liveness, "A's Complete to wait for the row lock", func() bool {
		return queryOne[int64](t, pool, `SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock'
  AND query LIKE '%SET status = ''complete''%'`) == 1
	})

	b := enqueue(t, q, compute.Job{Queue: "overlap", Config: "B"})
	awaitStatus(t, q, b, compute.StatusComplete)
	if got := status(t, q, a); got != compute.StatusInProgress {
		t.Fatalf("A is %s while its row is locked, want in-progress", got)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	awaitStatus(t, q, a, compute.StatusComplete)
}
