package testdb_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/computeplatform/compute/internal/testdb"
)

// TestBouncerPoolsTransactions checks that the pooler NewBouncer starts is
// in transaction mode in front of the test's own database: two client
// connections, one after the other, are served by the same server
// backend (pgbouncer reuses the last released one), which a direct or
// session-pooled connection never does.
func TestBouncerPoolsTransactions(t *testing.T) {
	t.Parallel()
	direct := testdb.New(t)
	pooled := testdb.NewBouncer(t, direct)
	// pgx's default prepared statements do not survive pgbouncer 1.18's
	// transaction mode: this is the library's problem, not the harness's.
	pooled += "&default_query_exec_mode=exec"
	a, b := connect(t, pooled), connect(t, pooled)
	var dbA, dbB string
	var pidA, pidB int
	if err := a.QueryRow(testContext(t), "SELECT current_database(), pg_backend_pid()").Scan(&dbA, &pidA); err != nil {
		t.Fatal(err)
	}
	if err := b.QueryRow(testContext(t), "SELECT current_database(), pg_backend_pid()").Scan(&dbB, &pidB); err != nil {
		t.Fatal(err)
	}
	if want := direct[strings.LastIndex(direct, "/")+1 : strings.Index(direct, "?")]; dbA != want || dbB != want {
		t.Errorf("through the pooler: databases %q and %q, want %q", dbA, dbB, want)
	}
	if pidA != pidB {
		t.Errorf("two clients of the pooler in turn had backends %d and %d; in transaction mode they share one", pidA, pidB)
	}
}

// TestBouncerCloseLeavesNothing checks that Close stops pgbouncer and
// removes its temp dir, and that a second Close is a no-op.
func TestBouncerCloseLeavesNothing(t *testing.T) {
	t.Parallel()
	direct := testdb.New(t)
	b, err := testdb.StartBouncer(testContext(t), direct, t.Logf)
	if errors.Is(err, testdb.ErrNoPgBouncer) && os.Getenv("CI") != "true" {
		t.Skip(err.Error())
	}
	if err != nil {
		t.Fatal(err)
	}
	conn := connect(t, b.ConnString("postgres"))
	if n := queryInt(t, conn, "SELECT 1"); n != 1 {
		t.Fatalf("SELECT 1 through the pooler = %d", n)
	}
	pid, dir := b.PID(), b.TempDir()
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("pgbouncer (pid %d) still exists after Close (kill 0: %v)", pid, err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temp dir %s still exists after Close (%v)", dir, err)
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := conn.Ping(context.Background()); err == nil {
		t.Errorf("a connection through the closed pooler still answers")
	}
}
