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

// Retention says how long finished jobs are kept. A Worker applies it in its
// maintenance loop, in small batches; zero fields take the defaults.
type Retention struct {
	// ExpireAfter: complete and failed jobs that nobody read (Get) for
	// this long become expired. Default 7 days; negative turns it off.
	ExpireAfter time.Duration
	// DeleteExpiredAfter: expired jobs are deleted once their last read is
	// this long ago; make it longer than ExpireAfter. Default 14 days, a
	// week after they expire with the default ExpireAfter; negative keeps
	// them.
	DeleteExpiredAfter time.Duration
	// DeleteCompleteAfter and DeleteFailedAfter delete complete or failed
	// jobs this long after their last read, without expiring them first.
	// Default 0: they are not deleted before they expire.
	DeleteCompleteAfter, DeleteFailedAfter time.Duration
	// JournalAfter: journal events older than this are deleted, oldest
	// transaction first; an event behind a newer one of an older
	// transaction waits for it, at most JournalAfter after its own
	// transaction's first write. Default 7 days; negative keeps them.
	JournalAfter time.Duration
}

const day = 24 * time.Hour

func (r Retention) withDefaults() Retention {
	r.ExpireAfter = cmpOr(r.ExpireAfter, 7*day)
	r.DeleteExpiredAfter = cmpOr(r.DeleteExpiredAfter, 14*day)
	r.JournalAfter = cmpOr(r.JournalAfter, 7*day)
	return r
}

// purgeSQL deletes finished jobs of one status whose last read is older than
// $2 microseconds, oldest first, in batches (see staleBatch). One text per
// status, so each plan can use the partial index that holds that status.
var purgeSQL = map[Status]string{}

func init() {
	for _, s := range []Status{StatusComplete, StatusFailed, StatusExpired} {
		purgeSQL[s] = fmt.Sprintf(`
WITH old AS MATERIALIZED (
    SELECT ctid FROM compute.jobs
    WHERE status = '%s' AND last_accessed < now() - $2 * interval '1 microsecond'
    ORDER BY last_accessed
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM compute.jobs j USING old WHERE j.ctid = old.ctid RETURNING 1
)
SELECT count(*), 0 FROM gone`, s)
	}
}

// Purge deletes jobs in a finished status (complete, failed or expired) whose
// last read (Get, or the finish when nobody read them) is older than age, by
// the database clock, and returns how many. It works in batches of 1,000
// rows that skip locked rows, so it never holds many locks or blocks a
// worker. A Worker runs it as its Retention says.
func (q *Queue) Purge(ctx context.Context, status Status, age time.Duration) (int, error) {
	sql, ok := purgeSQL[status]
	if !ok {
		return 0, fmt.Errorf("%w: Purge deletes complete, failed or expired jobs, not %q", ErrInvalidOption, status)
	}
	if age <= 0 {
		return 0, fmt.Errorf("%w: purge age %s must be positive", ErrInvalidOption, age)
	}
	return q.batches(ctx, "compute: purge", sql, age.Microseconds())
}
