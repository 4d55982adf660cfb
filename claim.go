package compute

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
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
// after pinJoinsSQL, which rules out the sequential scan. The row locks taken
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

// claimOrder is the order in which a queue's runnable jobs are claimed:
// smaller priority first, then earlier run time (jobs_claim's order after
// the queue).
const claimOrder = `priority, run_at`

// pickRunnable is the first half of an unkeyed claim: the ctids of up to
// $2 runnable jobs of queue $1 in claim order, walking the partial index
// jobs_claim and skipping rows other claimers hold, unless the gate CTE
// has a row. MATERIALIZED runs the locking sub-select once, so LIMIT holds.
const pickRunnable = `picked AS MATERIALIZED (
    SELECT ctid FROM compute.jobs
    WHERE status = 'queued' AND queue = $1 AND run_at <= statement_timestamp() AND NOT EXISTS (SELECT FROM gate)
    ORDER BY ` + claimOrder + `
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)`

// claimJobsSQL is the fast claim: pickRunnable, then claimUpdate. A queue with
// rules in compute.queues (paused, limits, fairness) claims nothing here;
// the statement then returns one row with gated true and NULL job columns,
// and Claim takes the serialized path instead. The gate is one primary-key
// probe of a tiny table.
const claimJobsSQL = statusChange + `
WITH gate AS (
    SELECT 1 FROM compute.queues s WHERE s.name = $1 AND ` + hasRules + `
), ` + pickRunnable + `, claimed AS (` + claimUpdate + `
)
SELECT g.gated, c.* FROM (SELECT EXISTS (SELECT FROM gate) AS gated) g
LEFT JOIN claimed c ON true
WHERE g.gated OR c.job_id IS NOT NULL`

// maxClaim caps one Claim call.
const maxClaim = 10000

// Claim takes up to n queued jobs of queue whose run time has come, in
// priority order (smaller first, then earlier run time), and leases them to
// this queue's worker id for the [WithLease] duration. Each returned job is in
// progress with its attempt counted. Finish each with Complete or Fail, and
// call Heartbeat before the lease runs out while it runs; a job whose lease
// expires is handed back by RequeueStale. An empty result means nothing is
// runnable now. The queue's settings (SetQueueSettings, Pause) are obeyed:
// a paused queue yields nothing, limits shrink the batch, and a fair queue
// takes jobs round-robin across partition keys. Bad arguments match
// [ErrInvalid].
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
	return q.claimQueue(ctx, queue, n, false)
}

// claimQueue is claim; with gated true (a batched claim found rules) it
// goes to the gated claim at once.
func (q *Queue) claimQueue(ctx context.Context, queue string, n int, gated bool) (jobs []*Job, _ bool, err error) {
	if err := validQueue(queue); err != nil {
		return nil, false, err
	}
	if n < 1 || n > maxClaim {
		return nil, false, fmt.Errorf("%w: claim count %d is outside 1..%d", ErrInvalidOption, n, maxClaim)
	}
	err = q.do(ctx, "compute: claim", func(ctx context.Context) error {
		if !gated {
			got, isGated, err := q.claimFast(ctx, queue, n-len(jobs))
			jobs, gated = append(jobs, got...), isGated
			if err != nil || !isGated {
				return err
			}
		}
		got, err := q.claimGated(ctx, queue, n-len(jobs))
		jobs = append(jobs, got...)
		return err
	})
	jobs = q.failUnreadable(ctx, jobs)
	sortClaimed(jobs)
	return jobs, gated, err
}

// claimUngated is the fast claim alone (claimJobsSQL): a queue with rules
// claims nothing here and comes back gated. Rows that cannot be read are
// failed, as at any claim.
func (q *Queue) claimUngated(ctx context.Context, queue string, n int) (jobs []*Job, gated bool, err error) {
	err = q.do(ctx, "compute: claim", func(ctx context.Context) (err error) {
		jobs, gated, err = q.claimFast(ctx, queue, n)
		return err
	})
	jobs = q.failUnreadable(ctx, jobs)
	sortClaimed(jobs)
	return jobs, gated, err
}

// sortClaimed puts claimed jobs in claim order.
func sortClaimed(jobs []*Job) {
	slices.SortFunc(jobs, func(a, b *Job) int {
		if a.Priority != b.Priority {
			return a.Priority - b.Priority
		}
		return a.RunAt.Compare(b.RunAt)
	})
}

// claimManySQL is the fast claim of several queues in one statement, for a
// worker serving many: up to $2[i] runnable jobs of queue $1[i], each queue
// picked as pickRunnable picks one (the LATERAL sub-select walks jobs_claim
// per queue), then claimUpdate. A queue with rules claims nothing here and
// gets a row of its own with its name in gated and NULL job columns; its
// claim takes the serialized path.
const claimManySQL = statusChange + `
WITH want AS (
    SELECT * FROM unnest($1::text[], $2::int[]) AS w(queue, n)
), gate AS (
    SELECT s.name FROM compute.queues s WHERE s.name = ANY ($1::text[]) AND ` + hasRules + `
), picked AS MATERIALIZED (
    SELECT p.ctid FROM want w CROSS JOIN LATERAL (
        SELECT ctid FROM compute.jobs
        WHERE status = 'queued' AND queue = w.queue AND run_at <= statement_timestamp()
        ORDER BY ` + claimOrder + `
        LIMIT w.n
        FOR UPDATE SKIP LOCKED
    ) p
    WHERE NOT EXISTS (SELECT FROM gate WHERE gate.name = w.queue)
), claimed AS (` + claimUpdate + `
)
SELECT g.gated, c.* FROM (SELECT name AS gated FROM gate UNION ALL SELECT NULL) g
LEFT JOIN claimed c ON g.gated IS NULL
WHERE g.gated IS NOT NULL OR c.job_id IS NOT NULL`

// claimRequest is one queue's claim in a batch (claimMany): n jobs of
// queue wanted; jobs, gated and err are its share of the result.
type claimRequest struct {
	queue string
	n     int
	jobs  []*Job
	gated bool
	err   error
}

// claimMany runs claimManySQL for the requests, whose queues must differ,
// and gives each its jobs, or the statement's error. A request whose queue
// has rules gets gated and no jobs. Rows that cannot be read are failed
// (failUnreadable), as at any claim.
func (q *Queue) claimMany(ctx context.Context, reqs []*claimRequest) {
	queues, counts := make([]string, len(reqs)), make([]int32, len(reqs))
	byQueue := make(map[string]*claimRequest, len(reqs))
	for i, r := range reqs {
		queues[i], counts[i] = r.queue, int32(r.n)
		byQueue[r.queue] = r
	}
	var (
		jobs        []*Job
		gatedQueues []string
	)
	err := q.do(ctx, "compute: claim", func(ctx context.Context) (err error) {
		gatedQueues = gatedQueues[:0]
		jobs, err = queryPinned(ctx, q, claimManySQL, []any{queues, counts, q.opts.workerID, q.opts.lease.Microseconds(), q.opts.maxConfig},
			func(row pgx.CollectableRow) (*Job, error) {
				if raw := row.RawValues(); raw[1] == nil { // a gated queue's row: no job columns
					gatedQueues = append(gatedQueues, string(raw[0]))
					return nil, nil
				}
				return scanJob(row, new(pgtype.Text))
			})
		return err
	})
	if err != nil {
		// As in claimFast, no job of a failed statement is returned.
		for _, r := range reqs {
			r.err = err
		}
		return
	}
	for _, name := range gatedQueues {
		byQueue[name].gated = true
	}
	jobs = slices.DeleteFunc(jobs, func(j *Job) bool { return j == nil })
	for _, j := range q.failUnreadable(ctx, jobs) {
		r := byQueue[j.Queue]
		r.jobs = append(r.jobs, j)
	}
	for _, r := range reqs {
		sortClaimed(r.jobs)
	}
}

// failUnreadable fails, for good, the claimed jobs whose rows hold a value
// the library cannot read, and returns the others. The claim has committed,
// so they must be written off now: left in progress, each would wait for
// its lease and then be claimed, and fail to be read, again. (When ctx
// ends first, that is what happens to them, once.)
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
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
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
// Like a claim, it leaves out a config longer than $3 bytes (claimColumns).
const heldJobsSQL = `
SELECT ` + jobFields + `, CASE WHEN octet_length(j.config) <= $3 THEN j.config END FROM compute.jobs j
WHERE j.status = 'in-progress' AND j.worker = $1 AND j.queue = $2`

// heldJobs runs heldJobsSQL for this Queue's worker id; rows that cannot be
// read are failed (failUnreadable), as at a claim.
func (q *Queue) heldJobs(ctx context.Context, queue string) ([]*Job, error) {
	var jobs []*Job
	err := q.do(ctx, "compute: find held jobs", func(ctx context.Context) error {
		rows, err := q.pool.Query(ctx, heldJobsSQL, q.opts.workerID, queue, q.opts.maxConfig)
		if err == nil {
			jobs, err = pgx.CollectRows(rows, collectJob)
		}
		return err
	})
	return q.failUnreadable(ctx, jobs), err
}

// claimFast runs claimJobsSQL; gated reports that the queue has rules and
// nothing was claimed. It returns no job with an error.
func (q *Queue) claimFast(ctx context.Context, queue string, n int) (jobs []*Job, gated bool, err error) {
	if n < 1 {
		return nil, false, nil
	}
	jobs, err = queryPinned(ctx, q, claimJobsSQL, []any{queue, n, q.opts.workerID, q.opts.lease.Microseconds(), q.opts.maxConfig},
		func(row pgx.CollectableRow) (*Job, error) {
			if row.RawValues()[1] == nil { // the gate row: no job columns
				gated = true
				return nil, nil
			}
			return scanJob(row, new(bool))
		})
	if err != nil {
		// The rows may have arrived while the pipeline's commit failed or
		// was cut off: those jobs may still be queued, and running them
		// could run an attempt twice. None is returned; the worker looks
		// for what the claim did commit (adopt).
		return nil, gated, err
	}
	if gated {
		return nil, true, nil
	}
	return jobs, false, nil
}
