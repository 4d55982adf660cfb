// Command timing measures the dashboard's overview and jobs list on a large
// compute.jobs table: it fills a database with -rows jobs (most finished,
// some queued and failed, an hour of journal events), then serves GET
// requests to the handler in-process and prints the median, 90th
// percentile and maximum of each page. It is not run in CI.
//
//	createdb -h 127.0.0.1 -U postgres dash10m
//	go run ./dashboard/internal/timing -database-url postgres://postgres@127.0.0.1:5432/dash10m
//	dropdb -h 127.0.0.1 -U postgres dash10m
//
// Give -fill=false to time again on a database filled before.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/dashboard"
)

// fillJobsSQL inserts $2 jobs numbered from $1 in one statement: job ids
// rise with the number (as UUIDv7 ids rise with time), so the primary key
// grows at its right edge. One job in 100 is queued and one in 200 failed,
// over eight queues; the rest are complete. Triggers are off for the
// session (session_replication_role), so the journal does not record the
// fill.
const fillJobsSQL = `
INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed, grabbed, finished,
                          attempt, partition_key, errors)
SELECT int8send(i) || int8send((random() * 9e18)::bigint),
       CASE WHEN i % 100 = 0 THEN 'queued' WHEN i % 200 = 1 THEN 'failed' ELSE 'complete' END,
       'queue-' || (i % 8),
       '{"n":' || i || ',"to":"user' || i || '@example.com"}', '{}',
       now() - (($1 + $2 - i) * interval '10 milliseconds'), now(),
       CASE WHEN i % 100 = 0 THEN NULL ELSE now() END,
       CASE WHEN i % 100 = 0 THEN NULL ELSE now() END,
       CASE WHEN i % 100 = 0 THEN 0 ELSE 1 END,
       'customer-' || (i % 1000),
       CASE WHEN i % 200 = 1 THEN '[{"attempt":1,"at":"2026-01-01T00:00:00Z","error":"boom"}]'::jsonb ELSE '[]' END
FROM generate_series($1::bigint, $1::bigint + $2 - 1) i`

// fillEventsSQL writes an hour of journal rows, one per second, each with
// 100 jobs: 360,000 finished events, for the overview's chart.
const fillEventsSQL = `
INSERT INTO compute.events (queue, status, job_ids, attempts, at)
SELECT 'queue-' || (s % 8), CASE WHEN s % 10 = 0 THEN 'failed' ELSE 'complete' END,
       array(SELECT int8send(s * 100 + g) || int8send(g) FROM generate_series(1, 100) g),
       array_fill(1, ARRAY[100]),
       now() - s * interval '1 second'
FROM generate_series(1, 3600) s`

func main() {
	dbURL := flag.String("database-url", "", "the database to fill and time (required; it must be empty or filled by this command)")
	rows := flag.Int64("rows", 10_000_000, "how many jobs to insert")
	fill := flag.Bool("fill", true, "insert the rows first (false: time the database as it is)")
	runs := flag.Int("runs", 21, "timed requests per page, after 3 untimed ones")
	flag.Parse()
	if *dbURL == "" {
		fmt.Fprintln(os.Stderr, "timing: -database-url is required")
		os.Exit(2)
	}
	if err := run(*dbURL, *rows, *fill, *runs); err != nil {
		fmt.Fprintln(os.Stderr, "timing:", err)
		os.Exit(1)
	}
}

func run(dbURL string, rows int64, fill bool, runs int) error {
	ctx := context.Background()
	q, err := compute.Open(ctx, dbURL, compute.WithMigrate())
	if err != nil {
		return err
	}
	defer q.Close()
	if fill {
		if err := fillDatabase(ctx, q, rows); err != nil {
			return err
		}
	}
	var n int64
	if err := q.Pool().QueryRow(ctx, `SELECT reltuples::bigint FROM pg_class WHERE oid = 'compute.jobs'::regclass`).Scan(&n); err != nil {
		return err
	}
	fmt.Printf("compute.jobs holds about %d rows (pg_class.reltuples)\n", n)

	h := dashboard.New(q, dashboard.Config{})
	// A failed job's page and the second page of a list, from the data.
	var failedID, before string
	jobs, err := q.Find(ctx, compute.Filter{Status: compute.StatusFailed}, compute.JobID{}, 1)
	if err != nil || len(jobs) == 0 {
		return fmt.Errorf("no failed job to time: %v", err)
	}
	failedID = jobs[0].ID.String()
	if jobs, err = q.FindNewest(ctx, compute.Filter{}, compute.JobID{}, 50); err != nil || len(jobs) < 50 {
		return fmt.Errorf("no second page to time: %v", err)
	}
	before = jobs[49].ID.String()
	fmt.Printf("%-40s %9s %9s %9s\n", "GET", "median", "p90", "max")
	for _, path := range []string{
		"/", "/jobs", "/jobs?before=" + before, "/jobs?status=queued", "/jobs?status=failed",
		"/jobs?queue=queue-3", "/jobs?queue=queue-3&status=complete", "/jobs?key=customer-7",
		"/queues/queue-3", "/jobs/" + failedID, "/workers", "/health",
	} {
		times := make([]time.Duration, 0, runs)
		for i := range runs + 3 {
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodGet, path, nil)
			began := time.Now()
			h.ServeHTTP(rec, req)
			took := time.Since(began)
			if rec.Code != http.StatusOK {
				return fmt.Errorf("GET %s: %d\n%s", path, rec.Code, rec.Body.String())
			}
			if i >= 3 {
				times = append(times, took)
			}
		}
		slices.Sort(times)
		fmt.Printf("%-40s %9s %9s %9s\n", shorten(path), ms(times[len(times)/2]), ms(times[len(times)*9/10]), ms(times[len(times)-1]))
	}
	return nil
}

// fillDatabase inserts the jobs in statements of a million rows and the
// journal's hour, then vacuums and analyzes as autovacuum would.
func fillDatabase(ctx context.Context, q *compute.Queue, rows int64) error {
	conn, err := q.Pool().Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SET session_replication_role = replica`); err != nil {
		return fmt.Errorf("turning triggers off for the fill (needs a superuser): %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), `SET session_replication_role = origin`) //nolint:errcheck
	// Building the secondary indexes once after the fill is much faster
	// than keeping them up to date row by row: drop them and recreate
	// them from their own definitions.
	rowsDefs, err := conn.Query(ctx, `SELECT indexname, indexdef FROM pg_indexes
		WHERE schemaname = 'compute' AND tablename = 'jobs' AND indexname <> 'jobs_pkey'`)
	if err != nil {
		return err
	}
	var names, defs []string
	for rowsDefs.Next() {
		var name, def string
		if err := rowsDefs.Scan(&name, &def); err != nil {
			return err
		}
		names, defs = append(names, name), append(defs, def)
	}
	if err := rowsDefs.Err(); err != nil {
		return err
	}
	for _, name := range names {
		if _, err := conn.Exec(ctx, `DROP INDEX compute.`+pgx.Identifier{name}.Sanitize()); err != nil {
			return err
		}
	}
	const chunk = 1_000_000
	began := time.Now()
	for from := int64(1); from <= rows; from += chunk {
		n := min(chunk, rows-from+1)
		if _, err := conn.Exec(ctx, fillJobsSQL, from, n); err != nil {
			return err
		}
		fmt.Printf("inserted %d of %d jobs (%s)\n", from+n-1, rows, time.Since(began).Round(time.Second))
	}
	if _, err := conn.Exec(ctx, `SET maintenance_work_mem = '512MB'`); err != nil {
		return err
	}
	for _, def := range defs {
		if _, err := conn.Exec(ctx, def); err != nil {
			return err
		}
	}
	fmt.Printf("rebuilt %d indexes (%s)\n", len(defs), time.Since(began).Round(time.Second))
	if _, err := conn.Exec(ctx, fillEventsSQL); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, `VACUUM (ANALYZE) compute.jobs`); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, `ANALYZE compute.events`); err != nil {
		return err
	}
	fmt.Printf("filled, vacuumed and analyzed in %s\n", time.Since(began).Round(time.Second))
	return nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000) }

func shorten(s string) string {
	if len(s) > 40 {
		return s[:37] + "..."
	}
	return s
}
