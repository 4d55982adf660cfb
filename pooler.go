package compute

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// [ErrTransactionPooler] is matched by the errors of what cannot work
// through a pooler in transaction mode (PgBouncer's pool_mode=transaction
// or statement): New with a pool whose prepared statements the pooler
// loses, Migrate without [WithDirectURL], and any statement that fails
// because the pooler lost pgx's prepared statement. Each error names the
// fix.
var ErrTransactionPooler = errors.New("compute: the connection goes through a pooler in transaction mode")

// statementsLostHint says how to run pgx's statements through a pooler
// that does not keep prepared statements.
const statementsLostHint = "pgx's prepared statements do not survive it: add default_query_exec_mode=exec to the connection string (or set the pool config's ConnConfig.DefaultQueryExecMode to pgx.QueryExecModeExec), or use PgBouncer 1.21 or later with max_prepared_statements set"

// [WithDirectURL] gives the library a connection string that reaches the
// server directly (or through a pooler in session mode), for the sessions
// it needs while its pool goes through a pooler in transaction mode such
// as PgBouncer: the LISTEN connections of Workers and of Wait and Follow,
// and Migrate's advisory lock, which is held by a session across the
// migrations' transactions. Without it they use the pool's connection
// settings; behind a transaction pooler workers then poll, Wait and Follow
// check every 5 s, and Migrate fails with [ErrTransactionPooler]. The
// string takes the same forms as Open's, with the same rules for several
// hosts and target_session_attrs; its password never reaches an error or a
// log line. A string that cannot be parsed, or that allows a standby, makes
// Open and New fail with [ErrInvalidOption]. Migrate probes it first and
// fails with [ErrTransactionPooler] if it goes through a pooler in
// transaction mode too; a listener on it then warns and polls.
func WithDirectURL(connString string) Option {
	return func(o *options) {
		cfg, err := pgx.ParseConfig(connString)
		if err != nil {
			o.errs = append(o.errs, fmt.Errorf("%w: WithDirectURL: cannot parse the connection string (%s); use a postgres:// URL or key=value pairs",
				ErrInvalidOption, redact(err.Error(), passwordsIn(connString)...)))
			return
		}
		if err := errors.Join(writableTarget(&cfg.Config, "WithDirectURL"), execModeWorks(cfg, "WithDirectURL")); err != nil {
			o.errs = append(o.errs, err)
			return
		}
		setConnDefaults(cfg)
		o.direct = cfg
	}
}

// setConnDefaults gives a connection config the library's defaults where
// the connection string left them out: the application name, and a
// connect timeout (pgx otherwise waits up to two minutes on a blackholed
// network).
func setConnDefaults(cfg *pgx.ConnConfig) {
	if _, ok := cfg.RuntimeParams["application_name"]; !ok {
		cfg.RuntimeParams["application_name"] = "compute"
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
}

// sessionConfig returns the settings of a connection that needs a session
// of its own (a listener, Migrate's lock): the direct URL's, or else the
// pool's.
func (q *Queue) sessionConfig() *pgx.ConnConfig {
	if q.opts.direct != nil {
		return q.opts.direct.Copy()
	}
	return q.pool.Config().ConnConfig.Copy()
}

// redactSession is redactError for the errors of connections that may
// use the direct URL, whose password may differ from the pool's.
func (q *Queue) redactSession(err error) error {
	err = redactError(err, q.password)
	if q.opts.direct != nil {
		err = redactError(err, q.opts.direct.Password)
	}
	return err
}

// poolerProbePrefix begins the names of the probe's prepared statements.
const poolerProbePrefix = "compute_pooler_probe_"

// poolerProbeSQL reads the server backend behind a connection and both
// ends of the TCP connection it serves, as the server sees them: two open
// connections served by one backend go through a pooler in transaction
// mode, and ends equal to the connection's own prove it reaches the server
// directly. Both ends, not the client port alone: a pooler on the same
// host may have the client's port for its own connection to the server
// (another address, or another destination, lets the kernel hand out the
// same port twice).
// The last column is the probing connection's mark (%d): a statement of
// the probe's name run where another connection prepared it answers with
// that one's mark.
const poolerProbeSQL = `SELECT pg_backend_pid(),
       coalesce(host(inet_client_addr()), ''), coalesce(inet_client_port(), 0),
       coalesce(host(inet_server_addr()), ''), coalesce(inet_server_port(), 0), %d`

// poolerProbeAttempts bounds the probe's tries when a connection does not
// prove itself direct: a busy pooler may hand the second connection
// another server connection than the first just released.
const poolerProbeAttempts = 5

// pooler is what the probe found out about the pool's connections.
type pooler struct {
	// transaction: they go through a pooler in transaction (or statement)
	// mode, which hands each transaction any of its server connections.
	transaction bool
	// losesStatements: that pooler does not carry named prepared
	// statements from one transaction to the next (PgBouncer before 1.21,
	// or without max_prepared_statements).
	losesStatements bool
}

// probeConn hands out the probe's connections: the i-th (0 or 1), and
// the function that gives it back.
type probeConn func(ctx context.Context, i int) (*pgx.Conn, func(), error)

// poolProbeConns hands out the pool's connections. A pool that may hold
// only one gives the second as a connection of its own, made as the pool
// makes its connections (its BeforeConnect and AfterConnect), and closed
// after the probe: such a pool goes through a pooler as much as any other.
func poolProbeConns(pool *pgxpool.Pool) probeConn {
	return func(ctx context.Context, i int) (*pgx.Conn, func(), error) {
		cfg := pool.Config()
		if i == 0 || cfg.MaxConns >= 2 {
			c, err := pool.Acquire(ctx)
			if err != nil {
				return nil, nil, err
			}
			return c.Conn(), c.Release, nil
		}
		connCfg := cfg.ConnConfig
		if cfg.BeforeConnect != nil {
			if err := cfg.BeforeConnect(ctx, connCfg); err != nil {
				return nil, nil, err
			}
		}
		conn, err := pgx.ConnectConfig(ctx, connCfg)
		if err != nil {
			return nil, nil, err
		}
		if cfg.AfterConnect != nil {
			if err := cfg.AfterConnect(ctx, conn); err != nil {
				conn.Close(ctx)
				return nil, nil, err
			}
		}
		return conn, closeConn(conn), nil
	}
}

// configProbeConns hands out new connections made with cfg (the direct
// URL's settings), closed after the probe.
func configProbeConns(cfg *pgx.ConnConfig) probeConn {
	return func(ctx context.Context, _ int) (*pgx.Conn, func(), error) {
		conn, err := pgx.ConnectConfig(ctx, cfg.Copy())
		if err != nil {
			return nil, nil, err
		}
		return conn, closeConn(conn), nil
	}
}

// closeConn closes conn within a few seconds, for a probe connection.
func closeConn(conn *pgx.Conn) func() {
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn.Close(ctx)
	}
}

// probePooler finds out, on two connections from open, whether they go
// through a pooler in transaction mode, and whether it keeps prepared
// statements. The first connection prepares a statement of a fresh name
// and runs it: if the server sees the connection's own two ends, it is direct
// and the probe ends there. Otherwise a second connection prepares and
// runs a statement of the same name, and only then are both dropped. A
// pooler like PgBouncer reuses the server connection released last, so
// the second lands where the first ran, and PgBouncer before 1.21 then
// reports the statement already there. On a busy pooler the second may
// land elsewhere; the first then runs its statement again, and a
// different backend (or its statement missing) shows that it moved.
func probePooler(ctx context.Context, open probeConn) (pooler, error) {
	var conns [2]*pgx.Conn
	var release [2]func()
	defer func() {
		for _, r := range release {
			if r != nil {
				r()
			}
		}
	}()
	for range poolerProbeAttempts {
		name := fmt.Sprintf("%s%016x", poolerProbePrefix, rand.Uint64())
		var pids [2]int32
		var err error
		foreign := false // a connection ran the statement the other prepared
		for i := range conns {
			if conns[i] == nil {
				if conns[i], release[i], err = open(ctx, i); err != nil {
					return pooler{}, err
				}
			}
			var direct bool
			var mark int
			if pids[i], direct, mark, err = probeBackend(ctx, conns[i], name, i); err != nil {
				break
			}
			if i == 0 && direct {
				// The server sees this very connection: direct.
				return pooler{}, conns[0].Deallocate(ctx, name)
			}
			foreign = foreign || mark != i
		}
		// A busy pooler may have given the second connection another
		// server session than the first. The first one's statement, run
		// again in a transaction of its own, shows whether that client
		// connection itself moved: PgBouncer before 1.21 then has lost
		// the statement (26000), or runs the second's of the same name;
		// a later one answers from another backend. (Seen: 4 of 50
		// workers behind a PgBouncer of 20 busy server connections took
		// it for a direct connection and failed every statement.)
		moved := false
		if err == nil {
			var pid int32
			var mark int
			if pid, _, mark, err = runProbe(ctx, conns[0], name); err == nil {
				moved = pid != pids[0]
				foreign = foreign || mark != 0
			}
		}
		// Only now, so that the second met the first's statement.
		// Closing a statement that is not there is no error.
		for _, c := range conns {
			if c != nil {
				err = errors.Join(err, c.Deallocate(ctx, name))
			}
		}
		switch {
		case statementLost(err), foreign:
			return pooler{transaction: true, losesStatements: true}, nil
		case err != nil:
			return pooler{}, err
		case moved, pids[0] == pids[1]:
			// Two client connections on one backend, or one client
			// connection on two, each running its own statement: a
			// pooler that keeps prepared statements (PgBouncer 1.21+
			// with max_prepared_statements).
			return pooler{transaction: true}, nil
		}
	}
	return pooler{}, nil
}

// probeBackend prepares poolerProbeSQL, marked with mark, as name on conn
// and runs it (runProbe).
func probeBackend(ctx context.Context, conn *pgx.Conn, name string, mark int) (pid int32, direct bool, seen int, err error) {
	if _, err := conn.Prepare(ctx, name, fmt.Sprintf(poolerProbeSQL, mark)); err != nil {
		return 0, false, 0, err
	}
	return runProbe(ctx, conn, name)
}

// runProbe runs the probe statement name on conn: the backend that ran
// it, whether the server sees conn's own TCP connection (direct), and the
// mark of the connection that prepared the statement it ran.
func runProbe(ctx context.Context, conn *pgx.Conn, name string) (pid int32, direct bool, mark int, err error) {
	var clientHost, serverHost string
	var clientPort, serverPort int32
	if err := conn.QueryRow(ctx, name).Scan(&pid, &clientHost, &clientPort, &serverHost, &serverPort, &mark); err != nil {
		return 0, false, 0, err
	}
	client := &net.TCPAddr{IP: net.ParseIP(clientHost), Port: int(clientPort)}
	server := &net.TCPAddr{IP: net.ParseIP(serverHost), Port: int(serverPort)}
	c := conn.PgConn().Conn()
	return pid, sameEndpoint(c.LocalAddr(), client) && sameEndpoint(c.RemoteAddr(), server), mark, nil
}

// sameEndpoint reports whether a is the TCP address b (an IPv4 address
// matches its IPv6-mapped form); never on a unix socket.
func sameEndpoint(a net.Addr, b *net.TCPAddr) bool {
	tcp, ok := a.(*net.TCPAddr)
	return ok && b.IP != nil && b.Port != 0 && tcp.Port == b.Port && tcp.IP.Equal(b.IP)
}

// checkDirect probes WithDirectURL's connection (see probePooler), which
// Migrate's session lock needs to be a session of its own: it fails with
// [ErrTransactionPooler] when that connection goes through a pooler in
// transaction mode too. (A listener finds that out with its first probe.)
func (q *Queue) checkDirect(ctx context.Context) error {
	found, err := probePooler(ctx, configProbeConns(q.opts.direct))
	if err != nil {
		return q.redactSession(translate("probing WithDirectURL's connection for a pooler", err))
	}
	if found.transaction {
		return fmt.Errorf("%w: WithDirectURL's connection goes through one too, where a session lock is not held by any session of ours; give the server's own address, or a pooler in session mode", ErrTransactionPooler)
	}
	return nil
}

// checkPooler probes the pool (see probePooler). Behind a pooler that
// loses prepared statements, a pool that Open made and that caches them
// is made again with default_query_exec_mode=exec, which needs none; a
// caller's pool (New) is never changed: New fails with the fix instead.
func (q *Queue) checkPooler(ctx context.Context) error {
	found, err := probePooler(ctx, poolProbeConns(q.pool))
	if err != nil {
		return translate("compute: connect: probing for a pooler", err)
	}
	q.behindPooler = found.transaction
	if !found.losesStatements || q.pool.Config().ConnConfig.DefaultQueryExecMode != pgx.QueryExecModeCacheStatement {
		return nil
	}
	if !q.ownsPool {
		return fmt.Errorf("compute: new: %w, and %s", ErrTransactionPooler, statementsLostHint)
	}
	cfg := q.pool.Config()
	cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return translate("compute: open", err)
	}
	q.pool.Close()
	q.pool = pool
	q.opts.logger.Info("the connection goes through a pooler in transaction mode that loses prepared statements; using default_query_exec_mode=exec (add it to the connection string to skip this check's reconnect)")
	return nil
}
