package compute

import (
	"context"
	"fmt"
	"time"
)

// requeueStaleSQL hands back jobs whose lease expired by the database clock, in
// batches: back to queued while attempts remain, else failed. SKIP LOCKED
// lets many processes run it at once without waiting on each other, and the
// partial index jobs_running (in-progress rows only) makes it cheap. Jobs that a
// v1 program marked in-progress without a lease (lease_expires NULL) are left
// to that program.
const requeueStaleSQL = statusChange + `
WITH stale AS MATERIALIZED (
    SELECT job_id FROM compute.jobs
    WHERE status = 'in-progress' AND lease_expires < now()
    ORDER BY lease_expires
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), requeued AS (
    UPDATE compute.jobs j
    SET status = CASE WHEN j.attempt - j.snoozes >= j.max_attempts THEN 'failed' ELSE 'queued' END,
        finished = CASE WHEN j.attempt - j.snoozes >= j.max_attempts THEN now() END,
        last_accessed = CASE WHEN j.attempt - j.snoozes >= j.max_attempts THEN now() ELSE j.last_accessed END,
        run_at = now(), lease_expires = NULL,
        errors = j.errors || jsonb_build_array(jsonb_build_object('attempt', j.attempt - j.snoozes, 'at', now(),
            'error', 'lease expired: worker ' || coalesce(j.worker, '?') || ' stopped renewing it'))
    FROM stale
    WHERE j.job_id = stale.job_id
    RETURNING j.queue, j.status
)
SELECT count(*), (SELECT count(pg_notify('compute_jobs', queue))
                  FROM (SELECT DISTINCT queue FROM requeued WHERE status = 'queued') q)
FROM requeued`

// staleBatch bounds how many rows one requeue or expire statement touches, so
// neither holds many row locks for long.
const staleBatch = 1000

// RequeueStale hands back the jobs whose lease expired (their worker died,
// hung or lost its connection): each goes back to queued, or to failed when
// its attempts are spent, with the expiry recorded in its errors. It returns
// how many jobs it handed back. Safe to run from many processes at once; a
// Worker runs it periodically.
func (q *Queue) RequeueStale(ctx context.Context) (int, error) {
	return q.batches(ctx, "compute: requeue stale", requeueStaleSQL)
}

// expireJobsSQL marks finished jobs that nobody read within the retention
// period as expired, oldest first, in batches (see staleBatch).
const expireJobsSQL = statusChange + `
WITH old AS MATERIALIZED (
    SELECT job_id FROM compute.jobs
    WHERE status IN ('complete', 'failed') AND last_accessed < now() - $2 * interval '1 microsecond'
    ORDER BY last_accessed
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), expired AS (
    UPDATE compute.jobs j SET status = 'expired'
    FROM old WHERE j.job_id = old.job_id
    RETURNING 1
)
SELECT count(*), 0 FROM expired`

// Expire marks complete and failed jobs whose last_accessed is older than
// retention (by the database clock) as expired, and returns how many. The
// library sets last_accessed when a job finishes and when Get reads it
// after that.
func (q *Queue) Expire(ctx context.Context, retention time.Duration) (int, error) {
	if retention <= 0 {
		return 0, fmt.Errorf("%w: retention %s must be positive", ErrInvalidOption, retention)
	}
	return q.batches(ctx, "compute: expire", expireJobsSQL, retention.Microseconds())
}

// batches runs a batched maintenance statement until a batch comes back
// short, and returns the total it reports.
func (q *Queue) batches(ctx context.Context, what, sql string, args ...any) (int, error) {
	total := 0
	for {
		var n, notified int64
		err := q.do(ctx, what, func(ctx context.Context) error {
			return q.pool.QueryRow(ctx, sql, append([]any{staleBatch}, args...)...).Scan(&n, &notified)
		})
		total += int(n)
		if err != nil || n < staleBatch {
			return total, err
		}
	}
}
