// Helpers shared by the package's tests: queues on fresh databases, plain
// SQL, running workers, waiting for conditions.

package compute_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/internal/testdb"
)

// openQueue opens a Queue on connString and closes it when the test ends.
func openQueue(t testing.TB, connString string, opts ...compute.Option) *compute.Queue {
	t.Helper()
	q, err := compute.Open(context.Background(), connString, opts...)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(q.Close)
	return q
}

// newQueue returns a Queue on a fresh, migrated database of its own.
func newQueue(t testing.TB, opts ...compute.Option) *compute.Queue {
	t.Helper()
	return openQueue(t, testdb.New(t), append([]compute.Option{compute.WithMigrate()}, opts...)...)
}

// db is what the SQL helpers need: a pool or a transaction.
type db interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// mustExec runs plain SQL, as a program that does not use the library would,
// and returns the number of rows it touched.
func mustExec(t testing.TB, db db, sql string, args ...any) int64 {
	t.Helper()
	tag, err := db.Exec(context.Background(), sql, args...)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return tag.RowsAffected()
}

// queryOne runs a query that returns one row of one column.
func queryOne[T any](t testing.TB, db db, sql string, args ...any) T {
	t.Helper()
	var v T
	if err := db.QueryRow(context.Background(), sql, args...).Scan(&v); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

// countJobs counts the rows of compute.jobs.
func countJobs(t testing.TB, q *compute.Queue) int64 {
	t.Helper()
	return queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.jobs`)
}

// status reads a job's status straight from the table, without touching
// last_accessed as Get does.
func status(t testing.TB, q *compute.Queue, id compute.JobID) compute.Status {
	t.Helper()
	return queryOne[compute.Status](t, q.Pool(), `SELECT status FROM compute.jobs WHERE job_id = $1`, id[:])
}

// claimOne claims exactly one job of queue and fails the test otherwise.
func claimOne(t testing.TB, q *compute.Queue, queue string) *compute.Job {
	t.Helper()
	jobs, err := q.Claim(context.Background(), queue, 1)
	if err != nil {
		t.Fatalf("claim %s: %v", queue, err)
	}
	if len(jobs) != 1 {
		t.Fatalf("claim %s: got %d jobs, want 1", queue, len(jobs))
	}
	return jobs[0]
}

// enqueue submits one job and fails the test on error.
func enqueue(t testing.TB, q *compute.Queue, job compute.Job) compute.JobID {
	t.Helper()
	id, err := q.Enqueue(context.Background(), job)
	if err != nil {
		t.Fatalf("enqueue %+v: %v", job, err)
	}
	return id
}

// liveness bounds every wait for something that must happen. It guards
// against hangs; it is not a speed requirement (each wait normally ends in
// milliseconds).
const liveness = 20 * time.Second

// quickBackoff makes retries due at once, so retry tests do not wait for
// the default exponential backoff.
func quickBackoff(int) time.Duration { return time.Millisecond }

// withTestLog sends the queue's and its workers' log lines to t.Log. Lines
// logged after the test ended (by a handler it abandoned) are dropped,
// since t.Log then panics.
func withTestLog(t testing.TB) compute.Option {
	w := &testLogWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return compute.WithLogger(slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo})))
}

type testLogWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// runningWorker is a Worker whose Run goes on in a goroutine of the test.
type runningWorker struct {
	*compute.Worker
	done chan struct{} // closed when Run returned
	err  error         // Run's result; read after done
}

// startWorker makes a Worker for q and runs it until the test stops it or
// ends.
func startWorker(t *testing.T, q *compute.Queue, cfg compute.WorkerConfig) *runningWorker {
	t.Helper()
	w, err := compute.NewWorker(q, cfg)
	if err != nil {
		t.Fatalf("NewWorker: %v", err)
	}
	return runWorker(t, w, context.Background())
}

// runWorker runs w.Run(ctx) in a goroutine. At cleanup the worker is shut
// down (running handlers get 5 s before they are cancelled) and Run is
// joined; it must have returned nil.
func runWorker(t *testing.T, w *compute.Worker, ctx context.Context) *runningWorker {
	r := &runningWorker{Worker: w, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = w.Run(ctx)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = w.Shutdown(ctx) // ctx.Err() only says that handlers were cut short
		r.wait(t)
	})
	return r
}

// wait joins Run and fails the test unless it returned nil.
func (r *runningWorker) wait(t *testing.T) {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(liveness):
		t.Fatalf("Run did not return within %s", liveness)
	}
	if r.err != nil {
		t.Errorf("Run returned %v, want nil", r.err)
	}
}

// stop shuts the worker down gracefully (every handler finishes) and joins
// Run: all outcomes are written when it returns.
func (r *runningWorker) stop(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), liveness)
	defer cancel()
	if err := r.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	r.wait(t)
}

// waitUntil polls cond until it holds and fails the test after limit.
func waitUntil(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", limit, what)
		}
		<-tick.C
	}
}

// receive takes one value from ch, failing the test after limit.
func receive[T any](t testing.TB, ch <-chan T, limit time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(limit):
		t.Fatalf("waited %s for %s", limit, what)
		panic("unreachable")
	}
}

// getJob reads a job with Get.
func getJob(t testing.TB, q *compute.Queue, id compute.JobID) *compute.Job {
	t.Helper()
	job, err := q.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("get %s: %v", id, err)
	}
	return job
}

// awaitStatus waits until the job has one of statuses and returns it.
func awaitStatus(t testing.TB, q *compute.Queue, id compute.JobID, statuses ...compute.Status) *compute.Job {
	t.Helper()
	var job *compute.Job
	waitUntil(t, liveness, fmt.Sprintf("job %s to become %v", id, statuses), func() bool {
		job = getJob(t, q, id)
		return slices.Contains(statuses, job.Status)
	})
	return job
}

// enqueueAll submits jobs in one call.
func enqueueAll(t testing.TB, q *compute.Queue, jobs []compute.Job) []compute.JobID {
	t.Helper()
	ids, err := q.EnqueueMany(context.Background(), jobs)
	if err != nil {
		t.Fatalf("enqueue %d jobs: %v", len(jobs), err)
	}
	return ids
}

// errorsText joins a job's recorded attempt errors, for messages.
func errorsText(job *compute.Job) string {
	var b strings.Builder
	for _, e := range job.Errors {
		fmt.Fprintf(&b, "\n  attempt %d: %s", e.Attempt, e.Error)
	}
	return b.String()
}

// runToEnd serves queue "q" with qc (polling every 50 ms, so retries run
// soon), enqueues jobs into it and waits until each is complete or failed.
func runToEnd(t *testing.T, qc compute.QueueConfig, jobs ...compute.Job) []*compute.Job {
	t.Helper()
	q := newQueue(t, withTestLog(t))
	startWorker(t, q, compute.WorkerConfig{
		Queues:       map[string]compute.QueueConfig{"q": qc},
		PollInterval: 50 * time.Millisecond,
	})
	for i := range jobs {
		jobs[i].Queue = "q"
	}
	var done []*compute.Job
	for _, id := range enqueueAll(t, q, jobs) {
		done = append(done, awaitStatus(t, q, id, compute.StatusComplete, compute.StatusFailed))
	}
	return done
}

// promptly bounds a wake-up in the tests that prove a job is found without
// a poll. Their poll interval is a minute (the first poll comes after at
// least 30 s), so only a notification can beat it; the bound is for
// liveness, not speed.
const promptly = 10 * time.Second

// listenerPID returns the backend pid of the worker's LISTEN connection on
// q's database once it is up and idle (its LISTEN is in place, so
// notifications reach it), ignoring the backend notPID. Only the listener
// runs LISTEN and its own probe statement (the probe the pool sends is
// shaped otherwise), and its connection carries the pool's
// application_name.
func listenerPID(t *testing.T, q *compute.Queue, notPID int32) (int32, bool) {
	t.Helper()
	var pid int32
	err := q.Pool().QueryRow(context.Background(), `
		SELECT pid FROM pg_stat_activity
		WHERE datname = current_database() AND application_name = 'compute' AND state = 'idle'
		  AND (query LIKE 'LISTEN %' OR query = 'SELECT pg_notify($1, $2)') AND pid <> $1
		LIMIT 1`, notPID).Scan(&pid)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false
	}
	if err != nil {
		t.Fatalf("find the listener: %v", err)
	}
	return pid, true
}

// waitListener waits for the worker's LISTEN connection (other than the
// backend notPID) and returns its backend pid.
func waitListener(t *testing.T, q *compute.Queue, notPID int32) int32 {
	t.Helper()
	var pid int32
	waitUntil(t, liveness, "the worker's LISTEN connection", func() bool {
		var ok bool
		pid, ok = listenerPID(t, q, notPID)
		return ok
	})
	return pid
}

// backdateLease makes a job's lease run out now, by the database clock.
func backdateLease(t *testing.T, q *compute.Queue, id compute.JobID) {
	t.Helper()
	if n := mustExec(t, q.Pool(), `UPDATE compute.jobs SET lease_expires = now() - interval '1 second' WHERE job_id = $1`, id[:]); n != 1 {
		t.Fatalf("expire lease of %s: %d rows", id, n)
	}
}

// snapshot is what a stale write must not change.
type snapshot struct {
	Status  string
	Attempt int
	Worker  string
	Lease   time.Time
	Outputs []string
	Errors  string
}

func takeSnapshot(t *testing.T, q *compute.Queue, id compute.JobID) snapshot {
	t.Helper()
	var s snapshot
	var lease *time.Time
	err := q.Pool().QueryRow(context.Background(), `
		SELECT status, attempt, coalesce(worker, ''), lease_expires, output_files, errors::text
		FROM compute.jobs WHERE job_id = $1`, id[:]).Scan(&s.Status, &s.Attempt, &s.Worker, &lease, &s.Outputs, &s.Errors)
	if err != nil {
		t.Fatalf("snapshot %s: %v", id, err)
	}
	if lease != nil {
		s.Lease = *lease
	}
	return s
}

func (s snapshot) equal(o snapshot) bool {
	return s.Status == o.Status && s.Attempt == o.Attempt && s.Worker == o.Worker && s.Lease.Equal(o.Lease) &&
		slices.Equal(s.Outputs, o.Outputs) && s.Errors == o.Errors
}

// holdClaimLock takes the claim lock of a queue with rules in a transaction,
// as another process's claim would, and returns it; the caller commits.
func holdClaimLock(t *testing.T, q *compute.Queue, queue string) interface {
	Commit(context.Context) error
	Rollback(context.Context) error
} {
	t.Helper()
	tx, err := q.Pool().Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tx.Rollback(context.Background()) })
	mustExec(t, tx, `SELECT pg_advisory_xact_lock($1, hashtext($2))`, int32(0x636f6d63), queue)
	return tx
}

// notifiedBeforeProbe sends a notification on channel probe and returns the
// channels of the notifications conn received before it. Notifications
// arrive in commit order, so these include everything committed before the
// call. conn must not be listening on probe yet.
func notifiedBeforeProbe(t testing.TB, q *compute.Queue, conn *pgxpool.Conn) []string {
	t.Helper()
	ctx := t.Context()
	mustExec(t, conn, `LISTEN probe`)
	defer mustExec(t, conn, `UNLISTEN probe`)
	mustExec(t, q.Pool(), `SELECT pg_notify('probe', '')`)
	var channels []string
	for {
		n, err := conn.Conn().WaitForNotification(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if n.Channel == "probe" {
			return channels
		}
		channels = append(channels, n.Channel)
	}
}

// runCounter is a handler that completes every job and counts its runs.
type runCounter struct {
	mu   sync.Mutex
	runs map[compute.JobID]int
}

func (c *runCounter) handle(ctx context.Context, job *compute.Job) ([]string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.runs[job.ID]++
	return nil, nil
}

// of says how often the job ran.
func (c *runCounter) of(id compute.JobID) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.runs[id]
}

func setSettings(t testing.TB, q *compute.Queue, queue string, s compute.QueueSettings) {
	t.Helper()
	if err := q.SetQueueSettings(t.Context(), queue, s); err != nil {
		t.Fatal(err)
	}
}
