//go:build linux

package faulttest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/internal/testdb"
)

// TestFailover stops the primary of a streaming pair (immediate shutdown)
// while three worker processes drain 5,000 jobs and a producer enqueues,
// and promotes the standby. Everyone holds one multi-host URL
// (target_session_attrs=read-write) and must move to the new primary on
// their own: the workers' pools and listeners, the test's Queue and its
// journal reader (Follow).
//
// With synchronous replication nothing acknowledged may be lost: every
// enqueued job ends complete, once, with one complete event in the journal.
// With asynchronous replication the test measures what was lost (see the
// package documentation, "Failover"); it runs only with
// COMPUTE_FAILOVER_ASYNC=1, as it asserts less and reports figures.
func TestFailover(t *testing.T) {
	t.Run("Synchronous", func(t *testing.T) { testFailover(t, true) })
	t.Run("Asynchronous", func(t *testing.T) {
		if os.Getenv("COMPUTE_FAILOVER_ASYNC") != "1" {
			t.Skip("set COMPUTE_FAILOVER_ASYNC=1 to measure what asynchronous replication loses in a failover")
		}
		testFailover(t, false)
	})
}

// failoverJobs is how many jobs each failover run drains: half enqueued
// before the workers start, half by a producer across the failover.
const failoverJobs = 5000

func testFailover(t *testing.T, synchronous bool) {
	primary := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := primary.CreateDatabase(ctx, "failover"); err != nil {
		t.Fatal(err)
	}
	standby, err := primary.StartStandby(ctx, synchronous)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := standby.Close(); err != nil {
			t.Error(err)
		}
	})
	dbURL, err := testdb.MultiHostURL("failover", primary, standby)
	if err != nil {
		t.Fatal(err)
	}
	c := clusterAt(t, primary, dbURL)
	q := c.q
	if synchronous {
		checkStandby(t, primary, standby, "failover")
	}
	// The standby replicates through a proxy, to be cut off at will.
	proxy, err := NewProxy("127.0.0.1:" + strconv.Itoa(primary.Port()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })
	if err := standby.ReplicateFrom(ctx, proxy.Port()); err != nil {
		t.Fatal(err)
	}

	want := make(map[compute.JobID]expect)
	c.enqueue(want, plainJobs("failover", "before", failoverJobs/2), compute.StatusComplete)

	// The journal reader follows from the start, through the failover.
	follower := followCompletions(t, q)

	// A poll interval of 10 minutes: after the failover, jobs are found
	// only through the listener's reconnect and notifications.
	args := []string{"-queues", "failover", "-concurrency", "4", "-poll-interval", "10m", "-lease", "10s", "-rescue-interval", "1s"}
	for range 3 {
		c.startWorker(dbURL, args...)
	}
	producer := produce(q, plainJobs("failover", "during", failoverJobs/2))
	began := time.Now()

	// Fail over mid-flow, while the producer enqueues, after a spell in
	// which the standby receives nothing (the proxy drops the WAL): with
	// synchronous replication commits wait, with asynchronous ones the
	// primary runs ahead of its standby, as over a slow link.
	c.waitUntil(time.Minute, "the producer to be under way and 1,000 jobs finished", func() (bool, error) {
		if producer.ackedCount() < 500 {
			return false, nil
		}
		live, total, err := c.counts()
		return total-live >= 1000, err
	})
	proxy.Blackhole(true)
	lagFrom, ackedAtLag := time.Now(), producer.ackedCount()
	liveAtLag, totalAtLag, err := c.counts()
	if err != nil {
		t.Fatal(err)
	}
	finishedAtLag := totalAtLag - liveAtLag
	if synchronous {
		c.waitUntil(time.Minute, "commits to wait for the standby", func() (bool, error) {
			n, err := c.countSessions(`wait_event = 'SyncRep'`)
			return n >= 3, err
		})
	} else {
		c.waitUntil(time.Minute, "the primary to run 300 jobs and 100 enqueues ahead of its standby", func() (bool, error) {
			live, total, err := c.counts()
			return total-live >= finishedAtLag+300 && producer.ackedCount() >= ackedAtLag+100, err
		})
	}
	// The completions the primary holds: each was (or is being)
	// acknowledged to its worker.
	completeAtStop := c.completeJobs()
	ackedAtStop := producer.ackedCount()
	lag := time.Since(lagFrom)
	down := time.Now()
	stopCtx, stopCancel := context.WithTimeout(context.Background(), time.Minute)
	if err := primary.Stop(stopCtx, "immediate"); err != nil {
		t.Fatal(err)
	}
	proxy.CutAll()
	if err := standby.Promote(stopCtx); err != nil {
		t.Fatal(err)
	}
	stopCancel()
	outage := time.Since(down)

	c.waitUntil(2*time.Minute, "the producer to finish", producer.finished)
	acked, producerErrs := producer.result()
	for _, id := range acked {
		want[id.id] = expect{queue: "failover", status: compute.StatusComplete, outputs: id.outputs}
	}
	c.waitUntil(2*time.Minute, "every job to finish", func() (bool, error) {
		live, _, err := c.counts()
		return live == 0, err
	})
	drain := time.Since(began)

	// The workers' listeners are on the new primary (the old one is
	// gone), and a job enqueued now is woken by its notification: the
	// poll interval is 10 minutes.
	c.waitListeners(3, time.Time{})
	probeAt := time.Now()
	probe := c.enqueue(want, plainJobs("failover", "probe", 1), compute.StatusComplete)
	c.waitUntil(time.Minute, "the probe job to complete", func() (bool, error) {
		j, err := c.get(probe[0])
		return err == nil && j.Status == compute.StatusComplete, err
	})
	pickup := time.Since(probeAt)
	// So is the journal hub's listener of the test's own Queue. Its last
	// statement is its LISTEN until, every 20 s, it renews
	// journal_listened_until on the same connection: the test waited for
	// a LISTEN alone, and failed whenever the drain above took longer.
	c.waitUntil(time.Minute, "the journal reader's listener on the new primary", func() (bool, error) {
		n, err := c.countSessions(`application_name = 'faulttest' AND (` + listenerQuery + ` OR query LIKE 'INSERT INTO compute.meta (key, value)%journal_listened_until%')`)
		return n == 1, err
	})

	jobs := c.listAll([]string{"failover"})
	var vanished, notComplete int
	for id := range want {
		j, ok := jobs[id]
		switch {
		case !ok:
			vanished++
		case j.Status != compute.StatusComplete:
			notComplete++
		}
	}
	// A completion lost in the failover: the job was complete on the old
	// primary, and ended complete by another attempt or not at all.
	lostCompletions := 0
	for id, was := range completeAtStop {
		if j, ok := jobs[id]; !ok || j.Attempt != was.Attempt || j.Worker != was.Worker {
			lostCompletions++
		}
	}
	ledger := c.readLedger()
	ran, succeeded := runsPerJob(ledger)
	var ranTwice, succeededTwice int
	// An attempt started by two processes: a claim the new primary lost
	// was made again, and the attempt count repeated.
	// The fence (job, attempt, worker) tells them apart unless the same
	// process made the claim again.
	startedBy := make(map[attemptKey]map[int]int)
	for _, e := range ledger {
		k := attemptKey{e.job, e.attempt}
		if e.event == "start" {
			if startedBy[k] == nil {
				startedBy[k] = make(map[int]int)
			}
			startedBy[k][e.pid]++
		}
	}
	attemptTwice, sameFenceTwice := 0, 0
	for _, pids := range startedBy {
		if len(pids) > 1 {
			attemptTwice++
		}
		for _, n := range pids {
			if n > 1 {
				sameFenceTwice++
			}
		}
	}
	for id, n := range ran {
		if n > 1 {
			ranTwice++
			if succeeded[id] > 1 {
				succeededTwice++
			}
		}
	}
	// The journal reader sees one complete event per complete job;
	// two would tell a reader the job completed twice.
	var seen, seenTwice, seenVanished int
	c.waitUntil(time.Minute, "the journal reader to see every completion", func() (bool, error) {
		completes := follower.snapshot()
		seen, seenTwice, seenVanished = 0, 0, 0
		for id, n := range completes {
			if j, ok := jobs[id]; ok && j.Status == compute.StatusComplete {
				seen++
			} else {
				seenVanished++
			}
			if n > 1 {
				seenTwice++
			}
		}
		// A reader that stopped is judged below.
		return seen >= len(jobs)-notComplete || follower.failed() != nil, nil
	})
	followErr := follower.stop()
	missed := len(jobs) - notComplete - seen

	t.Logf("FIGURES failover synchronous=%v: jobs=%d lag=%.1fs acked_in_lag=%d finished_at_stop=%d outage=%.1fs pickup_after=%.3fs vanished=%d lost_completions=%d not_complete=%d ran_twice=%d same_attempt_twice=%d same_fence_twice=%d handler_succeeded_twice=%d journal_complete_events_twice=%d journal_events_of_lost_completions=%d journal_missed=%d enqueue_errors=%d follow_err=%v drain=%.1fs",
		synchronous, len(want), lag.Seconds(), ackedAtStop-ackedAtLag, len(completeAtStop), outage.Seconds(), pickup.Seconds(), vanished, lostCompletions, notComplete, ranTwice, attemptTwice, sameFenceTwice, succeededTwice, seenTwice, seenVanished, missed, len(producerErrs), followErr, drain.Seconds())
	for _, err := range producerErrs {
		t.Logf("enqueue error during the failover: %v", err)
	}
	// After an asynchronous failover the reader's cursor may name a
	// transaction the new primary lost: Follow then says so.
	lostCursor := !synchronous && errors.Is(followErr, compute.ErrJournalFromAnotherCluster)
	if !errors.Is(followErr, context.Canceled) && !lostCursor {
		t.Errorf("Follow ended with %v; want it to follow across the failover until cancelled", followErr)
	}
	if !synchronous {
		return
	}
	// Synchronous replication: nothing acknowledged is lost, no error
	// but "unavailable" reaches the producer, and no job completes twice.
	for _, err := range producerErrs {
		if !errors.Is(err, compute.ErrUnavailable) {
			t.Errorf("enqueue failed during the failover with an error that does not match ErrUnavailable: %v", err)
		}
	}
	if vanished > 0 || lostCompletions > 0 {
		t.Errorf("%d acknowledged enqueues and %d completions were lost", vanished, lostCompletions)
	}
	if seenTwice > 0 || seenVanished > 0 {
		t.Errorf("the journal reader saw %d jobs complete twice and %d completions the new primary does not have", seenTwice, seenVanished)
	}
	c.checkInvariants(want)
}

// runsPerJob counts, per job, the attempts the ledger saw start and those
// whose handler succeeded.
func runsPerJob(ledger []entry) (started, succeeded map[compute.JobID]int) {
	started, succeeded = make(map[compute.JobID]int), make(map[compute.JobID]int)
	for _, e := range ledger {
		if e.event == "start" {
			started[e.job]++
		} else {
			succeeded[e.job]++
		}
	}
	return started, succeeded
}

// ackedJob is a job whose enqueue the database acknowledged.
type ackedJob struct {
	id      compute.JobID
	outputs []string
}

// producer enqueues jobs five at a time, at about 500 jobs/s, retrying a
// batch until it is acknowledged (content ids make a retry after an
// ambiguous failure create nothing twice). Its goroutine ends once every
// job is acknowledged, or after a minute of failures.
type producer struct {
	mu    sync.Mutex
	acked []ackedJob
	errs  []error // every failed enqueue
	done  chan struct{}
}

func produce(q *compute.Queue, jobs []compute.Job) *producer {
	p := &producer{done: make(chan struct{})}
	go func() {
		defer close(p.done)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		giveUp := time.Now().Add(2 * time.Minute)
		for len(jobs) > 0 && time.Now().Before(giveUp) {
			<-tick.C
			batch := jobs[:min(5, len(jobs))]
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			ids, err := q.EnqueueMany(ctx, batch)
			cancel()
			p.mu.Lock()
			if err != nil {
				p.errs = append(p.errs, err)
			} else {
				for i, id := range ids {
					var cfg config
					_ = json.Unmarshal([]byte(batch[i].Config), &cfg)
					p.acked = append(p.acked, ackedJob{id: id, outputs: cfg.Outputs})
				}
				jobs = jobs[len(batch):]
			}
			p.mu.Unlock()
		}
	}()
	return p
}

func (p *producer) ackedCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.acked)
}

// finished is a waitUntil condition: the producer's goroutine has ended.
func (p *producer) finished() (bool, error) {
	select {
	case <-p.done:
		return true, nil
	default:
		return false, nil
	}
}

// result returns the acknowledged jobs and the errors, once the producer
// has finished.
func (p *producer) result() ([]ackedJob, []error) {
	<-p.done
	return p.acked, p.errs
}

// completionFollower is a journal reader (Follow) that counts the complete
// events of each job.
type completionFollower struct {
	mu        sync.Mutex
	completes map[compute.JobID]int
	cancel    context.CancelFunc
	done      chan struct{}
	err       error // Follow's result, once done is closed
}

// followCompletions starts Follow from the journal's start; stop ends it.
func followCompletions(t *testing.T, q *compute.Queue) *completionFollower {
	ctx, cancel := context.WithCancel(context.Background())
	f := &completionFollower{completes: make(map[compute.JobID]int), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(f.done)
		f.err = q.Follow(ctx, compute.Cursor{}, func(events []compute.Event) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			for _, e := range events {
				if e.Status == compute.StatusComplete {
					f.completes[e.JobID]++
				}
			}
			return nil
		})
	}()
	t.Cleanup(func() { f.stop() })
	return f
}

func (f *completionFollower) snapshot() map[compute.JobID]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[compute.JobID]int, len(f.completes))
	for id, n := range f.completes {
		out[id] = n
	}
	return out
}

// failed returns Follow's error if it has returned (a waitUntil error).
func (f *completionFollower) failed() error {
	select {
	case <-f.done:
		return fmt.Errorf("Follow returned: %w", f.err)
	default:
		return nil
	}
}

// stop cancels Follow and returns its result.
func (f *completionFollower) stop() error {
	f.cancel()
	<-f.done
	return f.err
}

// checkStandby checks what the library does with a server that is a hot
// standby (read-only): a write there is an unavailable database, to retry
// once it is promoted, and a multi-host URL that does not say which server
// to take gets one that accepts writes. The database is migrated.
func checkStandby(t *testing.T, primary, standby *testdb.Server, database string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	job := compute.Job{Queue: "standby", Config: "{}"}

	t.Run("WriteOnStandbyIsUnavailable", func(t *testing.T) {
		q, err := compute.Open(ctx, standby.ConnString(database))
		if err != nil {
			t.Fatal(err)
		}
		defer q.Close()
		_, err = q.Enqueue(ctx, job)
		if !errors.Is(err, compute.ErrUnavailable) {
			t.Fatalf("Enqueue on a standby: %v; want an error matching ErrUnavailable (retry once it is promoted)", err)
		}
		if _, err := q.Claim(ctx, "standby", 1); !errors.Is(err, compute.ErrUnavailable) {
			t.Fatalf("Claim on a standby: %v; want an error matching ErrUnavailable", err)
		}
	})

	t.Run("MultiHostURLWithoutTargetTakesWritable", func(t *testing.T) {
		// The standby first: without target_session_attrs the driver
		// would take it, and every write would fail for as long as the
		// pool keeps the connection.
		both, err := testdb.MultiHostURL(database, standby, primary)
		if err != nil {
			t.Fatal(err)
		}
		both = strings.Replace(both, "&target_session_attrs=read-write", "", 1)
		q, err := compute.Open(ctx, both)
		if err != nil {
			t.Fatal(err)
		}
		defer q.Close()
		id, err := q.Enqueue(ctx, job)
		if err != nil {
			t.Fatalf("Enqueue through %s: %v; want it to reach the primary", both, err)
		}
		if err := q.Cancel(ctx, id, "checked"); err != nil {
			t.Fatal(err)
		}
	})
}

// countSessions counts the sessions on the test database that match the
// condition on pg_stat_activity.
func (c *cluster) countSessions(condition string) (int, error) {
	ctx, cancel := c.ctx()
	defer cancel()
	var n int
	err := c.q.Pool().QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND `+condition).Scan(&n)
	return n, err
}

// completeJobs reads the attempt and worker of every complete job.
func (c *cluster) completeJobs() map[compute.JobID]*compute.Job {
	c.t.Helper()
	ctx, cancel := c.ctx()
	defer cancel()
	out := make(map[compute.JobID]*compute.Job)
	var after compute.JobID
	for {
		page, err := c.q.Find(ctx, compute.Filter{Status: compute.StatusComplete}, after, 1000)
		if err != nil {
			c.t.Fatal(err)
		}
		if len(page) == 0 {
			return out
		}
		for _, j := range page {
			out[j.ID] = j
		}
		after = page[len(page)-1].ID
	}
}
