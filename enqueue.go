package compute

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// insertJobs adds a batch of jobs in one statement: each column is an array
// parameter and unnest turns them into rows, so 10,000 jobs cost one round
// trip and the statement-level trigger sends one notification per queue.
// Input files arrive as one array literal per job (see arrayLiteral). ON
// CONFLICT DO NOTHING makes a second submit of a content-id job a no-op,
// also when two submitters race. run_at is the caller's time when given, else
// the database's now() plus the delay.
const insertJobs = `
INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed,
                          priority, run_at, max_attempts)
SELECT d.job_id, 'queued', d.queue, d.config, d.input_files::varchar[], now(), now(),
       d.priority, coalesce(d.run_at, now() + d.delay_us * interval '1 microsecond'), d.max_attempts
FROM unnest($1::bytea[], $2::text[], $3::text[], $4::text[], $5::smallint[], $6::timestamptz[],
            $7::bigint[], $8::integer[])
     AS d(job_id, queue, config, input_files, priority, run_at, delay_us, max_attempts)
ON CONFLICT (job_id) DO NOTHING`

// maxBatchBytes caps the configs sent in one statement; a larger batch is
// split into several statements inside one transaction.
const maxBatchBytes = 64 << 20

// execer is what the enqueue path needs from a pool or a caller's transaction.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Enqueue submits one job and returns its id. With job.ContentID set and an
// identical job already present, it returns that job's id and creates
// nothing. Errors: bad input matches ErrInvalid (nothing is written); a
// database that cannot be reached matches ErrUnavailable. If ctx ends or the
// connection drops while the commit is in flight, the job may or may not
// exist: enqueue with ContentID set when a retry must not duplicate it.
func (q *Queue) Enqueue(ctx context.Context, job Job) (JobID, error) {
	ids, err := q.EnqueueMany(ctx, []Job{job})
	if err != nil {
		return JobID{}, err
	}
	return ids[0], nil
}

// EnqueueMany submits jobs in one round trip (batches above 64 MiB of config
// take a few, in one transaction) and returns their ids in order. Either all
// jobs are submitted or none: one invalid job fails the call with an error
// naming its index. See Enqueue for content ids and errors.
func (q *Queue) EnqueueMany(ctx context.Context, jobs []Job) ([]JobID, error) {
	batches, ids, err := q.prepare(jobs)
	if err != nil || len(jobs) == 0 {
		return ids, err
	}
	err = q.do(ctx, "compute: enqueue", func(ctx context.Context) error {
		if len(batches) == 1 {
			_, err := q.pool.Exec(ctx, insertJobs, batches[0]...)
			return err
		}
		return pgx.BeginFunc(ctx, q.pool, func(tx pgx.Tx) error {
			return execBatches(ctx, tx, batches)
		})
	})
	if err != nil {
		return nil, redactError(err, q.password)
	}
	return ids, nil
}

// EnqueueTx submits a job inside the caller's transaction: the job exists
// only if tx commits, and no worker sees it before then. Errors from the
// database leave tx aborted, as any failed statement does; the caller rolls
// back. See Enqueue for content ids.
func (q *Queue) EnqueueTx(ctx context.Context, tx pgx.Tx, job Job) (JobID, error) {
	ids, err := q.EnqueueManyTx(ctx, tx, []Job{job})
	if err != nil {
		return JobID{}, err
	}
	return ids[0], nil
}

// EnqueueManyTx submits jobs inside the caller's transaction, in one round
// trip; see EnqueueTx and EnqueueMany.
func (q *Queue) EnqueueManyTx(ctx context.Context, tx pgx.Tx, jobs []Job) ([]JobID, error) {
	if tx == nil {
		return nil, fmt.Errorf("%w: EnqueueTx needs a transaction; use Enqueue without one", ErrInvalidOption)
	}
	if q.closed.Load() {
		return nil, fmt.Errorf("compute: enqueue: %w", ErrClosed)
	}
	batches, ids, err := q.prepare(jobs)
	if err != nil || len(jobs) == 0 {
		return ids, err
	}
	// Serialization failures are not retried here: they abort the caller's
	// transaction, which only the caller can retry.
	if err := execBatches(ctx, tx, batches); err != nil {
		return nil, redactError(translate("compute: enqueue", err), q.password)
	}
	return ids, nil
}

func execBatches(ctx context.Context, db execer, batches [][]any) error {
	for _, args := range batches {
		if _, err := db.Exec(ctx, insertJobs, args...); err != nil {
			return err
		}
	}
	return nil
}

// prepare validates every job, assigns ids and builds the column arrays of
// insertJobs, split so no batch carries more than maxBatchBytes of config.
func (q *Queue) prepare(jobs []Job) (batches [][]any, ids []JobID, err error) {
	ids = make([]JobID, len(jobs))
	var (
		jobIDs     [][]byte
		queues     []string
		configs    []string
		files      []string
		priorities []int16
		runAts     []*time.Time
		delays     []int64
		maxes      []int32
		size       int
	)
	flush := func() {
		if len(jobIDs) > 0 {
			batches = append(batches, []any{jobIDs, queues, configs, files, priorities, runAts, delays, maxes})
		}
		jobIDs, queues, configs, files, priorities, runAts, delays, maxes = nil, nil, nil, nil, nil, nil, nil, nil
		size = 0
	}
	for i := range jobs {
		j := &jobs[i]
		if err := validJob(j, q.opts.maxConfig); err != nil {
			if len(jobs) > 1 {
				return nil, nil, fmt.Errorf("job %d: %w", i, err)
			}
			return nil, nil, err
		}
		if j.ContentID {
			ids[i] = contentJobID(j.Queue, j.Config, j.InputFiles)
		} else if ids[i], err = newJobID(); err != nil {
			return nil, nil, err
		}
		if size+len(j.Config) > maxBatchBytes {
			flush()
		}
		size += len(j.Config)
		jobIDs = append(jobIDs, ids[i][:])
		queues = append(queues, j.Queue)
		configs = append(configs, j.Config)
		files = append(files, arrayLiteral(j.InputFiles))
		priorities = append(priorities, int16(j.Priority))
		var runAt *time.Time
		if !j.RunAt.IsZero() {
			runAt = &j.RunAt
		}
		runAts = append(runAts, runAt)
		delays = append(delays, j.Delay.Microseconds())
		maxAttempts := j.MaxAttempts
		if maxAttempts == 0 {
			maxAttempts = DefaultMaxAttempts
		}
		maxes = append(maxes, int32(maxAttempts))
	}
	flush()
	return batches, ids, nil
}
