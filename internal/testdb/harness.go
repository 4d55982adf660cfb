package testdb

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"testing"
	"time"
)

// shared is the one server per test binary that New uses. It is started on
// first use and closed by Run.
var shared struct {
	mu     sync.Mutex
	inRun  bool    // Run is active, so someone will close the server
	tried  bool    // Start was called (server or err is set)
	server *Server // nil until started, and after closeShared
	err    error
}

var errSharedClosed = errors.New("testdb: the shared server was already closed (Run has returned)")

// Run wraps a package's TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(testdb.Run(m)) }
//
// It runs m.Run() and then closes the shared server if a test started one.
// If the test process gets SIGINT or SIGTERM, it closes the server before
// exiting. A failure to close the server turns a passing run into a failing one.
func Run(m *testing.M) int {
	shared.mu.Lock()
	shared.inRun = true
	shared.mu.Unlock()

	stopWatching := closeOnSignal()
	code := m.Run()
	stopWatching()

	if err := closeShared(); err != nil {
		fmt.Fprintf(os.Stderr, "testdb: stopping the shared PostgreSQL server: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// RunWithExamples is Run for a package whose Example functions open
// os.Getenv("DATABASE_URL"), as a user's program would: it starts the shared
// server first, creates a fresh database for the examples, points
// DATABASE_URL at it for the whole run, and drops it afterwards. Examples
// cannot skip, so without any PostgreSQL they are left out (-test.skip),
// unless CI is "true": then the run fails.
func RunWithExamples(m *testing.M) int {
	if !flag.Parsed() {
		flag.Parse() // testing.Verbose, used while starting, needs the flags
	}
	shared.mu.Lock()
	shared.inRun = true
	shared.mu.Unlock()
	srv, err := sharedServer(false)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		if !errors.Is(err, ErrNoPostgres) || os.Getenv("CI") == "true" {
			return 1
		}
		skip := "^Example"
		if cur := flag.Lookup("test.skip").Value.String(); cur != "" {
			skip = cur + "|" + skip
		}
		if err := flag.Set("test.skip", skip); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return Run(m)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name := "examples_" + randomHex(6)
	connString, err := srv.CreateDatabase(ctx, name)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := os.Setenv("DATABASE_URL", connString); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := Run(m) // closes the server unless it is DATABASE_URL's
	if srv.kind == kindExternal {
		// DATABASE_URL's server outlives the run: drop the examples'
		// database ourselves.
		if err := srv.DropDatabase(context.Background(), name); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
	return code
}

// New returns the connection string of a fresh, empty database on the shared
// server; the database is dropped in t.Cleanup. Every call gets a new,
// uniquely named database, so it is safe with t.Parallel().
//
// If no server can be had, New skips the test with ErrNoPostgres's message,
// unless the environment variable CI is "true": then it fails the test, so
// CI never goes green by skipping. The package's TestMain must use Run.
func New(t testing.TB) string {
	t.Helper()
	return newDatabase(t, false)
}

// NewLazy is New for a test binary whose TestMain may not call Run, such as
// a user's tests through package computetest. Without Run the shared
// server is started on first use and nobody closes it: it is DATABASE_URL's
// (never stopped anyway) or a local postmaster, which the kernel sends
// SIGQUIT (postgres's immediate shutdown) when the test process exits; its
// temp dir is removed by a later run's sweep. A Docker container, or a
// local server outside Linux, would outlive the process, so without Run
// NewLazy starts neither and fails the test with ErrNeedsRun instead.
// With Run, NewLazy is New.
func NewLazy(t testing.TB) string {
	t.Helper()
	return newDatabase(t, true)
}

// newDatabase is New, and NewLazy when lazy is set.
func newDatabase(t testing.TB, lazy bool) string {
	t.Helper()
	srv, err := sharedServer(lazy)
	if err != nil {
		if errors.Is(err, ErrNoPostgres) {
			if os.Getenv("CI") != "true" {
				t.Skip(err.Error())
			}
			t.Fatal(err.Error() + " (CI=true: failing instead of skipping)")
		}
		t.Fatal(err.Error())
	}

	name := "t_" + randomHex(8)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	connString, err := srv.CreateDatabase(ctx, name)
	if err != nil {
		t.Fatal(err.Error())
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := srv.DropDatabase(ctx, name); err != nil {
			t.Error(err.Error())
		}
	})
	return connString
}

// sharedServer starts the shared server on first use and returns it, or the
// error the first start returned.
// Without lazy it refuses to start outside Run; with lazy and outside Run it
// starts no Docker container (see NewLazy).
func sharedServer(lazy bool) (*Server, error) {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.inRun && !lazy {
		return nil, errors.New("testdb.New: the package's TestMain must call testdb.Run: func TestMain(m *testing.M) { os.Exit(testdb.Run(m)) }")
	}
	if !shared.tried {
		shared.tried = true
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute) // Docker may pull an image
		defer cancel()
		shared.server, shared.err = start(ctx, verboseLogf, shared.inRun)
	}
	return shared.server, shared.err
}

// closeShared closes the shared server, if any; later New calls fail.
func closeShared() error {
	shared.mu.Lock()
	srv := shared.server
	shared.server, shared.err, shared.tried = nil, errSharedClosed, true
	shared.mu.Unlock()
	if srv == nil {
		return nil
	}
	return srv.Close()
}

// closeOnSignal closes the shared server and exits when the test process gets
// SIGINT or SIGTERM (a second signal kills the process the default way). The
// returned function stops the watching goroutine.
func closeOnSignal() (stop func()) {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		select {
		case sig := <-signals:
			signal.Stop(signals)
			fmt.Fprintf(os.Stderr, "testdb: got %v; stopping the shared PostgreSQL server\n", sig)
			if err := closeShared(); err != nil {
				fmt.Fprintf(os.Stderr, "testdb: %v\n", err)
			}
			os.Exit(1)
		case <-done:
		}
	}()
	return func() {
		signal.Stop(signals)
		close(done)
		<-finished
	}
}

// verboseLogf prints progress lines when the tests run with -v.
func verboseLogf(format string, args ...any) {
	if testing.Verbose() {
		fmt.Fprintf(os.Stderr, format+"\n", args...)
	}
}

func randomHex(nBytes int) string {
	b := make([]byte, nBytes)
	_, _ = rand.Read(b) // never fails (crypto/rand, Go 1.24+)
	return hex.EncodeToString(b)
}
