package compute

import (
	"context"
	"errors"
	"fmt"
	"time"
)

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

// dueForAgingSQL takes this period's aging turn for every queue that is due, so
// one process in the cluster ages each queue once per AgeAfter.
const dueForAgingSQL = `
UPDATE compute.queues SET aged_at = now()
WHERE age_after IS NOT NULL AND aged_at <= now() - age_after
RETURNING name, (extract(epoch FROM age_after) * 1e6)::bigint`

// ageJobsSQL moves queued jobs of queue $1 that have been runnable for longer
// than $2 microseconds one priority step towards 0: the oldest 10,000 per
// turn, so one statement never locks a whole backlog.
const ageJobsSQL = noStatusChange + `
WITH old AS MATERIALIZED (
    SELECT ctid FROM compute.jobs
    WHERE status = 'queued' AND queue = $1 AND priority > 0 AND run_at <= now() - $2 * interval '1 microsecond'
    ORDER BY run_at
    LIMIT 10000
    FOR UPDATE SKIP LOCKED
)
UPDATE compute.jobs j SET priority = j.priority - 1 FROM old WHERE j.ctid = old.ctid`

// ageQueues applies priority aging (QueueSettings.AgeAfter) to the queues
// that are due, and returns how many jobs moved up.
func (q *Queue) ageQueues(ctx context.Context) (int, error) {
	type due struct {
		name string
		us   int64
	}
	var queues []due
	err := q.do(ctx, "compute: priority aging", func(ctx context.Context) error {
		queues = queues[:0]
		rows, err := q.pool.Query(ctx, dueForAgingSQL)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var d due
			if err := rows.Scan(&d.name, &d.us); err != nil {
				return err
			}
			queues = append(queues, d)
		}
		return rows.Err()
	})
	total := 0
	for _, d := range queues {
		if err != nil {
			break
		}
		err = q.do(ctx, "compute: priority aging", func(ctx context.Context) error {
			tag, err := q.pool.Exec(ctx, ageJobsSQL, d.name, d.us)
			total += int(tag.RowsAffected())
			return err
		})
	}
	return total, err
}

// registerWorkerSQL records (or refreshes) a running worker and the queues it
// serves.
const registerWorkerSQL = `
INSERT INTO compute.workers (worker, queues) VALUES ($1, $2)
ON CONFLICT (worker) DO UPDATE SET queues = excluded.queues, seen = now()`

// unregisterWorkerSQL removes a worker that stopped cleanly.
const unregisterWorkerSQL = `DELETE FROM compute.workers WHERE worker = $1`

// forgetWorkersSQL drops registry rows of workers that vanished without
// unregistering (killed processes) an hour ago.
const forgetWorkersSQL = `DELETE FROM compute.workers WHERE seen < now() - interval '1 hour'`

// maintain runs one round of the worker's cluster-wide housekeeping:
// stale leases, retention, priority aging, the worker registry, and a
// warning about long transactions that hold back vacuum. Every
// step is safe to run from many processes at once. Failures are logged.
func (w *Worker) maintain(ctx context.Context) {
	callCtx, cancel := context.WithTimeout(ctx, w.callTimeout())
	defer cancel()
	if n, err := w.q.RequeueStale(callCtx); err != nil {
		w.logFailure(ctx, "requeue of stale jobs failed", err)
	} else if n > 0 {
		w.log.Info("requeued stale jobs", "jobs", n)
	}
	r := w.cfg.Retention
	if r.ExpireAfter > 0 {
		n, err := w.q.Expire(callCtx, r.ExpireAfter)
		w.logRound(ctx, "expired unread finished jobs", n, err)
	}
	for status, age := range map[Status]time.Duration{
		StatusExpired: r.DeleteExpiredAfter, StatusComplete: r.DeleteCompleteAfter, StatusFailed: r.DeleteFailedAfter,
	} {
		if age > 0 {
			n, err := w.q.Purge(callCtx, status, age)
			w.logRound(ctx, "deleted old "+string(status)+" jobs", n, err)
		}
	}
	if r.JournalAfter > 0 {
		n, err := w.q.purgeJournal(callCtx, r.JournalAfter)
		w.logRound(ctx, "deleted old journal events", n, err)
		// Copied events sort after every event this server writes, so
		// the purge never reaches them.
		if _, err := w.q.Head(callCtx); errors.Is(err, ErrJournalFromAnotherCluster) {
			w.log.Warn("the journal purge keeps events copied from another cluster until Queue.RebaseJournal runs", "err", err)
		}
	}
	n, err := w.q.ageQueues(callCtx)
	w.logRound(ctx, "raised the priority of waiting jobs", n, err)
	_, err = w.q.pool.Exec(callCtx, forgetWorkersSQL)
	w.logRound(ctx, "", 0, err)
	w.checkHorizon(callCtx)
}

// logRound logs what a maintenance step did, or its failure.
func (w *Worker) logRound(ctx context.Context, did string, n int, err error) {
	switch {
	case err != nil:
		w.logFailure(ctx, "maintenance failed", err)
	case n > 0:
		w.log.Info(did, "jobs", n)
	}
}

func (w *Worker) logFailure(ctx context.Context, msg string, err error) {
	if ctx.Err() == nil {
		w.log.Warn(msg, "err", err)
	}
}
