package compute

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/computeplatform/compute/internal/backoff"
)

// queueState is one queue's serving state. notified and freed have capacity 1:
// a send that finds them full is already pending.
type queueState struct {
	name     string
	cfg      QueueConfig
	handler  Handler
	slots    chan struct{} // one entry per job whose handler has not returned
	notified chan struct{} // a notification or reconnect
	freed    chan struct{} // a slot was released or outcomes were written
	// unwritten counts the queue's finished jobs whose outcome waits for
	// the completer. The fetcher claims nothing while it reaches twice
	// Concurrency, so the jobs a worker holds (running or unwritten) stay
	// under three times Concurrency however far the completer falls
	// behind. (At Concurrency, claims and outcome writes took turns with
	// quick handlers: a claim's jobs all finished before their write, and
	// the fetcher waited for it.)
	unwritten atomic.Int32
	// claimsFailing is when the fetcher's claims began to fail, 0 after a
	// success (see Health); the fetcher writes it, Health reads it.
	claimsFailing atomic.Int64
}

// fetch is one queue's claim loop. It claims as many jobs as there are free
// slots in one statement, and then waits for a reason to claim again: a
// notification, a freed slot while a backlog is likely, or a wake-up from
// the worker's poll (pollDue), which looks for runnable jobs in all the
// worker's queues at once, so that an idle queue costs no statement of its
// own. Claim errors are logged and retried with backoff. Whatever a claim
// returns is run, even alongside an error (the gated claim commits round
// by round). After an error, a claim may still have committed without its
// reply reaching us; until the worker has looked, each turn first adopts
// the queue's jobs that the database says this worker holds and it does
// not know of (adopt), and the loop comes back to look after a backoff
// even when nothing wakes it.
func (w *Worker) fetch(ctx, claimsCtx context.Context, jobs *group, qs *queueState) {
	more := true   // jobs may be waiting: claim as soon as a slot is free
	gated := false // the queue has rules: a freed slot may lift a limit
	failures := 0
	var unsure time.Time // when a claim whose outcome is unknown was sent
	for {
		// The select below picks at random among ready cases, so a slot
		// freed after the stop may win over ctx.Done: claim nothing then.
		if ctx.Err() != nil {
			return
		}
		free := cap(qs.slots) - len(qs.slots)
		if !unsure.IsZero() && free > 0 {
			if err := w.adopt(ctx, jobs, qs, unsure); err == nil {
				unsure = time.Time{}
				free = cap(qs.slots) - len(qs.slots)
			} else if ctx.Err() == nil {
				w.log.Warn("looking for the jobs of an interrupted claim failed; retrying", "queue", qs.name, "err", err)
			}
		}
		if more && free > 0 && !qs.heldBack() {
			// A stop does not cut the claim short: a claim abandoned in
			// flight may still commit on the server, and its jobs would
			// wait in progress for their leases to run out. What it
			// returns after a stop is handed back at once.
			sent := time.Now() // the leases start no earlier
			claimed, isGated, err := w.claims.claim(claimsCtx, w.callTimeout(), w.q, qs.name, free)
			if err == nil {
				w.health.ok(&w.health.claim, &qs.claimsFailing)
			} else {
				w.health.failed(&qs.claimsFailing)
			}
			w.obs.claimed(qs.name, len(claimed), time.Since(sent), err)
			if ctx.Err() != nil {
				w.handBack(claimed)
				return
			}
			for _, job := range claimed {
				qs.slots <- struct{}{}
				w.launch(jobs, qs, job, sent)
			}
			if err != nil {
				failures++
				if !errors.Is(err, ErrInvalid) {
					unsure = sent
				}
				w.log.Warn("claim failed; retrying", "queue", qs.name, "err", err, "claimed", len(claimed))
				if !backoff.Sleep(ctx, backoff.Wait(failures, 30*time.Second)) {
					return
				}
				continue
			}
			failures, gated = 0, isGated
			// A full batch means more may be waiting: claim again as soon
			// as a slot frees up.
			more = len(claimed) == free
		}
		// Only an unfinished adoption needs a timer of its own: the jobs
		// it looks for are in progress, so no poll would find them.
		retry := time.NewTimer(backoff.Wait(max(failures, 1), 30*time.Second))
		if unsure.IsZero() {
			retry.Stop()
		}
		// A worker of one queue polls by claiming, as a poll of its own
		// would cost one more statement before the claim.
		poll := time.NewTimer(w.pollWait())
		if !w.pollsByClaim() {
			poll.Stop()
		}
		select {
		case <-ctx.Done():
			retry.Stop()
			poll.Stop()
			return
		case <-qs.notified:
			more = true
		case <-qs.freed:
			// Under a cluster-wide cap a short batch means "at the
			// limit", and this slot's job counted against it.
			more = more || gated
		case <-retry.C:
		case <-poll.C:
			more = true
		}
		retry.Stop()
		poll.Stop()
	}
}

// dueQueuesSQL names the queues of $1 that have a job runnable now and are
// not paused: per queue, the first runnable row in claim order, which the
// ORDER BY and LIMIT make a walk of jobs_claim that stops there (as an
// EXISTS, the planner was free to hash every runnable row of the table, or
// to take jobs_partition). It runs after pinJoinsSQL, like the claims. A
// worker's poll is so one statement per interval however many queues it
// serves. A queue whose rules hold its jobs back is still named: only its
// gated claim can tell.
const dueQueuesSQL = `
SELECT w.q FROM unnest($1::text[]) AS w(q)
CROSS JOIN LATERAL (
    SELECT FROM compute.jobs j
    WHERE j.status = 'queued' AND j.queue = w.q AND j.run_at <= statement_timestamp()
    ORDER BY ` + claimOrder + `
    LIMIT 1
) runnable
WHERE NOT EXISTS (SELECT FROM compute.queues s WHERE s.name = w.q AND s.paused)`

// dueQueues returns the queues of names with a job runnable now.
func (q *Queue) dueQueues(ctx context.Context, names []string) ([]string, error) {
	var due []string
	err := q.do(ctx, "compute: poll", func(ctx context.Context) (err error) {
		due, err = queryPinned(ctx, q, dueQueuesSQL, []any{names}, pgx.RowTo[string])
		return err
	})
	return due, err
}

// pollDue is the worker's poll: every PollInterval (jittered, so that
// workers spread out) it asks which of its queues have runnable jobs
// (jobs that came without a notification: scheduled ones whose time came,
// retries, rescued jobs, or any job while the listener is away) and wakes
// their fetchers. A failed poll is logged and tried again after a backoff
// that grows to 30 s, as a failed claim is: while the database is away, a
// worker neither floods it nor its log (its listener wakes every queue
// when it reconnects).
func (w *Worker) pollDue(ctx context.Context) {
	names := slices.Sorted(maps.Keys(w.queues))
	failures := 0
	wait := w.pollWait()
	for backoff.Sleep(ctx, wait) {
		callCtx, cancel := context.WithTimeout(ctx, w.callTimeout())
		due, err := w.q.dueQueues(callCtx, names)
		cancel()
		if err != nil {
			failures++
			wait = max(w.pollWait(), backoff.Wait(failures, 30*time.Second))
			w.logFailure(ctx, "polling for runnable jobs failed; trying again after a backoff", err)
			continue
		}
		failures, wait = 0, w.pollWait()
		w.health.ok(nil, nil)
		for _, name := range due {
			w.wakeQueue(name)
		}
	}
}

// adopt starts the jobs of qs that the database says this worker holds and
// that it does not run: those of a claim that committed while its reply was
// lost. They are this worker's by their fencing token, and their leases
// started no earlier than sent. It takes no more than the free slots; the
// rest wait for the next turn (it reports an error so the turn comes).
func (w *Worker) adopt(ctx context.Context, jobs *group, qs *queueState, sent time.Time) error {
	callCtx, cancel := context.WithTimeout(ctx, w.callTimeout())
	defer cancel()
	held, err := w.q.heldJobs(callCtx, qs.name)
	if err != nil {
		return err
	}
	unknown := held[:0]
	for _, j := range held {
		if !w.running.knows(j) {
			unknown = append(unknown, j)
		}
	}
	// The completer forgets a job only after its outcome's write commits,
	// so a job it wrote after heldJobs read is unknown here but no longer
	// ours: a fenced renewal (which also renews the others' leases) says
	// which are still this worker's.
	if unknown, err = w.stillHeld(callCtx, unknown); err != nil {
		return err
	}
	free := cap(qs.slots) - len(qs.slots)
	if len(unknown) > 0 {
		w.log.Warn("adopting jobs of a claim whose reply was lost", "queue", qs.name, "jobs", min(len(unknown), free))
	}
	for i, job := range unknown {
		if i == free {
			return fmt.Errorf("compute: %d jobs of an interrupted claim wait for free slots", len(unknown)-free)
		}
		qs.slots <- struct{}{}
		w.launch(jobs, qs, job, sent)
	}
	return nil
}

// stillHeld renews the leases of jobs and returns those the database says
// this worker still holds.
func (w *Worker) stillHeld(ctx context.Context, jobs []*Job) ([]*Job, error) {
	if len(jobs) == 0 {
		return jobs, nil
	}
	err := w.q.Heartbeat(ctx, jobs...)
	var lost *LeaseLostError
	if err != nil && !errors.As(err, &lost) {
		return nil, err
	}
	if lost == nil {
		return jobs, nil
	}
	gone := make(map[JobID]bool, len(lost.IDs))
	for _, id := range lost.IDs {
		gone[id] = true
	}
	held := jobs[:0]
	for _, j := range jobs {
		if !gone[j.ID] {
			held = append(held, j)
		}
	}
	return held, nil
}

// callTimeout bounds the fetch and rescue loops' database calls: a call
// stuck on a dead or blackholed connection is abandoned (and the connection
// with it) well before another lease could run out.
func (w *Worker) callTimeout() time.Duration {
	return min(30*time.Second, w.q.opts.lease)
}

// release gives back one slot and tells the fetcher.
func (qs *queueState) release() {
	<-qs.slots
	signal(qs.freed)
}

// heldBack reports whether twice Concurrency of the queue's outcomes wait
// unwritten: its fetcher then claims nothing until the completer writes.
func (qs *queueState) heldBack() bool {
	return int(qs.unwritten.Load()) >= qs.holdAt()
}

// holdAt is the count of unwritten outcomes that holds the fetcher back.
func (qs *queueState) holdAt() int { return 2 * cap(qs.slots) }

// addUnwritten counts n outcomes queued (n > 0) or written (n < 0), and
// keeps the worker's count of held-back queues (w.heldQueues): each
// crossing of holdAt is seen by exactly one Add, so the completer learns
// whether any fetcher waits for it without looking at every queue.
func (w *Worker) addUnwritten(qs *queueState, n int32) {
	now := int(qs.unwritten.Add(n))
	was := now - int(n)
	switch at := qs.holdAt(); {
	case was < at && now >= at:
		w.heldQueues.Add(1)
	case was >= at && now < at:
		w.heldQueues.Add(-1)
	}
}

// wakeQueue is the listener's hook for a notification about queue.
func (w *Worker) wakeQueue(queue string) {
	if qs := w.queues[queue]; qs != nil {
		signal(qs.notified)
	}
}

// wakeAll wakes every queue's fetcher after the listener (re)connected.
func (w *Worker) wakeAll() {
	for name := range w.queues {
		w.wakeQueue(name)
	}
}

// pollWait is how long a worker waits between polls: random in [1/2, 1]
// of PollInterval, so that workers spread out.
func (w *Worker) pollWait() time.Duration {
	return w.cfg.PollInterval/2 + rand.N(w.cfg.PollInterval/2+1)
}

// pollsByClaim reports whether the worker's one fetcher polls by claiming
// (a worker of one queue) instead of being woken by pollDue.
func (w *Worker) pollsByClaim() bool { return len(w.queues) == 1 }

// claimBatch lets the fetchers of a Worker's queues claim together. One
// claim statement runs at a time; the fetchers that ask meanwhile wait,
// and the first of them then claims for all of them in one statement
// (claimMany), up to maxClaim jobs. A worker serving a thousand queues so
// sends a few claim statements where it would send a thousand, and a
// worker serving one queue claims exactly as Claim does. No goroutine of
// its own: the fetcher whose turn it is runs the statement.
type claimBatch struct {
	mu      sync.Mutex
	busy    bool         // a fetcher is claiming
	waiting []*batchTurn // fetchers waiting for the next statement, in order
}

// batchTurn is one fetcher's place in a claimBatch. done is closed when
// the claim has run, or when this fetcher is to run the next one (lead).
type batchTurn struct {
	claimRequest
	done chan struct{}
	lead bool
}

// claim claims up to n jobs of queue through the batch, as claim does.
// Each statement gets timeout from when it starts, under ctx. A queue
// found to have rules is claimed by its own fetcher after the batch (the
// gated claim may wait for another worker's), so it never holds up the
// line.
func (b *claimBatch) claim(ctx context.Context, timeout time.Duration, q *Queue, queue string, n int) ([]*Job, bool, error) {
	t := &batchTurn{claimRequest: claimRequest{queue: queue, n: n}, done: make(chan struct{})}
	b.mu.Lock()
	b.waiting = append(b.waiting, t)
	if b.busy {
		b.mu.Unlock()
		<-t.done // bounded by the running statement's timeout
		b.mu.Lock()
		if !t.lead {
			b.mu.Unlock()
			return t.finish(ctx, timeout, q)
		}
	}
	b.busy = true
	// The batch: this fetcher's turn (first in line) and those after it,
	// up to maxClaim jobs.
	total, take := 0, 0
	for _, w := range b.waiting {
		if take > 0 && total+w.n > maxClaim {
			break
		}
		total += w.n
		take++
	}
	batch := slices.Clone(b.waiting[:take])
	b.waiting = slices.Delete(b.waiting, 0, take)
	b.mu.Unlock()
	handed := false
	handOff := func() { // the next in line leads; the others get their results
		if handed {
			return
		}
		handed = true
		b.mu.Lock()
		if len(b.waiting) > 0 {
			b.waiting[0].lead = true
			close(b.waiting[0].done)
		} else {
			b.busy = false
		}
		b.mu.Unlock()
		for _, w := range batch[1:] {
			close(w.done)
		}
	}
	defer handOff() // even if the claim panics

	callCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if len(batch) == 1 {
		t.jobs, t.gated, t.err = q.claimUngated(callCtx, queue, n)
	} else {
		reqs := make([]*claimRequest, len(batch))
		for i, w := range batch {
			reqs[i] = &w.claimRequest
		}
		q.claimMany(callCtx, reqs)
	}
	handOff()
	return t.finish(ctx, timeout, q)
}

// finish returns a batched claim's result; a queue found to have rules is
// claimed now, by the gated claim, with a timeout of its own.
func (t *batchTurn) finish(ctx context.Context, timeout time.Duration, q *Queue) ([]*Job, bool, error) {
	if t.gated && t.err == nil {
		callCtx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		return q.claimQueue(callCtx, t.queue, t.n, true)
	}
	return t.jobs, t.gated, t.err
}
