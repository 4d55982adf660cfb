package compute

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// insertJobsSQL adds a batch of jobs in one statement: each column is an array
// parameter and unnest turns them into rows, so 10,000 jobs cost one round
// trip and the statement-level trigger sends at most one notification per
// queue.
// Input files arrive as one array literal per job (see arrayLiteral). ON
// CONFLICT DO NOTHING makes a second submit of a content-id job a no-op,
// also when two submitters race. created, last_accessed and the default
// run_at (plus the delay) are statement_timestamp(), not now(): inside a
// caller's long transaction now() is when it began, and a job enqueued late
// in it would look old to UniqueWithinWindow at its commit (and its delay
// would count from the transaction's start). run_at is the caller's time
// when given. Empty keys are stored as NULL, which
// keeps those jobs out of the partial index jobs_unique, and so is an empty
// trace context ($12). $11 'on' tells the
// insert trigger to skip its notification (see wakeups); the uncorrelated
// sub-select runs once, before the trigger, which reads and clears it.
const insertJobsSQL = insertRows + `
FROM unnest($1::bytea[], $2::text[], $3::text[], $4::text[], $5::smallint[], $6::timestamptz[],
            $7::bigint[], $8::integer[], $9::text[], $10::text[], $12::text[])
     AS ` + insertedRow + `
WHERE (SELECT set_config('compute.skip_notify', $11, true)) IS NOT NULL
ON CONFLICT (job_id) DO NOTHING`

// insertJobSQL is insertJobsSQL for one job, with the same parameters as scalars
// in a one-row sub-select, which the planner pulls up into the insert.
// One-job enqueues (a web request's) are the commonest, and a one-row
// statement needs no unnest: an autocommit enqueue took 326 µs instead of
// 377 (medians of six alternating sets of 4,000, harness server).
const insertJobSQL = insertRows + `
FROM (SELECT $1::bytea, $2::text, $3::text, $4::text, $5::smallint, $6::timestamptz,
             $7::bigint, $8::integer, $9::text, $10::text, $12::text)
     AS ` + insertedRow + `
WHERE (SELECT set_config('compute.skip_notify', $11, true)) IS NOT NULL
ON CONFLICT (job_id) DO NOTHING`

// insertRows is what insertJobsSQL and insertJobSQL insert, from the rows of
// insertedRow, one per job: a new column is added here, in insertedRow, in
// both statements' parameters and in batch.columns.
const insertRows = `
INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed,
                          priority, run_at, max_attempts, unique_key, partition_key, trace_context)
SELECT d.job_id, 'queued', d.queue, d.config, d.input_files::varchar[], statement_timestamp(), statement_timestamp(),
       d.priority, coalesce(d.run_at, statement_timestamp() + d.delay_us * interval '1 microsecond'), d.max_attempts,
       nullif(d.unique_key, ''), nullif(d.partition_key, ''), nullif(d.trace_context, '')::jsonb`

// insertedRow names the columns of one job's parameters, in parameter order
// ($11 is not a column: the trace context is $12).
const insertedRow = `d(job_id, queue, config, input_files, priority, run_at, delay_us, max_attempts, unique_key, partition_key, trace_context)`

// returningID makes an insert return the ids it created, for batches with
// content ids: the rest already existed.
const returningID = ` RETURNING job_id`

// lockUniqueKeysSQL serializes submitters of the same unique keys until their
// transactions end. It locks buckets of keys, not keys: each (queue, key)
// hashes into one of uniqueLockBuckets buckets, so any two submitters of a
// key take the same lock, and a transaction holds at most that many
// advisory locks whatever its batch size or number of submissions. One
// lock per key filled PostgreSQL's shared lock table (64 locks per
// connection by default, shared by the whole cluster) beyond about 10,000
// keys, failing the batch and, while it was open, other sessions of every
// database. The buckets go in sorted order, so two batches cannot
// deadlock. The lookup that follows runs as a new statement and so sees
// every job a previous holder committed. That holds only at READ
// COMMITTED, which the statement reports so the caller can refuse other
// levels.
const lockUniqueKeysSQL = `
SELECT count(pg_advisory_xact_lock($1, s.b)), current_setting('transaction_isolation')
FROM (SELECT DISTINCT hashtext(d.queue || '/' || d.key) & ($4::int - 1) AS b
      FROM unnest($2::text[], $3::text[]) AS d(queue, key) ORDER BY 1) s`

// lockClassUnique is the first key of the advisory locks on unique keys
// ("comb"); the second is the key's bucket. It is not the class of the
// former per-key locks ("comu"), so the two never collide.
const lockClassUnique = 0x636f6d62

// uniqueLockBuckets is how many buckets unique keys hash into, a power of
// two: at most this many advisory locks per transaction, and two unrelated
// keys wait for each other with a chance of one in this many.
const uniqueLockBuckets = 1024

// findDuplicatesSQL returns, for each unique job of a batch (by its 1-based
// position), the newest earlier job of its queue with the same key within
// its scope. One branch per kind of scope, each gated on d.scope, so that
// each can use its index: the active and queued scopes read only the key's
// live jobs through jobs_unique_live, and the window scope reads the key's
// jobs created within the window through jobs_unique (created is in both
// indexes, newest first). A single filter over jobs_unique read the key's
// whole history. The window ends at this statement's start, not at the
// transaction's, as created is the enqueue statement's (see insertJobsSQL).
const findDuplicatesSQL = `
SELECT d.i, e.job_id
FROM unnest($1::text[], $2::text[], $3::smallint[], $4::bigint[]) WITH ORDINALITY AS d(queue, key, scope, window_us, i)
CROSS JOIN LATERAL (
    (SELECT j.job_id FROM compute.jobs j
     WHERE d.scope < 2 AND j.queue = d.queue AND j.unique_key = d.key
       AND j.status IN ('queued', 'in-progress') AND (d.scope = 0 OR j.status = 'queued')
     ORDER BY j.created DESC
     LIMIT 1)
    UNION ALL
    (SELECT j.job_id FROM compute.jobs j
     WHERE d.scope = 2 AND j.queue = d.queue AND j.unique_key = d.key
       AND j.created > statement_timestamp() - d.window_us * interval '1 microsecond'
     ORDER BY j.created DESC
     LIMIT 1)) e`

// maxBatchBytes caps the configs sent in one statement; a larger batch is
// split into several statements inside one transaction.
const maxBatchBytes = 64 << 20

// db is what the enqueue path needs from a pool or a caller's transaction.
type db interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Enqueued is what Submit reports for each job.
type Enqueued struct {
	// ID is the new job's id, or the existing job's when Duplicate.
	ID JobID
	// Duplicate is true when no job was created: a job with the same
	// content id, or the same unique key within its scope, already
	// existed (or came earlier in the same batch).
	Duplicate bool
}

// Enqueue submits one job and returns its id. With job.ContentID or
// job.Unique set and a matching job already present, it returns that job's
// id and creates nothing (use Submit to learn which happened). [Errors]: bad
// input matches [ErrInvalid] (nothing is written); a database that cannot be
// reached matches [ErrUnavailable]. If ctx ends or the connection drops while
// the commit is in flight, the job may or may not exist: enqueue with
// ContentID or a unique key when a retry must not duplicate it.
func (q *Queue) Enqueue(ctx context.Context, job Job) (JobID, error) {
	res, err := q.Submit(ctx, job)
	if err != nil {
		return JobID{}, err
	}
	return res[0].ID, nil
}

// EnqueueMany submits jobs in one round trip (batches above 64 MiB of config
// take a few, in one transaction) and returns their ids in order. Either all
// jobs are submitted or none: one invalid job fails the call with an error
// naming its index. See Enqueue for duplicates and errors.
func (q *Queue) EnqueueMany(ctx context.Context, jobs []Job) ([]JobID, error) {
	return ids(q.Submit(ctx, jobs...))
}

// Submit is EnqueueMany that also reports, per job, whether it was a
// duplicate of an existing job (content id or unique key) and so created
// nothing. Batches with unique keys take one transaction of three short
// statements; others take one statement.
func (q *Queue) Submit(ctx context.Context, jobs ...Job) ([]Enqueued, error) {
	b, err := q.prepare(jobs)
	if err != nil {
		return nil, err
	}
	if len(jobs) == 0 {
		return []Enqueued{}, nil
	}
	queues := b.queues()
	b.silent = q.wakeups.silence(queues)
	var end func(error)
	b.trace, end = q.opts.observer.traceEnqueue(ctx, jobs)
	start := time.Now()
	err = q.do(ctx, "compute: enqueue", func(ctx context.Context) error {
		b.reset()
		if len(b.batches) == 1 && !b.unique {
			return b.insert(ctx, q.pool)
		}
		return q.readCommitted(ctx, func(tx pgx.Tx) error { return b.write(ctx, tx) })
	})
	q.opts.observer.enqueued(len(jobs), time.Since(start), err, end)
	if b.silent {
		q.wakeups.owe(queues, false)
	}
	if err != nil {
		return nil, redactError(err, q.password)
	}
	return b.results, nil
}

// EnqueueTx submits a job inside the caller's transaction: the job exists
// only if tx commits, and no worker sees it before then. [Errors] from the
// database leave tx aborted, as any failed statement does; the caller rolls
// back. Unique jobs need tx at READ COMMITTED (the default), and hold a lock
// on their keys until tx ends: an advisory lock per bucket of keys, at most
// 1,024 in all, which also holds up submitters of other keys in the same
// buckets. See Enqueue for duplicates. Workers are
// woken when tx commits, or, when the enqueue falls in its queue's
// notification cooldown ([WithNotifyCooldown]), by a notification at the
// period's end and one more 100 ms later; a tx that stays open longer than
// that leaves its job to the workers' next poll unless other enqueues of
// the queue wake them first.
func (q *Queue) EnqueueTx(ctx context.Context, tx pgx.Tx, job Job) (JobID, error) {
	res, err := q.SubmitTx(ctx, tx, job)
	if err != nil {
		return JobID{}, err
	}
	return res[0].ID, nil
}

// EnqueueManyTx submits jobs inside the caller's transaction, in one round
// trip; see EnqueueTx and EnqueueMany.
func (q *Queue) EnqueueManyTx(ctx context.Context, tx pgx.Tx, jobs []Job) ([]JobID, error) {
	return ids(q.SubmitTx(ctx, tx, jobs...))
}

// SubmitTx is EnqueueManyTx that reports duplicates, as Submit does.
func (q *Queue) SubmitTx(ctx context.Context, tx pgx.Tx, jobs ...Job) ([]Enqueued, error) {
	if tx == nil {
		return nil, fmt.Errorf("%w: EnqueueTx needs a transaction; use Enqueue without one", ErrInvalidOption)
	}
	if q.closed.Load() {
		return nil, fmt.Errorf("compute: enqueue: %w", ErrClosed)
	}
	b, err := q.prepare(jobs)
	if err != nil {
		return nil, err
	}
	if len(jobs) == 0 {
		return []Enqueued{}, nil
	}
	// Serialization failures are not retried here: they abort the caller's
	// transaction, which only the caller can retry.
	queues := b.queues()
	b.silent = q.wakeups.silence(queues)
	var end func(error)
	b.trace, end = q.opts.observer.traceEnqueue(ctx, jobs)
	start := time.Now()
	err = b.write(ctx, tx)
	q.opts.observer.enqueued(len(jobs), time.Since(start), err, end)
	if b.silent {
		q.wakeups.owe(queues, true)
	}
	if err != nil {
		return nil, redactError(translate("compute: enqueue", err), q.password)
	}
	return b.results, nil
}

func ids(res []Enqueued, err error) ([]JobID, error) {
	if err != nil {
		return nil, err
	}
	out := make([]JobID, len(res))
	for i, r := range res {
		out[i] = r.ID
	}
	return out, nil
}

// submission is a validated batch of jobs to enqueue: the jobs with their ids, and what the
// statements need.
type submission struct {
	jobs    []Job
	ids     []JobID // the ids the jobs get if they are created
	chosen  []bool  // the id is not new (content id, periodic tick): it may exist
	results []Enqueued
	// firstOf maps a job to an earlier job of the same batch it duplicates
	// (same content id, or same queue and unique key), else to itself.
	firstOf []int
	unique  bool    // some job has a unique key
	content bool    // some job has a chosen id
	batches [][]int // job indexes per insert statement (maxBatchBytes)
	silent  bool    // the insert trigger skips its notification (wakeups)
	// traces holds the encoded TraceContext the caller set on a job ("":
	// none); nil when no job has one. trace is the Observer's carrier,
	// encoded, for the other jobs ("": none).
	traces []string
	trace  string
}

// queues returns the batch's queue names, each once.
func (b *submission) queues() []string {
	var names []string
	seen := make(map[string]bool)
	for _, j := range b.jobs {
		if !seen[j.Queue] {
			seen[j.Queue] = true
			names = append(names, j.Queue)
		}
	}
	return names
}

// reset clears what a failed attempt may have filled in, before a retry.
func (b *submission) reset() {
	for i := range b.results {
		b.results[i] = Enqueued{ID: b.ids[b.firstOf[i]], Duplicate: b.firstOf[i] != i}
	}
}

// write runs the whole submission on tx: lock and look up unique keys,
// then insert what is new.
func (b *submission) write(ctx context.Context, tx db) error {
	if b.unique {
		if err := b.skipDuplicates(ctx, tx); err != nil {
			return err
		}
	}
	return b.insert(ctx, tx)
}

// skipDuplicates locks the batch's unique keys and marks the jobs whose key
// an existing job holds within their scope.
func (b *submission) skipDuplicates(ctx context.Context, tx db) error {
	var queues, keys []string
	var scopes []int16
	var windows []int64
	var pos []int
	for i, j := range b.jobs {
		if j.Unique.Key != "" && b.firstOf[i] == i {
			queues, keys = append(queues, j.Queue), append(keys, j.Unique.Key)
			scopes, windows = append(scopes, int16(j.Unique.Scope)), append(windows, j.Unique.Window.Microseconds())
			pos = append(pos, i)
		}
	}
	var locked int64
	var isolation string
	rows, err := tx.Query(ctx, lockUniqueKeysSQL, lockClassUnique, queues, keys, uniqueLockBuckets)
	if err != nil {
		return err
	}
	if _, err := pgx.ForEachRow(rows, []any{&locked, &isolation}, func() error { return nil }); err != nil {
		return err
	}
	if isolation != "read committed" {
		return fmt.Errorf("%w: unique jobs need a READ COMMITTED transaction, this one is %s; enqueue them in a separate transaction", ErrInvalidOption, strings.ToUpper(isolation))
	}
	rows, err = tx.Query(ctx, findDuplicatesSQL, queues, keys, scopes, windows)
	if err != nil {
		return err
	}
	var i int64
	var existing []byte
	_, err = pgx.ForEachRow(rows, []any{&i, &existing}, func() error {
		at := pos[i-1]
		b.results[at] = Enqueued{ID: JobID(existing), Duplicate: true}
		return nil
	})
	if err != nil {
		return err
	}
	// Later jobs of the batch with the same key follow their first.
	for k := range b.results {
		if f := b.firstOf[k]; f != k {
			b.results[k].ID = b.results[f].ID
		}
	}
	return nil
}

// insert writes the jobs not known to be duplicates, one statement per
// batch, and marks content-id jobs that already existed.
func (b *submission) insert(ctx context.Context, tx db) error {
	for _, idx := range b.batches {
		args, one := b.columns(idx)
		if args == nil {
			continue
		}
		sql := insertJobsSQL
		if one {
			sql = insertJobSQL
		}
		if !b.content {
			if _, err := tx.Exec(ctx, sql, args...); err != nil {
				return err
			}
			continue
		}
		rows, err := tx.Query(ctx, sql+returningID, args...)
		if err != nil {
			return err
		}
		created, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
		if err != nil {
			return err
		}
		made := make(map[JobID]bool, len(created))
		for _, id := range created {
			made[JobID(id)] = true
		}
		for _, i := range idx {
			if b.firstOf[i] == i && b.chosen[i] && !made[b.results[i].ID] {
				b.results[i].Duplicate = true
			}
		}
	}
	return nil
}

// columns builds insertJobsSQL' array parameters for the jobs at idx that are
// to be created, or insertJobSQL's scalars (one) when that is a single job;
// nil when there are none.
func (b *submission) columns(idx []int) (args []any, one bool) {
	var (
		jobIDs                                []([]byte)
		queues, configs, files, uniques, keys []string
		traces                                []string
		priorities                            []int16
		runAts                                []*time.Time
		delays                                []int64
		maxes                                 []int32
	)
	traced := b.trace != "" || b.traces != nil
	for _, i := range idx {
		if b.results[i].Duplicate {
			continue
		}
		j := &b.jobs[i]
		jobIDs = append(jobIDs, b.results[i].ID[:])
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
		maxes = append(maxes, int32(cmpOr(j.MaxAttempts, DefaultMaxAttempts)))
		uniques = append(uniques, j.Unique.Key)
		keys = append(keys, j.PartitionKey)
		if traced {
			trace := b.trace
			if b.traces != nil && b.traces[i] != "" {
				trace = b.traces[i]
			}
			traces = append(traces, trace)
		}
	}
	skip := ""
	if b.silent {
		skip = "on"
	}
	switch len(jobIDs) {
	case 0:
		return nil, false
	case 1:
		trace := ""
		if traced {
			trace = traces[0]
		}
		return []any{jobIDs[0], queues[0], configs[0], files[0], priorities[0], runAts[0], delays[0], maxes[0], uniques[0], keys[0], skip, trace}, true
	}
	// Untraced, traces is nil, sent as NULL: unnest pads it with NULLs.
	return []any{jobIDs, queues, configs, files, priorities, runAts, delays, maxes, uniques, keys, skip, traces}, false
}

// prepare validates every job, assigns ids, finds duplicates within the
// batch, and splits it so no statement carries more than maxBatchBytes of
// config.
func (q *Queue) prepare(jobs []Job) (*submission, error) {
	n := len(jobs)
	b := &submission{jobs: jobs, ids: make([]JobID, n), chosen: make([]bool, n), results: make([]Enqueued, n), firstOf: make([]int, n)}
	type uniqueKey struct{ queue, key string }
	firstUnique := make(map[uniqueKey]int)
	firstContent := make(map[JobID]int)
	var cur []int
	size := 0
	for i := range jobs {
		j := &jobs[i]
		if err := validJob(j, q.opts.maxConfig); err != nil {
			return b, jobError(len(jobs), i, err)
		}
		if j.TraceContext != nil {
			enc, err := validTraceContext(j.TraceContext)
			if err != nil {
				return b, jobError(len(jobs), i, err)
			}
			if b.traces == nil {
				b.traces = make([]string, n)
			}
			b.traces[i] = enc
		}
		b.firstOf[i] = i
		switch {
		case j.ContentID:
			b.content, b.chosen[i] = true, true
			b.ids[i] = contentJobID(j.Queue, j.Config, j.InputFiles)
			if f, ok := firstContent[b.ids[i]]; ok {
				b.firstOf[i] = f
			} else {
				firstContent[b.ids[i]] = i
			}
		default:
			id, err := newJobID()
			if err != nil {
				return b, err
			}
			b.ids[i] = id
			if j.Unique.Key == "" {
				break
			}
			b.unique = true
			k := uniqueKey{j.Queue, j.Unique.Key}
			if f, ok := firstUnique[k]; ok {
				b.firstOf[i] = f
			} else {
				firstUnique[k] = i
			}
		}
		if size+len(j.Config) > maxBatchBytes && len(cur) > 0 {
			b.batches = append(b.batches, cur)
			cur, size = nil, 0
		}
		size += len(j.Config)
		cur = append(cur, i)
	}
	if len(cur) > 0 {
		b.batches = append(b.batches, cur)
	}
	b.reset()
	return b, nil
}

// jobError names job i in err when the batch has more than one.
func jobError(n, i int, err error) error {
	if n > 1 {
		return fmt.Errorf("job %d: %w", i, err)
	}
	return err
}
