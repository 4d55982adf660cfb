package compute

import (
	"context"
	"errors"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/computeplatform/compute/internal/backoff"
)

// outcome is a finished attempt on its way to the database.
type outcome struct {
	job     *Job
	qs      *queueState // whose unwritten count the outcome is in
	outputs []string
	err     error         // nil: complete
	retryIn time.Duration // for a failed attempt: when it may run again
}

// outcomeQueue is the finished attempts waiting for the completer: the job
// goroutines push, the completer takes.
type outcomeQueue struct {
	mu    sync.Mutex
	items []outcome
	added chan struct{} // cap 1: outcomes were pushed
}

// push queues one outcome and tells the completer.
func (oq *outcomeQueue) push(o outcome) {
	oq.mu.Lock()
	oq.items = append(oq.items, o)
	oq.mu.Unlock()
	signal(oq.added)
}

// take removes up to n outcomes, oldest first; more says some are left.
func (oq *outcomeQueue) take(n int) (batch []outcome, more bool) {
	oq.mu.Lock()
	defer oq.mu.Unlock()
	n = min(len(oq.items), n)
	batch = slices.Clone(oq.items[:n])
	oq.items = oq.items[n:]
	return batch, len(oq.items) > 0
}

// size is how many outcomes wait.
func (oq *outcomeQueue) size() int {
	oq.mu.Lock()
	defer oq.mu.Unlock()
	return len(oq.items)
}

// empty reports whether no outcome waits.
func (oq *outcomeQueue) empty() bool {
	oq.mu.Lock()
	defer oq.mu.Unlock()
	return len(oq.items) == 0
}

// completers is how many completer loops a Worker runs. While one writes,
// the next takes what finished meanwhile and writes it alongside: with one,
// a burn-down's outcomes waited for the write before, and the worker ran
// no faster than one Complete statement at a time.
const completers = 2

// overlapWait is the longest a completer loop waits for the other's round
// to end before it writes beside it what has queued up meanwhile.
const overlapWait = 50 * time.Millisecond

// maxWrite caps the outcomes one completer round writes.
const maxWrite = 5000

// writeGap is the least time from the start of one completer round to the
// start of the next, while Run's context lasts. Under light load a round
// takes a millisecond or two, and without the gap the completer wrote
// outcomes a few at a time: at 2,000 one-job enqueues a second, 20,000
// jobs took 7,100 Complete statements (2.8 jobs each), with the gap 2,400
// to 2,800 (7 to 8 each), and each statement is a trigger, a journal row
// and a commit. Rounds that take longer than the gap (a burn-down's) never
// wait, and neither does a round that a fetcher waits for (gather). A
// finished job's outcome is written at most this much later; the pick-up
// of new jobs is not delayed.
const writeGap = 5 * time.Millisecond

// writeOutcomes is a completer loop (Run starts completers of them): it
// writes queued outcomes in batches, one Complete and one Fail statement
// per round. Rounds start at least writeGap apart, counting the other
// loops' rounds (outcomes that arrive meanwhile go into the next one), so
// under light load the loops write no more often than one would; when a
// round takes longer, the next loop starts the next round beside it.
// Failed writes are retried with backoff; after ctx ends it drains what is
// queued, until w.final ends (stopGiveUp after the grace period): then it
// logs the jobs it could not write (their leases expire and they run
// again elsewhere) and returns.
func (w *Worker) writeOutcomes(ctx context.Context) {
	for {
		select {
		case <-w.outcomes.added:
		case <-ctx.Done():
		}
		w.gather(ctx)
		w.markRound()
		// At most maxWrite outcomes per round, so one write stays well
		// inside its timeout however far the completer fell behind.
		batch, more := w.outcomes.take(maxWrite)
		if more {
			signal(w.outcomes.added)
		}
		if len(batch) > 0 && !w.writeRound(batch) {
			return
		}
		if ctx.Err() != nil && w.outcomes.empty() {
			return
		}
	}
}

// writeRound writes one round's batch, retrying failures with backoff
// until w.final ends: it then logs the jobs it could not write, with all
// that still waits (their leases expire and they run again elsewhere),
// and reports false. The other loops see the round in writesInFlight.
func (w *Worker) writeRound(batch []outcome) bool {
	w.writesInFlight.Add(1)
	defer func() {
		w.writesInFlight.Add(-1)
		signal(w.wroteOne)
	}()
	failing := false // this round counts in failingRounds
	defer func() {
		if failing {
			w.failingRounds.Add(-1)
		}
	}()
	answered := false // some attempt's statement reached the database
	for failures := 0; ; failures++ {
		rest, ok, err := w.write(batch)
		answered = answered || ok
		if err == nil {
			if failing {
				failing = false
				w.failingRounds.Add(-1)
			}
			if answered { // else nothing was sent: no news of the database
				w.wroteOK()
			}
			return true
		}
		batch = rest // what was written stays written
		if !failing {
			failing = true
			w.failingRounds.Add(1)
		}
		w.health.failed(&w.health.writesFailing)
		if w.final.Err() == nil {
			w.log.Warn("writing job outcomes failed; retrying", "jobs", len(batch), "err", err)
		}
		if !backoff.Sleep(w.final, backoff.Wait(failures+1, 5*time.Second)) {
			rest, _ := w.outcomes.take(math.MaxInt)
			batch = append(batch, rest...)
			w.log.Error("could not write job outcomes before stopping; their leases will expire and they will run again",
				"jobs", len(batch), "ids", outcomeIDs(batch, 20), "err", err)
			return false
		}
	}
}

// wroteOK records a round written for Health. The streak of failed writes
// ends only when no other round still fails: with two loops, one's
// success must not hide the other's batch that keeps failing.
func (w *Worker) wroteOK() {
	var failing *atomic.Int64
	if w.failingRounds.Load() == 0 {
		failing = &w.health.writesFailing
	}
	w.health.ok(&w.health.write, failing)
}

// outcomeIDs lists the job ids of up to n outcomes, for a log line.
func outcomeIDs(batch []outcome, n int) []string {
	ids := make([]string, 0, min(len(batch), n))
	for _, o := range batch[:min(len(batch), n)] {
		ids = append(ids, o.job.ID.String())
	}
	return ids
}

// gather waits until this completer loop should start a round. Alone, a
// round waits for the rest of writeGap after the latest round's start
// (also one the other loop started meanwhile) to let outcomes queue up, but
// starts at once when ctx ends (shutdown writes without delay) or when a
// queue's fetcher is held back by its unwritten outcomes: it claims
// nothing until a write, so waiting would only idle it. Beside another
// loop's round, it waits for that round to end, unless a full batch
// (fullWrite) is waiting or overlapWait has passed: in a burn-down a
// round written beside the other then holds as many jobs as one claim
// returns, not the few that finished since, and a round that waits long
// (a row an operator's transaction locks) does not hold up the rest.
func (w *Worker) gather(ctx context.Context) {
	start := time.Now()
	t := time.NewTimer(time.Hour) // set below, before each wait
	defer t.Stop()
	for {
		if ctx.Err() != nil {
			return
		}
		left := overlapWait - time.Since(start) // beside another round
		if w.writesInFlight.Load() == 0 {
			if w.heldBack() {
				return
			}
			left = w.writeGap - w.sinceRound()
		} else if w.outcomes.size() >= w.fullWrite {
			return // a full batch goes beside the other round (alone, it keeps the gap)
		}
		if left <= 0 {
			return
		}
		t.Reset(left)
		select {
		case <-ctx.Done():
		case <-t.C:
		case <-w.outcomes.added: // another outcome: look again
		case <-w.wroteOne: // the other round ended: look again
		}
	}
}

// roundClock is the origin of Worker.lastRound: durations since it are
// read from the monotonic clock, which a step of the wall clock does not
// move. (A round's start kept as wall-clock UnixNano made a step back of
// an hour hold every round alone for that hour.)
var roundClock = time.Now()

// markRound records that a completer round starts now.
func (w *Worker) markRound() { w.lastRound.Store(int64(time.Since(roundClock))) }

// sinceRound is the time since the latest completer round started.
func (w *Worker) sinceRound() time.Duration {
	return time.Since(roundClock) - time.Duration(w.lastRound.Load())
}

// heldBack reports whether some queue's fetcher waits for the completer.
func (w *Worker) heldBack() bool { return w.heldQueues.Load() > 0 }

// write sends one batch of outcomes, one Complete and one Fail, and
// forgets the jobs it wrote. Jobs whose lease was lost meanwhile are
// skipped; a LeaseLostError from the database is logged, not retried. When
// one of the two statements fails, the outcomes of the other are settled
// all the same, and rest holds only the failed statement's, for the retry:
// sending a written Complete again would find its jobs no longer in
// progress and report their leases lost. answered reports whether a
// statement was sent and answered, written or lease lost (a batch of lost
// jobs only sends none).
func (w *Worker) write(batch []outcome) (rest []outcome, answered bool, err error) {
	var done []Completion
	var failed []Failure
	var settled, doneOut, failedOut []outcome
	for _, o := range batch {
		switch {
		case !w.running.holds(o.job):
			settled = append(settled, o) // lost, or superseded by a newer attempt of ours
		case o.err == nil:
			done = append(done, Completion{Job: o.job, OutputFiles: o.outputs})
			doneOut = append(doneOut, o)
		default:
			failed = append(failed, Failure{Job: o.job, Err: o.err, RetryIn: o.retryIn})
			failedOut = append(failedOut, o)
		}
	}
	ctx, cancel := context.WithTimeout(w.final, 10*time.Second)
	defer cancel()
	start := time.Now()
	errDone := w.q.Complete(ctx, done...)
	w.obs.wrote("complete", len(done), time.Since(start), errDone)
	start = time.Now()
	errFailed := w.q.Fail(ctx, failed...)
	w.obs.wrote("fail", len(failed), time.Since(start), errFailed)
	for _, r := range []struct {
		err  error
		outs []outcome
	}{{errDone, doneOut}, {errFailed, failedOut}} {
		var lost *LeaseLostError
		switch {
		case errors.As(r.err, &lost):
			w.log.Warn("outcomes not written: lease lost", "jobs", len(lost.IDs), "err", lost)
			settled = append(settled, r.outs...)
			answered = true
		case r.err != nil:
			rest, err = append(rest, r.outs...), r.err
		default:
			settled = append(settled, r.outs...)
			answered = answered || len(r.outs) > 0
		}
	}
	w.settle(settled)
	return rest, answered, err
}

// settle forgets the jobs of outcomes that need no more writing and gives
// their queues the room back.
func (w *Worker) settle(outs []outcome) {
	for _, o := range outs {
		w.running.forget(o.job)
	}
	var last *queueState
	for _, o := range outs {
		w.addUnwritten(o.qs, -1)
		if o.qs != last { // batches are mostly one queue's: one signal each
			signal(o.qs.freed)
			last = o.qs
		}
	}
}

// handBack returns jobs to the queue in one Fail, their attempt not spent:
// jobs a claim returned after the worker began to stop, or jobs whose
// handlers ignored their cancelled contexts. Jobs whose lease is already
// gone are left alone.
func (w *Worker) handBack(jobs []*Job) {
	if len(jobs) == 0 {
		return
	}
	back := make([]Failure, len(jobs))
	for i, j := range jobs {
		back[i] = Failure{Job: j, Err: Snooze(0)}
	}
	ctx, cancel := context.WithTimeout(w.final, 10*time.Second)
	defer cancel()
	start := time.Now()
	err := w.q.Fail(ctx, back...)
	w.obs.wrote("hand_back", len(back), time.Since(start), err)
	if err != nil && !errors.Is(err, ErrLeaseLost) {
		w.log.Error("handing back jobs failed; their leases will expire", "jobs", len(jobs), "err", err)
	}
}

// abandonRunning hands back the jobs whose handlers did not return after
// their contexts were cancelled at shutdown, and marks them lost so
// whatever those handlers return later is never written.
func (w *Worker) abandonRunning() {
	back := w.running.abandon()
	if len(back) > 0 {
		w.log.Warn("handlers ignored cancellation; handing their jobs back", "jobs", len(back))
	}
	w.handBack(back)
}
