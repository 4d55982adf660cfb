package compute_test

import (
	"context"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/internal/testdb"
)

// TestMain shares one throwaway PostgreSQL server between the package's
// tests and stops it at the end; each test gets its own database.
func TestMain(m *testing.M) { os.Exit(testdb.RunWithExamples(m)) }

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
