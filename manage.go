package compute

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// jobFields are the columns of a job that every statement returning jobs
// returns first, in the order scanJob reads; the config comes last, whole
// (jobColumns) or, in a claim, only up to the worker's size limit
// (claimColumns). octet_length reads only a value's header, even when it
// is stored out of line, so a claim that leaves out a config too large
// still tells how large it was. Columns are qualified: statements alias
// compute.jobs as j.
const jobFields = `j.job_id, j.status, j.queue, j.input_files, j.created, j.last_accessed,
	j.grabbed, j.finished, j.output_files, j.priority, j.run_at, j.attempt, j.max_attempts, j.worker,
	j.lease_expires, j.errors, j.unique_key, j.partition_key, j.snoozes, octet_length(j.config)`

// jobColumns is jobFields and the whole config.
const jobColumns = jobFields + `, j.config`

// scanJob reads one row of jobColumns (or claimColumns), after the destinations in before
// for columns that precede them. Values the library cannot take (a NULL
// file name, an infinite time, a config left out for its size) do not
// fail the scan: the job comes back with its bad field set, so that one
// such row, written by plain SQL, cannot fail the other rows of a claim.
// Callers that hand out jobs check it (see unreadable).
func scanJob(row pgx.Row, before ...any) (*Job, error) {
	var (
		j                               Job
		id                              []byte
		config, worker, unique, part    pgtype.Text
		created, lastAccessed, runAt    pgtype.Timestamptz
		grabbed, finished, leaseExpires pgtype.Timestamptz
		inputs, outputs                 []pgtype.Text
		errs                            []byte
		size                            pgtype.Int4
	)
	// Nullable columns scan into pgtype values, not pointers: a pointer per
	// column is an allocation per column of every claimed job.
	err := row.Scan(append(before, &id, &j.Status, &j.Queue, &inputs, &created, &lastAccessed,
		&grabbed, &finished, &outputs, &j.Priority, &runAt, &j.Attempt, &j.MaxAttempts,
		&worker, &leaseExpires, &errs, &unique, &part, &j.Snoozes, &size, &config)...)
	if err != nil {
		return nil, err
	}
	copy(j.ID[:], id)
	j.Config, j.Worker = config.String, worker.String
	j.Unique.Key, j.PartitionKey = unique.String, part.String
	j.Errors = attemptErrors(errs)
	bad := func(column, problem string) {
		if j.bad == nil {
			j.bad = &BadRowError{ID: j.ID, Column: column, Problem: problem}
		}
	}
	if !config.Valid && size.Valid {
		bad("config", fmt.Sprintf("it is %d bytes, more than this Queue takes (WithMaxConfigSize)", size.Int32))
	}
	var problem string
	if j.InputFiles, problem = fileNames(inputs); problem != "" {
		bad("input_files", problem)
	}
	if j.OutputFiles, problem = fileNames(outputs); problem != "" {
		bad("output_files", problem)
	}
	for _, t := range []struct {
		column string
		from   pgtype.Timestamptz
		to     *time.Time
	}{
		{"created", created, &j.Created}, {"last_accessed", lastAccessed, &j.LastAccessed}, {"run_at", runAt, &j.RunAt},
		{"grabbed", grabbed, &j.Grabbed}, {"finished", finished, &j.Finished}, {"lease_expires", leaseExpires, &j.LeaseExpires},
	} {
		if t.from.InfinityModifier != pgtype.Finite {
			bad(t.column, "it is "+t.from.InfinityModifier.String()+", which no job time can be")
			continue
		}
		*t.to = t.from.Time
	}
	return &j, nil
}

// fileNames turns a file array into names; a NULL element is a problem
// (no file has no name), reported with its position.
func fileNames(in []pgtype.Text) ([]string, string) {
	if in == nil {
		return nil, ""
	}
	out := make([]string, len(in))
	for i, f := range in {
		if !f.Valid {
			return out, fmt.Sprintf("element %d is NULL; every file needs a name", i+1)
		}
		out[i] = f.String
	}
	return out, ""
}

// attemptErrors decodes the errors column. It is diagnostics, so whatever
// plain SQL wrote there is kept readable rather than refused: an element
// that is not an attempt error, or a value that is not an array, becomes
// one entry holding its JSON text.
func attemptErrors(raw []byte) []AttemptError {
	// Most jobs have no errors: '[]' needs no JSON decoder.
	if string(raw) == "[]" {
		return []AttemptError{}
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(raw, &elems); err != nil {
		return []AttemptError{{Error: "unreadable errors column: " + string(raw)}}
	}
	out := make([]AttemptError, len(elems))
	for i, e := range elems {
		if err := json.Unmarshal(e, &out[i]); err != nil {
			out[i] = AttemptError{Error: "unreadable entry: " + string(e)}
		}
	}
	return out
}

// collectJob is scanJob in the shape pgx.CollectRows takes.
func collectJob(row pgx.CollectableRow) (*Job, error) { return scanJob(row) }

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// getJob reads a job and, when it is finished, touches last_accessed in the
// same statement: retention counts from the last read. A queued or running
// job is only read. Writing it would lock the row, and a claim that meets a
// locked (or just rewritten) row skips it: a client polling Get on its
// queued job could keep it from the worker that was woken for it, until
// that worker's next poll. The second branch returns the row as the
// statement's snapshot saw it when the update did not take it.
const getJob = noStatusChange + `
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
// change. It returns ErrNotFound when no job has that id, and a *BadRowError
// when the row holds a value the library cannot read.
func (q *Queue) Get(ctx context.Context, id JobID) (*Job, error) {
	var job *Job
	err := q.do(ctx, "compute: get job", func(ctx context.Context) (err error) {
		job, err = scanJob(q.pool.QueryRow(ctx, getJob, id[:]))
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
// continue after its ID. Bad options match ErrInvalid. A page of
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
		if sql = listByStatus[opts.Status]; sql == "" {
			return nil, fmt.Errorf("%w: status %q is not one of queued, in-progress, complete, failed, expired", ErrInvalidJob, opts.Status)
		}
	}
	limit := opts.Limit
	switch {
	case limit == 0:
		limit = 100
	case limit < 0 || limit > 10000:
		return nil, fmt.Errorf("%w: list limit %d is outside 1..10000", ErrInvalidOption, limit)
	}
	var jobs []*Job
	err := q.do(ctx, "compute: list jobs", func(ctx context.Context) error {
		var after []byte // nil: from the start, even a job whose id is all zeros
		if opts.After != (JobID{}) {
			after = opts.After[:]
		}
		rows, err := q.pool.Query(ctx, sql, opts.Queue, after, limit)
		if err != nil {
			return err
		}
		jobs, err = pgx.CollectRows(rows, collectJob)
		return err
	})
	for i, j := range jobs {
		if j.bad != nil {
			return jobs[:i], j.bad
		}
	}
	return jobs, err
}

// cancelJob fails a live job with a reason. The sub-select locks the row and
// keeps its old status, so the caller learns whether a worker was running it;
// a running job's holder finds at its next heartbeat that the job is no
// longer its own, and pg_notify tells it at once.
const cancelJob = statusChange + `
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
// Cancel returns ErrNotFound for an unknown id and ErrWrongStatus for a job
// that already finished.
func (q *Queue) Cancel(ctx context.Context, id JobID, reason string) error {
	if reason == "" {
		reason = "cancelled by request"
	}
	var old *string
	err := q.do(ctx, "compute: cancel job", func(ctx context.Context) error {
		var notified int64
		return q.pool.QueryRow(ctx, cancelJob, id[:], cleanError(reason)).Scan(&old, &notified)
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

// retryJob queues a failed job again now. The attempt counter is never
// lowered (it fences stale holders), so the job gets one more attempt by
// raising max_attempts when it was spent.
const retryJob = statusChange + `
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
// attempt. It returns ErrNotFound for an unknown id and ErrWrongStatus for a
// job that is not failed.
func (q *Queue) Retry(ctx context.Context, id JobID) error {
	var old *string
	err := q.do(ctx, "compute: retry job", func(ctx context.Context) error {
		var notified int64
		return q.pool.QueryRow(ctx, retryJob, id[:]).Scan(&old, &notified)
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

// countJobs counts jobs per queue and status in one pass over the table.
const countJobs = `SELECT queue, status, count(*) FROM compute.jobs GROUP BY queue, status`

// Counts returns how many jobs each queue holds in each status. It reads
// the whole table: call it for dashboards, not on a hot path.
func (q *Queue) Counts(ctx context.Context) (map[string]map[Status]int64, error) {
	counts := make(map[string]map[Status]int64)
	err := q.do(ctx, "compute: count jobs", func(ctx context.Context) error {
		clear(counts)
		rows, err := q.pool.Query(ctx, countJobs)
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
