// Package testdb finds or starts a real PostgreSQL server for tests, examples
// and benchmarks.
//
// Discovery order (see Start):
//
//  1. DATABASE_URL, if set: an existing server that allows CREATE DATABASE.
//  2. Local PostgreSQL binaries (initdb, pg_ctl, postgres): a private
//     throwaway server in a temp dir named "compute-pg-*", on a free port.
//  3. Docker, if the engine answers quickly: a postgres:15 container.
//
// If none is available, Start returns ErrNoPostgres and the test helpers
// skip the test (or fail it when CI=true).
//
// A package uses the helpers like this:
//
//	func TestMain(m *testing.M) { os.Exit(testdb.Run(m)) }
//
//	func TestSomething(t *testing.T) {
//		connString := testdb.New(t) // fresh empty database, dropped at cleanup
//		...
//	}
package testdb

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrNoPostgres is returned (possibly wrapped) when no PostgreSQL server can
// be found or started on this machine.
var ErrNoPostgres = errors.New("testdb: no PostgreSQL server available: install PostgreSQL (initdb/pg_ctl), or start Docker, or set DATABASE_URL")

// ErrNeedsRun is the error of NewLazy outside Run when the only server it
// could start would outlive the test process: a Docker container, or a
// local server outside Linux (no parent-death signal). The package's
// TestMain must then call Run, which stops it.
var ErrNeedsRun = errors.New("testdb: the PostgreSQL server this test would start (in Docker, or from local binaries outside Linux) would outlive the test process: make the package's TestMain call Run (computetest.Run in a user's tests), or set DATABASE_URL")

// readyTimeout bounds how long we wait for a freshly started server to accept
// connections.
const readyTimeout = 30 * time.Second

type serverKind int

const (
	kindExternal serverKind = iota // DATABASE_URL: not ours, never stopped
	kindLocal                      // a postgres process we started from local binaries
	kindDocker                     // a container we started
)

// Server is a PostgreSQL server the harness found or started.
type Server struct {
	kind serverKind
	logf func(format string, args ...any)

	base     *url.URL // connection URL template; the path (database) is replaced per call
	adminURL string   // connection string used for CREATE/DROP DATABASE
	secrets  []string // passwords from DATABASE_URL, scrubbed from every error
	port     int

	// kindLocal only.
	binDir   string
	settings []string // -c settings after serverSettings (StartLocalWith); the later of two wins
	tempDir  string   // compute-pg-*; holds data/, the socket and postgres.log
	dataDir  string
	logPath  string
	cred     *credential // user the server runs as; nil when we are not root

	// kindDocker only.
	containerID string

	mu     sync.Mutex // guards proc and closed, and serialises Stop/Restart/Close
	proc   *process   // current (or last) postmaster process; kindLocal only
	closed bool
}

// Start finds or starts a server in this order: DATABASE_URL, local
// PostgreSQL binaries, Docker. It returns an error wrapping ErrNoPostgres if
// none is available. logf may be nil; it receives progress lines.
// The caller must Close the server.
func Start(ctx context.Context, logf func(format string, args ...any)) (*Server, error) {
	return start(ctx, logf, true)
}

// start is Start; withDocker false is for a shared server nobody will
// close (see NewLazy): it starts only a server that dies with the process
// (DATABASE_URL's is never stopped), and returns ErrNeedsRun instead of a
// Docker container or, outside Linux, a local server.
func start(ctx context.Context, logf func(format string, args ...any), withDocker bool) (*Server, error) {
	logf = orNop(logf)

	if raw := os.Getenv("DATABASE_URL"); raw != "" {
		return startExternal(ctx, raw, logf)
	}

	binDir, binErr := findBinaries()
	if binErr == nil {
		if !withDocker && !diesWithParent {
			return nil, ErrNeedsRun
		}
		return startLocal(ctx, binDir, logf)
	}
	logf("testdb: no local PostgreSQL binaries found; trying Docker")

	dockerErr := dockerAvailable(ctx)
	if dockerErr == nil {
		if !withDocker {
			return nil, ErrNeedsRun
		}
		return startDocker(ctx, logf)
	}
	logf("testdb: Docker not usable: %v", dockerErr)

	return nil, fmt.Errorf("%w (docker: %v)", ErrNoPostgres, dockerErr)
}

// StartLocal always starts a private throwaway server from local binaries,
// ignoring DATABASE_URL and Docker. Fault tests use it because they must be
// able to crash, restart and pause the server. It returns an error wrapping
// ErrNoPostgres if no binaries are found. The caller must Close the server.
func StartLocal(ctx context.Context, logf func(format string, args ...any)) (*Server, error) {
	return StartLocalWith(ctx, logf)
}

// StartLocalWith is StartLocal with settings ("name=value") added after
// the harness's own, which they override: a benchmark that must measure a
// durable server starts one with "fsync=on" and "full_page_writes=on".
func StartLocalWith(ctx context.Context, logf func(format string, args ...any), settings ...string) (*Server, error) {
	logf = orNop(logf)
	binDir, err := findBinaries()
	if err != nil {
		return nil, err
	}
	return startLocal(ctx, binDir, logf, settings...)
}

// startExternal uses the server named by DATABASE_URL. It checks that the
// server answers, so that a bad URL is reported once, up front.
func startExternal(ctx context.Context, raw string, logf func(string, ...any)) (*Server, error) {
	u, secrets, err := parseDatabaseURL(raw)
	if err != nil {
		return nil, err
	}
	s := &Server{kind: kindExternal, logf: logf, base: u, adminURL: raw, secrets: secrets}
	if p, err := strconv.Atoi(u.Port()); err == nil {
		s.port = p
	} else if u.Port() == "" {
		s.port = 5432
	}

	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := ping(pingCtx, raw); err != nil {
		return nil, s.scrub(fmt.Errorf("testdb: connecting to DATABASE_URL server %s: %w", redactConnString(raw), err))
	}
	logf("testdb: using the server from DATABASE_URL (%s)", redactConnString(raw))
	return s, nil
}

// parseDatabaseURL parses DATABASE_URL and returns the passwords in it (user
// info and password parameter), which every later error must hide. It rejects
// a URL with an '@' outside the user info: that happens when a password holds
// an unescaped '/', '?', '#' or '@', and then parts of the password would end
// up in the host or database name, which pgx quotes in its errors.
func parseDatabaseURL(raw string) (*url.URL, []string, error) {
	// Never include url.Parse's error: it quotes the input, password included.
	invalid := fmt.Errorf("testdb: DATABASE_URL %s is not a valid postgres:// URL (percent-encode special characters in the password)", redactConnString(raw))
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return nil, nil, invalid
	}
	if (u.User == nil && strings.Contains(raw, "@")) || strings.Contains(u.Path+u.RawQuery+u.Fragment, "@") {
		return nil, nil, invalid
	}
	var secrets []string
	if pw, ok := u.User.Password(); ok && pw != "" {
		secrets = append(secrets, pw)
	}
	if pw := u.Query().Get("password"); pw != "" {
		secrets = append(secrets, pw)
	}
	return u, secrets, nil
}

// ConnString returns a postgres:// URL for the given database on this server.
// For servers the harness started it has sslmode=disable; for DATABASE_URL it
// keeps the query parameters from DATABASE_URL.
func (s *Server) ConnString(database string) string {
	u := *s.base
	u.Path = "/" + database
	u.RawPath = ""
	return u.String()
}

// CreateDatabase creates an empty database (from template0) and returns its
// connection string. The name is quoted, so any name is safe.
func (s *Server) CreateDatabase(ctx context.Context, name string) (connString string, err error) {
	sql := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize() + " TEMPLATE template0"
	if err := s.adminExec(ctx, sql); err != nil {
		return "", s.scrub(fmt.Errorf("testdb: creating database %q: %w", name, err))
	}
	return s.ConnString(name), nil
}

// DropDatabase drops the database if it exists, terminating any sessions
// still connected to it (WITH (FORCE)).
func (s *Server) DropDatabase(ctx context.Context, name string) error {
	sql := "DROP DATABASE IF EXISTS " + pgx.Identifier{name}.Sanitize() + " WITH (FORCE)"
	if err := s.adminExec(ctx, sql); err != nil {
		return s.scrub(fmt.Errorf("testdb: dropping database %q: %w", name, err))
	}
	return nil
}

func (s *Server) adminExec(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, s.adminURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}

// Close stops whatever the harness started: the local server (pg_ctl stop
// -m fast, then -m immediate, then SIGKILL) and its temp dir, or the Docker
// container. It does nothing for a DATABASE_URL server. It is safe to call
// more than once; later calls return nil.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	switch s.kind {
	case kindLocal:
		return s.closeLocal()
	case kindDocker:
		return s.closeDocker()
	}
	return nil
}

// Owned reports whether this is a local server process the harness started
// (via StartLocal or the local-binaries path of Start), i.e. one that Stop,
// Restart, PostmasterPID and DataDir work on.
func (s *Server) Owned() bool { return s.kind == kindLocal }

// Stop shuts an owned server down with pg_ctl stop -m mode, where mode is
// "smart", "fast" or "immediate" ("immediate" is a crash: recovery runs on
// Restart). It waits until the postmaster has exited. Stopping a server that
// is not running (e.g. killed by the test) is not an error.
func (s *Server) Stop(ctx context.Context, mode string) error {
	switch mode {
	case "smart", "fast", "immediate":
	default:
		return fmt.Errorf("testdb: Stop: unknown shutdown mode %q (want smart, fast or immediate)", mode)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkOwned("Stop"); err != nil {
		return err
	}
	return s.stopLocked(ctx, mode)
}

// Restart starts an owned server again on the same port and data dir and
// waits until it accepts connections. If it is still running it is first
// stopped with mode "fast". Leftover backends of a killed postmaster are
// killed first, so Restart works after the test SIGKILLed the postmaster.
func (s *Server) Restart(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkOwned("Restart"); err != nil {
		return err
	}
	if err := s.stopLocked(ctx, "fast"); err != nil {
		return err
	}
	s.killLeftovers()
	if err := s.startAndWait(ctx); err != nil {
		return err
	}
	s.logf("testdb: PostgreSQL restarted on port %d", s.port)
	return nil
}

// PostmasterPID returns the postmaster's process id from the data dir's
// postmaster.pid file. It fails if the server is not owned or not running.
func (s *Server) PostmasterPID() (int, error) {
	if !s.Owned() {
		return 0, errors.New("testdb: PostmasterPID: server was not started by this harness from local binaries")
	}
	pid, err := readPID(filepath.Join(s.dataDir, "postmaster.pid"))
	if err != nil {
		return 0, fmt.Errorf("testdb: PostmasterPID (is the server running?): %w", err)
	}
	return pid, nil
}

// DataDir returns the data directory of an owned server, or "" otherwise.
func (s *Server) DataDir() string { return s.dataDir }

// Port returns the server's TCP port on 127.0.0.1 (for DATABASE_URL, the
// port in the URL). Owned servers keep this port across Restart.
func (s *Server) Port() int { return s.port }

func (s *Server) checkOwned(op string) error {
	if !s.Owned() {
		return fmt.Errorf("testdb: %s: server was not started by this harness from local binaries", op)
	}
	if s.closed {
		return fmt.Errorf("testdb: %s: server is closed", op)
	}
	return nil
}

// ownedURL is the connection URL of a server we started: user postgres,
// trust authentication, TCP on 127.0.0.1.
func ownedURL(port int) *url.URL {
	return &url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     "127.0.0.1:" + strconv.Itoa(port),
		Path:     "/postgres",
		RawQuery: "sslmode=disable",
	}
}

// ping connects once and disconnects.
func ping(ctx context.Context, connString string) error {
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

// waitReady polls until the server accepts connections, ctx ends, the
// deadline passes, or exited (which may be nil) is closed.
func waitReady(ctx context.Context, connString string, deadline time.Time, exited <-chan struct{}) error {
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	var lastErr error
	for {
		attemptCtx, attemptCancel := context.WithTimeout(ctx, 2*time.Second)
		lastErr = ping(attemptCtx, connString)
		attemptCancel()
		if lastErr == nil {
			return nil
		}
		select {
		case <-exited:
			return errExited
		case <-ctx.Done():
			return fmt.Errorf("server not accepting connections (%w); last error: %w", ctx.Err(), lastErr)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

var errExited = errors.New("server process exited")

// scrub hides the DATABASE_URL password in err's message.
func (s *Server) scrub(err error) error {
	if err == nil || len(s.secrets) == 0 {
		return err
	}
	return &scrubbedError{err: err, secrets: s.secrets}
}

func orNop(logf func(string, ...any)) func(string, ...any) {
	if logf == nil {
		return func(string, ...any) {}
	}
	return logf
}
