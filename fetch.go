package compute

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

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
	// the completer. The fetcher claims nothing while it reaches
	// Concurrency, so the jobs a worker holds (running or unwritten) stay
	// under twice Concurrency however far the completer falls behind.
	unwritten atomic.Int32
	// claimsFailing is when the fetcher's claims began to fail, 0 after a
	// success (see Health); the fetcher writes it, Health reads it.
	claimsFailing atomic.Int64
}

// fetch is one queue's claim loop. It claims as many jobs as there are free
// slots in one statement, and then waits for a reason to claim again: a
// notification, a freed slot while a backlog is likely, or the jittered
// poll timer. Claim errors are logged and retried with backoff. Whatever a
// claim returns is run, even alongside an error (the gated claim commits
// round by round). After an error, a claim may still have committed
// without its reply reaching us; until the worker has looked, each turn
// first adopts the queue's jobs that the database says this worker holds
// and it does not know of (adopt).
func (w *Worker) fetch(ctx, claimsCtx context.Context, jobs *group, qs *queueState) {
	more := true   // jobs may be waiting: claim as soon as a slot is free
	gated := false // the queue has rules: a freed slot may lift a limit
	failures := 0
	var unsure time.Time // when a claim whose outcome is unknown was sent
	for {
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
			claimCtx, cancel := context.WithTimeout(claimsCtx, w.callTimeout())
			sent := time.Now() // the leases start no earlier
			claimed, isGated, err := w.q.claim(claimCtx, qs.name, free)
			cancel()
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
		poll := time.NewTimer(w.cfg.PollInterval/2 + rand.N(w.cfg.PollInterval/2+1))
		select {
		case <-ctx.Done():
			poll.Stop()
			return
		case <-qs.notified:
			more = true
		case <-qs.freed:
			// Under a cluster-wide cap a short batch means "at the
			// limit", and this slot's job counted against it.
			more = more || gated
		case <-poll.C:
			more = true
		}
		poll.Stop()
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
	w.writing.Lock()
	err := w.q.Heartbeat(ctx, jobs...)
	w.writing.Unlock()
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

// heldBack reports whether Concurrency of the queue's outcomes wait
// unwritten: its fetcher then claims nothing until the completer writes.
func (qs *queueState) heldBack() bool {
	return int(qs.unwritten.Load()) >= cap(qs.slots)
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
