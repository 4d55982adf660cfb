package compute

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/computeplatform/compute/internal/testdb"
)

// TestMigrateLockNoticesAPooler: if Migrate's connection goes through a
// pooler in transaction mode after all (a probe that missed a busy
// pooler), its lock stays on the server session that took it while the
// next statements run on others. The locker finds that at the release and
// fails with ErrTransactionPooler instead of reporting a migration under a
// lock it did not hold. The pooler is made to hand the release another
// server session by a client holding the first in a transaction.
func TestMigrateLockNoticesAPooler(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	pooled := testdb.NewBouncer(t, testdb.New(t)) + "&default_query_exec_mode=exec"
	cfg, err := pgx.ParseConfig(pooled)
	if err != nil {
		t.Fatal(err)
	}
	db := stdlib.OpenDB(*cfg)
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	l := &blockingLocker{}
	if err := l.SessionLock(ctx, conn); err != nil {
		t.Fatal(err)
	}
	other, err := pgx.Connect(ctx, pooled)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(context.Background())
	tx, err := other.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	var pid int32
	if err := tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if pid != l.pid {
		t.Fatalf("the other client got server session %d, not the lock's %d: PgBouncer did not reuse the last released", pid, l.pid)
	}
	err = l.SessionUnlock(ctx, conn)
	if !errors.Is(err, ErrTransactionPooler) {
		t.Fatalf("releasing the migration lock from another server session = %v, want ErrTransactionPooler", err)
	}
	t.Logf("the error: %v", err)
}
