package computetest

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/computeplatform/compute"
)

// Match selects jobs for [RequireEnqueued] and [RequireNotEnqueued]. Every field
// that is set must match; the zero Match matches every queued job.
type Match struct {
	// Queue is the job's queue; empty means any queue.
	Queue string
	// Config, when set, is a JSON value the job's config must contain, in
	// the sense of PostgreSQL's jsonb containment (@>): `{"to":
	// "ada@example.com"}` matches a config that is an object with that
	// key and value, whatever else it holds; arrays contain their
	// elements in any order. A job whose config is not JSON (or is NULL)
	// never matches a Config. A Config that is not itself JSON fails the
	// test.
	Config string
	// PartitionKey is the job's Job.PartitionKey; empty means any.
	PartitionKey string
	// UniqueKey is the job's Job.Unique.Key; empty means any.
	UniqueKey string
	// Status is the job's status; empty means compute.StatusQueued.
	Status compute.Status
}

// RequireEnqueued returns the jobs m matches, oldest first, and fails the
// test (with the jobs it found instead: those of m's queue, or of all
// queues, newest first) when there are none. It reads the committed jobs of
// q's database, in a transaction of its own that it rolls back; use
// [RequireEnqueuedTx] to see a transaction that has not committed.
//
// The returned jobs hold the fields a producer sets and their state: ID,
// Queue, Status, Config, InputFiles, Priority, RunAt, MaxAttempts,
// PartitionKey, Unique.Key, Attempt, Snoozes and Created; use
// [compute.Queue.Get] for the rest.
func RequireEnqueued(t testing.TB, q *compute.Queue, m Match) []*compute.Job {
	t.Helper()
	return requireWithPool(t, q, m, true)
}

// RequireNotEnqueued fails the test, listing them, when m matches any job
// in q's committed jobs. See RequireEnqueued.
func RequireNotEnqueued(t testing.TB, q *compute.Queue, m Match) {
	t.Helper()
	requireWithPool(t, q, m, false)
}

// RequireEnqueuedTx is RequireEnqueued inside the caller's transaction tx,
// so it sees what tx wrote and has not committed (and, under REPEATABLE
// READ, only what tx's snapshot shows). It works in a savepoint that it
// rolls back, so tx is left as it was; a tx that has already failed fails
// the test.
func RequireEnqueuedTx(t testing.TB, tx pgx.Tx, m Match) []*compute.Job {
	t.Helper()
	return require(t, tx, m, true)
}

// RequireNotEnqueuedTx is RequireNotEnqueued inside the caller's
// transaction tx; see RequireEnqueuedTx.
func RequireNotEnqueuedTx(t testing.TB, tx pgx.Tx, m Match) {
	t.Helper()
	require(t, tx, m, false)
}

// requireWithPool runs require in a transaction of its own on q's pool.
func requireWithPool(t testing.TB, q *compute.Queue, m Match, want bool) []*compute.Job {
	t.Helper()
	ctx := t.Context()
	tx, err := q.Pool().Begin(ctx)
	if err != nil {
		t.Fatalf("computetest: beginning a transaction to look for jobs: %v", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }() // read only: nothing to keep
	return require(t, tx, m, want)
}

// tryJSONBSQL makes a function that reads text as jsonb, or NULL when it
// is not JSON. PostgreSQL 15 has no cast that returns NULL on bad input
// (pg_input_is_valid came in 16), and one config that is not JSON must not
// fail the whole statement: the exception block catches it per row. It is
// temporary (pg_temp) and made in a savepoint that is rolled back, so
// nothing outlives the lookup.
const tryJSONBSQL = `CREATE FUNCTION pg_temp.computetest_jsonb(config text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
	RETURN config::jsonb;
EXCEPTION WHEN data_exception THEN
	RETURN NULL;
END $$`

// matchedJobsSQL is one statement for every Match: an empty text
// parameter means "any", and a NULL $5 means no config filter. Only
// containment needs the function above.
const matchedJobsSQL = `SELECT ` + lookupColumns + `
FROM compute.jobs j
WHERE ($1::text = '' OR j.queue = $1::text) AND j.status = $2::text
  AND ($3::text = '' OR j.partition_key = $3::text) AND ($4::text = '' OR j.unique_key = $4::text)
  AND ($5::text IS NULL OR pg_temp.computetest_jsonb(j.config) @> $5::text::jsonb)
ORDER BY j.created, j.job_id`

// foundInsteadSQL lists what a failed RequireEnqueued found instead: the
// newest jobs of the queue (or of all queues), any status, so the message
// shows what the code under test did enqueue.
const foundInsteadSQL = `SELECT ` + lookupColumns + `
FROM compute.jobs j
WHERE ($1::text = '' OR j.queue = $1::text)
ORDER BY j.created DESC, j.job_id DESC
LIMIT 20`

// lookupColumns are the columns scanLookup reads.
const lookupColumns = `j.job_id, j.queue, j.status, j.config, j.input_files, j.priority, j.run_at,
	j.max_attempts, j.partition_key, j.unique_key, j.attempt, j.snoozes, j.created`

// require looks for the jobs m matches in tx and fails the test unless
// their presence is want.
func require(t testing.TB, tx pgx.Tx, m Match, want bool) []*compute.Job {
	t.Helper()
	var config *string
	if m.Config != "" {
		if !json.Valid([]byte(m.Config)) {
			t.Fatalf("computetest: Match.Config %q is not JSON; give a JSON value the job's config must contain, such as {\"to\": \"ada@example.com\"}", m.Config)
		}
		config = &m.Config
	}
	status := m.Status
	if status == "" {
		status = compute.StatusQueued
	}
	ctx := t.Context()
	sp, err := tx.Begin(ctx) // a savepoint: whatever happens, the caller's tx is left as it was
	if err != nil {
		t.Fatalf("computetest: starting a savepoint in the transaction (has it failed or ended?): %v", err)
	}
	defer func() { _ = sp.Rollback(context.WithoutCancel(ctx)) }()
	// The statement names the function whether or not it filters by config.
	if _, err := sp.Exec(ctx, tryJSONBSQL); err != nil {
		t.Fatalf("computetest: creating the temporary function that reads configs as JSON (the role needs TEMP on the database): %v", err)
	}
	jobs, err := lookup(ctx, sp, matchedJobsSQL, m.Queue, string(status), m.PartitionKey, m.UniqueKey, config)
	if err != nil {
		t.Fatalf("computetest: looking for %s: %v", describe(m, status), err)
	}
	switch {
	case want && len(jobs) == 0:
		found, err := lookup(ctx, sp, foundInsteadSQL, m.Queue)
		if err != nil {
			t.Fatalf("computetest: no job matches %s (and listing the jobs there are failed: %v)", describe(m, status), err)
		}
		where := "the database holds no jobs at all"
		if m.Queue != "" {
			where = fmt.Sprintf("queue %q holds no jobs at all", m.Queue)
		}
		if len(found) > 0 {
			where = "found instead (newest first, at most 20):" + list(found)
		}
		t.Fatalf("computetest: no job matches %s; %s", describe(m, status), where)
	case !want && len(jobs) > 0:
		t.Fatalf("computetest: want no job matching %s, found %d:%s", describe(m, status), len(jobs), list(jobs))
	}
	return jobs
}

// lookup runs one of the statements above and reads its jobs.
func lookup(ctx context.Context, tx pgx.Tx, sql string, args ...any) ([]*compute.Job, error) {
	rows, err := tx.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, scanLookup)
}

// scanLookup reads one row of lookupColumns. Nullable columns and times
// scan through pgtype, so that a row written by plain SQL (a NULL config,
// an infinite run_at) is shown rather than failing the lookup.
func scanLookup(row pgx.CollectableRow) (*compute.Job, error) {
	var (
		j                    compute.Job
		id                   []byte
		config, part, unique pgtype.Text
		inputs               []pgtype.Text
		priority             int16
		runAt, created       pgtype.Timestamptz
		status               string
	)
	if err := row.Scan(&id, &j.Queue, &status, &config, &inputs, &priority, &runAt,
		&j.MaxAttempts, &part, &unique, &j.Attempt, &j.Snoozes, &created); err != nil {
		return nil, err
	}
	copy(j.ID[:], id)
	j.Status, j.Config, j.Priority = compute.Status(status), config.String, int(priority)
	j.PartitionKey, j.Unique.Key = part.String, unique.String
	j.RunAt, j.Created = runAt.Time, created.Time
	for _, f := range inputs {
		j.InputFiles = append(j.InputFiles, f.String)
	}
	return &j, nil
}

// describe says in words what m selects.
func describe(m Match, status compute.Status) string {
	parts := []string{"status " + string(status)}
	if m.Queue != "" {
		parts = append([]string{fmt.Sprintf("queue %q", m.Queue)}, parts...)
	}
	if m.PartitionKey != "" {
		parts = append(parts, fmt.Sprintf("partition key %q", m.PartitionKey))
	}
	if m.UniqueKey != "" {
		parts = append(parts, fmt.Sprintf("unique key %q", m.UniqueKey))
	}
	if m.Config != "" {
		parts = append(parts, "config containing "+m.Config)
	}
	return strings.Join(parts, ", ")
}

// list formats jobs one per line for a failure message.
func list(jobs []*compute.Job) string {
	var b strings.Builder
	for _, j := range jobs {
		fmt.Fprintf(&b, "\n\t%s queue=%q status=%s", j.ID, j.Queue, j.Status)
		if j.PartitionKey != "" {
			fmt.Fprintf(&b, " partition_key=%q", j.PartitionKey)
		}
		if j.Unique.Key != "" {
			fmt.Fprintf(&b, " unique_key=%q", j.Unique.Key)
		}
		config := j.Config
		if len(config) > 200 {
			config = config[:200] + "..."
		}
		fmt.Fprintf(&b, " config=%s", config)
	}
	return b.String()
}
