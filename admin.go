package compute

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"

	"github.com/computeplatform/compute/migrations"
)

// This file holds the operator's calls: what the compute command and a
// dashboard need beyond enqueueing and working, i.e. listing and acting on
// jobs by filter, per-queue summaries, the worker registry, periodic ticks,
// a job's journal timeline and the schema version.

// Filter selects jobs for Find and the bulk calls (RetryMatching,
// CancelMatching, DeleteMatching). Empty fields match everything.
type Filter struct {
	Queue        string
	Status       Status
	PartitionKey string
}

// checkStatus refuses a status that is not one of the five.
func checkStatus(s Status) error {
	if !slices.Contains(statuses, s) {
		return fmt.Errorf("%w: status %q is not one of queued, in-progress, complete, failed, expired", ErrInvalidJob, s)
	}
	return nil
}

// check validates the filter's fields before anything is sent.
func (f Filter) check() error {
	if f.Queue != "" {
		if err := validQueue(f.Queue); err != nil {
			return err
		}
	}
	if f.Status != "" {
		if err := checkStatus(f.Status); err != nil {
			return err
		}
	}
	if f.PartitionKey != "" {
		return validKey(f.PartitionKey, "partition key")
	}
	return nil
}

// statuses are the five statuses of the schema contract.
var statuses = []Status{StatusQueued, StatusInProgress, StatusComplete, StatusFailed, StatusExpired}

// args returns the filter as statement parameters, NULL for "any".
func (f Filter) args() []any {
	null := func(s string) *string {
		if s == "" {
			return nil
		}
		return &s
	}
	return []any{null(f.Queue), null(string(f.Status)), null(f.PartitionKey)}
}

// filterClause is the WHERE clause of a Filter, $1 queue, $2 status, $3
// partition key, each NULL for any. A generic plan cannot use the partial
// indexes, but pgx sends values, so the server plans each call for its own
// values (custom plans for the first five runs of a prepared statement, and
// later whenever cheaper) and a status filter finds the index of that status.
const filterClause = `($1::text IS NULL OR j.queue = $1) AND ($2::text IS NULL OR j.status = $2)
  AND ($3::text IS NULL OR j.partition_key = $3)`

// findJobs is keyset pagination by job_id over any filter, as listJobs is
// for one queue.
const findJobs = `
SELECT ` + jobColumns + ` FROM compute.jobs j
WHERE ` + filterClause + ` AND ($4::bytea IS NULL OR j.job_id > $4)
ORDER BY j.job_id
LIMIT $5`

// Find returns up to limit jobs (0 means 100, at most 10,000) matching f, in
// job id order, after the job id after (the zero id starts at the
// beginning). Unlike List it needs no queue. An empty page means the listing
// is done. A row the library cannot read ends the page early with a
// *BadRowError, as List does. Bad arguments match [ErrInvalid]. Queued,
// in-progress and failed jobs are found through their partial indexes;
// other filters walk the primary key until the page is full, so a rare
// match in a large table costs a scan of it.
func (q *Queue) Find(ctx context.Context, f Filter, after JobID, limit int) ([]*Job, error) {
	return q.find(ctx, "compute: find jobs", findJobs, f, after, limit)
}

// countMatchingJobs counts (up to $4 rows) the jobs of a Filter whose
// status is one of $5. The LIMIT inside bounds the cost; queued,
// in-progress and failed rows are found through their partial indexes.
const countMatchingJobs = `
SELECT count(*) FROM (
    SELECT 1 FROM compute.jobs j
    WHERE ` + filterClause + ` AND j.status = ANY ($5::text[])
    LIMIT $4
) m`

// CountMatching counts the jobs that match f and are in one of the
// statuses in (every status when none is given), stopping at limit, so that a count
// never reads millions of finished rows: a result of limit means "limit or
// more". It is the figure to confirm before CancelMatching, RetryMatching
// or DeleteMatching. Bad arguments match [ErrInvalid]; a database that
// cannot be reached matches [ErrUnavailable].
func (q *Queue) CountMatching(ctx context.Context, f Filter, in []Status, limit int) (int, error) {
	if err := f.check(); err != nil {
		return 0, err
	}
	if limit < 1 {
		return 0, fmt.Errorf("%w: count limit %d must be at least 1", ErrInvalidOption, limit)
	}
	if len(in) == 0 {
		in = statuses
	}
	names := make([]string, len(in))
	for i, s := range in {
		if err := checkStatus(s); err != nil {
			return 0, err
		}
		names[i] = string(s)
	}
	var n int
	err := q.do(ctx, "compute: count matching jobs", func(ctx context.Context) error {
		return q.pool.QueryRow(ctx, countMatchingJobs, append(f.args(), limit, names)...).Scan(&n)
	})
	return n, err
}

// find runs a page of Find (findJobs) or FindNewest (findNewestJobs).
func (q *Queue) find(ctx context.Context, what, sql string, f Filter, from JobID, limit int) ([]*Job, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	limit, err := pageLimit("find", limit)
	if err != nil {
		return nil, err
	}
	return q.queryPage(ctx, what, sql, append(f.args(), afterID(from), limit)...)
}

// findNewestJobs is findJobs backwards: the newest job ids first, before $4.
// The primary key and the partial index of failed jobs (queue, job_id)
// read backwards as cheaply as forwards.
const findNewestJobs = `
SELECT ` + jobColumns + ` FROM compute.jobs j
WHERE ` + filterClause + ` AND ($4::bytea IS NULL OR j.job_id < $4)
ORDER BY j.job_id DESC
LIMIT $5`

// FindNewest is Find from the other end: up to limit jobs matching f, the
// newest first (job ids grow with time), before the job id before (the
// zero id starts at the newest). It is what a person looking at a busy
// queue wants first: the jobs of the last minutes, not those of last
// month. An empty page means the listing is done. Errors, limits and
// costs are Find's.
func (q *Queue) FindNewest(ctx context.Context, f Filter, before JobID, limit int) ([]*Job, error) {
	return q.find(ctx, "compute: find newest jobs", findNewestJobs, f, before, limit)
}

// bulkBatch is how many rows one statement of a bulk call changes: few
// enough that each statement holds its locks for milliseconds.
const bulkBatch = 1000

// retryMatching queues a batch of failed jobs again, as retryJob does for
// one (the same SET). Only jobs that failed before the call began ($5)
// match, so a retried job that fails again meanwhile is not retried twice.
// SKIP LOCKED passes over rows a worker or another operator holds; the loop
// in bulk stops at a short batch. One notification per queue touched wakes
// its workers.
const retryMatching = statusChange + `
WITH batch AS (
    SELECT j.job_id FROM compute.jobs j
    WHERE ` + filterClause + ` AND j.status = 'failed' AND (j.finished IS NULL OR j.finished <= $5)
    LIMIT $4 FOR UPDATE SKIP LOCKED
), retried AS (
    UPDATE compute.jobs j
    SET status = 'queued', run_at = now(), finished = NULL, lease_expires = NULL,
        max_attempts = greatest(j.max_attempts, j.attempt - j.snoozes + 1)
    FROM batch WHERE j.job_id = batch.job_id
    RETURNING j.queue
)
SELECT count(*), (SELECT count(pg_notify('compute_jobs', queue)) FROM (SELECT DISTINCT queue FROM retried) d)
FROM retried`

// cancelMatching fails a batch of queued or running jobs with a reason, as
// cancelJob does for one; running ones are named on compute_cancel so their
// holders stop at once. Jobs created after the call began ($5) are left.
const cancelMatching = statusChange + `
WITH batch AS (
    SELECT j.job_id, j.status FROM compute.jobs j
    WHERE ` + filterClause + ` AND j.status IN ('queued', 'in-progress') AND j.created <= $5
    LIMIT $4 FOR UPDATE SKIP LOCKED
), cancelled AS (
    UPDATE compute.jobs j
    SET status = 'failed', finished = now(), last_accessed = now(), lease_expires = NULL,
        errors = j.errors || jsonb_build_array(jsonb_build_object(
            'attempt', j.attempt, 'at', now(), 'error', 'cancelled: ' || $6::text))
    FROM batch WHERE j.job_id = batch.job_id
    RETURNING j.job_id, batch.status AS old
)
SELECT count(*), count(pg_notify('compute_cancel', encode(job_id, 'hex'))) FILTER (WHERE old = 'in-progress')
FROM cancelled`

// deleteMatching deletes a batch of jobs that are not running (a running
// job's holder would find its row gone, so it must be cancelled first) and
// were created before the call began ($5).
const deleteMatching = `
WITH batch AS (
    SELECT j.job_id FROM compute.jobs j
    WHERE ` + filterClause + ` AND j.status <> 'in-progress' AND j.created <= $5
    LIMIT $4 FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM compute.jobs j USING batch WHERE j.job_id = batch.job_id RETURNING 1
)
SELECT count(*), 0 FROM deleted`

// RetryMatching queues every failed job that f matches again, as Retry
// does for one, and returns how many. f must set at least one field, and
// its Status, if set, must be failed. It runs on the server in statements
// of 1,000 rows that skip rows locked at that moment, so it never blocks a
// worker, until a batch comes back short. Only jobs that failed before the
// call began count (by the database clock), so a job that fails again
// while it runs is not retried twice. ctx bounds the whole run; when it
// ends early, the jobs retried so far stay retried and are counted.
func (q *Queue) RetryMatching(ctx context.Context, f Filter) (int, error) {
	if f.Status != "" && f.Status != StatusFailed {
		return 0, fmt.Errorf("%w: only failed jobs can be retried, not %s; leave the status empty or use failed", ErrInvalidOption, f.Status)
	}
	return q.bulk(ctx, "compute: retry matching jobs", retryMatching, f)
}

// CancelMatching cancels every queued or running job that f matches, as
// Cancel does for one, with reason ("" means "cancelled by request"), and
// returns how many. f must set at least one field, and its Status, if set,
// must be queued or in-progress. It runs in batches as RetryMatching does,
// and leaves jobs created after the call began.
func (q *Queue) CancelMatching(ctx context.Context, f Filter, reason string) (int, error) {
	if f.Status != "" && f.Status != StatusQueued && f.Status != StatusInProgress {
		return 0, fmt.Errorf("%w: only queued or in-progress jobs can be cancelled, not %s", ErrInvalidOption, f.Status)
	}
	if reason == "" {
		reason = "cancelled by request"
	}
	return q.bulk(ctx, "compute: cancel matching jobs", cancelMatching, f, cleanError(reason))
}

// DeleteMatching deletes every job that f matches except running ones
// (cancel those first), and returns how many. f must set at least one
// field, and its Status, if set, must not be in-progress. It runs in
// batches as RetryMatching does, and leaves jobs created after the call
// began. Deleted jobs are gone: their journal events stay until the
// journal's retention removes them.
func (q *Queue) DeleteMatching(ctx context.Context, f Filter) (int, error) {
	if f.Status == StatusInProgress {
		return 0, fmt.Errorf("%w: running jobs cannot be deleted; cancel them first", ErrInvalidOption)
	}
	return q.bulk(ctx, "compute: delete matching jobs", deleteMatching, f)
}

// bulk runs one of the batched statements until a batch comes back short.
func (q *Queue) bulk(ctx context.Context, what, sql string, f Filter, extra ...any) (int, error) {
	if err := f.check(); err != nil {
		return 0, err
	}
	if f == (Filter{}) {
		return 0, fmt.Errorf("%w: the filter is empty and would match every job; set a queue, status or partition key", ErrInvalidOption)
	}
	// The call's start, by the database clock, bounds what it matches.
	var began time.Time
	if err := q.do(ctx, what, func(ctx context.Context) error {
		return q.pool.QueryRow(ctx, `SELECT now()`).Scan(&began)
	}); err != nil {
		return 0, err
	}
	total := 0
	for {
		var n, notified int64
		err := q.do(ctx, what, func(ctx context.Context) error {
			return q.pool.QueryRow(ctx, sql, append(append(f.args(), bulkBatch, began), extra...)...).Scan(&n, &notified)
		})
		if err != nil {
			return total, err
		}
		total += int(n)
		if n < bulkBatch {
			return total, nil
		}
	}
}

// deleteJob deletes one job unless it is running, and says what it found:
// no row (NULL), or the status it had. FOR UPDATE waits for a claim or
// completion in flight, so the status read is the one the delete saw.
const deleteJob = `
WITH old AS MATERIALIZED (
    SELECT job_id, status FROM compute.jobs WHERE job_id = $1 FOR UPDATE
), deleted AS (
    DELETE FROM compute.jobs j USING old
    WHERE j.job_id = old.job_id AND old.status <> 'in-progress'
    RETURNING 1
)
SELECT (SELECT status FROM old), (SELECT count(*) FROM deleted)`

// Delete removes a job for good. It returns [ErrNotFound] for an unknown id
// and [ErrWrongStatus] for a running job (cancel it first, so its worker
// stops).
func (q *Queue) Delete(ctx context.Context, id JobID) error {
	var old *string
	err := q.do(ctx, "compute: delete job", func(ctx context.Context) error {
		var n int64
		return q.pool.QueryRow(ctx, deleteJob, id[:]).Scan(&old, &n)
	})
	switch {
	case err != nil:
		return err
	case old == nil:
		return fmt.Errorf("compute: delete job %s: %w", id, ErrNotFound)
	case *old == string(StatusInProgress):
		return fmt.Errorf("compute: delete job %s: it is running; cancel it first: %w", id, ErrWrongStatus)
	}
	return nil
}

// QueueInfo summarises one queue for operators.
type QueueInfo struct {
	Name     string
	Settings QueueSettings
	// Counts holds the jobs per status. Queued, in-progress and failed
	// are always exact; complete and expired are planner estimates when
	// Estimated is set.
	Counts    map[Status]int64
	Estimated bool
	// Runnable counts the queued jobs whose run time has come, and
	// OldestRunnable is how long the oldest of them has been runnable
	// (zero when none is).
	Runnable       int64
	OldestRunnable time.Duration
	// Workers counts the workers serving the queue that refreshed their
	// registry row in the last minute.
	Workers int
}

// queueLive counts the live and failed jobs per queue from the partial
// indexes (jobs_claim, jobs_running, jobs_failed), so its cost follows the
// backlog, the running set and the failed jobs, never the finished rows.
// The status is written as a constant, not read from the row: the index
// holds no status column, so reading it would visit every row's heap page,
// while constants let the planner answer from the index alone (an
// index-only scan) wherever vacuum marked the pages all-visible. Durations
// come back in microseconds.
const queueLive = `
SELECT j.queue, 'queued'::text, count(*),
       count(*) FILTER (WHERE j.run_at <= now()),
       coalesce((extract(epoch FROM now() - min(j.run_at) FILTER (WHERE j.run_at <= now())) * 1e6)::bigint, 0)
FROM compute.jobs j WHERE j.status = 'queued' GROUP BY j.queue
UNION ALL
SELECT j.queue, 'in-progress', count(*), 0, 0 FROM compute.jobs j WHERE j.status = 'in-progress' GROUP BY j.queue
UNION ALL
SELECT j.queue, 'failed', count(*), 0, 0 FROM compute.jobs j WHERE j.status = 'failed' GROUP BY j.queue`

// noParallelSQL precedes queueLive in its pipeline (the setting ends with
// it): the index-only scans are short, and starting a parallel worker for
// them cost more than they did (150 of 210 ms at 100,000 queued and 50,000
// failed jobs, on a loaded 2-core machine).
const noParallelSQL = `SELECT set_config('max_parallel_workers_per_gather', '0', true)`

// queueFinished counts complete and expired jobs exactly: a pass over
// every finished row, which takes seconds at tens of millions of rows.
const queueFinished = `
SELECT j.queue, j.status, count(*) FROM compute.jobs j
WHERE j.status IN ('complete', 'expired') GROUP BY j.queue, j.status`

// queueNames lists the queues that may have no live jobs: those with
// settings, those a live worker serves, and (with $2, when finished rows
// are not read) the queue values the planner's statistics know as common
// (pg_stats, refreshed by ANALYZE).
const queueNames = `
SELECT name FROM compute.queues
UNION
SELECT unnest(queues) FROM compute.workers WHERE seen > now() - $1 * interval '1 microsecond'
UNION
SELECT unnest(most_common_vals::text::text[]) FROM pg_stats
WHERE $2 AND schemaname = 'compute' AND tablename = 'jobs' AND attname = 'queue'`

// estimateRows asks the planner, not the table, how many rows of a queue
// have a status: EXPLAIN plans the query without running it, from the
// statistics ANALYZE keeps.
const estimateRows = `EXPLAIN (FORMAT JSON) SELECT 1 FROM compute.jobs WHERE queue = $1 AND status = $2`

// commonStatuses reads the statuses ANALYZE found in its sample (the
// common values and the histogram's bounds hold every value it saw when
// there are as few as five): a status it did not see is estimated at 0,
// which the planner never says.
const commonStatuses = `
SELECT coalesce(most_common_vals::text::text[], '{}') || coalesce(histogram_bounds::text::text[], '{}') FROM pg_stats
WHERE schemaname = 'compute' AND tablename = 'jobs' AND attname = 'status'`

// queueExtras reads the rules and the live workers of the given queues.
const queueExtras = `
SELECT n.name, coalesce(s.paused, false), coalesce(s.max_running, 0), coalesce(s.key_max_running, 0),
       coalesce(s.rate_limit, 0), coalesce(s.key_rate_limit, 0),
       coalesce(extract(epoch FROM s.rate_period) * 1e6, 0)::bigint, coalesce(s.fair, false),
       coalesce(extract(epoch FROM s.age_after) * 1e6, 0)::bigint,
       (SELECT count(*) FROM compute.workers w WHERE n.name = ANY (w.queues)
                                              AND w.seen > now() - $2 * interval '1 microsecond')
FROM unnest($1::text[]) AS n(name) LEFT JOIN compute.queues s ON s.name = n.name`

// Queues summarises every queue: counts per status, rules, live workers
// and the age of the oldest runnable job, sorted by name. Queued,
// in-progress and failed jobs are counted exactly from their partial
// indexes. With exact set, complete and expired jobs are counted too, in a
// pass over all finished rows (seconds at tens of millions); otherwise they
// are the planner's estimates (QueueInfo.Estimated), and a queue that
// holds only finished jobs appears only when it has settings, a live
// worker, or is common enough for the planner's statistics. A table that
// was never analyzed has no statistics: its finished rows are counted.
func (q *Queue) Queues(ctx context.Context, exact bool) ([]QueueInfo, error) {
	byName := map[string]*QueueInfo{}
	get := func(name string) *QueueInfo {
		if byName[name] == nil {
			byName[name] = &QueueInfo{Name: name, Counts: map[Status]int64{}}
		}
		return byName[name]
	}
	err := q.do(ctx, "compute: summarise queues", func(ctx context.Context) error {
		clear(byName)
		live := &pgx.Batch{}
		live.Queue(noParallelSQL)
		live.Queue(queueLive)
		results := q.pool.SendBatch(ctx, live)
		_, err := results.Exec()
		var rows pgx.Rows
		if err == nil {
			rows, err = results.Query()
		}
		var (
			name                  string
			status                Status
			n, runnable, oldestUS int64
		)
		if err == nil {
			_, err = pgx.ForEachRow(rows, []any{&name, &status, &n, &runnable, &oldestUS}, func() error {
				qi := get(name)
				qi.Counts[status] = n
				if status == StatusQueued {
					qi.Runnable, qi.OldestRunnable = runnable, time.Duration(oldestUS)*time.Microsecond
				}
				return nil
			})
		}
		if err = errors.Join(err, results.Close()); err != nil {
			return err
		}
		// Estimates need statistics: the statuses ANALYZE saw, or nil
		// when it never ran, and then the table is young or small
		// (autovacuum analyzes it once 50 rows and 2% of the table have
		// changed, migration 5), so the finished rows are counted.
		var common []string
		if !exact {
			if err := q.pool.QueryRow(ctx, commonStatuses).Scan(&common); err != nil && !errors.Is(err, pgx.ErrNoRows) {
				return err
			}
		}
		count := exact || common == nil
		if count {
			rows, err := q.pool.Query(ctx, queueFinished)
			if err != nil {
				return err
			}
			if _, err := pgx.ForEachRow(rows, []any{&name, &status, &n}, func() error {
				get(name).Counts[status] = n
				return nil
			}); err != nil {
				return err
			}
		}
		rows, err = q.pool.Query(ctx, queueNames, workerFresh.Microseconds(), !count)
		if err != nil {
			return err
		}
		if _, err := pgx.ForEachRow(rows, []any{&name}, func() error {
			if validQueue(name) == nil {
				get(name)
			}
			return nil
		}); err != nil {
			return err
		}
		for _, qi := range byName {
			qi.Estimated = !count
		}
		if !count {
			for _, qi := range byName {
				for _, s := range []Status{StatusComplete, StatusExpired} {
					if !slices.Contains(common, string(s)) {
						qi.Counts[s] = 0 // the planner never says 0; the statistics can
						continue
					}
					if qi.Counts[s], err = q.estimate(ctx, qi.Name, s); err != nil {
						return err
					}
				}
			}
		}
		names := make([]string, 0, len(byName))
		for name := range byName {
			names = append(names, name)
		}
		rows, err = q.pool.Query(ctx, queueExtras, names, workerFresh.Microseconds())
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var s QueueSettings
			var workers int
			var period, age int64
			if err := rows.Scan(&name, &s.Paused, &s.MaxRunning, &s.KeyMaxRunning, &s.RateLimit, &s.KeyRateLimit,
				&period, &s.Fair, &age, &workers); err != nil {
				return err
			}
			s.RatePeriod, s.AgeAfter = time.Duration(period)*time.Microsecond, time.Duration(age)*time.Microsecond
			qi := byName[name]
			qi.Settings, qi.Workers = s, workers
		}
		return rows.Err()
	})
	if err != nil {
		return nil, err
	}
	out := make([]QueueInfo, 0, len(byName))
	for _, qi := range byName {
		out = append(out, *qi)
	}
	slices.SortFunc(out, func(a, b QueueInfo) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// estimate returns the planner's row estimate for a queue and status.
func (q *Queue) estimate(ctx context.Context, queue string, status Status) (int64, error) {
	var plan []byte
	if err := q.pool.QueryRow(ctx, estimateRows, queue, string(status)).Scan(&plan); err != nil {
		return 0, err
	}
	var out []struct {
		Plan struct {
			Rows float64 `json:"Plan Rows"`
		} `json:"Plan"`
	}
	if err := json.Unmarshal(plan, &out); err != nil || len(out) == 0 {
		return 0, fmt.Errorf("reading the planner's estimate: %v", err)
	}
	return int64(out[0].Plan.Rows), nil
}

// WorkerInfo is one row of the worker registry (compute.workers).
type WorkerInfo struct {
	ID      string
	Queues  []string
	Started time.Time
	// Seen is the worker's last refresh; a running worker refreshes at
	// least every 20 s.
	Seen time.Time
	// Live is whether it refreshed in the last minute.
	Live bool
}

// listWorkers reads the registry, newest refresh first.
const listWorkers = `
SELECT worker, queues::text[], started, seen, seen > now() - $1 * interval '1 microsecond'
FROM compute.workers ORDER BY seen DESC, worker`

// Workers returns the worker registry: every worker that refreshed its row
// in the last hour (older rows are dropped by the workers' maintenance),
// newest refresh first. The registry is informational: no claim reads it.
func (q *Queue) Workers(ctx context.Context) ([]WorkerInfo, error) {
	var out []WorkerInfo
	err := q.do(ctx, "compute: list workers", func(ctx context.Context) error {
		rows, err := q.pool.Query(ctx, listWorkers, workerFresh.Microseconds())
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (WorkerInfo, error) {
			var w WorkerInfo
			err := row.Scan(&w.ID, &w.Queues, &w.Started, &w.Seen, &w.Live)
			return w, err
		})
		return err
	})
	return out, err
}

// listTicks reads every schedule's last enqueued tick.
const listTicks = `SELECT name, last_tick FROM compute.periodic ORDER BY name`

// PeriodicTicks returns the last tick enqueued by each periodic schedule
// that any worker ran ([WorkerConfig.Periodic]), by schedule name.
func (q *Queue) PeriodicTicks(ctx context.Context) (map[string]time.Time, error) {
	out := map[string]time.Time{}
	err := q.do(ctx, "compute: list periodic ticks", func(ctx context.Context) error {
		clear(out)
		rows, err := q.pool.Query(ctx, listTicks)
		if err != nil {
			return err
		}
		var name string
		var tick time.Time
		_, err = pgx.ForEachRow(rows, []any{&name, &tick}, func() error {
			out[name] = tick
			return nil
		})
		return err
	})
	return out, err
}

// jobHistory reads one job's journal events. The events_at BRIN index
// narrows the scan to rows written since the job was created (a minute's
// margin for clock steps); the array containment test skips other rows
// without unnesting them. Unlike Events it does not wait for older
// transactions: a timeline shows what has committed.
const jobHistory = `
SELECT e.xid::text::bigint, e.seq, u.pos, u.job_id, e.queue, e.status, u.attempt, e.at
FROM compute.events e
CROSS JOIN LATERAL unnest(e.job_ids, e.attempts) WITH ORDINALITY AS u(job_id, attempt, pos)
WHERE e.at >= $2 AND e.job_ids @> ARRAY[$1::bytea] AND u.job_id = $1
ORDER BY e.xid, e.seq, u.pos`

// History returns a job's status changes as the journal recorded them,
// oldest first. Events older than the journal's retention (7 days by
// default) are gone, and none are written while the journal is off
// (MetaJournal). It returns [ErrNotFound] when no job has that id.
func (q *Queue) History(ctx context.Context, id JobID) ([]Event, error) {
	var created time.Time
	var events []Event
	err := q.do(ctx, "compute: job history", func(ctx context.Context) error {
		err := q.pool.QueryRow(ctx, `SELECT created FROM compute.jobs WHERE job_id = $1`, id[:]).Scan(&created)
		if err != nil {
			return err
		}
		rows, err := q.pool.Query(ctx, jobHistory, id[:], created.Add(-time.Minute))
		if err != nil {
			return err
		}
		events, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (Event, error) {
			var e Event
			var raw []byte
			err := row.Scan(&e.Cursor.xid, &e.Cursor.seq, &e.Cursor.pos, &raw, &e.Queue, &e.Status, &e.Attempt, &e.At)
			copy(e.JobID[:], raw)
			return e, err
		})
		return err
	})
	if err != nil {
		return nil, notFound(err, "compute: job history %s", id)
	}
	return events, nil
}

// SchemaVersion returns the version of the compute schema in the database
// (0 when it was never migrated) and the latest version this library
// knows. It changes nothing, not even on a database that was never
// migrated.
func (q *Queue) SchemaVersion(ctx context.Context) (current, latest int64, err error) {
	db := stdlib.OpenDBFromPool(q.pool)
	defer db.Close()
	provider, err := goose.NewProvider(goose.DialectPostgres, db, migrations.FS,
		goose.WithTableName(versionTable), goose.WithDisableGlobalRegistry(true))
	if err != nil {
		return 0, 0, fmt.Errorf("compute: schema version: %w", err)
	}
	sources := provider.ListSources()
	if len(sources) > 0 {
		latest = sources[len(sources)-1].Version
	}
	err = q.do(ctx, "compute: schema version", func(ctx context.Context) error {
		var exists bool
		if err := q.pool.QueryRow(ctx, `SELECT to_regclass('`+versionTable+`') IS NOT NULL`).Scan(&exists); err != nil || !exists {
			current = 0
			return err
		}
		current, err = provider.GetDBVersion(ctx)
		if errors.Is(err, goose.ErrNoMigrations) {
			current, err = 0, nil
		}
		return err
	})
	return current, latest, err
}
