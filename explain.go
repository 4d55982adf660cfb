package compute

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// ReasonKind classifies one reason a job is not running.
type ReasonKind string

// The reasons Explain gives.
const (
	ReasonFinished   ReasonKind = "finished"    // the job is complete, failed or expired
	ReasonRunning    ReasonKind = "running"     // a worker holds it now
	ReasonStaleLease ReasonKind = "stale-lease" // its holder stopped renewing; a rescue will hand it back
	ReasonScheduled  ReasonKind = "scheduled"   // its run time has not come
	ReasonPaused     ReasonKind = "paused"      // its queue is paused
	ReasonQueueCap   ReasonKind = "queue-cap"   // the queue's MaxRunning is reached
	ReasonKeyCap     ReasonKind = "key-cap"     // its partition key's KeyMaxRunning is reached
	ReasonQueueRate  ReasonKind = "queue-rate"  // the queue's RateLimit is used up for now
	ReasonKeyRate    ReasonKind = "key-rate"    // its key's KeyRateLimit is used up for now
	ReasonBehind     ReasonKind = "behind"      // other runnable jobs are claimed first
	ReasonNoWorkers  ReasonKind = "no-workers"  // no running worker serves its queue
)

// Reason is one cause, with a sentence for people.
type Reason struct {
	Kind ReasonKind
	Text string
}

// Explanation says why a job is (or is not) running, as Explain found it.
type Explanation struct {
	Job     *Job
	Reasons []Reason
}

// String joins the reasons into one paragraph.
func (e *Explanation) String() string {
	texts := make([]string, len(e.Reasons))
	for i, r := range e.Reasons {
		texts[i] = r.Text
	}
	return fmt.Sprintf("job %s in queue %s: %s", e.Job.ID, e.Job.Queue, strings.Join(texts, "; "))
}

// Has reports whether the explanation gives a reason of kind k.
func (e *Explanation) Has(k ReasonKind) bool {
	for _, r := range e.Reasons {
		if r.Kind == k {
			return true
		}
	}
	return false
}

// explainJobSQL reads, in one statement, the job and everything that can hold
// it back. Counts of waiting jobs stop at 10,001, so a huge backlog costs a
// bounded scan. Durations come back in microseconds.
const explainJobSQL = `
SELECT
    (extract(epoch FROM j.run_at - now()) * 1e6)::bigint,
    coalesce(s.paused, false), coalesce(s.max_running, 0), coalesce(s.key_max_running, 0),
    coalesce(s.rate_limit, 0), coalesce(s.key_rate_limit, 0), coalesce(s.fair, false),
    (SELECT count(*) FROM compute.jobs r WHERE r.status = 'in-progress' AND r.queue = j.queue),
    (SELECT count(*) FROM compute.jobs r WHERE r.status = 'in-progress' AND r.queue = j.queue
                                          AND r.partition_key IS NOT DISTINCT FROM j.partition_key),
    (SELECT count(*) FROM compute.starts t WHERE t.queue = j.queue AND t.at > now() - s.rate_period),
    (SELECT count(*) FROM compute.starts t WHERE t.queue = j.queue AND t.at > now() - s.rate_period
                                          AND t.partition_key IS NOT DISTINCT FROM j.partition_key),
    coalesce((SELECT (extract(epoch FROM min(t.at) + s.rate_period - now()) * 1e6)::bigint
              FROM compute.starts t WHERE t.queue = j.queue AND t.at > now() - s.rate_period), 0),
    (SELECT count(*) FROM (SELECT 1 FROM compute.jobs a
                           WHERE a.status = 'queued' AND a.queue = j.queue AND a.run_at <= now()
                             AND (a.priority, a.run_at) < (j.priority, j.run_at) LIMIT 10001) x),
    (SELECT count(*) FROM (SELECT 1 FROM compute.jobs a
                           WHERE a.status = 'queued' AND a.queue = j.queue AND a.run_at <= now()
                             AND a.partition_key IS NOT DISTINCT FROM j.partition_key
                             AND (a.priority, a.run_at) < (j.priority, j.run_at) LIMIT 10001) x),
    (SELECT count(*) FROM compute.workers w
     WHERE j.queue = ANY (w.queues) AND w.seen > now() - $2 * interval '1 microsecond'),
    -- Every worker's maintenance round rescues stale jobs of every queue.
    (SELECT count(*) FROM compute.workers w WHERE w.seen > now() - $2 * interval '1 microsecond'),
    (extract(epoch FROM now() - j.lease_expires) * 1e6)::bigint,
    (SELECT (extract(epoch FROM now() - w.seen) * 1e6)::bigint FROM compute.workers w WHERE w.worker = j.worker),
    ` + jobColumns + `
FROM compute.jobs j LEFT JOIN compute.queues s ON s.name = j.queue
WHERE j.job_id = $1`

// Explain says in words why a job is or is not running: finished, running,
// held by a worker that stopped renewing its lease, scheduled later, its
// queue paused, held by a concurrency cap or rate limit, waiting behind other
// jobs, or no worker serving its queue. It reads without changing anything
// (last_accessed included). Unknown ids return [ErrNotFound].
func (q *Queue) Explain(ctx context.Context, id JobID) (*Explanation, error) {
	var (
		job                                    *Job
		untilRun, nextRateSlot                 int64
		paused, fair                           bool
		maxRunning, keyMax, rate, keyRate      int
		running, keyRunning, starts, keyStarts int
		ahead, keyAhead, workers, anyWorkers   int
		leaseOverdue, holderSilent             *int64
	)
	err := q.do(ctx, "compute: explain", func(ctx context.Context) error {
		var err error
		job, err = scanJob(q.pool.QueryRow(ctx, explainJobSQL, id[:], workerFresh.Microseconds()),
			&untilRun, &paused, &maxRunning, &keyMax, &rate, &keyRate, &fair,
			&running, &keyRunning, &starts, &keyStarts, &nextRateSlot, &ahead, &keyAhead, &workers,
			&anyWorkers, &leaseOverdue, &holderSilent)
		return err
	})
	if err != nil {
		return nil, notFound(err, "compute: explain job %s", id)
	}
	if job.bad != nil {
		return nil, job.bad
	}
	e := &Explanation{Job: job}
	add := func(k ReasonKind, format string, args ...any) {
		e.Reasons = append(e.Reasons, Reason{k, fmt.Sprintf(format, args...)})
	}
	us := func(n int64) time.Duration { return (time.Duration(n) * time.Microsecond).Round(time.Millisecond) }
	switch job.Status {
	case StatusComplete, StatusFailed, StatusExpired:
		add(ReasonFinished, "it is %s and will not run again (Retry runs a failed job again)", job.Status)
		return e, nil
	case StatusInProgress:
		if leaseOverdue == nil || *leaseOverdue <= 0 {
			add(ReasonRunning, "it is running on worker %s (attempt %d of %d)", job.Worker, job.Spent(), job.MaxAttempts)
			return e, nil
		}
		silent := "it is not in the worker registry"
		if holderSilent != nil {
			silent = fmt.Sprintf("its last sign of life was %s ago", us(*holderSilent))
		}
		rescue := fmt.Sprintf("any running worker, whatever its queues (%s seen in the last %s), hands it back within its maintenance interval (WorkerConfig.MaintenanceInterval)",
			count(anyWorkers, "worker"), workerFresh)
		if anyWorkers == 0 {
			rescue = "the maintenance round of any running worker hands it back"
		}
		add(ReasonStaleLease, "worker %s holds it, but its lease expired at %s (%s ago) without a renewal (%s); %s",
			job.Worker, job.LeaseExpires.Format(time.RFC3339), us(*leaseOverdue), silent, rescue)
		switch {
		case anyWorkers == 0:
			add(ReasonNoWorkers, "no worker at all has been seen in the last %s, so nothing will hand it back until one runs", workerFresh)
		case workers == 0:
			add(ReasonNoWorkers, "no worker serving queue %s has been seen in the last %s, so once handed back it waits for one", job.Queue, workerFresh)
		}
		return e, nil
	}
	if untilRun > 0 {
		add(ReasonScheduled, "it is scheduled to run in %s, at %s", us(untilRun), job.RunAt.Format(time.RFC3339))
	}
	s := QueueSettings{Paused: paused, MaxRunning: maxRunning, KeyMaxRunning: keyMax, RateLimit: rate, KeyRateLimit: keyRate, Fair: fair}
	for _, k := range s.holding(usage{running, starts}, usage{keyRunning, keyStarts}) {
		switch k {
		case ReasonPaused:
			add(k, "queue %s is paused; Resume starts it again", job.Queue)
		case ReasonQueueCap:
			add(k, "queue %s has %s running, its MaxRunning is %d", job.Queue, count(running, "job"), maxRunning)
		case ReasonKeyCap:
			add(k, "partition key %q has %s running, the KeyMaxRunning is %d", job.PartitionKey, count(keyRunning, "job"), keyMax)
		case ReasonQueueRate:
			add(k, "queue %s started %s within its rate period, the RateLimit is %d; the next start is possible in about %s", job.Queue, count(starts, "job"), rate, us(nextRateSlot))
		case ReasonKeyRate:
			add(k, "partition key %q started %s within the rate period, the KeyRateLimit is %d", job.PartitionKey, count(keyStarts, "job"), keyRate)
		}
	}
	if s.keyed() {
		if keyAhead > 0 {
			add(ReasonBehind, "%s of the same partition key come first (the queue takes keys in turn)", atMost(keyAhead, "runnable job"))
		}
	} else if ahead > 0 {
		add(ReasonBehind, "%s of queue %s come first (higher priority or earlier run time)", atMost(ahead, "runnable job"), job.Queue)
	}
	if workers == 0 {
		add(ReasonNoWorkers, "no worker serving queue %s has been seen in the last %s", job.Queue, workerFresh)
	}
	if len(e.Reasons) == 0 {
		add(ReasonBehind, "nothing holds it back: a worker should claim it at its next poll or notification")
	}
	return e, nil
}

// atMost is count for the capped counts of explainJobSQL.
func atMost(n int, noun string) string {
	if n > 10000 {
		return "more than 10,000 " + noun + "s"
	}
	return count(n, noun)
}

// count says "1 job" or "3 jobs".
func count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
