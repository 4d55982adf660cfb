package compute

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// claimUpdate is the second half of every claim: it moves the rows the
// first half picked to in-progress for worker $3 with a lease of $4
// microseconds. It fetches them by ctid in one Tid Scan over the array of
// picked ctids, whatever the table's size. Every other way in was taken
// when offered: written as a join with picked, the planner hashed every row
// of a table of thousands of queued jobs (a 1,000-job claim on 20,000 rows
// took 16-23 ms instead of 12 ms); with a plain status = 'queued' it read
// all of jobs_claim or jobs_partition, dead entries included, for a
// 3-job claim in a steady stream; and a plan cached while the table was
// small read the whole table. So status is compared after appending an
// empty string, which no partial index's predicate matches, and claims run
// after pinJoins, which rules out the sequential scan. The row locks taken
// by the pick keep the ctids valid; a row whose locked version is newer
// than the statement's snapshot is not claimed this time. The attempt is
// incremented here, so a job that kills its worker still spends its
// attempts. Times are statement_timestamp(): in a one-statement claim that
// is now(), and in the gated claim it is after the wait for the queue's
// lock. A config longer than $5 bytes is left out of the result
// (claimColumns), so one claim never holds more than $5 bytes of config
// per job, however large a row written by plain SQL is.
const claimUpdate = `
UPDATE compute.jobs j
SET status = 'in-progress', grabbed = statement_timestamp(), attempt = j.attempt + 1, worker = $3,
    lease_expires = statement_timestamp() + $4 * interval '1 microsecond'
WHERE j.ctid = ANY (ARRAY(SELECT ctid FROM picked)) AND j.status || '' = 'queued'
RETURNING ` + claimColumns

// claimColumns is jobColumns with the config only when it is at most $5
// bytes long (see scanJob).
const claimColumns = jobFields + `, CASE WHEN octet_length(j.config) <= $5 THEN j.config END`

// claimJobs is the fast claim: up to $2 runnable jobs of queue $1 in
// (priority, run_at) order, walking the partial index jobs_claim and
// skipping rows other claimers hold. The MATERIALIZED CTE runs the locking
// sub-select once, so LIMIT holds. A queue with rules in compute.queues
// (paused, limits, fairness) claims nothing here; the statement then returns
// one row with gated true and NULL job columns, and Claim takes the
// serialized path instead. The gate is one primary-key probe of a tiny table.
const claimJobs = statusChange + `
WITH gate AS (
    SELECT 1 FROM compute.queues s
    WHERE s.name = $1 AND (s.paused OR s.fair OR s.max_running IS NOT NULL OR s.key_max_running IS NOT NULL
                           OR s.rate_limit IS NOT NULL OR s.key_rate_limit IS NOT NULL)
), picked AS MATERIALIZED (
    SELECT ctid FROM compute.jobs
    WHERE status = 'queued' AND queue = $1 AND run_at <= now() AND NOT EXISTS (SELECT FROM gate)
    ORDER BY priority, run_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), claimed AS (` + claimUpdate + `
)
SELECT g.gated, c.* FROM (SELECT EXISTS (SELECT FROM gate) AS gated) g
LEFT JOIN claimed c ON true
WHERE g.gated OR c.job_id IS NOT NULL`

// maxClaim caps one Claim call.
const maxClaim = 10000

// Claim takes up to n queued jobs of queue whose run time has come, in
// priority order (smaller first, then earlier run time), and leases them to
// this queue's worker id for the WithLease duration. Each returned job is in
// progress with its attempt counted. Finish each with Complete or Fail, and
// call Heartbeat before the lease runs out while it runs; a job whose lease
// expires is handed back by RequeueStale. An empty result means nothing is
// runnable now. The queue's settings (SetQueueSettings, Pause) are obeyed:
// a paused queue yields nothing, limits shrink the batch, and a fair queue
// takes jobs round-robin across partition keys. Bad arguments match
// ErrInvalid.
//
// A claim of a queue with rules may commit in several rounds; when a later
// round fails, Claim returns the jobs of the earlier ones together with the
// error, and they are the caller's like any others. A row the library
// cannot read (see BadRowError) is never returned: Claim fails that job at
// once, alone and for good, with the BadRowError as its reason.
func (q *Queue) Claim(ctx context.Context, queue string, n int) ([]*Job, error) {
	jobs, _, err := q.claim(ctx, queue, n)
	return jobs, err
}

// claim is Claim that also reports whether the queue has rules: its claims
// are then limited by the whole cluster, so a slot freed anywhere may make a
// new claim worthwhile even after a short batch. Jobs committed before an
// error are returned with it: the gated claim commits round by round, and
// a retry of the call (do) claims only what is still missing.
func (q *Queue) claim(ctx context.Context, queue string, n int) (jobs []*Job, gated bool, err error) {
	if err := validQueue(queue); err != nil {
		return nil, false, err
	}
	if n < 1 || n > maxClaim {
		return nil, false, fmt.Errorf("%w: claim count %d is outside 1..%d", ErrInvalidOption, n, maxClaim)
	}
	err = q.do(ctx, "compute: claim", func(ctx context.Context) error {
		got, isGated, err := q.claimFast(ctx, queue, n-len(jobs))
		jobs, gated = append(jobs, got...), gated || isGated
		if err != nil || !isGated {
			return err
		}
		got, err = q.claimGated(ctx, queue, n-len(jobs))
		jobs = append(jobs, got...)
		return err
	})
	jobs = q.failUnreadable(ctx, jobs)
	slices.SortFunc(jobs, func(a, b *Job) int {
		if a.Priority != b.Priority {
			return a.Priority - b.Priority
		}
		return a.RunAt.Compare(b.RunAt)
	})
	return jobs, gated, err
}

// failUnreadable fails, for good, the claimed jobs whose rows hold a value
// the library cannot read, and returns the others. The claim has committed,
// so they must be written off now: left in progress, each would wait for
// its lease and then be claimed, and fail to be read, again and again.
func (q *Queue) failUnreadable(ctx context.Context, jobs []*Job) []*Job {
	var bad []Failure
	good := jobs[:0]
	for _, j := range jobs {
		if j.bad != nil {
			bad = append(bad, Failure{Job: j, Err: Permanent(j.bad)})
			continue
		}
		good = append(good, j)
	}
	if len(bad) == 0 {
		return good
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := q.Fail(ctx, bad...); err != nil {
		q.opts.logger.Error("claimed jobs whose rows cannot be read could not be failed; they fail again when their leases expire",
			"jobs", len(bad), "first", bad[0].Err, "err", err)
		return good
	}
	q.opts.logger.Warn("claimed jobs whose rows cannot be read were failed", "jobs", len(bad), "first", bad[0].Err)
	return good
}

// heldJobsSQL lists the in-progress jobs of queue $2 that worker $1 holds,
// through jobs_running (keyed by worker): after a claim cut off at its
// commit, the worker finds what it may have claimed here.
const heldJobsSQL = `
SELECT ` + jobColumns + ` FROM compute.jobs j
WHERE j.status = 'in-progress' AND j.worker = $1 AND j.queue = $2`

// heldJobs runs heldJobsSQL for this Queue's worker id; rows that cannot be
// read are failed (failUnreadable), as at a claim.
func (q *Queue) heldJobs(ctx context.Context, queue string) ([]*Job, error) {
	var jobs []*Job
	err := q.do(ctx, "compute: find held jobs", func(ctx context.Context) error {
		rows, err := q.pool.Query(ctx, heldJobsSQL, q.opts.workerID, queue)
		if err == nil {
			jobs, err = pgx.CollectRows(rows, collectJob)
		}
		return err
	})
	return q.failUnreadable(ctx, jobs), err
}

// claimFast runs claimJobs; gated reports that the queue has rules and
// nothing was claimed.
func (q *Queue) claimFast(ctx context.Context, queue string, n int) (jobs []*Job, gated bool, err error) {
	if n < 1 {
		return nil, false, nil
	}
	jobs, err = queryPinned(ctx, q, claimJobs, []any{queue, n, q.opts.workerID, q.opts.lease.Microseconds(), q.opts.maxConfig},
		func(row pgx.CollectableRow) (*Job, error) {
			if row.RawValues()[1] == nil { // the gate row: no job columns
				gated = true
				return nil, nil
			}
			return scanJob(row, new(bool))
		})
	if gated {
		return nil, true, err
	}
	return jobs, false, err
}

// Completion is one finished job for Complete.
type Completion struct {
	// Job is the job as Claim returned it; its ID, Attempt and Worker
	// identify the claim.
	Job *Job
	// OutputFiles names the files the job produced (same rules as input
	// files).
	OutputFiles []string
}

// completeJobs finishes many jobs in one statement. The join on (job_id,
// attempt, worker) and status fences the write: a holder whose lease ran out
// and whose job was claimed again, or cancelled, matches no row.
const completeJobs = statusChange + `
UPDATE compute.jobs j
SET status = 'complete', finished = now(), last_accessed = now(), lease_expires = NULL,
    output_files = d.outputs::varchar[]
FROM unnest($1::bytea[], $2::integer[], $3::text[], $4::text[]) AS d(job_id, attempt, worker, outputs)
WHERE j.job_id = d.job_id AND j.attempt = d.attempt AND j.worker = d.worker AND j.status || '' = 'in-progress'
RETURNING j.job_id`

// Complete marks claimed jobs complete with their output files, in one
// statement. Jobs the caller no longer holds are left as they are and
// reported in a *LeaseLostError (errors.Is(err, ErrLeaseLost)); the others
// are complete even then. Bad output file names match ErrInvalidFiles and
// nothing is written.
func (q *Queue) Complete(ctx context.Context, done ...Completion) error {
	if len(done) == 0 {
		return nil
	}
	jobs, outputs := make([]*Job, len(done)), make([]string, len(done))
	for i, c := range done {
		if c.Job != nil {
			if err := validFiles(c.OutputFiles, "output files"); err != nil {
				return fmt.Errorf("job %s: %w", c.Job.ID, err)
			}
		}
		jobs[i], outputs[i] = c.Job, arrayLiteral(c.OutputFiles)
	}
	return q.fenced(ctx, "compute: complete", jobs, completeJobs, outputs)
}

// Failure is one failed attempt for Fail.
type Failure struct {
	// Job is the job as Claim returned it.
	Job *Job
	// Err says why the attempt failed; it is kept on the job (at most 16
	// KiB; nil is recorded as "failed"). Wrap it with Permanent to fail
	// the job now, with no further attempt; pass a Snooze error to run the
	// job again later without spending an attempt.
	Err error
	// RetryIn is how long after the database's now() the job may run
	// again when attempts remain; 0 means the default Backoff.
	RetryIn time.Duration
}

// failJobs records failed attempts in one statement, fenced like
// completeJobs. A snoozed job (a Snooze, or a hand-back) goes back to queued
// with its snoozes counted and no error recorded: the attempt counter itself
// never goes down (it is the fence), so the attempts spent are attempt -
// snoozes. A failed attempt goes back to queued at its retry time while
// attempts remain, else (or when permanent) ends failed, and its error is
// appended to the job's errors. A failed job's run_at is kept unless it is
// infinite (plain SQL can write that), so the row stays readable.
const failJobs = statusChange + `
UPDATE compute.jobs j
SET status = CASE WHEN NOT d.snooze AND (d.permanent OR j.attempt - j.snoozes >= j.max_attempts) THEN 'failed' ELSE 'queued' END,
    finished = CASE WHEN NOT d.snooze AND (d.permanent OR j.attempt - j.snoozes >= j.max_attempts) THEN now() END,
    last_accessed = CASE WHEN NOT d.snooze AND (d.permanent OR j.attempt - j.snoozes >= j.max_attempts) THEN now()
                         ELSE j.last_accessed END,
    run_at = CASE WHEN NOT d.snooze AND (d.permanent OR j.attempt - j.snoozes >= j.max_attempts)
                  THEN CASE WHEN isfinite(j.run_at) THEN j.run_at ELSE now() END
                  ELSE now() + d.delay_us * interval '1 microsecond' END,
    snoozes = CASE WHEN d.snooze THEN j.snoozes + 1 ELSE j.snoozes END,
    lease_expires = NULL,
    errors = CASE WHEN d.snooze THEN j.errors ELSE j.errors || jsonb_build_array(jsonb_build_object(
                 'attempt', j.attempt - j.snoozes, 'at', now(), 'error', d.error)) END
FROM unnest($1::bytea[], $2::integer[], $3::text[], $4::text[], $5::boolean[], $6::boolean[], $7::bigint[])
     AS d(job_id, attempt, worker, error, permanent, snooze, delay_us)
WHERE j.job_id = d.job_id AND j.attempt = d.attempt AND j.worker = d.worker AND j.status || '' = 'in-progress'
RETURNING j.job_id`

// Fail records failed (or snoozed) attempts in one statement: each job is
// queued again after its RetryIn (or the default Backoff) while it has
// attempts left, and ends failed otherwise or when its Err is Permanent.
// Lost leases are reported as by Complete.
func (q *Queue) Fail(ctx context.Context, failed ...Failure) error {
	if len(failed) == 0 {
		return nil
	}
	n := len(failed)
	jobs := make([]*Job, n)
	msgs, permanent, snooze, delays := make([]string, n), make([]bool, n), make([]bool, n), make([]int64, n)
	for i, f := range failed {
		if jobs[i] = f.Job; f.Job == nil {
			continue // fenced reports it
		}
		if f.RetryIn < 0 {
			return fmt.Errorf("%w: job %s: RetryIn %s is negative", ErrInvalidJob, f.Job.ID, f.RetryIn)
		}
		msgs[i] = "failed"
		if f.Err != nil {
			msgs[i] = cleanError(f.Err.Error())
		}
		delay := f.RetryIn
		if delay == 0 {
			delay = Backoff(f.Job.Spent())
		}
		var s *snoozeError
		if errors.As(f.Err, &s) {
			snooze[i], delay = true, s.d
		}
		permanent[i] = errors.Is(f.Err, ErrPermanent)
		delays[i] = delay.Microseconds()
	}
	return q.fenced(ctx, "compute: fail", jobs, failJobs, msgs, permanent, snooze, delays)
}

// heartbeatJobs renews the leases of many jobs in one statement, fenced like
// completeJobs, so a holder learns in the same round trip which jobs it lost.
const heartbeatJobs = noStatusChange + `
UPDATE compute.jobs j
SET lease_expires = now() + $4 * interval '1 microsecond'
FROM unnest($1::bytea[], $2::integer[], $3::text[]) AS d(job_id, attempt, worker)
WHERE j.job_id = d.job_id AND j.attempt = d.attempt AND j.worker = d.worker AND j.status || '' = 'in-progress'
RETURNING j.job_id`

// Heartbeat extends the leases of jobs the caller holds by the WithLease
// duration from the database's now(). Jobs it no longer holds are reported
// in a *LeaseLostError: stop working on them.
func (q *Queue) Heartbeat(ctx context.Context, jobs ...*Job) error {
	if len(jobs) == 0 {
		return nil
	}
	return q.fenced(ctx, "compute: heartbeat", jobs, heartbeatJobs, q.opts.lease.Microseconds())
}

// pinJoins precedes each fenced statement and each claim in its pipeline or
// transaction (see queryPinned, fenced and claimUpdate). The settings are local
// (set_config's third argument): they end with the pipeline's implicit
// transaction, and never outlive the call on the pooled connection. JIT is
// off too: the disabled plan types' penalty costs can lift a claim's
// estimate over jit_above_cost, and a keyed claim then spent about 30 ms
// compiling itself (seen with a rate-limit window of 100,000 starts).
const pinJoins = `SELECT set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true), set_config('enable_material', 'off', true), set_config('enable_seqscan', 'off', true), set_config('jit', 'off', true)`

// pinnedBatch is the pipeline queryPinned and the gated claim's lock send:
// pinJoins, then the statement.
func pinnedBatch(sql string, args ...any) *pgx.Batch {
	batch := &pgx.Batch{}
	batch.Queue(pinJoins)
	batch.Queue(sql, args...)
	return batch
}

// queryPinned runs sql after pinJoins in one pipeline (one round trip) and
// collects its rows with scan.
func queryPinned[T any](ctx context.Context, q *Queue, sql string, args []any, scan pgx.RowToFunc[T]) ([]T, error) {
	results := q.pool.SendBatch(ctx, pinnedBatch(sql, args...))
	_, err := results.Exec()
	var out []T
	if err == nil {
		var rows pgx.Rows
		if rows, err = results.Query(); err == nil {
			out, err = pgx.CollectRows(rows, scan)
		}
	}
	return out, errors.Join(err, results.Close())
}

// fenced runs one of the fenced batch statements: the claim of each job
// (id, attempt, worker) goes in as its first three array parameters, extra
// as the rest, and the ids the statement did not return come back as a
// *LeaseLostError.
//
// Each job must be found by its primary key, one probe per job. Left to
// itself, the planner prefers reading every in-progress row of the cluster
// through jobs_running (its cost model takes each probe for a disk read),
// and then joins them by hash or, worse, by a merge on worker that compares
// every job of the batch with every other of this worker: with 20,000 jobs
// in progress elsewhere, completing 1,000 took 100-220 ms instead of 10.
// Two things rule that out, whatever the plan cache or the statistics say.
// The statements append an empty string to status before comparing it,
// which the planner cannot match to jobs_running's predicate, so that index
// is not a way in (with fresh statistics that count no job in progress, a
// nested loop over it compared all 1,000 jobs with each other: 240 ms). And
// queryPinned sends each after pinJoins in one pipeline, which turns off
// hash and merge joins, materializing and sequential scans until the
// pipeline's implicit transaction ends. What is left is a nested loop over
// the arrays probing the primary key. TestFencedStatementsProbeThePrimaryKey
// checks the plans.
func (q *Queue) fenced(ctx context.Context, what string, jobs []*Job, sql string, extra ...any) error {
	n := len(jobs)
	want, attempts, workers := make([][]byte, n), make([]int32, n), make([]string, n)
	seen := make(map[string]bool, n)
	for i, j := range jobs {
		if j == nil {
			return fmt.Errorf("%s: %w: entry %d has no job", what, ErrInvalidJob, i)
		}
		if seen[string(j.ID[:])] {
			return fmt.Errorf("%w: job %s appears twice in one call; pass each job once", ErrInvalidJob, j.ID)
		}
		seen[string(j.ID[:])] = true
		want[i], attempts[i], workers[i] = j.ID[:], int32(j.Attempt), j.Worker
	}
	var got [][]byte
	err := q.do(ctx, what, func(ctx context.Context) error {
		var err error
		got, err = queryPinned(ctx, q, sql, append([]any{want, attempts, workers}, extra...), pgx.RowTo[[]byte])
		return err
	})
	if err != nil {
		return err
	}
	if len(got) == len(want) {
		return nil
	}
	for _, id := range got {
		delete(seen, string(id))
	}
	lost := &LeaseLostError{}
	for _, id := range want {
		if seen[string(id)] {
			lost.IDs = append(lost.IDs, JobID(id))
		}
	}
	return lost
}

// Backoff is the default wait before attempt+1 after a failed attempt:
// exponential from 1 s (1, 2, 4, ... s), capped at 1 hour, with up to 25%
// random jitter so failures of many jobs at once do not retry in lockstep.
func Backoff(attempt int) time.Duration {
	if attempt < 1 {
		attempt = 1
	}
	d := time.Hour
	if attempt <= 12 {
		d = min(time.Duration(1<<(attempt-1))*time.Second, time.Hour)
	}
	return d + time.Duration(rand.Int64N(int64(d/4)+1))
}

// requeueStale hands back jobs whose lease expired by the database clock, in
// batches: back to queued while attempts remain, else failed. SKIP LOCKED
// lets many processes run it at once without waiting on each other, and the
// partial index jobs_running (in-progress rows only) makes it cheap. Jobs that a
// v1 program marked in-progress without a lease (lease_expires NULL) are left
// to that program.
const requeueStale = statusChange + `
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
	return q.batches(ctx, "compute: requeue stale", requeueStale)
}

// expireJobs marks finished jobs that nobody read within the retention
// period as expired, oldest first, in batches (see staleBatch).
const expireJobs = statusChange + `
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
	return q.batches(ctx, "compute: expire", expireJobs, retention.Microseconds())
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
