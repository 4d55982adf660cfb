package compute_test

import (
	"context"
	"errors"
	"io/fs"
	"slices"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/internal/testdb"
	"github.com/computeplatform/compute/migrations"
)

// column is one column as the catalog describes it.
type column struct {
	Name    string
	Type    string // format_type: "character varying(11)", "timestamp with time zone", ...
	NotNull bool
}

// v1Jobs and v1Meta are the tables of the schema contract (seed 002), in
// column order: a v1 program may insert without a column list.
var (
	v1Jobs = []column{
		{"job_id", "bytea", true},
		{"status", "character varying(11)", true},
		{"queue", "character varying(32)", true},
		{"config", "text", false},
		{"input_files", "character varying[]", true},
		{"created", "timestamp with time zone", true},
		{"last_accessed", "timestamp with time zone", true},
		{"grabbed", "timestamp with time zone", false},
		{"finished", "timestamp with time zone", false},
		{"output_files", "character varying[]", false},
	}
	v1Meta = []column{
		{"key", "character varying(32)", true},
		{"value", "character varying(256)", true},
	}
)

// columns lists a table's columns from pg_catalog, in order, with whether
// each has a default.
func columns(t *testing.T, db db, table string) (cols []column, hasDefault map[string]bool) {
	t.Helper()
	rows, err := db.Query(context.Background(), `
		SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.atthasdef
		FROM pg_attribute a
		WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
		ORDER BY a.attnum`, table)
	if err != nil {
		t.Fatalf("columns of %s: %v", table, err)
	}
	hasDefault = make(map[string]bool)
	var c column
	var def bool
	_, err = pgx.ForEachRow(rows, []any{&c.Name, &c.Type, &c.NotNull, &def}, func() error {
		cols = append(cols, c)
		hasDefault[c.Name] = def
		return nil
	})
	if err != nil {
		t.Fatalf("columns of %s: %v", table, err)
	}
	return cols, hasDefault
}

// primaryKey returns the columns of a table's primary key.
func primaryKey(t *testing.T, db db, table string) []string {
	t.Helper()
	return queryOne[[]string](t, db, `
		SELECT coalesce(array_agg(a.attname::text ORDER BY a.attnum), '{}')
		FROM pg_constraint c
		JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
		WHERE c.conrelid = $1::regclass AND c.contype = 'p'`, table)
}

// wantPgError fails the test unless running sql fails with the SQLSTATE code.
func wantPgError(t *testing.T, db db, code, sql string, args ...any) {
	t.Helper()
	_, err := db.Exec(context.Background(), sql, args...)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != code {
		t.Errorf("%s %v: got error %v, want SQLSTATE %s", sql, args, err, code)
	}
}

// TestSchemaMatchesV1Contract checks that the migrated schema keeps every
// name, type, nullability, key and check of seed 002, that later columns
// never break a v1 insert, and that migrating creates nothing in public.
func TestSchemaMatchesV1Contract(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	pool := q.Pool()

	check := func(t *testing.T, exactJobs bool) {
		jobs, jobDefaults := columns(t, pool, "compute.jobs")
		if len(jobs) < len(v1Jobs) || !slices.Equal(jobs[:len(v1Jobs)], v1Jobs) {
			t.Errorf("compute.jobs columns:\n got %v\nwant %v first", jobs, v1Jobs)
		}
		if exactJobs && len(jobs) != len(v1Jobs) {
			t.Errorf("compute.jobs at version 1 has %d columns, want exactly the %d of v1: %v", len(jobs), len(v1Jobs), jobs)
		}
		// Columns after v1 must not make a v1 insert fail.
		for _, c := range jobs[min(len(v1Jobs), len(jobs)):] {
			if c.NotNull && !jobDefaults[c.Name] {
				t.Errorf("compute.jobs.%s is NOT NULL without a default: a v1 insert would fail", c.Name)
			}
		}
		meta, _ := columns(t, pool, "compute.meta")
		if !slices.Equal(meta, v1Meta) {
			t.Errorf("compute.meta columns:\n got %v\nwant %v", meta, v1Meta)
		}
		if pk := primaryKey(t, pool, "compute.jobs"); !slices.Equal(pk, []string{"job_id"}) {
			t.Errorf("compute.jobs primary key %v, want [job_id]", pk)
		}
		if pk := primaryKey(t, pool, "compute.meta"); !slices.Equal(pk, []string{"key"}) {
			t.Errorf("compute.meta primary key %v, want [key]", pk)
		}
		checkConstraints(t, pool)
	}

	t.Run("latest", func(t *testing.T) { check(t, false) })

	// Nothing of ours outside schema compute: no tables, indexes, types,
	// functions, and goose's table only inside compute.
	if n := queryOne[int64](t, pool, `
		SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace)
		     + (SELECT count(*) FROM pg_type WHERE typnamespace = 'public'::regnamespace)
		     + (SELECT count(*) FROM pg_proc WHERE pronamespace = 'public'::regnamespace)`); n != 0 {
		t.Errorf("migrating created %d objects in schema public", n)
	}
	if where := queryOne[[]string](t, pool, `
		SELECT coalesce(array_agg(relnamespace::regnamespace::text), '{}')
		FROM pg_class WHERE relname = 'goose_db_version'`); !slices.Equal(where, []string{"compute"}) {
		t.Errorf("goose_db_version found in schemas %v, want only [compute]", where)
	}

	if err := q.MigrateTo(ctx, 1); err != nil {
		t.Fatalf("migrate to 1: %v", err)
	}
	t.Run("version1", func(t *testing.T) { check(t, true) })
}

// checkConstraints proves the contract's checks and NOT NULLs by inserting
// rows with plain SQL: a valid row goes in, and each row that differs from
// a valid one in a single value is refused with the matching error. Only
// v1 columns are used, so it works at every schema version.
func checkConstraints(t *testing.T, pool db) {
	t.Helper()
	const (
		checkViolation   = "23514"
		notNullViolation = "23502"
		uniqueViolation  = "23505"
		tooLong          = "22001"
	)
	insert := `INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed)
	           VALUES ($1, $2, $3, 'cfg', $4, now(), now())`
	// id(n) is an n-byte id; the five rows below differ from it in bytes 1..
	id := func(n int) []byte {
		b := make([]byte, n)
		if n > 0 {
			b[0] = byte(n)
		}
		return b
	}

	for _, s := range []string{"queued", "in-progress", "complete", "failed", "expired"} {
		b := id(16)
		copy(b[1:], s)
		mustExec(t, pool, insert, b, s, "contract", []string{"a"})
	}
	dup := id(16)
	mustExec(t, pool, insert, dup, "queued", "contract", []string{})
	wantPgError(t, pool, uniqueViolation, insert, dup, "failed", "contract", []string{})
	wantPgError(t, pool, checkViolation, insert, id(15), "queued", "contract", []string{})
	wantPgError(t, pool, checkViolation, insert, id(17), "queued", "contract", []string{})
	wantPgError(t, pool, checkViolation, insert, []byte{}, "queued", "contract", []string{})
	wantPgError(t, pool, checkViolation, insert, id(16), "running", "contract", []string{})
	wantPgError(t, pool, checkViolation, insert, id(16), "QUEUED", "contract", []string{})
	wantPgError(t, pool, tooLong, insert, id(16), "in-progress!", "contract", []string{})
	wantPgError(t, pool, tooLong, insert, id(16), "queued", "q23456789012345678901234567890123", []string{})
	wantPgError(t, pool, notNullViolation, insert, nil, "queued", "contract", []string{})
	wantPgError(t, pool, notNullViolation, insert, id(16), nil, "contract", []string{})
	wantPgError(t, pool, notNullViolation, insert, id(16), "queued", nil, []string{})
	wantPgError(t, pool, notNullViolation, insert, id(16), "queued", "contract", nil)
	wantPgError(t, pool, notNullViolation, `INSERT INTO compute.jobs (job_id, status, queue, input_files, last_accessed)
		VALUES ($1, 'queued', 'contract', '{}', now())`, id(16))
	wantPgError(t, pool, notNullViolation, `INSERT INTO compute.jobs (job_id, status, queue, input_files, created)
		VALUES ($1, 'queued', 'contract', '{}', now())`, id(16))

	mustExec(t, pool, `INSERT INTO compute.meta (key, value) VALUES ('abc', 'v')`)
	wantPgError(t, pool, uniqueViolation, `INSERT INTO compute.meta (key, value) VALUES ('abc', 'w')`)
	wantPgError(t, pool, checkViolation, `INSERT INTO compute.meta (key, value) VALUES ('ab', 'v')`)
	wantPgError(t, pool, checkViolation, `INSERT INTO compute.meta (key, value) VALUES ('', 'v')`)
	wantPgError(t, pool, notNullViolation, `INSERT INTO compute.meta (key, value) VALUES ('abd', NULL)`)
	wantPgError(t, pool, tooLong, `INSERT INTO compute.meta (key, value) VALUES ($1, 'v')`, "k2345678901234567890123456789012x")
	wantPgError(t, pool, tooLong, `INSERT INTO compute.meta (key, value) VALUES ('abe', repeat('v', 257))`)

	mustExec(t, pool, `DELETE FROM compute.jobs WHERE queue = 'contract'`)
	mustExec(t, pool, `DELETE FROM compute.meta`)
}

// TestMigrateDownToZeroAndUpAgain checks that MigrateTo(0) removes schema
// compute and goose's table entirely, and that migrating up again gives a
// working queue.
func TestMigrateDownToZeroAndUpAgain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	pool := q.Pool()
	enqueue(t, q, compute.Job{Queue: "mig"})

	if err := q.MigrateTo(ctx, 0); err != nil {
		t.Fatalf("migrate to 0: %v", err)
	}
	if queryOne[bool](t, pool, `SELECT to_regnamespace('compute') IS NOT NULL`) {
		t.Error("schema compute still exists after MigrateTo(0)")
	}
	if n := queryOne[int64](t, pool, `SELECT count(*) FROM pg_class WHERE relname LIKE '%goose%'`); n != 0 {
		t.Errorf("%d goose relations left after MigrateTo(0)", n)
	}
	if _, err := q.Enqueue(ctx, compute.Job{Queue: "mig"}); !errors.Is(err, compute.ErrNotMigrated) {
		t.Errorf("enqueue after MigrateTo(0): got %v, want ErrNotMigrated", err)
	}

	if err := q.Migrate(ctx); err != nil {
		t.Fatalf("migrate up again: %v", err)
	}
	if err := q.Migrate(ctx); err != nil {
		t.Fatalf("migrate when already up: %v", err)
	}
	if n := countJobs(t, q); n != 0 {
		t.Errorf("%d jobs after down and up, want 0 (down drops data)", n)
	}
	id := enqueue(t, q, compute.Job{Queue: "mig"})
	if job := claimOne(t, q, "mig"); job.ID != id {
		t.Errorf("claimed %s, want %s", job.ID, id)
	}
	assertVersionsAppliedOnce(t, pool)
}

// migrationCount is the number of migration files the library embeds.
func migrationCount(t *testing.T) int {
	t.Helper()
	files, err := fs.Glob(migrations.FS, "*.sql")
	if err != nil || len(files) == 0 {
		t.Fatalf("embedded migrations: %v, %d files", err, len(files))
	}
	return len(files)
}

// assertVersionsAppliedOnce checks goose's table: every migration version
// applied, each exactly once, and none rolled back.
func assertVersionsAppliedOnce(t *testing.T, pool db) {
	t.Helper()
	want := migrationCount(t)
	rows := queryOne[[][]int64](t, pool, `
		SELECT coalesce(array_agg(ARRAY[version_id, n, applied] ORDER BY version_id), '{}')
		FROM (SELECT version_id, count(*) AS n, count(*) FILTER (WHERE is_applied) AS applied
		      FROM compute.goose_db_version WHERE version_id > 0 GROUP BY version_id) v`)
	if len(rows) != want {
		t.Fatalf("goose_db_version holds %d versions (version, rows, applied) %v; want %d", len(rows), rows, want)
	}
	for i, r := range rows {
		if r[0] != int64(i+1) || r[1] != 1 || r[2] != 1 {
			t.Errorf("goose_db_version: version %d has %d rows (%d applied); want version %d once", r[0], r[1], r[2], i+1)
		}
	}
}

// TestConcurrentMigrateAppliesEachVersionOnce starts ten Queues, each with
// its own pool, on a fresh database and migrates them all at once: every
// call succeeds and each version is applied exactly once.
func TestConcurrentMigrateAppliesEachVersionOnce(t *testing.T) {
	t.Parallel()
	connString := testdb.New(t)
	const n = 10
	queues := make([]*compute.Queue, n)
	for i := range queues {
		queues[i] = openQueue(t, connString)
	}
	start := make(chan struct{})
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, q := range queues {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = q.Migrate(context.Background())
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("migrate %d: %v", i, err)
		}
	}
	assertVersionsAppliedOnce(t, queues[0].Pool())
	// The schema works for all of them.
	id := enqueue(t, queues[3], compute.Job{Queue: "mig"})
	if job := claimOne(t, queues[7], "mig"); job.ID != id {
		t.Errorf("claimed %s, want %s", job.ID, id)
	}
}
