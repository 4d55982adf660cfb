package compute_test

// Tests through the real PgBouncer (1.18 in CI: no prepared statements in
// transaction mode), started per test by internal/testdb in transaction
// mode in front of the test's database.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/internal/testdb"
)

// behindBouncer returns a migrated database's direct connection string and
// the same database through a PgBouncer of the test's own in transaction
// mode. The URL through the pooler is plain: no default_query_exec_mode.
func behindBouncer(t *testing.T) (direct, pooled string) {
	t.Helper()
	direct = testdb.New(t)
	openQueue(t, direct, compute.WithMigrate()).Close()
	return direct, testdb.NewBouncer(t, direct)
}

// TestPoolerPlainURLWorksThroughPgBouncer: Open with a plain URL through
// PgBouncer finds that the pooler loses prepared statements, says so, and
// runs without them; every call then works.
func TestPoolerPlainURLWorksThroughPgBouncer(t *testing.T) {
	t.Parallel()
	_, pooled := behindBouncer(t)
	log, logOpt := newLogWatch(t)
	q := openQueue(t, pooled, logOpt)
	if mode := q.Pool().Config().ConnConfig.DefaultQueryExecMode; mode != pgx.QueryExecModeExec {
		t.Errorf("through PgBouncer 1.18 the pool's exec mode is %v, want exec", mode)
	}
	if !log.contains("default_query_exec_mode=exec") {
		t.Errorf("Open did not say it switched to default_query_exec_mode=exec; log:\n%s", log.text())
	}
	// Many statements in turn, each of which lands on whichever server
	// connection the pooler hands out.
	for i := range 20 {
		id := enqueue(t, q, compute.Job{Queue: "plain", Config: fmt.Sprint(i)})
		job := claimOne(t, q, "plain")
		if job.ID != id {
			t.Fatalf("claimed %s, want %s", job.ID, id)
		}
		complete(t, q, job)
		if got := getJob(t, q, id); got.Status != compute.StatusComplete {
			t.Fatalf("job %d: %s, want complete", i, got.Status)
		}
	}
}

// TestPoolerDirectURLKeepsPreparedStatements: a direct connection is not
// taken for a pooler, and keeps pgx's statement cache.
func TestPoolerDirectURLKeepsPreparedStatements(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	if mode := q.Pool().Config().ConnConfig.DefaultQueryExecMode; mode != pgx.QueryExecModeCacheStatement {
		t.Errorf("a direct connection's exec mode is %v, want the default cache_statement", mode)
	}
	if err := q.Migrate(t.Context()); err != nil {
		t.Errorf("Migrate on a direct connection: %v", err)
	}
}

// TestPoolerNewRefusesAPoolThatLosesStatements: New must not change the
// caller's pool, so it fails with one error that names the fix; with the
// fix applied, it works.
func TestPoolerNewRefusesAPoolThatLosesStatements(t *testing.T) {
	t.Parallel()
	_, pooled := behindBouncer(t)
	newPool := func(connString string) *pgxpool.Pool {
		pool, err := pgxpool.New(t.Context(), connString)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		return pool
	}
	_, err := compute.New(t.Context(), newPool(pooled))
	if !errors.Is(err, compute.ErrTransactionPooler) {
		t.Fatalf("New on a caching pool through PgBouncer = %v, want ErrTransactionPooler", err)
	}
	for _, fix := range []string{"default_query_exec_mode=exec", "QueryExecModeExec", "max_prepared_statements"} {
		if !strings.Contains(err.Error(), fix) {
			t.Errorf("New's error does not name the fix %q: %v", fix, err)
		}
	}
	q, err := compute.New(t.Context(), newPool(pooled+"&default_query_exec_mode=exec"))
	if err != nil {
		t.Fatalf("New with default_query_exec_mode=exec through PgBouncer: %v", err)
	}
	defer q.Close()
	enqueue(t, q, compute.Job{Queue: "fixed"})
}

// TestPoolerMigrateNeedsADirectConnection: Migrate's lock is held by a
// session across transactions, which a transaction pooler does not keep.
// Through PgBouncer Migrate refuses, naming the fix; with WithDirectURL
// it migrates, holding its lock on the direct connection for the whole
// run.
func TestPoolerMigrateNeedsADirectConnection(t *testing.T) {
	t.Parallel()
	direct, pooled := behindBouncer(t)
	ctx := t.Context()

	bare := openQueue(t, pooled)
	err := bare.Migrate(ctx)
	if !errors.Is(err, compute.ErrTransactionPooler) || !strings.Contains(err.Error(), "WithDirectURL") {
		t.Fatalf("Migrate through PgBouncer = %v, want ErrTransactionPooler naming WithDirectURL", err)
	}
	if _, err := compute.Open(ctx, pooled, compute.WithMigrate()); !errors.Is(err, compute.ErrTransactionPooler) {
		t.Errorf("Open with WithMigrate through PgBouncer = %v, want ErrTransactionPooler", err)
	}

	// With the direct URL, and the last migration to do again (goose
	// takes no lock when nothing is pending), keep the version table from
	// being written (SHARE mode lets goose read it) so that Migrate stops
	// inside its run, and look at who holds the migration lock then.
	const app = "compute-migrate-direct"
	q := openQueue(t, pooled, compute.WithDirectURL(direct+"&application_name="+app))
	latest := queryOne[int64](t, q.Pool(), `SELECT max(version_id) FROM compute.goose_db_version`)
	if err := openQueue(t, direct).MigrateTo(ctx, latest-1); err != nil {
		t.Fatal(err)
	}
	watch, err := pgx.Connect(ctx, direct)
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Close(context.Background())
	tx, err := watch.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, tx, `LOCK TABLE compute.goose_db_version IN SHARE MODE`)
	migrated := make(chan error, 1)
	go func() { migrated <- q.Migrate(ctx) }()

	// The lock is "compute!" as a bigint: pg_locks splits it in two.
	const holdsLockWhileMigrating = `
SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
WHERE l.locktype = 'advisory' AND l.granted AND l.classid = x'636f6d70'::int::oid AND l.objid = x'75746521'::int::oid
  AND a.datname = current_database() AND a.application_name = $1 AND a.wait_event_type = 'Lock'`
	waitUntil(t, liveness, "Migrate to hold its lock on the direct connection while it waits to write the version table", func() bool {
		select {
		case err := <-migrated:
			t.Fatalf("Migrate returned (%v) while the version table was locked", err)
		default:
		}
		return queryOne[int64](t, q.Pool(), holdsLockWhileMigrating, app) == 1
	})
	if free := queryOne[bool](t, q.Pool(), `SELECT pg_try_advisory_xact_lock(x'636f6d7075746521'::bigint)`); free {
		t.Error("another session took the migration lock while Migrate held it")
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := receive(t, migrated, liveness, "Migrate to finish"); err != nil {
		t.Fatalf("Migrate with WithDirectURL: %v", err)
	}
	if n := queryOne[int64](t, q.Pool(), `
		SELECT count(*) FROM pg_locks
		WHERE locktype = 'advisory' AND objid = x'75746521'::int::oid
		  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`); n != 0 {
		t.Errorf("%d migration locks left after Migrate returned", n)
	}
}

// TestPoolerTransactionLocksWork: unique jobs and the gated claim take
// transaction advisory locks, which a transaction pooler keeps: through
// PgBouncer, concurrent submitters of one key make one job, and
// concurrent claimers of a queue with MaxRunning never exceed it.
func TestPoolerTransactionLocksWork(t *testing.T) {
	t.Parallel()
	_, pooled := behindBouncer(t)
	q := openQueue(t, pooled)

	const submitters = 8
	ids := make(chan compute.Enqueued, submitters)
	var wg sync.WaitGroup
	for range submitters {
		wg.Go(func() {
			res, err := q.Submit(t.Context(), compute.Job{Queue: "u", Unique: compute.Unique{Key: "invoice:1"}})
			if err != nil {
				t.Error(err)
				return
			}
			ids <- res[0]
		})
	}
	wg.Wait()
	close(ids)
	created := 0
	for e := range ids {
		if !e.Duplicate {
			created++
		}
	}
	if n := queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.jobs WHERE queue = 'u'`); n != 1 || created != 1 {
		t.Errorf("%d concurrent submitters of one key made %d jobs (%d reported new), want 1", submitters, n, created)
	}

	setSettings(t, q, "g", compute.QueueSettings{MaxRunning: 3})
	enqueueAll(t, q, jobsIn("g", 20))
	var claimed atomic.Int64
	for range 6 {
		wg.Go(func() {
			jobs, err := q.Claim(t.Context(), "g", 2)
			if err != nil {
				t.Error(err)
			}
			claimed.Add(int64(len(jobs)))
		})
	}
	wg.Wait()
	if running := queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.jobs WHERE queue = 'g' AND status = 'in-progress'`); running != 3 || claimed.Load() != 3 {
		t.Errorf("6 concurrent claims of 2 under MaxRunning 3: %d claimed, %d running; want 3", claimed.Load(), running)
	}
}

// TestPoolerWaitAndFollowWork: through PgBouncer without a direct URL the
// journal hub does not LISTEN, and Wait and Follow find changes at their
// 5 s checks; with WithDirectURL they listen again. Either way they
// return what happened.
func TestPoolerWaitAndFollowWork(t *testing.T) {
	t.Parallel()
	direct, pooled := behindBouncer(t)
	for _, tc := range []struct {
		name string
		opts []compute.Option
	}{
		{"pooled", nil},
		{"direct", []compute.Option{compute.WithDirectURL(direct)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := openQueue(t, pooled, tc.opts...)
			queue := "wf-" + tc.name
			id := enqueue(t, q, compute.Job{Queue: queue})
			waited := make(chan error, 1)
			go func() {
				job, err := q.Wait(t.Context(), id)
				if err == nil && job.Status != compute.StatusComplete {
					err = fmt.Errorf("Wait returned the job %s", job.Status)
				}
				waited <- err
			}()
			followed := make(chan compute.Status, 10)
			ctx, stop := context.WithCancel(t.Context())
			defer stop()
			go func() {
				_ = q.Follow(ctx, compute.Cursor{}, func(events []compute.Event) error {
					for _, e := range events {
						if e.Queue == queue {
							followed <- e.Status
						}
					}
					return nil
				})
			}()
			if s := receive(t, followed, liveness, "Follow to report the enqueue"); s != compute.StatusQueued {
				t.Fatalf("Follow's first event: %s, want queued", s)
			}
			complete(t, q, claimOne(t, q, queue))
			if err := receive(t, waited, liveness, "Wait to return the finished job"); err != nil {
				t.Fatal(err)
			}
			for _, want := range []compute.Status{compute.StatusInProgress, compute.StatusComplete} {
				if s := receive(t, followed, liveness, "Follow to report "+string(want)); s != want {
					t.Fatalf("Follow reported %s, want %s", s, want)
				}
			}
		})
	}
}

// listeningRecorder is an Observer that records the Listening reports.
type listeningRecorder struct {
	mu  sync.Mutex
	got []bool
	on  chan struct{} // closed at the first true
}

func newListeningRecorder() (*listeningRecorder, compute.Option) {
	r := &listeningRecorder{on: make(chan struct{})}
	return r, compute.WithObserver(&compute.Observer{Listening: func(on bool) {
		r.mu.Lock()
		defer r.mu.Unlock()
		if on && !r.sawTrue() {
			close(r.on)
		}
		r.got = append(r.got, on)
	}})
}

func (r *listeningRecorder) sawTrue() bool {
	for _, on := range r.got {
		if on {
			return true
		}
	}
	return false
}

func (r *listeningRecorder) reports() []bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]bool(nil), r.got...)
}

// TestPoolerWorkerPollsAndSaysWhy: through PgBouncer without a direct URL
// the worker does not LISTEN (its notifications would go to whoever
// holds the server connection next). It says so once, reports
// Listening(false) to the Observer and in Health, and finds jobs by
// polling.
func TestPoolerWorkerPollsAndSaysWhy(t *testing.T) {
	t.Parallel()
	_, pooled := behindBouncer(t)
	log, logOpt := newLogWatch(t)
	rec, obsOpt := newListeningRecorder()
	q := openQueue(t, pooled, logOpt, obsOpt)
	warned := log.when("LISTEN cannot work")
	ran := make(chan compute.JobID, 10)
	begin := time.Now()
	w := startWorker(t, q, compute.WorkerConfig{
		PollInterval: 100 * time.Millisecond,
		Queues:       map[string]compute.QueueConfig{"p": {Handler: reportRun(ran)}},
	})
	receive(t, warned, liveness, "the worker to warn that it cannot LISTEN")
	t.Logf("FIGURES pooler: warned %s after Run", time.Since(begin).Round(time.Millisecond))
	pickedUpPromptly(t, q, "p", ran, 3)
	// A second user of the hub must not warn again.
	id := enqueue(t, q, compute.Job{Queue: "p"})
	receive(t, ran, liveness, "the job")
	if _, err := q.Wait(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	if got := rec.reports(); len(got) != 1 || got[0] {
		t.Errorf("Listening reports %v, want [false]", got)
	}
	if w.Health().Listening {
		t.Error("Health says listening")
	}
	if n := log.count("LISTEN cannot work"); n != 1 {
		t.Errorf("warned %d times, want once", n)
	}
	if n := queryOne[int64](t, q.Pool(), `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'`); n != 0 {
		t.Errorf("%d server connections ran LISTEN", n)
	}
}

// TestPoolerWorkerListensOnTheDirectURL: with WithDirectURL the worker's
// listener connects directly while its pool goes through PgBouncer, its
// probe (sent through the pooler) arrives, and jobs enqueued through the
// pooler wake it at once, though it would poll only once a minute.
func TestPoolerWorkerListensOnTheDirectURL(t *testing.T) {
	t.Parallel()
	direct, pooled := behindBouncer(t)
	rec, obsOpt := newListeningRecorder()
	q := openQueue(t, pooled, compute.WithDirectURL(direct), obsOpt, withTestLog(t))
	ran := make(chan compute.JobID, 10)
	w := startWorker(t, q, compute.WorkerConfig{
		PollInterval: time.Minute,
		Queues:       map[string]compute.QueueConfig{"n": {Handler: reportRun(ran)}},
	})
	receive(t, rec.on, liveness, "the listener to report that it delivers")
	pickedUpPromptly(t, q, "n", ran, 3)
	if !w.Health().Listening {
		t.Error("Health says not listening")
	}
}

// TestPoolerWorkerDrainsEveryJobOnce: workers whose pools go through
// PgBouncer (plain URLs) drain a backlog, each job run exactly once and
// complete at its first attempt.
func TestPoolerWorkerDrainsEveryJobOnce(t *testing.T) {
	t.Parallel()
	_, pooled := behindBouncer(t)
	const n = 600
	q := openQueue(t, pooled)
	ids := enqueueAll(t, q, jobsIn("drain", n))
	var mu sync.Mutex
	runs := make(map[compute.JobID]int)
	handler := func(ctx context.Context, job *compute.Job) ([]string, error) {
		mu.Lock()
		defer mu.Unlock()
		runs[job.ID]++
		return nil, nil
	}
	began := time.Now()
	for i := range 2 {
		w := openQueue(t, pooled, compute.WithWorkerID(fmt.Sprintf("bouncer-%d", i)))
		startWorker(t, w, compute.WorkerConfig{
			PollInterval: 50 * time.Millisecond,
			Queues:       map[string]compute.QueueConfig{"drain": {Handler: handler, Concurrency: 8}},
		})
	}
	waitUntil(t, 2*time.Minute, "every job to finish", func() bool {
		return queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.jobs WHERE queue = 'drain' AND status IN ('queued', 'in-progress')`) == 0
	})
	t.Logf("FIGURES pooler drain: %d jobs, 2 workers x 8 through PgBouncer, in %s", n, time.Since(began).Round(time.Millisecond))
	if bad := queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.jobs WHERE queue = 'drain' AND (status <> 'complete' OR attempt <> 1)`); bad != 0 {
		t.Errorf("%d jobs not complete at their first attempt", bad)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(runs) != n {
		t.Errorf("%d distinct jobs ran, want %d", len(runs), n)
	}
	for _, id := range ids {
		if runs[id] != 1 {
			t.Errorf("job %s ran %d times, want once", id, runs[id])
		}
	}
}

// jobsIn returns n plain jobs of queue.
func jobsIn(queue string, n int) []compute.Job {
	jobs := make([]compute.Job, n)
	for i := range jobs {
		jobs[i] = compute.Job{Queue: queue, Config: fmt.Sprint(i)}
	}
	return jobs
}

// contains reports whether a logged line holds text.
func (l *logWatch) contains(text string) bool { return l.count(text) > 0 }

// count counts the logged lines that hold text.
func (l *logWatch) count(text string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range l.lines {
		if strings.Contains(line, text) {
			n++
		}
	}
	return n
}

// text is everything logged so far.
func (l *logWatch) text() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// TestPoolerDirectURLKeepsItsPasswordSecret: neither a direct URL that
// cannot be parsed nor one that cannot connect puts its password in an
// error.
func TestPoolerDirectURLKeepsItsPasswordSecret(t *testing.T) {
	t.Parallel()
	const secret = "s3cret-direct"
	_, err := compute.Open(t.Context(), testdb.New(t), compute.WithDirectURL("postgres://u:"+secret+"@127.0.0.1:1/db?sslmode=nonsense"))
	if !errors.Is(err, compute.ErrInvalidOption) || strings.Contains(err.Error(), secret) {
		t.Errorf("Open with an unparseable direct URL = %v, want ErrInvalidOption without the password", err)
	}
	q := openQueue(t, testdb.New(t), compute.WithDirectURL("postgres://u:"+secret+"@127.0.0.1:1/db?sslmode=disable&connect_timeout=2"))
	err = q.Migrate(t.Context())
	if !errors.Is(err, compute.ErrUnavailable) || strings.Contains(err.Error(), secret) {
		t.Errorf("Migrate on an unreachable direct URL = %v, want ErrUnavailable without the password", err)
	}
}

// TestPoolerOneConnectionPoolIsProbed: a pool that may hold one
// connection goes through a pooler as much as any other. Open, given
// pool_max_conns=1, still finds the pooler (a second connection of its
// own) and stops caching statements, and Migrate refuses, for Open's pool
// and for a caller's pool given to New.
func TestPoolerOneConnectionPoolIsProbed(t *testing.T) {
	t.Parallel()
	_, pooled := behindBouncer(t)
	q := openQueue(t, pooled+"&pool_max_conns=1")
	if mode := q.Pool().Config().ConnConfig.DefaultQueryExecMode; mode != pgx.QueryExecModeExec {
		t.Errorf("a one-connection pool through PgBouncer 1.18 has exec mode %v, want exec", mode)
	}
	if err := q.Migrate(t.Context()); !errors.Is(err, compute.ErrTransactionPooler) {
		t.Errorf("Migrate through PgBouncer with pool_max_conns=1 = %v, want ErrTransactionPooler", err)
	}
	pool, err := pgxpool.New(t.Context(), pooled+"&pool_max_conns=1&default_query_exec_mode=exec")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	q2, err := compute.New(t.Context(), pool)
	if err != nil {
		t.Fatalf("New on a one-connection pool through PgBouncer: %v", err)
	}
	defer q2.Close()
	if err := q2.Migrate(t.Context()); !errors.Is(err, compute.ErrTransactionPooler) {
		t.Errorf("Migrate through New's one-connection pool through PgBouncer = %v, want ErrTransactionPooler", err)
	}
	if n := pool.Stat().TotalConns(); n > 1 {
		t.Errorf("the caller's one-connection pool holds %d connections", n)
	}
}

// TestPoolerDirectURLThroughAPoolerIsRefused: a "direct" URL that goes
// through the same pooler in transaction mode would run Migrate's session
// lock where it does not hold. Migrate probes it and fails, naming
// WithDirectURL.
func TestPoolerDirectURLThroughAPoolerIsRefused(t *testing.T) {
	t.Parallel()
	direct, pooled := behindBouncer(t)
	for _, poolURL := range []string{pooled, direct} {
		err := openQueue(t, poolURL, compute.WithDirectURL(pooled)).Migrate(t.Context())
		if !errors.Is(err, compute.ErrTransactionPooler) || !strings.Contains(err.Error(), "WithDirectURL") {
			t.Errorf("Migrate with WithDirectURL through PgBouncer (pool %s) = %v, want ErrTransactionPooler naming WithDirectURL", poolURL, err)
		}
	}
	if err := openQueue(t, pooled, compute.WithDirectURL(direct)).Migrate(t.Context()); err != nil {
		t.Errorf("Migrate with a direct WithDirectURL: %v", err) // the right way round works
	}
}

// TestPoolerProbeIsNotFooledByAPortCollision: a pooler on the client's
// host may have, for its own connection to the server, the very port the
// client's connection to the pooler has (from another address here, as
// the kernel may also hand out one port for two destinations). The probe
// took that port for proof of a direct connection, and Migrate then ran
// through the pooler. Now both ends must match.
func TestPoolerProbeIsNotFooledByAPortCollision(t *testing.T) {
	t.Parallel()
	_, pooled := behindBouncer(t)
	pooled += "&default_query_exec_mode=exec"
	// The port of PgBouncer's server connection, which an idle PgBouncer
	// hands the next client too (LIFO).
	conn, err := pgx.Connect(t.Context(), pooled)
	if err != nil {
		t.Fatal(err)
	}
	var port int32
	if err := conn.QueryRow(t.Context(), `SELECT inet_client_port()`).Scan(&port); err != nil {
		t.Fatal(err)
	}
	if err := conn.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgxpool.ParseConfig(pooled)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 2
	var dials atomic.Int32
	cfg.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		d := &net.Dialer{}
		if dials.Add(1) == 1 {
			d.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2), Port: int(port)}
		}
		return d.DialContext(ctx, network, addr)
	}
	pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	q, err := compute.New(t.Context(), pool)
	if err != nil {
		if strings.Contains(err.Error(), "127.0.0.2") {
			t.Skipf("cannot connect from 127.0.0.2 here: %v", err)
		}
		t.Fatal(err)
	}
	defer q.Close()
	if err := q.Migrate(t.Context()); !errors.Is(err, compute.ErrTransactionPooler) {
		t.Errorf("Migrate through PgBouncer, the probe's first connection on PgBouncer's own server-side port = %v, want ErrTransactionPooler", err)
	}
}

// TestPoolerProbeFindsABusyPooler: behind a busy PgBouncer the probe's two
// connections often land on different server sessions, so neither meets
// the other's statement. Seen from outside: 4 of 50 worker processes
// behind a PgBouncer of 20 server connections took it for a direct
// connection, kept pgx's statement cache, and failed every statement
// (their claimed jobs ran again elsewhere once their leases ran out).
// Here forty other clients keep all twenty of the pooler's server
// connections busy while Open probes, twenty times over: a server
// connection released goes to a client that waits, so the probe's second
// connection rarely lands where its first ran (without the recheck, Open
// 14 of 20 kept the statement cache).
func TestPoolerProbeFindsABusyPooler(t *testing.T) {
	t.Parallel()
	_, pooled := behindBouncer(t)
	ctx, stop := context.WithCancel(t.Context())
	var churn sync.WaitGroup
	defer churn.Wait()
	defer stop()
	for range 40 {
		conn, err := pgx.Connect(ctx, pooled+"&default_query_exec_mode=exec")
		if err != nil {
			t.Fatal(err)
		}
		churn.Go(func() {
			defer conn.Close(context.Background())
			for ctx.Err() == nil {
				conn.Exec(ctx, `SELECT pg_sleep(0.005)`) // errors end with ctx
			}
		})
	}
	for i := range 20 {
		q := openQueue(t, pooled)
		mode := q.Pool().Config().ConnConfig.DefaultQueryExecMode
		q.Close()
		if mode != pgx.QueryExecModeExec {
			t.Fatalf("Open %d of 20 through a busy PgBouncer kept exec mode %v, want exec: it took the pooler for a direct connection", i+1, mode)
		}
	}
}
