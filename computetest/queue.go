package computetest

import (
	"testing"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/internal/testdb"
)

// NewQueue returns a [compute.Queue] on a fresh database of its own, migrated to the
// latest schema, for one test: tests that call it may run in parallel. The
// Queue is closed and the database dropped in t.Cleanup, so stop any
// Worker on it before the test returns. opts are passed to [compute.Open]
// after [compute.WithMigrate].
//
// The server is found or started once per test binary, on first use:
// DATABASE_URL when set (a server that allows CREATE DATABASE), else a
// throwaway server from the local PostgreSQL binaries (initdb, pg_ctl,
// postgres). See the package documentation for what Docker needs. When no
// server can be had the test is skipped, or fails when the environment
// variable CI is "true". A failing Open fails the test.
func NewQueue(t testing.TB, opts ...compute.Option) *compute.Queue {
	t.Helper()
	connString := testdb.NewLazy(t)
	q, err := compute.Open(t.Context(), connString, append([]compute.Option{compute.WithMigrate()}, opts...)...)
	if err != nil {
		t.Fatalf("computetest: opening a Queue on the test's database: %v", err)
	}
	// Cleanups run last-registered first: the Queue closes before its
	// database is dropped.
	t.Cleanup(q.Close)
	return q
}

// Run runs a test binary's tests and then stops the PostgreSQL server
// [NewQueue] started, if any. It is optional on Linux with PostgreSQL
// installed, or with DATABASE_URL set; it is needed when the server must
// come from Docker, or from local binaries outside Linux, since those would
// outlive the test process:
//
//	func TestMain(m *testing.M) { os.Exit(computetest.Run(m)) }
//
// It also stops the server when the test process gets SIGINT or SIGTERM.
// A failure to stop the server turns a passing run into a failing one.
func Run(m *testing.M) int { return testdb.Run(m) }
