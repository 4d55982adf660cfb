package compute

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/computeplatform/compute/internal/testdb"
)

// sqlKey carries a statement's text from a tracer's start hook to its end.
type sqlKey struct{}

// afterStatement is a pgx tracer that runs a hook once, when the statement
// sql has returned and before its caller goes on.
type afterStatement struct {
	sql  string
	mu   sync.Mutex
	hook func()
}

func (a *afterStatement) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	return context.WithValue(ctx, sqlKey{}, d.SQL)
}

func (a *afterStatement) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryEndData) {
	if s, _ := ctx.Value(sqlKey{}).(string); s != a.sql {
		return
	}
	a.mu.Lock()
	f := a.hook
	a.hook = nil
	a.mu.Unlock()
	if f != nil {
		f()
	}
}

// tracedQueue opens a migrated database and a Queue on it whose pool runs
// tracer.
func tracedQueue(t *testing.T, tracer pgx.QueryTracer) *Queue {
	t.Helper()
	ctx := t.Context()
	connString := testdb.New(t)
	cfg, err := pgxpool.ParseConfig(connString)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.Tracer = tracer
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	q, err := New(ctx, pool, WithMigrate())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(q.Close)
	return q
}

// TestAdoptSkipsAJobTheCompleterJustWrote: the completer writes a finished
// job's outcome, and forgets it, between adopt's read of the jobs this
// worker holds and its check of the running set. adopt must not start that
// attempt again. (Found in review: before, the handler ran twice.)
func TestAdoptSkipsAJobTheCompleterJustWrote(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	tracer := &afterStatement{sql: heldJobsSQL}
	q := tracedQueue(t, tracer)
	if _, err := q.Enqueue(ctx, Job{Queue: "a"}); err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int32
	w, err := NewWorker(q, WorkerConfig{Queues: map[string]QueueConfig{
		"a": {Concurrency: 2, Handler: func(context.Context, *Job) ([]string, error) { runs.Add(1); return nil, nil }},
	}})
	if err != nil {
		t.Fatal(err)
	}
	qs := w.queues["a"]
	jobs := newGroup(context.Background())
	claimed, _, err := q.claim(ctx, "a", 1)
	if err != nil || len(claimed) != 1 {
		t.Fatalf("claim: %d jobs, %v", len(claimed), err)
	}
	qs.slots <- struct{}{}
	w.launch(jobs, qs, claimed[0], time.Now())
	jobs.wg.Wait() // the handler returned; its outcome waits for the completer
	var wrote atomic.Bool
	tracer.mu.Lock()
	tracer.hook = func() { // the completer's round lands now
		batch, _ := w.outcomes.take(maxWrite)
		if err := w.write(batch); err != nil {
			t.Errorf("write: %v", err)
		}
		wrote.Store(true)
	}
	tracer.mu.Unlock()
	if err := w.adopt(ctx, jobs, qs, time.Now()); err != nil {
		t.Fatal(err)
	}
	jobs.wg.Wait()
	if !wrote.Load() {
		t.Fatal("the completer's write did not run between adopt's read and its check")
	}
	if n := runs.Load(); n != 1 {
		t.Errorf("the job's one attempt ran %d times, want once", n)
	}
}

// batchBeforeRound2 is a pgx tracer that runs a hook once, when a keyed
// gated claim has claimed rows and the next round's lock is about to be
// sent.
type batchBeforeRound2 struct {
	claimedRows atomic.Bool
	done        atomic.Bool
	hook        func()
}

func (b *batchBeforeRound2) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	return context.WithValue(ctx, sqlKey{}, d.SQL)
}

func (b *batchBeforeRound2) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryEndData) {
	if s, _ := ctx.Value(sqlKey{}).(string); s == claimKeyedSQL && d.CommandTag.RowsAffected() > 0 {
		b.claimedRows.Store(true)
	}
}

func (b *batchBeforeRound2) TraceBatchStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchStartData) context.Context {
	qq := d.Batch.QueuedQueries
	if len(qq) == 2 && qq[1].SQL == lockGatedQueueSQL && b.claimedRows.Load() && b.done.CompareAndSwap(false, true) {
		b.hook()
	}
	return ctx
}

func (b *batchBeforeRound2) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (b *batchBeforeRound2) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

// TestStopIsBoundedWhenAnAbortedClaimHandsJobsBack: a keyed claim committed
// its first round and waits in its second for the queue's claim lock, which
// another session holds together with locks on every running job (as a
// hung database would). The stop must still end within StopTimeout plus
// stopGiveUp: the claim is abandoned at the grace period's end, and its
// jobs' hand-back, which cannot write, is bounded by the same give-up.
// (Found in review: the give-up started only after that hand-back had
// timed out on its own, and Run took 23 s with StopTimeout 1 s.)
func TestStopIsBoundedWhenAnAbortedClaimHandsJobsBack(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	tracer := &batchBeforeRound2{}
	q := tracedQueue(t, tracer)
	if err := q.SetQueueSettings(ctx, "g", QueueSettings{KeyMaxRunning: 100}); err != nil {
		t.Fatal(err)
	}
	blocker, err := pgx.ConnectConfig(ctx, q.pool.Config().ConnConfig.Copy())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { blocker.Close(context.Background()) })
	blocked := make(chan struct{})
	tracer.hook = func() {
		if _, err := blocker.Exec(context.Background(), `BEGIN`); err != nil {
			t.Error(err)
		}
		if _, err := blocker.Exec(context.Background(), lockGatedQueueSQL, "g", lockClassClaim); err != nil {
			t.Error(err)
		}
		if _, err := blocker.Exec(context.Background(), `SELECT 1 FROM compute.jobs WHERE status = 'in-progress' FOR UPDATE`); err != nil {
			t.Error(err)
		}
		close(blocked)
	}
	// A handler that ignores its context adds its own hand-back, after the
	// worker's wait for handlers to return.
	started := make(chan struct{}, 1)
	forever := make(chan struct{})
	t.Cleanup(func() { close(forever) })
	w, err := NewWorker(q, WorkerConfig{StopTimeout: time.Second, Queues: map[string]QueueConfig{
		"g":    {Concurrency: 4, Handler: func(context.Context, *Job) ([]string, error) { return nil, nil }},
		"slow": {Concurrency: 1, Handler: func(context.Context, *Job) ([]string, error) { started <- struct{}{}; <-forever; return nil, nil }},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.Enqueue(ctx, Job{Queue: "slow"}); err != nil {
		t.Fatal(err)
	}
	var jobs []Job
	for range 10 {
		jobs = append(jobs, Job{Queue: "g", PartitionKey: "a"})
	}
	jobs = append(jobs, Job{Queue: "g", PartitionKey: "b"})
	if _, err := q.EnqueueMany(ctx, jobs); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- w.Run(runCtx) }()
	select {
	case <-started:
	case <-time.After(20 * time.Second):
		t.Fatal("the slow job never started")
	}
	select {
	case <-blocked:
	case <-time.After(20 * time.Second):
		t.Fatal("the claim's second round never came")
	}
	begin := time.Now()
	stop()
	select {
	case <-ran:
	case <-time.After(time.Minute):
		t.Fatal("Run did not return within a minute of its context's end")
	}
	// StopTimeout and stopGiveUp, and 4 s for a loaded machine (before the
	// fix it took 23 s).
	if took := time.Since(begin); took > time.Second+stopGiveUp+4*time.Second {
		t.Errorf("Run returned %s after its context ended; the bound is StopTimeout (1s) plus %s", took.Round(100*time.Millisecond), stopGiveUp)
	}
	if _, err := blocker.Exec(context.Background(), `ROLLBACK`); err != nil {
		t.Error(err)
	}
}
