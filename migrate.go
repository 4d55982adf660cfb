package compute

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"

	"github.com/computeplatform/compute/migrations"
)

// migrateLockID is the advisory lock that serializes migrations of the
// compute schema: its own id, never goose's default, so the host
// application's goose runs are not blocked by ours (bytes of "compute!").
const migrateLockID int64 = 0x636f6d7075746521

// versionTable is goose's version table, kept inside our schema.
const versionTable = "compute.goose_db_version"

// Migrate brings the compute schema to the latest version this library
// knows. Any number of processes may call it at once: an advisory lock makes
// one of them migrate while the others wait, and then find nothing to do.
// Its lock is held by a session across the migrations' transactions, so
// it needs a direct connection: behind a pooler in transaction mode it
// takes the [WithDirectURL] connection, and without one (or when that one
// goes through such a pooler too) fails with [ErrTransactionPooler]. It needs a role that may create schemas and
// tables; ctx bounds the whole run.
func (q *Queue) Migrate(ctx context.Context) error {
	return q.MigrateTo(ctx, -1)
}

// MigrateTo moves the schema up or down to version (0 removes everything the
// library created, including schema compute and goose's version table; -1
// means the latest). Down migrations drop data: jobs and meta are lost at 0.
func (q *Queue) MigrateTo(ctx context.Context, version int64) error {
	if q.closed.Load() {
		return fmt.Errorf("compute: migrate: %w", ErrClosed)
	}
	if q.behindPooler && q.opts.direct == nil {
		return fmt.Errorf("compute: migrate: %w, where a session lock is not held by any session of ours; give a direct connection string with WithDirectURL, or migrate from a Queue opened with one",
			ErrTransactionPooler)
	}
	if q.opts.direct != nil {
		if err := q.checkDirect(ctx); err != nil {
			return fmt.Errorf("compute: migrate: %w", err)
		}
	}
	if err := q.createSchema(ctx); err != nil {
		return translate("compute: migrate: create schema", err)
	}
	// goose takes its lock on one connection of db and migrates on it.
	var db *sql.DB
	if q.opts.direct != nil {
		db = stdlib.OpenDB(*q.opts.direct.Copy())
	} else {
		db = stdlib.OpenDBFromPool(q.pool)
	}
	defer db.Close()
	provider, err := goose.NewProvider(goose.DialectPostgres, db, migrations.FS,
		goose.WithTableName(versionTable),
		goose.WithDisableGlobalRegistry(true),
		goose.WithSessionLocker(&blockingLocker{}),
		goose.WithSlog(q.opts.logger.With(slog.String("component", "migrate"))),
	)
	if err != nil {
		return fmt.Errorf("compute: migrate: %w", err)
	}
	switch {
	case version < 0:
		_, err = provider.Up(ctx)
	default:
		var current int64
		if current, err = provider.GetDBVersion(ctx); err != nil {
			break
		}
		if version > current {
			_, err = provider.UpTo(ctx, version)
		} else if version < current {
			_, err = provider.DownTo(ctx, version)
		}
	}
	if err != nil {
		return q.redactSession(translate("compute: migrate", err))
	}
	if version == 0 {
		return translate("compute: migrate: drop schema", q.dropSchema(ctx))
	}
	return nil
}

// createSchema creates schema compute before goose runs, because goose's
// version table lives in it. It only creates when the schema is missing (so a
// role without CREATE on the database can still migrate an existing schema),
// under the migration lock so concurrent first runs do not collide.
func (q *Queue) createSchema(ctx context.Context) error {
	return q.readCommitted(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrateLockID); err != nil {
			return err
		}
		var exists bool
		if err := tx.QueryRow(ctx, `SELECT to_regnamespace('compute') IS NOT NULL`).Scan(&exists); err != nil || exists {
			return err
		}
		_, err := tx.Exec(ctx, `CREATE SCHEMA compute`)
		return err
	})
}

// dropSchema removes goose's version table and the then empty schema, after
// migrating down to 0. RESTRICT: objects a user added to the schema stop it.
func (q *Queue) dropSchema(ctx context.Context) error {
	return q.readCommitted(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrateLockID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DROP TABLE IF EXISTS `+versionTable); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `DROP SCHEMA IF EXISTS compute RESTRICT`)
		return err
	})
}

// blockingLocker is goose's session locker with our lock id. It waits in
// pg_advisory_lock (cancelled with ctx) instead of polling, so processes that
// start together finish together. It checks at the end that the lock was
// held throughout, by the server session that took it: through a pooler in
// transaction mode that the probe missed, the statements after the lock may
// run on other server sessions, and Migrate then fails with
// [ErrTransactionPooler] instead of reporting success.
type blockingLocker struct {
	pid int32 // the server session that took the lock; written by SessionLock, read by SessionUnlock
}

// lockSQL takes the migration lock and says which server session holds it.
const lockSQL = `SELECT pg_backend_pid() FROM pg_advisory_lock($1)`

// unlockSQL releases the migration lock, if this server session holds it.
const unlockSQL = `SELECT pg_advisory_unlock($1), pg_backend_pid()`

func (l *blockingLocker) SessionLock(ctx context.Context, conn *sql.Conn) error {
	return conn.QueryRowContext(ctx, lockSQL, migrateLockID).Scan(&l.pid)
}

func (l *blockingLocker) SessionUnlock(ctx context.Context, conn *sql.Conn) error {
	var unlocked bool
	var pid int32
	if err := conn.QueryRowContext(ctx, unlockSQL, migrateLockID).Scan(&unlocked, &pid); err != nil {
		return err
	}
	if !unlocked || pid != l.pid {
		return fmt.Errorf("%w: Migrate's lock was taken by server session %d but its release ran on session %d, so the migrations did not run under it (and the lock stays with session %d until that closes); migrate with WithDirectURL set to a connection string that reaches the server directly",
			ErrTransactionPooler, l.pid, pid, l.pid)
	}
	return nil
}
