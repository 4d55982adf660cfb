package compute

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// getJobSQL reads a job and, when it is finished, touches last_accessed in the
// same statement: retention counts from the last read. A queued or running
// job is only read. Writing it would lock the row, and a claim that meets a
// locked (or just rewritten) row skips it: a client polling Get on its
// queued job could keep it from the worker that was woken for it, until
// that worker's next poll. The second branch returns the row as the
// statement's snapshot saw it when the update did not take it.
const getJobSQL = noStatusChange + `
WITH touched AS (
    UPDATE compute.jobs j SET last_accessed = now()
    WHERE j.job_id = $1 AND j.status IN ('complete', 'failed', 'expired')
    RETURNING ` + jobColumns + `
)
SELECT * FROM touched
UNION ALL
SELECT ` + jobColumns + ` FROM compute.jobs j
WHERE j.job_id = $1 AND NOT EXISTS (SELECT FROM touched)`

// Get returns the job with the given id. Reading a finished job (complete,
// failed or expired) records the read in last_accessed, which retention
// counts from; a queued or running job is read without a write, so polling
// it does not get in a worker's way. A Get that overlaps a change to the
// same job (a Retry, a Purge) may return the job as it was before that
// change. It returns [ErrNotFound] when no job has that id, and a *BadRowError
// when the row holds a value the library cannot read.
func (q *Queue) Get(ctx context.Context, id JobID) (*Job, error) {
	var job *Job
	err := q.do(ctx, "compute: get job", func(ctx context.Context) (err error) {
		job, err = scanJob(q.pool.QueryRow(ctx, getJobSQL, id[:]))
		return err
	})
	if err != nil {
		return nil, notFound(err, "compute: get job %s", id)
	}
	if job.bad != nil {
		return nil, job.bad
	}
	return job, nil
}

// ListOptions selects a page of jobs for List.
type ListOptions struct {
	// Queue is required.
	Queue string
	// Status, when set, keeps only jobs in that status.
	Status Status
	// After continues a listing: pass the ID of the last job of the
	// previous page. The zero id starts at the beginning.
	After JobID
	// Limit caps the page; 0 means 100, at most 10,000.
	Limit int
}

// listStatus is a page of one status of a queue's jobs: keyset pagination
// by job_id, each page starting after the last id seen ($2; NULL starts at
// the beginning, and coalesce, unlike an OR, stays an index condition in
// a generic plan). The status (one of the five constants, never caller
// input) is written into the text so the planner can use its partial
// index, and so is the sort key (listOrder).
const listStatus = `
SELECT ` + jobColumns + ` FROM compute.jobs j
WHERE j.queue = $1 AND j.status = '%s' AND j.job_id > coalesce($2::bytea, '')
ORDER BY %s
LIMIT $3`

// listOrder is each status's sort key. Complete and expired jobs are read
// in order from jobs_done (queue, status, job_id), failed ones from
// jobs_failed (queue, job_id). Queued and running jobs have no index by
// id: a page sorts the queue's backlog (found through jobs_claim) or the
// cluster's running jobs (jobs_running); the sort key is an expression so
// that a generic plan cannot walk the primary key in id order through
// every other queue's rows instead, as it did for queued jobs.
var listOrder = map[Status]string{
	StatusQueued:     "j.job_id || ''",
	StatusInProgress: "j.job_id || ''",
	StatusComplete:   "j.job_id",
	StatusFailed:     "j.job_id",
	StatusExpired:    "j.job_id",
}

// listByStatus holds each status's page statement, and listJobs the page
// without a status: the five statuses' pages merged, so it too reads each
// status through its index, never the whole table.
var listByStatus, listJobs = func() (map[Status]string, string) {
	m := make(map[Status]string)
	var pages []string
	for _, s := range []Status{StatusQueued, StatusInProgress, StatusComplete, StatusFailed, StatusExpired} {
		m[s] = fmt.Sprintf(listStatus, s, listOrder[s])
		pages = append(pages, "("+m[s]+")")
	}
	return m, "SELECT * FROM (" + strings.Join(pages, "\nUNION ALL ") + ") j\nORDER BY j.job_id\nLIMIT $3"
}()

// List returns up to opts.Limit jobs of a queue in job id order (creation
// order for default ids), without touching last_accessed. An empty page
// means the listing is done. A row the library cannot read ends the page
// early with a *BadRowError (the jobs before it are returned with it);
// continue after its ID. Bad options match [ErrInvalid]. A page of
// complete, failed or expired jobs reads about one page of the queue's
// rows; a page of queued jobs sorts the queue's backlog, and one of
// in-progress jobs the cluster's running jobs; a page without a status
// costs the five together.
func (q *Queue) List(ctx context.Context, opts ListOptions) ([]*Job, error) {
	if err := validQueue(opts.Queue); err != nil {
		return nil, err
	}
	sql := listJobs
	if opts.Status != "" {
		if err := checkStatus(opts.Status); err != nil {
			return nil, err
		}
		sql = listByStatus[opts.Status]
	}
	limit, err := pageLimit("list", opts.Limit)
	if err != nil {
		return nil, err
	}
	return q.queryPage(ctx, "compute: list jobs", sql, opts.Queue, afterID(opts.After), limit)
}

// cancelJobSQL fails a live job with a reason. The sub-select locks the row and
// keeps its old status, so the caller learns whether a worker was running it;
// a running job's holder finds at its next heartbeat that the job is no
// longer its own, and pg_notify tells it at once.
const cancelJobSQL = statusChange + `
WITH old AS MATERIALIZED (
    SELECT job_id, status FROM compute.jobs WHERE job_id = $1 FOR UPDATE
), cancelled AS (
    UPDATE compute.jobs j
    SET status = 'failed', finished = now(), last_accessed = now(), lease_expires = NULL,
        errors = j.errors || jsonb_build_array(jsonb_build_object(
            'attempt', j.attempt, 'at', now(), 'error', 'cancelled: ' || $2::text))
    FROM old
    WHERE j.job_id = old.job_id AND old.status IN ('queued', 'in-progress')
    RETURNING j.job_id, old.status
)
SELECT (SELECT status FROM old),
       (SELECT count(pg_notify('compute_cancel', encode(job_id, 'hex'))) FROM cancelled WHERE status = 'in-progress')`

// Cancel stops a job: a queued job will never run, and a running job is
// marked failed at once, so its worker's result is discarded and its
// handler's context is cancelled (by notification, or at the worker's next
// heartbeat). The job ends in status failed with an error naming reason.
// Cancel returns [ErrNotFound] for an unknown id and [ErrWrongStatus] for a job
// that already finished.
func (q *Queue) Cancel(ctx context.Context, id JobID, reason string) error {
	if reason == "" {
		reason = "cancelled by request"
	}
	var old *string
	err := q.do(ctx, "compute: cancel job", func(ctx context.Context) error {
		var notified int64
		return q.pool.QueryRow(ctx, cancelJobSQL, id[:], cleanError(reason)).Scan(&old, &notified)
	})
	switch {
	case err != nil:
		return err
	case old == nil:
		return fmt.Errorf("compute: cancel job %s: %w", id, ErrNotFound)
	case *old != string(StatusQueued) && *old != string(StatusInProgress):
		return fmt.Errorf("compute: cancel job %s: it is %s: %w", id, *old, ErrWrongStatus)
	}
	return nil
}

// retryJobSQL queues a failed job again now. The attempt counter is never
// lowered (it fences stale holders), so the job gets one more attempt by
// raising max_attempts when it was spent.
const retryJobSQL = statusChange + `
WITH old AS MATERIALIZED (
    SELECT job_id, status, queue FROM compute.jobs WHERE job_id = $1 FOR UPDATE
), retried AS (
    UPDATE compute.jobs j
    SET status = 'queued', run_at = now(), finished = NULL, lease_expires = NULL,
        max_attempts = greatest(j.max_attempts, j.attempt - j.snoozes + 1)
    FROM old
    WHERE j.job_id = old.job_id AND old.status = 'failed'
    RETURNING j.queue
)
SELECT (SELECT status FROM old),
       (SELECT count(pg_notify('compute_jobs', queue)) FROM retried)`

// Retry queues a failed job again to run now, with at least one more
// attempt. It returns [ErrNotFound] for an unknown id and [ErrWrongStatus] for a
// job that is not failed.
func (q *Queue) Retry(ctx context.Context, id JobID) error {
	var old *string
	err := q.do(ctx, "compute: retry job", func(ctx context.Context) error {
		var notified int64
		return q.pool.QueryRow(ctx, retryJobSQL, id[:]).Scan(&old, &notified)
	})
	switch {
	case err != nil:
		return err
	case old == nil:
		return fmt.Errorf("compute: retry job %s: %w", id, ErrNotFound)
	case *old != string(StatusFailed):
		return fmt.Errorf("compute: retry job %s: it is %s, only failed jobs can be retried: %w", id, *old, ErrWrongStatus)
	}
	return nil
}

// countJobsSQL counts jobs per queue and status in one pass over the table.
const countJobsSQL = `SELECT queue, status, count(*) FROM compute.jobs GROUP BY queue, status`

// Counts returns how many jobs each queue holds in each status. It reads
// the whole table: call it for dashboards, not on a hot path.
func (q *Queue) Counts(ctx context.Context) (map[string]map[Status]int64, error) {
	counts := make(map[string]map[Status]int64)
	err := q.do(ctx, "compute: count jobs", func(ctx context.Context) error {
		clear(counts)
		rows, err := q.pool.Query(ctx, countJobsSQL)
		if err != nil {
			return err
		}
		var (
			queue  string
			status Status
			n      int64
		)
		_, err = pgx.ForEachRow(rows, []any{&queue, &status, &n}, func() error {
			if counts[queue] == nil {
				counts[queue] = make(map[Status]int64)
			}
			counts[queue][status] = n
			return nil
		})
		return err
	})
	return counts, err
}
