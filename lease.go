package compute

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// Completion is one finished job for Complete.
type Completion struct {
	// Job is the job as Claim returned it; its ID, Attempt and Worker
	// identify the claim.
	Job *Job
	// OutputFiles names the files the job produced (same rules as input
	// files).
	OutputFiles []string
}

// fenceClause is the fence of every fenced write (see fenced): a row is the
// caller's only while its (job_id, attempt, worker) match the caller's
// claim d and it is in progress.
const fenceClause = `WHERE j.job_id = d.job_id AND j.attempt = d.attempt AND j.worker = d.worker AND j.status || '' = 'in-progress'`

// completeJobsSQL finishes many jobs in one statement. The join on (job_id,
// attempt, worker) and status fences the write: a holder whose lease ran out
// and whose job was claimed again, or cancelled, matches no row.
const completeJobsSQL = statusChange + `
UPDATE compute.jobs j
SET status = 'complete', finished = now(), last_accessed = now(), lease_expires = NULL,
    output_files = d.outputs::varchar[]
FROM unnest($1::bytea[], $2::integer[], $3::text[], $4::text[]) AS d(job_id, attempt, worker, outputs)
` + fenceClause + `
RETURNING j.job_id`

// Complete marks claimed jobs complete with their output files, in one
// statement. Jobs the caller no longer holds are left as they are and
// reported in a *LeaseLostError (errors.Is(err, [ErrLeaseLost])); the others
// are complete even then. Bad output file names match [ErrInvalidFiles] and
// nothing is written.
func (q *Queue) Complete(ctx context.Context, done ...Completion) error {
	if len(done) == 0 {
		return nil
	}
	done = inIDOrder(done, func(c Completion) *Job { return c.Job })
	jobs, outputs := make([]*Job, len(done)), make([]string, len(done))
	for i, c := range done {
		if c.Job != nil {
			if err := validFiles(c.OutputFiles, "output files"); err != nil {
				return fmt.Errorf("job %s: %w", c.Job.ID, err)
			}
		}
		jobs[i], outputs[i] = c.Job, arrayLiteral(c.OutputFiles)
	}
	return q.fenced(ctx, "compute: complete", jobs, completeJobsSQL, outputs)
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

// failJobsSQL records failed attempts in one statement, fenced like
// completeJobsSQL. A snoozed job (a Snooze, or a hand-back) goes back to queued
// with its snoozes counted and no error recorded: the attempt counter itself
// never goes down (it is the fence), so the attempts spent are attempt -
// snoozes. A failed attempt goes back to queued at its retry time while
// attempts remain, else (or when permanent) ends failed, and its error is
// appended to the job's errors. A failed job's run_at is kept unless it is
// infinite (plain SQL can write that), so the row stays readable.
const failJobsSQL = statusChange + `
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
` + fenceClause + `
RETURNING j.job_id`

// Fail records failed (or snoozed) attempts in one statement: each job is
// queued again after its RetryIn (or the default Backoff) while it has
// attempts left, and ends failed otherwise or when its Err is Permanent.
// Lost leases are reported as by Complete.
func (q *Queue) Fail(ctx context.Context, failed ...Failure) error {
	if len(failed) == 0 {
		return nil
	}
	failed = inIDOrder(failed, func(f Failure) *Job { return f.Job })
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
	return q.fenced(ctx, "compute: fail", jobs, failJobsSQL, msgs, permanent, snooze, delays)
}

// heartbeatJobsSQL renews the leases of many jobs in one statement, fenced like
// completeJobsSQL, so a holder learns in the same round trip which jobs it lost.
const heartbeatJobsSQL = noStatusChange + `
UPDATE compute.jobs j
SET lease_expires = now() + $4 * interval '1 microsecond'
FROM unnest($1::bytea[], $2::integer[], $3::text[]) AS d(job_id, attempt, worker)
` + fenceClause + `
RETURNING j.job_id`

// Heartbeat extends the leases of jobs the caller holds by the [WithLease]
// duration from the database's now(). Jobs it no longer holds are reported
// in a *LeaseLostError: stop working on them.
func (q *Queue) Heartbeat(ctx context.Context, jobs ...*Job) error {
	if len(jobs) == 0 {
		return nil
	}
	jobs = inIDOrder(jobs, func(j *Job) *Job { return j })
	return q.fenced(ctx, "compute: heartbeat", jobs, heartbeatJobsSQL, q.opts.lease.Microseconds())
}

// inIDOrder returns a copy of batch sorted by its jobs' ids, for a fenced
// statement. Each fenced statement updates, and so locks, its rows in the
// order of its arrays (a nested loop over them, see fenced), so two of them
// that overlap, such as a worker's lease renewal and a completion of jobs
// that finished meanwhile, wait for each other in one direction only and
// never deadlock. A batch with a nil job is returned as it is, for fenced
// to report by its place.
func inIDOrder[T any](batch []T, job func(T) *Job) []T {
	if slices.ContainsFunc(batch, func(e T) bool { return job(e) == nil }) {
		return batch
	}
	sorted := slices.Clone(batch)
	slices.SortFunc(sorted, func(a, b T) int { return bytes.Compare(job(a).ID[:], job(b).ID[:]) })
	return sorted
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
// queryPinned sends each after pinJoinsSQL in one pipeline, which turns off
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
