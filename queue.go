package compute

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Queue submits, reads and manages jobs in the compute schema of one
// database, and offers the claim, complete, fail, heartbeat and requeue
// primitives a Worker is built on. It is safe for concurrent use; open one
// per process and share it.
type Queue struct {
	pool     *pgxpool.Pool
	ownsPool bool   // Open made the pool, so Close closes it
	password string // redacted from the errors Open returns
	opts     options
	closed   atomic.Bool
	wakeups  *wakeups // the notification cooldown of enqueues

	// behindPooler: the pool goes through a pooler in transaction mode
	// (see checkPooler), so sessions need the direct URL.
	behindPooler bool
	warnPooler   sync.Once // the warning that LISTEN is off because of it

	// hub is the journal listener of Wait and Follow, started by the
	// first of them (under hubMu) and stopped by Close.
	hubMu sync.Mutex
	hub   *eventHub

	// served are the queue names a running Worker of this Queue serves.
	// Its Workers share one worker id, which the database knows their
	// jobs by, so two of them must not serve the same queue (see serve).
	servedMu sync.Mutex
	served   map[string]bool
}

// serve records that a Worker runs the named queues, or returns an error
// when another running Worker of this Queue serves one of them: jobs are
// fenced by worker id, and a Worker that looks for the jobs of a lost
// claim reply (adopt) would take the other's.
func (q *Queue) serve(names []string) error {
	q.servedMu.Lock()
	defer q.servedMu.Unlock()
	for _, n := range names {
		if q.served[n] {
			return fmt.Errorf("%w: queue %q is already served by another running Worker of this Queue; give that Worker more Concurrency, or open another Queue (each has its own worker id) for this one", ErrInvalidOption, n)
		}
	}
	if q.served == nil {
		q.served = make(map[string]bool)
	}
	for _, n := range names {
		q.served[n] = true
	}
	return nil
}

// unserve undoes serve when the Worker's Run returns.
func (q *Queue) unserve(names []string) {
	q.servedMu.Lock()
	defer q.servedMu.Unlock()
	for _, n := range names {
		delete(q.served, n)
	}
}

// Option configures a Queue. A zero value passed to an option means its
// default; an out-of-range value makes Open or New fail with
// [ErrInvalidOption].
type Option func(*options)

type options struct {
	logger    *slog.Logger
	migrate   bool
	maxConfig int
	workerID  string
	lease     time.Duration
	cooldown  time.Duration
	observer  *Observer
	direct    *pgx.ConnConfig // WithDirectURL; nil: sessions use the pool's settings
	errs      []error
}

// [WithLogger] sets where the queue and its workers log lifecycle events and
// background failures. The default discards them.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

// [WithMigrate] makes Open and New bring the schema to the latest version
// before they return, as Migrate does.
func WithMigrate() Option { return func(o *options) { o.migrate = true } }

// [WithMaxConfigSize] sets the largest job config Enqueue accepts, in bytes;
// default 1 MiB. Larger configs fail with [ErrConfigTooLarge].
func WithMaxConfigSize(n int) Option {
	return func(o *options) {
		switch {
		case n < 0:
			o.errs = append(o.errs, fmt.Errorf("%w: WithMaxConfigSize(%d) is negative; use 0 for the default of 1 MiB", ErrInvalidOption, n))
		case n > 0:
			o.maxConfig = n
		}
	}
}

// [WithWorkerID] names this process in the jobs it claims (compute.jobs.worker)
// and in the worker registry. The default ("") is host/pid/random, unique
// per Queue. An id that is not valid UTF-8, holds a NUL byte or is longer
// than 256 bytes makes Open and New fail with [ErrInvalidOption].
func WithWorkerID(id string) Option {
	return func(o *options) {
		if id == "" {
			return
		}
		if err := validWorkerID(id); err != nil {
			o.errs = append(o.errs, err)
			return
		}
		o.workerID = id
	}
}

// [WithLease] sets how long a claim holds a job before RequeueStale may hand it
// to another worker, unless Heartbeat renews it; default 30 s, at least 1 s.
func WithLease(d time.Duration) Option {
	return func(o *options) {
		switch {
		case d != 0 && d < time.Second:
			o.errs = append(o.errs, fmt.Errorf("%w: WithLease(%s) is under 1s; a lease must outlive a heartbeat round trip", ErrInvalidOption, d))
		case d > 0:
			o.lease = d
		}
	}
}

// [WithNotifyCooldown] sets how often, at most, this Queue's enqueues into one
// queue send the notification that wakes workers at once; default
// DefaultNotifyCooldown (2 ms), at most 1 s. The first enqueue of a period
// notifies at its commit, later ones in it stay silent, and one
// notification at the period's end covers them, so a job committed by then
// waits about the cooldown at most for its wake-up (EnqueueTx says what
// happens to a caller's transaction that commits later). A statement that
// notifies notifies every queue it writes to. A notifying commit waits for
// every other one in the server (a lock held across its WAL flush), so one
// per enqueue caps concurrent enqueues; a cooldown of 1 ns restores that
// behaviour.
func WithNotifyCooldown(d time.Duration) Option {
	return func(o *options) {
		switch {
		case d < 0 || d > time.Second:
			o.errs = append(o.errs, fmt.Errorf("%w: WithNotifyCooldown(%s) is outside 0..1s; use 0 for the default of %s", ErrInvalidOption, d, DefaultNotifyCooldown))
		case d > 0:
			o.cooldown = d
		}
	}
}

func buildOptions(opts []Option) (options, error) {
	o := options{
		logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		maxConfig: defaultMaxConfig,
		lease:     30 * time.Second,
		cooldown:  DefaultNotifyCooldown,
	}
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if o.workerID == "" {
		host, _ := os.Hostname()
		o.workerID = fmt.Sprintf("%s/%d/%08x", host, os.Getpid(), rand.Uint32())
	}
	return o, errors.Join(o.errs...)
}

// Open connects to the database named by connString: a postgres:// URL, a
// key=value string ("host=... dbname=..."), or "" to use the PG* environment
// variables (PGHOST, PGDATABASE, PGUSER, PGPASSWORD, ...). Given several
// hosts ("host=a,b", "postgres://a,b/db") and no target_session_attrs (or
// "any"), it connects only to a server that accepts writes, as with
// target_session_attrs=read-write: after a failover, the promoted standby
// (see Failover in the package documentation); a target_session_attrs
// that allows a standby (read-only, standby, prefer-standby) fails with
// [ErrInvalidOption]. It checks that
// the server answers before it returns; ctx bounds that check and, with
// [WithMigrate], the migration. [Errors] match [ErrInvalidOption], [ErrUnavailable]
// or [ErrNotMigrated]; no error or log line holds the connection's password.
func Open(ctx context.Context, connString string, opts ...Option) (*Queue, error) {
	o, err := buildOptions(opts)
	if err != nil {
		return nil, err
	}
	cfg, err := pgxpool.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("%w: cannot parse the connection string (%s); use a postgres:// URL, key=value pairs, or \"\" for the PG* environment variables",
			ErrInvalidOption, redact(err.Error(), passwordsIn(connString)...))
	}
	if err := writableTarget(&cfg.ConnConfig.Config, "the connection string"); err != nil {
		return nil, err
	}
	// pgxpool's background connects otherwise wait up to two minutes on
	// a blackholed network, holding pool slots; connect_timeout in the
	// connection string overrides this.
	setConnDefaults(cfg.ConnConfig)
	// Spread reconnects after a database restart instead of a storm.
	cfg.MaxConnLifetimeJitter = cfg.MaxConnLifetime / 10
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, redactError(translate("compute: open", err), cfg.ConnConfig.Password)
	}
	q := &Queue{pool: pool, ownsPool: true, password: cfg.ConnConfig.Password, opts: o}
	q.wakeups = newWakeups(q, o.cooldown)
	if err := q.connect(ctx); err != nil {
		q.pool.Close() // connect may have made it again (checkPooler)
		return nil, redactError(err, q.password)
	}
	return q, nil
}

// standbyTargets are the target_session_attrs values that let the driver
// pick a standby (or must), by the check pgx runs for each.
var standbyTargets = map[uintptr]string{
	reflect.ValueOf(pgconn.ValidateConnectTargetSessionAttrsReadOnly).Pointer():      "read-only",
	reflect.ValueOf(pgconn.ValidateConnectTargetSessionAttrsStandby).Pointer():       "standby",
	reflect.ValueOf(pgconn.ValidateConnectTargetSessionAttrsPreferStandby).Pointer(): "prefer-standby",
}

// standbyTarget returns the target_session_attrs of cfg if it lets the
// driver connect to a standby, else "".
func standbyTarget(cfg *pgconn.Config) string {
	if cfg.ValidateConnect == nil {
		return ""
	}
	return standbyTargets[reflect.ValueOf(cfg.ValidateConnect).Pointer()]
}

// writableTarget makes cfg connect only to a server that accepts writes,
// or says why it cannot. A target_session_attrs that allows a standby
// (read-only, standby, prefer-standby) is refused with
// [ErrInvalidOption]: every claim, completion and enqueue there would fail.
// Given several hosts and no target_session_attrs, the driver takes the
// first that answers, which may be a standby (after a failover, the old
// primary come back): then it asks for read-write. what names the
// connection string for the error.
func writableTarget(cfg *pgconn.Config, what string) error {
	if tsa := standbyTarget(cfg); tsa != "" {
		return fmt.Errorf("%w: %s has target_session_attrs=%s, which may connect to a standby, where the queue cannot write; use read-write or primary (or leave it out: with several hosts the library asks for read-write)",
			ErrInvalidOption, what, tsa)
	}
	if cfg.ValidateConnect == nil && multiHost(cfg) {
		cfg.ValidateConnect = pgconn.ValidateConnectTargetSessionAttrsReadWrite
	}
	return nil
}

// multiHost reports whether cfg names more than one server: its fallbacks
// also hold the same server again with another TLS setting (sslmode=prefer).
func multiHost(cfg *pgconn.Config) bool {
	for _, f := range cfg.Fallbacks {
		if f.Host != cfg.Host || f.Port != cfg.Port {
			return true
		}
	}
	return false
}

// New makes a Queue on a pool the caller owns; Close does not close it. It
// checks that the server answers (and migrates, with [WithMigrate]) within ctx.
// It never changes the pool: a pool whose target_session_attrs allows a
// standby, or that names several hosts without target_session_attrs,
// fails with [ErrInvalidOption], and one that caches prepared
// statements behind a pooler that loses them with [ErrTransactionPooler].
func New(ctx context.Context, pool *pgxpool.Pool, opts ...Option) (*Queue, error) {
	if pool == nil {
		return nil, fmt.Errorf("%w: New needs a pool; use Open to connect from a connection string", ErrInvalidOption)
	}
	o, err := buildOptions(opts)
	if err != nil {
		return nil, err
	}
	connCfg := &pool.Config().ConnConfig.Config
	if tsa := standbyTarget(connCfg); tsa != "" {
		return nil, fmt.Errorf("%w: New: the pool's target_session_attrs=%s may connect to a standby, where the queue cannot write; use read-write or primary",
			ErrInvalidOption, tsa)
	}
	if connCfg.ValidateConnect == nil && multiHost(connCfg) {
		return nil, fmt.Errorf("%w: New: the pool names several hosts and no target_session_attrs, so it may connect to a standby, where the queue cannot write; add target_session_attrs=read-write to its connection string (Open does that itself)",
			ErrInvalidOption)
	}
	q := &Queue{pool: pool, password: pool.Config().ConnConfig.Password, opts: o}
	q.wakeups = newWakeups(q, o.cooldown)
	if err := q.connect(ctx); err != nil {
		return nil, redactError(err, q.password)
	}
	return q, nil
}

// connect checks the connection, looks for a pooler in transaction mode
// (checkPooler) and migrates when asked to.
func (q *Queue) connect(ctx context.Context) error {
	if err := execModeWorks(q.pool.Config().ConnConfig, "the pool's connection settings"); err != nil {
		return err
	}
	if err := q.pool.Ping(ctx); err != nil {
		return translate("compute: connect", err)
	}
	if err := q.checkPooler(ctx); err != nil {
		return err
	}
	if q.opts.migrate {
		return q.Migrate(ctx)
	}
	return nil
}

// execModeWorks refuses a query exec mode whose cache the connection
// string disabled (statement_cache_capacity=0 with the default
// cache_statement, description_cache_capacity=0 with cache_describe): pgx
// would fail every statement but the ping. what names the settings for
// the error.
func execModeWorks(cfg *pgx.ConnConfig, what string) error {
	var setting string
	switch {
	case cfg.DefaultQueryExecMode == pgx.QueryExecModeCacheStatement && cfg.StatementCacheCapacity == 0:
		setting = "statement_cache_capacity=0 disables the statement cache of the default query exec mode (cache_statement)"
	case cfg.DefaultQueryExecMode == pgx.QueryExecModeCacheDescribe && cfg.DescriptionCacheCapacity == 0:
		setting = "description_cache_capacity=0 disables the description cache of default_query_exec_mode=cache_describe"
	default:
		return nil
	}
	return fmt.Errorf("%w: %s: %s, so pgx would fail every statement; add default_query_exec_mode=exec (no cache needed) or drop the capacity setting", ErrInvalidOption, what, setting)
}

// Pool returns the connection pool the queue uses, for the caller's own
// transactions (see EnqueueTx). Do not close it while the queue is open.
func (q *Queue) Pool() *pgxpool.Pool { return q.pool }

// WorkerID returns the name this queue writes into the jobs it claims.
func (q *Queue) WorkerID() string { return q.opts.workerID }

// Close waits for enqueues in flight, sends the wake-up notifications its
// enqueues still owe (see [WithNotifyCooldown]; up to 10 s if the database
// does not answer) and releases the queue's connections if Open made
// them. Later calls on the queue return [ErrClosed]. Close is safe to call more than once; stop
// Workers before closing the queue they use.
func (q *Queue) Close() {
	q.hubMu.Lock()
	if q.closed.Swap(true) {
		q.hubMu.Unlock()
		return
	}
	hub := q.hub
	q.hubMu.Unlock()
	if hub != nil {
		hub.close()
	}
	q.wakeups.close()
	if q.ownsPool {
		q.pool.Close()
	}
}

// readCommitted runs f in a transaction of the library's own at READ
// COMMITTED, whatever default_transaction_isolation the database or role
// sets: the unique-key lookup and the gated claim's counts rely on each
// statement taking a new snapshot after the advisory lock it waited for,
// and a REPEATABLE READ or SERIALIZABLE default would keep the snapshot of
// the transaction's first statement, taken before the wait.
func (q *Queue) readCommitted(ctx context.Context, f func(tx pgx.Tx) error) error {
	return pgx.BeginTxFunc(ctx, q.pool, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, f)
}

// do runs one database call of the library's own (not inside a caller's
// transaction), retrying serialization failures and deadlocks a few times
// with a short random backoff, and translates its error.
func (q *Queue) do(ctx context.Context, what string, call func(ctx context.Context) error) error {
	if q.closed.Load() {
		return fmt.Errorf("%s: %w", what, ErrClosed)
	}
	var err error
	for try := 0; try < 8; try++ {
		if err = call(ctx); err == nil || !retryable(err) {
			break
		}
		wait := time.Duration(1+rand.IntN(10<<try)) * time.Millisecond
		select {
		case <-ctx.Done():
			return translate(what, ctx.Err())
		case <-time.After(wait):
		}
	}
	return translate(what, err)
}
