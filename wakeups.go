package compute

import (
	"context"
	"sync"
	"time"
)

// A transaction that sent NOTIFY takes a lock at commit that every other
// notifying commit of the server waits for, held across its WAL flush, so
// a notification per enqueue caps how fast concurrent enqueues commit (F1
// in the reliability notes). The insert trigger therefore lets the library
// silence it for one statement (migration 9), and wakeups decides when:
// the first enqueue of a queue in a cooldown period notifies as before, the
// ones after it in that period are silent, and one trailing notification
// at the period's end covers them. Workers poll regardless, so a missed
// wake-up only delays a job; it never loses one.

// DefaultNotifyCooldown is the default period in which a process sends at
// most one wake-up notification per queue ([WithNotifyCooldown]).
const DefaultNotifyCooldown = 2 * time.Millisecond

// lateWakeup is how long after a silent enqueue in a caller's transaction
// one more notification goes out, unless a later one already did: the
// trailing notification at the period's end may come before that
// transaction commits.
const lateWakeup = 100 * time.Millisecond

// sendWakeupsSQL is the trailing notification of queues whose enqueues were
// silent. It obeys the notify switch as the trigger does.
const sendWakeupsSQL = `
SELECT count(pg_notify('compute_jobs', q)) FROM unnest($1::text[]) AS q
WHERE NOT EXISTS (SELECT FROM compute.meta WHERE key = 'notify' AND value = 'off')`

// wakeupTimeout bounds one trailing notification.
const wakeupTimeout = 10 * time.Second

// wakeups is a Queue's per-queue notification cooldown. Its goroutine
// (sendOwed) runs only while a trailing notification is owed.
type wakeups struct {
	q        *Queue
	cooldown time.Duration

	mu     sync.Mutex
	last   map[string]time.Time // when a notification for the queue was last let through
	owed   map[string]bool      // silent enqueues since then
	lateAt map[string]time.Time // when to notify for silent enqueues in callers' transactions
	// lateAfter is lateWakeup, or longer in a test.
	lateAfter time.Duration
	running   bool // sendOwed runs
	// pending counts silent enqueues between silence and owe; Close
	// waits for them (idle) before it sends the last notifications.
	pending int
	idle    sync.Cond
	closed  bool          // Close began: no more silent enqueues; sendOwed sends all at once
	kick    chan struct{} // a new debt, or Close
	done    chan struct{} // closed when sendOwed returns
}

func newWakeups(q *Queue, cooldown time.Duration) *wakeups {
	w := &wakeups{q: q, cooldown: cooldown, last: map[string]time.Time{}, owed: map[string]bool{},
		lateAt: map[string]time.Time{}, lateAfter: lateWakeup}
	w.idle.L = &w.mu
	return w
}

// silence reports whether an enqueue into queues may skip its notification:
// every one of them notified less than a cooldown ago. Otherwise the
// statement notifies, and that starts a new period for each. After a true
// answer the caller must call owe, whatever happens to the enqueue.
func (w *wakeups) silence(queues []string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return false // nothing would send a trailing notification
	}
	now := time.Now()
	quiet := true
	for _, q := range queues {
		if t, ok := w.last[q]; !ok || now.Sub(t) >= w.cooldown {
			quiet = false
			break
		}
	}
	if quiet {
		w.pending++
		return true
	}
	if len(w.last) > 10000 { // many queue names: forget, at worst notify more
		clear(w.last)
	}
	for _, q := range queues {
		w.last[q] = now
	}
	return false
}

// owe records a silent enqueue into queues: a notification follows at the
// end of each queue's period. Call it once the statement returned, even
// with an error (a commit cut off in flight may have succeeded), or, with
// inTx, once the jobs are written in a caller's transaction; then one more
// follows lateWakeup later, for a transaction that commits after the first.
func (w *wakeups) owe(queues []string, inTx bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.pending--; w.pending == 0 {
		w.idle.Broadcast()
	}
	late := time.Now().Add(w.lateAfter)
	for _, q := range queues {
		w.owed[q] = true
		if inTx && late.After(w.lateAt[q]) {
			w.lateAt[q] = late
		}
	}
	if !w.running {
		w.running = true
		w.kick = make(chan struct{}, 1)
		w.done = make(chan struct{})
		go w.sendOwed(w.kick, w.done)
		return
	}
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// sendOwed sends the owed notifications as their times come, and returns when
// nothing is owed or the queue closes (then at once, for all).
func (w *wakeups) sendOwed(kick <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		w.mu.Lock()
		if len(w.owed) == 0 && len(w.lateAt) == 0 {
			w.running = false
			w.mu.Unlock()
			return
		}
		now := time.Now()
		next := time.Duration(-1)
		dueAt := map[string]bool{}
		consider := func(q string, at time.Time) {
			if wait := at.Sub(now); wait <= 0 || w.closed {
				dueAt[q] = true
			} else if next < 0 || wait < next {
				next = wait
			}
		}
		for q := range w.owed {
			consider(q, w.last[q].Add(w.cooldown))
		}
		for q, at := range w.lateAt {
			consider(q, at)
		}
		var due []string
		for q := range dueAt {
			due = append(due, q)
			w.last[q] = now
			delete(w.owed, q)
			if !w.lateAt[q].After(now) || w.closed {
				delete(w.lateAt, q)
			}
		}
		w.mu.Unlock()
		if len(due) > 0 {
			w.send(due)
			continue
		}
		timer.Reset(next)
		select {
		case <-timer.C:
		case <-kick:
		}
	}
}

// send notifies workers of queues. A failure is logged: the jobs are
// committed, and workers find them by polling.
func (w *wakeups) send(queues []string) {
	ctx, cancel := context.WithTimeout(context.Background(), wakeupTimeout)
	defer cancel()
	_, err := w.q.pool.Exec(ctx, sendWakeupsSQL, queues)
	if err != nil {
		w.q.opts.logger.Warn("could not notify workers of new jobs; they find them by polling",
			"queues", len(queues), "error", redactError(translate("compute: notify", err), w.q.password))
	}
}

// close waits for silent enqueues in flight to record their debt, sends
// what is owed and waits for sendOwed to return.
func (w *wakeups) close() {
	w.mu.Lock()
	w.closed = true
	for w.pending > 0 {
		w.idle.Wait()
	}
	running, kick, done := w.running, w.kick, w.done
	w.mu.Unlock()
	if !running {
		return
	}
	select {
	case kick <- struct{}{}:
	default:
	}
	<-done
}
