package compute_test

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/computeplatform/compute"
)

// badRows are rows a plain-SQL producer can write that the library cannot
// take, each with the column its error must name. Every one is a queued
// job of queue q.
var badRows = []struct{ column, sql string }{
	{"input_files", `INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed)
		VALUES (decode(md5('bad-files'), 'hex'), 'queued', 'q', '{}', ARRAY['a', NULL], now(), now())`},
	{"run_at", `INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed, run_at)
		VALUES (decode(md5('bad-run-at'), 'hex'), 'queued', 'q', '{}', '{}', now(), now(), '-infinity')`},
	{"config", `INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed)
		VALUES (decode(md5('big-config'), 'hex'), 'queued', 'q', repeat('x', 5000), '{}', now(), now())`},
}

// oddRows are rows whose odd values are data the library takes: a NULL
// config is an empty one, and an errors column that is not a list of
// attempt errors is kept readable.
var oddRows = []string{
	`INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed)
		VALUES (decode(md5('null-config'), 'hex'), 'queued', 'q', NULL, '{}', now(), now())`,
	`INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed, errors)
		VALUES (decode(md5('object-errors'), 'hex'), 'queued', 'q', '{}', '{}', now(), now(), '{"x": 1}')`,
	`INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed, errors)
		VALUES (decode(md5('scalar-errors'), 'hex'), 'queued', 'q', '{}', '{}', now(), now(), '["oops", 3]')`,
}

// insertBadAndOddRows writes badRows and oddRows with plain SQL.
func insertBadAndOddRows(t *testing.T, q *compute.Queue) {
	t.Helper()
	for _, r := range badRows {
		mustExec(t, q.Pool(), r.sql)
	}
	for _, sql := range oddRows {
		mustExec(t, q.Pool(), sql)
	}
}

// checkBadRowsFailed checks that every bad row ended failed with an error
// naming its column, and that Get reports a *BadRowError for it.
func checkBadRowsFailed(t *testing.T, q *compute.Queue) {
	t.Helper()
	for _, r := range badRows {
		var st, errs string
		if err := q.Pool().QueryRow(context.Background(), `SELECT status, errors::text FROM compute.jobs WHERE queue = 'q'
			AND job_id = decode(md5($1), 'hex')`, rowKey(r.sql)).Scan(&st, &errs); err != nil {
			t.Fatalf("read bad row %s: %v", r.column, err)
		}
		if st != "failed" || !strings.Contains(errs, "column "+r.column) {
			t.Errorf("bad %s row: status %s, errors %s; want failed, naming column %s", r.column, st, errs, r.column)
		}
	}
}

// rowKey finds the md5 seed of a row's id in its INSERT.
func rowKey(sql string) string {
	_, rest, _ := strings.Cut(sql, "md5('")
	key, _, _ := strings.Cut(rest, "'")
	return key
}

// TestClaimFailsUnreadableRowsAloneAndReturnsTheRest: rows that plain SQL
// wrote with values the library cannot take are failed at once by the
// claim that met them, each with an error naming the column, and the good
// jobs claimed beside them are returned. Before, the scan of the first bad
// row failed the whole claim and left every claimed row in progress.
func TestClaimFailsUnreadableRowsAloneAndReturnsTheRest(t *testing.T) {
	t.Parallel()
	q := newQueue(t, compute.WithMaxConfigSize(1024))
	ctx := context.Background()
	good := enqueueAll(t, q, make20("q"))
	insertBadAndOddRows(t, q)

	jobs, err := q.Claim(ctx, "q", 100)
	if err != nil {
		t.Fatalf("claim: %v", err)
	}
	if want := len(good) + len(oddRows); len(jobs) != want {
		t.Fatalf("claim returned %d jobs, want the %d good and odd ones", len(jobs), want)
	}
	checkBadRowsFailed(t, q)
	if n := queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.jobs WHERE status = 'in-progress'`); n != int64(len(jobs)) {
		t.Errorf("%d jobs in progress, want the %d returned", n, len(jobs))
	}
	for _, j := range jobs {
		if j.Config == "" && rowKeyOf(t, q, j) != "null-config" {
			t.Errorf("job %s lost its config", j.ID)
		}
	}

	// The failure repaired what the library owns (run_at), and a reader
	// takes a config of any size: those rows read again. A NULL file name
	// stays, and reading it names it; List stops at it with the page
	// before it.
	for _, r := range badRows[1:] {
		if _, err := q.Get(ctx, idOf(t, q, rowKey(r.sql))); err != nil {
			t.Errorf("Get of the failed %s row: %v", r.column, err)
		}
	}
	var bad *compute.BadRowError
	id := idOf(t, q, rowKey(badRows[0].sql))
	_, err = q.Get(ctx, id)
	if !errors.As(err, &bad) || !errors.Is(err, compute.ErrBadRow) || bad.Column != "input_files" || bad.ID != id {
		t.Errorf("Get of the row with a NULL file name: %v; want a *BadRowError naming it", err)
	}
	page, err := q.List(ctx, compute.ListOptions{Queue: "q", Status: compute.StatusFailed})
	if !errors.As(err, &bad) || bad.ID != id {
		t.Fatalf("List of the failed jobs: %d jobs, %v; want the *BadRowError of %s", len(page), err, id)
	}
	for _, j := range page {
		if string(j.ID[:]) >= string(id[:]) {
			t.Errorf("List returned %s, which comes after the bad row", j.ID)
		}
	}
}

// make20 makes 20 plain jobs of queue.
func make20(queue string) []compute.Job {
	jobs := make([]compute.Job, 20)
	for i := range jobs {
		jobs[i] = compute.Job{Queue: queue, Config: "{}"}
	}
	return jobs
}

// idOf reads the id of the row seeded with key.
func idOf(t *testing.T, q *compute.Queue, key string) compute.JobID {
	t.Helper()
	return compute.JobID(queryOne[[]byte](t, q.Pool(), `SELECT decode(md5($1), 'hex')`, key))
}

// rowKeyOf says which odd row j is ("" for a library job).
func rowKeyOf(t *testing.T, q *compute.Queue, j *compute.Job) string {
	t.Helper()
	for _, sql := range oddRows {
		if idOf(t, q, rowKey(sql)) == j.ID {
			return rowKey(sql)
		}
	}
	return ""
}

// TestWorkerRunsGoodJobsOnceBesideUnreadableRows is the report as
// a test: 300 good jobs with one attempt each and rows the worker cannot
// read, one worker at concurrency 50. Every good job runs once and
// completes; each bad row fails on its own. Before, each claim that met a
// bad row left its whole batch in progress until the leases ran out, and
// the good jobs beside it failed with "lease expired" without running.
func TestWorkerRunsGoodJobsOnceBesideUnreadableRows(t *testing.T) {
	t.Parallel()
	q := newQueue(t, withTestLog(t), compute.WithMaxConfigSize(1024), compute.WithLease(2*time.Second))
	jobs := make([]compute.Job, 300)
	for i := range jobs {
		jobs[i] = compute.Job{Queue: "q", MaxAttempts: 1}
	}
	insertBadAndOddRows(t, q)
	ids := enqueueAll(t, q, jobs)
	runs := &runCounter{runs: make(map[compute.JobID]int)}
	startWorker(t, q, compute.WorkerConfig{PollInterval: 50 * time.Millisecond, Queues: map[string]compute.QueueConfig{
		"q": {Concurrency: 50, Handler: runs.handle},
	}})
	waitUntil(t, liveness, "every job to finish", func() bool {
		return queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.jobs WHERE status IN ('queued', 'in-progress')`) == 0
	})
	checkBadRowsFailed(t, q)
	for _, id := range ids {
		if n := runs.of(id); n != 1 {
			t.Errorf("job %s ran %d times, want once", id, n)
		}
	}
	if n := queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.jobs WHERE status = 'complete'`); n != int64(len(ids)+len(oddRows)) {
		t.Errorf("%d jobs complete, want the %d good and odd ones", n, len(ids)+len(oddRows))
	}
}

// TestClaimNeverFetchesAConfigOverTheLimit: configs written by plain SQL
// are not bound by WithMaxConfigSize, and a claim must not fetch them
// whole. Eight rows of 20 MiB each: the claim allocates a small part of
// one of them, and fails the eight, each on its own. Not parallel: it
// reads the process's allocation counter.
func TestClaimNeverFetchesAConfigOverTheLimit(t *testing.T) {
	q := newQueue(t)
	mustExec(t, q.Pool(), `INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed)
		SELECT decode(md5('big' || i), 'hex'), 'queued', 'big', repeat(md5(i::text), 20 * 1024 * 1024 / 32), '{}', now(), now()
		FROM generate_series(1, 8) i`)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	jobs, err := q.Claim(context.Background(), "big", 8)
	runtime.ReadMemStats(&after)
	if err != nil || len(jobs) != 0 {
		t.Fatalf("claim: %d jobs, %v; want none (every config is over the limit)", len(jobs), err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 8<<20 {
		t.Errorf("the claim allocated %d MiB; the configs are 160 MiB and must stay in the database", got>>20)
	}
	if n := queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.jobs WHERE status = 'failed'
		AND errors::text LIKE '%column config%WithMaxConfigSize%'`); n != 8 {
		t.Errorf("%d of the 8 rows failed naming their config's size, want 8", n)
	}
}
