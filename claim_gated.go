package compute

import (
	"context"
	"errors"
	"math"

	"github.com/jackc/pgx/v5"
)

// lockClassClaim is the first key of the advisory lock that serializes
// claims of a queue with rules ("comc"); the second is a hash of the name.
const lockClassClaim = 0x636f6d63

// lockGatedQueueSQL serializes the claims of one queue with rules until the
// claim's transaction ends. Every statement after it takes a new snapshot
// and so sees every claim a previous holder committed: the rules, the round
// robin cursor, and the counts of running jobs and starts are exact. (Read
// in the locking statement itself, they would come from a snapshot taken
// before the wait.) Times in the gated claim are statement_timestamp(),
// taken after the wait, not now(), the transaction's start.
const lockGatedQueueSQL = `SELECT pg_advisory_xact_lock($2, hashtext($1))`

// expireStartsSQL deletes the queue's starts older than its rate period
// ($2 microseconds), through starts_queue, so that compute.start_counts
// (migration 13, kept by triggers on compute.starts) counts exactly the
// window. It runs before queueUsageSQL in the claim's transaction, under the
// queue's claim lock, and costs what it deletes.
const expireStartsSQL = `
DELETE FROM compute.starts WHERE queue = $1 AND at <= statement_timestamp() - $2 * interval '1 microsecond'`

// queueUsageSQL reads what the queue-wide limits need: running jobs (through
// the small partial index jobs_running) and the starts within the rate
// period, from the queue's running count: one row, however high the limit.
const queueUsageSQL = `
SELECT (SELECT count(*) FROM compute.jobs WHERE status = 'in-progress' AND queue = $1),
       coalesce((SELECT n FROM compute.start_counts WHERE queue = $1 AND whole_queue), 0)`

// claimPickedSQL claims up to $2 runnable jobs of queue $1 in claim order, with
// an empty gate: the caller holds the queue's claim lock and has applied
// its rules. $3 to $5 are claimUpdate's.
const claimPickedSQL = statusChange + `
WITH gate AS (SELECT WHERE false), ` + pickRunnable + claimUpdate

// nextKeysSQL steps through the distinct partition keys of a queue's queued
// jobs after $2 (and up to $4 when given), in key order: one probe of
// jobs_partition per key (a skip scan), so a million jobs under one key
// cost no more than one job.
const nextKeysSQL = `
WITH RECURSIVE k AS (
    (SELECT partition_key FROM compute.jobs
     WHERE status = 'queued' AND queue = $1 AND partition_key > $2
     ORDER BY partition_key LIMIT 1)
    UNION ALL
    SELECT (SELECT j.partition_key FROM compute.jobs j
            WHERE j.status = 'queued' AND j.queue = $1 AND j.partition_key > k.partition_key
            ORDER BY j.partition_key LIMIT 1)
    FROM k WHERE k.partition_key IS NOT NULL
)
SELECT partition_key FROM k
WHERE partition_key IS NOT NULL AND ($4::text IS NULL OR partition_key <= $4)
LIMIT $3`

// claimKeyedSQL claims up to $2 jobs across the keys in $6 (in round-robin
// order; a NULL entry stands for the jobs without a key): each key's first
// runnable job, then each key's second, and so on. Each key gives at most
// $7 jobs and no more than its budget: $8 running per key minus those
// running, $9 starts per key in the rate period minus those (counted in
// compute.start_counts, whose expired starts queueUsage has dropped). The
// key's jobs are read through jobs_partition, one branch for a key and one
// for no key, since an OR of the two would defeat the index; ordering by
// partition_key first (a constant in each branch) makes jobs_partition the
// only index that yields the order, so the plan keeps it even when the
// statistics do not know the backlog yet. $3 to $5 are claimUpdate's.
const claimKeyedSQL = statusChange + `
WITH keys AS (
    SELECT k, ord FROM unnest($6::text[]) WITH ORDINALITY AS t(k, ord)
), running AS (
    SELECT partition_key AS k, count(*) AS n FROM compute.jobs
    WHERE status = 'in-progress' AND queue = $1 GROUP BY 1
), started AS (
    SELECT partition_key AS k, n FROM compute.start_counts WHERE queue = $1 AND NOT whole_queue
), budget AS (
    SELECT keys.k, keys.ord,
           greatest(0, least($7, $8 - coalesce(r.n, 0), $9 - coalesce(s.n, 0))) AS n
    FROM keys
    LEFT JOIN running r ON r.k IS NOT DISTINCT FROM keys.k
    LEFT JOIN started s ON s.k IS NOT DISTINCT FROM keys.k
), candidates AS (
    SELECT c.ctid, c.rank, b.ord
    FROM budget b CROSS JOIN LATERAL (
        SELECT s.ctid, row_number() OVER (ORDER BY ` + claimOrder + `) AS rank
        FROM ((SELECT ctid, priority, run_at FROM compute.jobs
               WHERE status = 'queued' AND queue = $1 AND partition_key = b.k AND run_at <= statement_timestamp()
               ORDER BY partition_key, ` + claimOrder + `
               LIMIT b.n)
              UNION ALL
              (SELECT ctid, priority, run_at FROM compute.jobs
               WHERE b.k IS NULL AND status = 'queued' AND queue = $1 AND partition_key IS NULL
                 AND run_at <= statement_timestamp()
               ORDER BY partition_key, ` + claimOrder + `
               LIMIT b.n)) s
    ) c
), picked AS MATERIALIZED (
    SELECT j.ctid FROM compute.jobs j
    JOIN (SELECT ctid FROM candidates ORDER BY rank, ord LIMIT $2) c ON j.ctid = c.ctid
    FOR UPDATE OF j SKIP LOCKED
)` + claimUpdate

// unkeyedQueuedSQL says whether the queue has queued jobs without a key. It
// asks for the first queued row in jobs_partition's order read backwards,
// where NULL keys come first: only that index gives the order, so the plan
// uses it even before the table's statistics know about a fresh backlog (an
// EXISTS could walk jobs_claim through the whole backlog instead).
const unkeyedQueuedSQL = `
SELECT partition_key IS NULL FROM compute.jobs
WHERE status = 'queued' AND queue = $1
ORDER BY partition_key DESC NULLS FIRST
LIMIT 1`

// recordStartsSQL logs the starts of a rate-limited queue; the triggers of
// migration 13 count them (expireStartsSQL drops them once the period has
// passed).
const recordStartsSQL = `
INSERT INTO compute.starts (queue, partition_key, at)
SELECT $1, k, statement_timestamp() FROM unnest($2::text[]) AS t(k)`

// saveCursorSQL remembers where round-robin stopped.
const saveCursorSQL = `UPDATE compute.queues SET fair_cursor = $2 WHERE name = $1`

// maxKeysPerClaim bounds the partition keys one claim visits.
const maxKeysPerClaim = 100

// claimGated claims from a queue with rules. Each round is one transaction
// that holds the queue's claim lock, so claims of such a queue run one at a
// time across the cluster, which is what makes its limits exact. A keyed
// round gives each key an equal share of the slots; when uneven backlogs
// leave slots unused, another round (up to four, with fresh budgets and a
// larger share) offers them to the keys that have more. Rounds are separate
// transactions because a transaction's only job write must be its first
// write: the journal orders events by transaction id, and a later statement
// of the same transaction could claim a job whose enqueue took a higher id.
func (q *Queue) claimGated(ctx context.Context, queue string, n int) ([]*Job, error) {
	var jobs []*Job
	for round, share := 0, 1; round < 4 && len(jobs) < n; round, share = round+1, share*4 {
		got, more, err := q.claimRound(ctx, queue, n-len(jobs), share)
		jobs = append(jobs, got...)
		if err != nil || !more || len(got) == 0 {
			return jobs, err
		}
	}
	return jobs, nil
}

// claimRound is one transaction of claimGated; more says a further round
// could find jobs the per-key shares left behind. share multiplies the
// per-key share.
func (q *Queue) claimRound(ctx context.Context, queue string, n, share int) (jobs []*Job, more bool, err error) {
	err = q.readCommitted(ctx, func(tx pgx.Tx) error {
		jobs, more = nil, false
		// The lock and the claim's pinned plan (see claimUpdate) in one
		// round trip.
		if err := tx.SendBatch(ctx, pinnedPipeline(lockGatedQueueSQL, queue, lockClassClaim)).Close(); err != nil {
			return err
		}
		var cursor string
		s, err := readSettings(tx.QueryRow(ctx, getQueueSettingsSQL, queue), &cursor)
		if err != nil || s.Paused {
			return err
		}
		periodUS := s.RatePeriod.Microseconds()
		running, started, err := queueUsage(ctx, tx, queue, periodUS)
		if err != nil {
			return err
		}
		if n = min(n, s.room(usage{running, started})); n <= 0 {
			return nil
		}
		if s.keyed() {
			jobs, more, err = q.claimByKey(ctx, tx, queue, n, share, s, cursor)
		} else {
			var rows pgx.Rows
			if rows, err = tx.Query(ctx, claimPickedSQL, queue, n, q.opts.workerID, q.opts.lease.Microseconds(), q.opts.maxConfig); err == nil {
				jobs, err = pgx.CollectRows(rows, collectJob)
			}
		}
		if err != nil || len(jobs) == 0 || periodUS == 0 {
			return err
		}
		keys := make([]*string, len(jobs))
		for i, j := range jobs {
			if j.PartitionKey != "" {
				keys[i] = &j.PartitionKey
			}
		}
		_, err = tx.Exec(ctx, recordStartsSQL, queue, keys)
		return err
	})
	if err != nil {
		// Rolled back, or cut off at its commit with the outcome unknown:
		// the worker looks for the jobs of such a claim (adopt).
		return nil, false, err
	}
	return jobs, more, nil
}

// queueUsage runs queueUsageSQL in tx, after expireStartsSQL when the
// queue has a rate period (periodUS), both in one round trip.
func queueUsage(ctx context.Context, tx pgx.Tx, queue string, periodUS int64) (running, started int, err error) {
	batch := &pgx.Batch{}
	if periodUS > 0 {
		batch.Queue(expireStartsSQL, queue, periodUS)
	}
	batch.Queue(queueUsageSQL, queue).QueryRow(func(row pgx.Row) error { return row.Scan(&running, &started) })
	return running, started, tx.SendBatch(ctx, batch).Close()
}

// claimByKey claims round-robin across partition keys, going on from where
// the previous claim stopped. It visits up to maxKeysPerClaim keys with
// queued jobs and takes up to share times an equal part of n from each.
// more reports that a key gave its whole part, so it may have more.
func (q *Queue) claimByKey(ctx context.Context, tx pgx.Tx, queue string, n, share int, s QueueSettings, cursor string) (jobs []*Job, more bool, err error) {
	keys, err := roundKeys(ctx, tx, queue, cursor, maxKeysPerClaim)
	if err != nil || len(keys) == 0 {
		return nil, false, err
	}
	keyMax, keyRate := math.MaxInt32, math.MaxInt32
	if s.KeyMaxRunning > 0 {
		keyMax = s.KeyMaxRunning
	}
	if s.KeyRateLimit > 0 {
		keyRate = s.KeyRateLimit
	}
	part := min(n, share*((n+len(keys)-1)/len(keys)))
	rows, err := tx.Query(ctx, claimKeyedSQL, queue, n, q.opts.workerID, q.opts.lease.Microseconds(), q.opts.maxConfig,
		keys, part, keyMax, keyRate)
	if err != nil {
		return nil, false, err
	}
	if jobs, err = pgx.CollectRows(rows, collectJob); err != nil {
		return nil, false, err
	}
	perKey := make(map[string]int)
	for _, j := range jobs {
		perKey[j.PartitionKey]++
		more = more || perKey[j.PartitionKey] == part
	}
	// The next claim starts after the last key served here; when no key
	// could give a job (all held by limits or scheduled later), after the
	// last key visited, so keys beyond this window get their turn.
	served := make(map[string]bool, len(perKey))
	for k := range perKey {
		served[k] = true
	}
	last := len(keys) - 1
	for last > 0 && len(jobs) > 0 && !served[deref(keys[last])] {
		last--
	}
	next := deref(keys[last])
	_, err = tx.Exec(ctx, saveCursorSQL, queue, next)
	return jobs, more, err
}

// roundKeys lists up to m partition keys with queued jobs, in round-robin
// order from after cursor, wrapping around once; the jobs without a key (a
// nil entry) come at the wrap.
func roundKeys(ctx context.Context, tx pgx.Tx, queue, cursor string, m int) ([]*string, error) {
	after, err := keysAfter(ctx, tx, queue, cursor, nil, m)
	if err != nil || len(after) >= m {
		return after, err
	}
	var none bool
	err = tx.QueryRow(ctx, unkeyedQueuedSQL, queue).Scan(&none)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return nil, err
	}
	if none {
		after = append(after, nil)
	}
	if cursor == "" {
		return after, nil
	}
	before, err := keysAfter(ctx, tx, queue, "", &cursor, m-len(after))
	return append(after, before...), err
}

// keysAfter runs nextKeysSQL: up to m keys after cursor, up to upTo if set.
func keysAfter(ctx context.Context, tx pgx.Tx, queue, cursor string, upTo *string, m int) ([]*string, error) {
	if m <= 0 {
		return nil, nil
	}
	rows, err := tx.Query(ctx, nextKeysSQL, queue, cursor, m, upTo)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (*string, error) {
		var k string
		err := row.Scan(&k)
		return &k, err
	})
}
