//go:build linux

package faulttest

import (
	"context"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/computeplatform/compute"
)

// TestKill9Workers proves that jobs running in a worker that is SIGKILLed
// are handed back once their lease runs out and run to completion by
// another worker, with no job lost or completed by a stale holder (T1).
func TestKill9Workers(t *testing.T) {
	c := newCluster(t)
	args := []string{"-queues", "kill9", "-concurrency", "4", "-lease", "2s", "-rescue-interval", "1s"}
	var live []*worker
	for range 3 {
		live = append(live, c.startWorker(c.dbURL, args...))
	}
	const n, kills = 3000, 5
	want := make(map[compute.JobID]expect)
	c.enqueue(want, plainJobs("kill9", "k", n), compute.StatusComplete)
	began := time.Now()

	var killed []*worker
	for k := 1; k <= kills; k++ {
		// Spread the kills over the run.
		c.waitFinished(n*k/(kills+2), time.Minute)
		var victim *worker
		c.waitUntil(time.Minute, "a worker with a running job", func() (bool, error) {
			ledger := c.readLedger()
			var busy []*worker
			for _, w := range live {
				if len(openAttempts(ledger, w.pid)) > 0 {
					busy = append(busy, w)
				}
			}
			if len(busy) == 0 {
				return false, nil
			}
			victim = busy[rand.IntN(len(busy))]
			return true, nil
		})
		victim.kill(t)
		killed = append(killed, victim)
		live = slices.DeleteFunc(live, func(w *worker) bool { return w == victim })
		live = append(live, c.startWorker(c.dbURL, args...))
	}
	c.waitDrained(n, 2*time.Minute)
	drain := time.Since(began)

	st := c.checkInvariants(want)
	// Every attempt a kill interrupted was followed by a later attempt
	// that completed the job.
	ledger := c.readLedger()
	jobs := c.listAll([]string{"kill9"})
	interrupted := 0
	for _, w := range killed {
		for _, k := range openAttempts(ledger, w.pid) {
			interrupted++
			if j := jobs[k.job]; j == nil || j.Attempt <= k.attempt {
				t.Errorf("job %s: attempt %d was interrupted by killing %s, but no later attempt ran (%+v)", k.job, k.attempt, w.name, j)
			}
		}
	}
	if interrupted == 0 {
		t.Errorf("no kill interrupted a running job, so no rescue was tested")
	}
	t.Logf("FIGURES kill9: jobs=%d kills=%d interrupted=%d reruns=%d attempts=%d drain=%.1fs",
		n, kills, interrupted, st.reruns, st.attempts, drain.Seconds())
}

// TestPostgresCrashRestart proves that workers ride out a PostgreSQL crash
// (immediate shutdown, then crash recovery on restart) without being
// restarted: they reconnect, finish the jobs they had, and pick up jobs
// enqueued after the restart (T3).
func TestPostgresCrashRestart(t *testing.T) {
	c := newCluster(t)
	args := []string{"-queues", "crash", "-concurrency", "4", "-lease", "3s", "-rescue-interval", "1s"}
	workers := []*worker{c.startWorker(c.dbURL, args...), c.startWorker(c.dbURL, args...)}
	const n, crashes = 2000, 2
	want := make(map[compute.JobID]expect)
	c.enqueue(want, plainJobs("crash", "before", n/2), compute.StatusComplete)
	began := time.Now()

	var outages []string
	for i := 1; i <= crashes; i++ {
		c.waitFinished(n*i/(crashes+2), time.Minute)
		down := time.Now()
		ctx, cancel := c.ctx()
		if err := c.srv.Stop(ctx, "immediate"); err != nil {
			t.Fatal(err)
		}
		cancel()
		// Stay down longer than the lease: the workers' heartbeats fail
		// until their leases run out.
		<-time.After(4 * time.Second)
		ctx, cancel = context.WithTimeout(context.Background(), time.Minute)
		if err := c.srv.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		cancel()
		outages = append(outages, fmt.Sprintf("%.1fs", time.Since(down).Seconds()))
		if i == 1 {
			// New work after the first crash must be found too.
			c.enqueue(want, plainJobs("crash", "after", n/2), compute.StatusComplete)
		}
	}
	c.waitDrained(n, 2*time.Minute)
	drain := time.Since(began)

	for _, w := range workers {
		if !w.alive() {
			t.Errorf("%s exited during the test (%v); workers must survive a database crash", w.name, w.waitErr)
		}
	}
	st := c.checkInvariants(want)
	t.Logf("FIGURES crash: jobs=%d crashes=%d outages=%s reruns=%d attempts=%d drain=%.1fs",
		n, crashes, strings.Join(outages, ","), st.reruns, st.attempts, drain.Seconds())
}

// listenerQuery matches the workers' LISTEN connections in
// pg_stat_activity: the listener's last statement is its health probe (or a
// LISTEN while it sets up), which no pooled connection runs.
const listenerQuery = `(query = 'SELECT pg_notify($1, $2)' OR query LIKE 'LISTEN %')`

// TestTerminateBackends proves that workers recover from
// pg_terminate_backend on their pooled connections while jobs flow, and on
// their LISTEN connections, and that the listener, once back, wakes them
// for new jobs. The poll interval is 10 minutes (each wait at least 5), so
// no job in this test can be picked up by polling (T4).
func TestTerminateBackends(t *testing.T) {
	c := newCluster(t)
	args := []string{"-queues", "term", "-concurrency", "4", "-poll-interval", "10m", "-lease", "3s", "-rescue-interval", "1s"}
	for range 2 {
		c.startWorker(c.dbURL, args...)
	}
	want := make(map[compute.JobID]expect)
	began := time.Now()
	const rounds = 4
	terminated := 0
	var last time.Time // database time of the last termination
	var idle []string  // per round: from the idle termination to all its jobs done
	for r := 1; r <= rounds; r++ {
		c.waitListeners(2, last)
		// Mid-flow, cut the pooled connections (and in even rounds the
		// listeners too): claims, heartbeats and outcome writes fail and
		// must be retried.
		c.enqueue(want, plainJobs("term", fmt.Sprintf("r%d", r), 200), compute.StatusComplete)
		c.waitFinished(len(want)-100, time.Minute)
		which := "AND NOT " + listenerQuery
		if r%2 == 0 {
			which = ""
		}
		n, at := c.terminate(which)
		if n == 0 {
			t.Fatalf("round %d: no worker connection to terminate mid-flow", r)
		}
		if r%2 == 0 {
			last = at
		}
		terminated += n
		c.waitDrained(len(want), 2*time.Minute)

		// With the workers idle, cut the listeners and enqueue at once:
		// the notification is lost, so only the listener's reconnect
		// (which wakes every queue) can get these jobs running.
		c.waitListeners(2, last)
		cut := time.Now()
		n, last = c.terminate("AND " + listenerQuery)
		if n != 2 {
			t.Fatalf("round %d: terminated %d listeners; want 2", r, n)
		}
		terminated += n
		c.enqueue(want, plainJobs("term", fmt.Sprintf("r%d-idle", r), 50), compute.StatusComplete)
		c.waitDrained(len(want), 2*time.Minute)
		idle = append(idle, fmt.Sprintf("%.1fs", time.Since(cut).Seconds()))
	}

	// A job enqueued once the listeners are back is woken by its
	// notification.
	c.waitListeners(2, last)
	probeAt := time.Now()
	ids := c.enqueue(want, plainJobs("term", "probe", 1), compute.StatusComplete)
	c.waitUntil(time.Minute, "the probe job to complete", func() (bool, error) {
		j, err := c.get(ids[0])
		return err == nil && j.Status == compute.StatusComplete, err
	})
	probe := time.Since(probeAt)
	drain := time.Since(began)

	st := c.checkInvariants(want)
	t.Logf("FIGURES terminate: jobs=%d rounds=%d terminated=%d idle_pickup=%s probe=%.3fs reruns=%d drain=%.1fs",
		len(want), rounds, terminated, strings.Join(idle, ","), probe.Seconds(), st.reruns, drain.Seconds())
}

// TestListenerReconnectsPromptly proves that a listener that was healthy
// reconnects at once when its connection is terminated, however often that
// happened before: the reconnect backoff must restart after a healthy
// session. Otherwise, after a few lost connections over a process's life,
// every later loss leaves the worker deaf to notifications for up to 30 s.
// The poll interval is 10 minutes, so only the listener can wake the worker
// for a job enqueued while it is down; a first reconnect takes about 0.2 s.
func TestListenerReconnectsPromptly(t *testing.T) {
	c := newCluster(t)
	c.startWorker(c.dbURL, "-queues", "listen", "-poll-interval", "10m")
	want := make(map[compute.JobID]expect)
	const terminations = 8
	var last time.Time
	var pickups []string
	var slow []int
	for r := 1; r <= terminations; r++ {
		c.waitListeners(1, last)
		cut := time.Now()
		var n int
		if n, last = c.terminate("AND " + listenerQuery); n != 1 {
			t.Fatalf("termination %d ended %d listeners; want 1", r, n)
		}
		ids := c.enqueue(want, plainJobs("listen", fmt.Sprintf("r%d", r), 1), compute.StatusComplete)
		c.waitUntil(2*time.Minute, "the job enqueued while the listener was down", func() (bool, error) {
			j, err := c.get(ids[0])
			return err == nil && j.Status == compute.StatusComplete, err
		})
		pickup := time.Since(cut)
		pickups = append(pickups, fmt.Sprintf("%.1fs", pickup.Seconds()))
		if pickup > 10*time.Second {
			slow = append(slow, r)
		}
	}
	if len(slow) > 0 {
		t.Errorf("after terminations %v the listener took over 10 s to come back (pickups %s): its reconnect backoff grows with every lost connection, even after healthy sessions",
			slow, strings.Join(pickups, ","))
	}
	c.checkInvariants(want)
	t.Logf("FIGURES listener: terminations=%d pickup=%s", terminations, strings.Join(pickups, ","))
}

// terminate ends the workers' backends that match the extra condition, and
// returns how many it ended and the database time.
func (c *cluster) terminate(condition string) (int, time.Time) {
	c.t.Helper()
	ctx, cancel := c.ctx()
	defer cancel()
	var n int
	var at time.Time
	err := c.q.Pool().QueryRow(ctx, `
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)), now() FROM pg_stat_activity
WHERE datname = current_database() AND application_name = 'compute' `+condition).Scan(&n, &at)
	if err != nil {
		c.t.Fatal(err)
	}
	return n, at
}

// waitListeners waits until n listener connections started after since, and
// returns how long that took.
func (c *cluster) waitListeners(n int, since time.Time) time.Duration {
	c.t.Helper()
	return c.waitUntil(time.Minute, fmt.Sprintf("%d listeners", n), func() (bool, error) {
		ctx, cancel := c.ctx()
		defer cancel()
		var got int
		err := c.q.Pool().QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = 'compute' AND `+listenerQuery+` AND backend_start > $1`, since).Scan(&got)
		return got >= n, err
	})
}

// TestPausedWorkerIsFenced proves fencing end to end (T7): a worker paused
// past its lease loses the job to another worker, and when it resumes and
// finishes the job, its stale result changes nothing. (The resumed worker
// usually sees by its own clock that the lease lapsed and drops the result;
// TestStaleCompletionIsFenced makes the stale write reach the database.)
func TestPausedWorkerIsFenced(t *testing.T) {
	c := newCluster(t)
	w1 := c.startWorker(c.dbURL, "-queues", "pause", "-concurrency", "1", "-lease", "2s")
	want := make(map[compute.JobID]expect)
	// ignore_cancel: the paused worker's handler finishes its sleep even
	// though the worker learns on waking that the lease is gone, so it
	// always has a result to (try to) write.
	ids := c.enqueue(want, []compute.Job{{Queue: "pause",
		Config: config{SleepMS: 3000, IgnoreCancel: true, Outputs: []string{"fenced.out"}}.String()}}, compute.StatusComplete)
	id := ids[0]
	c.waitUntil(time.Minute, "w1 to start the job", func() (bool, error) {
		return c.has(entry{id, 1, w1.pid, "start"}), nil
	})
	w1.signal(t, syscall.SIGSTOP)

	w2 := c.startWorker(c.dbURL, "-queues", "pause", "-concurrency", "1", "-lease", "2s", "-rescue-interval", "500ms")
	c.waitUntil(time.Minute, "w2 to rescue the job and start attempt 2", func() (bool, error) {
		return c.has(entry{id, 2, w2.pid, "start"}), nil
	})
	w1.signal(t, syscall.SIGCONT)
	c.waitUntil(time.Minute, "w1's handler to finish attempt 1", func() (bool, error) {
		return c.has(entry{id, 1, w1.pid, "done"}), nil
	})
	// A graceful stop writes every outcome the worker holds before it
	// exits: after this, w1 has tried to complete attempt 1.
	w1.terminate(t)
	if !w1.waitExit(time.Minute) {
		t.Fatal("w1 did not stop after SIGTERM")
	}
	if w1.waitErr != nil {
		t.Errorf("w1 exited with %v", w1.waitErr)
	}
	j, err := c.get(id)
	if err != nil {
		t.Fatal(err)
	}
	if j.Attempt != 2 || j.Worker != w2.id {
		t.Fatalf("after w1's stale completion the job is at attempt %d by %s; want attempt 2 by %s", j.Attempt, j.Worker, w2.id)
	}
	rowAtStop := j.Status
	switch {
	case j.Status == compute.StatusInProgress:
	case j.Status == compute.StatusComplete && c.has(entry{id, 2, w2.pid, "done"}):
	default:
		t.Fatalf("after w1's stale completion the job is %s (w2 has not finished attempt 2); want in-progress", j.Status)
	}

	c.waitUntil(time.Minute, "w2 to complete the job", func() (bool, error) {
		j, err = c.get(id)
		return err == nil && j.Status == compute.StatusComplete, err
	})
	if j.Attempt != 2 || j.Worker != w2.id || !slices.Equal(j.OutputFiles, []string{"fenced.out"}) {
		t.Errorf("job ended at attempt %d by %s with outputs %q; want attempt 2 by %s with [fenced.out]", j.Attempt, j.Worker, j.OutputFiles, w2.id)
	}
	if len(j.Errors) != 1 || j.Errors[0].Attempt != 1 || !strings.Contains(j.Errors[0].Error, w1.id) {
		t.Errorf("errors %+v; want one entry: attempt 1's lease of %s expired", j.Errors, w1.id)
	}
	c.checkInvariants(want)
	t.Logf("FIGURES pause: jobs=1 paused=1 stale_done=1 row_when_stale_worker_stopped=%s", rowAtStop)
}

// TestStaleCompletionIsFenced proves that the database itself fences a
// stale holder: a worker whose lease ran out while it was paused, but whose
// own clock says the lease is still good, writes its result when it
// resumes, and the write must change nothing because another worker holds
// a newer attempt. (In TestPausedWorkerIsFenced the resumed worker usually
// notices the lapse by its own clock first and never writes.) The pause
// outlasting the lease is made by backdating the lease in SQL, and the
// rescuer is paused too while the stale write happens, so the order of
// events is fixed.
func TestStaleCompletionIsFenced(t *testing.T) {
	c := newCluster(t)
	// A 30 s lease: the stale worker's heartbeat (every 10 s) stays silent
	// through the test, so nothing but the database can stop its write.
	stale := c.startWorker(c.dbURL, "-queues", "fence", "-concurrency", "1", "-lease", "30s")
	want := make(map[compute.JobID]expect)
	ids := c.enqueue(want, []compute.Job{{Queue: "fence",
		Config: config{SleepMS: 2000, IgnoreCancel: true, Outputs: []string{"fence.out"}}.String()}}, compute.StatusComplete)
	id := ids[0]
	c.waitUntil(time.Minute, "the stale worker to start the job", func() (bool, error) {
		return c.has(entry{id, 1, stale.pid, "start"}), nil
	})
	stale.signal(t, syscall.SIGSTOP)
	ctx, cancel := c.ctx()
	tag, err := c.q.Pool().Exec(ctx, `UPDATE compute.jobs SET lease_expires = now() - interval '1 second'
WHERE job_id = $1 AND attempt = 1 AND status = 'in-progress'`, id[:])
	cancel()
	if err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("backdating the lease: %v, %d rows", err, tag.RowsAffected())
	}

	rescuer := c.startWorker(c.dbURL, "-queues", "fence", "-concurrency", "1", "-lease", "30s", "-rescue-interval", "500ms")
	c.waitUntil(time.Minute, "the rescuer to start attempt 2", func() (bool, error) {
		return c.has(entry{id, 2, rescuer.pid, "start"}), nil
	})
	rescuer.signal(t, syscall.SIGSTOP)

	stale.signal(t, syscall.SIGCONT)
	c.waitUntil(time.Minute, "the stale worker's handler to finish attempt 1", func() (bool, error) {
		return c.has(entry{id, 1, stale.pid, "done"}), nil
	})
	// A graceful stop writes every outcome the worker holds before it exits.
	stale.terminate(t)
	if !stale.waitExit(time.Minute) {
		t.Fatal("the stale worker did not stop after SIGTERM")
	}
	j, err := c.get(id)
	if err != nil {
		t.Fatal(err)
	}
	if j.Status != compute.StatusInProgress || j.Attempt != 2 || j.Worker != rescuer.id {
		t.Fatalf("after the stale completion the job is %s at attempt %d by %s; want in-progress at attempt 2 by %s",
			j.Status, j.Attempt, j.Worker, rescuer.id)
	}

	rescuer.signal(t, syscall.SIGCONT)
	c.waitUntil(time.Minute, "the rescuer to complete the job", func() (bool, error) {
		j, err = c.get(id)
		return err == nil && j.Status == compute.StatusComplete, err
	})
	if j.Attempt != 2 || j.Worker != rescuer.id {
		t.Errorf("job completed at attempt %d by %s; want attempt 2 by %s", j.Attempt, j.Worker, rescuer.id)
	}
	c.checkInvariants(want)
	t.Logf("FIGURES fence: jobs=1 stale_completions=1 stale_completions_written=0")
}

// TestProxyCutsAndBlackholes proves that workers recover from connections
// cut under them and from a blackhole (connections that stop carrying data
// but stay open) longer than the lease, without being restarted (T5).
func TestProxyCutsAndBlackholes(t *testing.T) {
	c := newCluster(t)
	p, err := NewProxy("127.0.0.1:" + strconv.Itoa(c.srv.Port()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	u, err := url.Parse(c.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = "127.0.0.1:" + strconv.Itoa(p.Port())
	args := []string{"-queues", "proxy", "-concurrency", "4", "-lease", "2s", "-rescue-interval", "1s"}
	workers := []*worker{c.startWorker(u.String(), args...), c.startWorker(u.String(), args...)}
	const n, cuts = 1500, 3
	want := make(map[compute.JobID]expect)
	c.enqueue(want, plainJobs("proxy", "p", n), compute.StatusComplete)
	began := time.Now()

	cutConns := 0
	for i := 1; i <= cuts; i++ {
		c.waitFinished(n*i/(cuts+3), time.Minute)
		cutConns += p.CutAll()
	}
	c.waitFinished(n*(cuts+1)/(cuts+3), time.Minute)
	blackholeAt := time.Now()
	p.Blackhole(true)
	// Hold the blackhole until every lease the workers held has run out by
	// the database clock (they cannot renew), and for 6 s at least.
	c.waitUntil(time.Minute, "the blackholed workers' leases to run out", func() (bool, error) {
		ctx, cancel := c.ctx()
		defer cancel()
		var held int
		err := c.q.Pool().QueryRow(ctx, `SELECT count(*) FROM compute.jobs WHERE status = 'in-progress' AND lease_expires > now()`).Scan(&held)
		return held == 0, err
	})
	<-time.After(time.Until(blackholeAt.Add(6 * time.Second)))
	live, total, err := c.counts()
	if err != nil {
		t.Fatal(err)
	}
	p.Blackhole(false)
	blackhole := time.Since(blackholeAt)

	// New work after the blackhole must be found too.
	c.enqueue(want, plainJobs("proxy", "after", 300), compute.StatusComplete)
	resumed := c.waitUntil(3*time.Minute, "the first job to finish after the blackhole", func() (bool, error) {
		l, t, err := c.counts()
		return t-l > total-live, err
	})
	recovered := resumed + c.waitDrained(len(want), 3*time.Minute)
	drain := time.Since(began)

	for _, w := range workers {
		if !w.alive() {
			t.Errorf("%s exited during the test (%v)", w.name, w.waitErr)
		}
	}
	st := c.checkInvariants(want)
	t.Logf("FIGURES proxy: jobs=%d cuts=%d cut_conns=%d blackhole=%.1fs first_finish_after_pass=%.1fs drain_after_pass=%.1fs reruns=%d drain=%.1fs",
		len(want), cuts, cutConns, blackhole.Seconds(), resumed.Seconds(), recovered.Seconds(), st.reruns, drain.Seconds())
}

// TestPoisonJobs proves that jobs that panic, carry malformed configs or
// keep failing end failed with their errors recorded while the worker
// process serves on (T18, T19), and that a handler that ignores its
// context cannot hold up shutdown: the worker exits after its stop timeout
// and hands the job back to the queue (T28).
func TestPoisonJobs(t *testing.T) {
	c := newCluster(t)
	w := c.startWorker(c.dbURL, "-queues", "poison", "-concurrency", "4", "-stop-timeout", "1s")
	want := make(map[compute.JobID]expect)
	poison := []struct {
		job      compute.Job
		attempts int    // attempts until failed
		err      string // in every recorded error
	}{
		{compute.Job{Config: config{Panic: true}.String(), MaxAttempts: 2}, 2, "panic: the job's config asked for a panic"},
		{compute.Job{Config: config{Fail: true}.String(), MaxAttempts: 2}, 2, "the job's config asked for a failure"},
		{compute.Job{Config: "not json"}, 1, "config must be JSON"},
		{compute.Job{Config: `{"sleep_ms":"x"}`}, 1, "config must be JSON"},
		{compute.Job{Config: `{"unknown":1}`}, 1, `unknown field "unknown"`},
	}
	jobs := make([]compute.Job, len(poison))
	for i, p := range poison {
		jobs[i] = p.job
		jobs[i].Queue = "poison"
	}
	ids := c.enqueue(want, jobs, compute.StatusFailed)
	c.waitFinished(len(poison), time.Minute)
	for i, p := range poison {
		j, err := c.get(ids[i])
		if err != nil {
			t.Fatal(err)
		}
		if j.Status != compute.StatusFailed || j.Attempt != p.attempts || len(j.Errors) != p.attempts {
			t.Errorf("config %s: %s after %d attempts with %d errors; want failed after %d", p.job.Config, j.Status, j.Attempt, len(j.Errors), p.attempts)
		}
		for _, e := range j.Errors {
			if !strings.Contains(e.Error, p.err) {
				t.Errorf("config %s: attempt %d error %q does not say %q", p.job.Config, e.Attempt, e.Error, p.err)
			}
		}
	}

	// The same process goes on serving.
	after := c.enqueue(want, []compute.Job{{Queue: "poison", Config: config{Outputs: []string{"after.out"}}.String()}}, compute.StatusComplete)
	c.waitUntil(time.Minute, "the job after the poison to complete", func() (bool, error) {
		return c.has(entry{after[0], 1, w.pid, "done"}), nil
	})

	// A handler that ignores its context must not hold up shutdown.
	stuck := c.enqueue(want, []compute.Job{{Queue: "poison",
		Config: config{SleepMS: 20000, IgnoreCancel: true, Outputs: []string{"never.out"}}.String()}}, compute.StatusQueued)
	c.waitUntil(time.Minute, "the stuck job to start", func() (bool, error) {
		return c.has(entry{stuck[0], 1, w.pid, "start"}), nil
	})
	sigterm := time.Now()
	w.terminate(t)
	// The handler sleeps 20 s; the worker must not wait for it.
	if !w.waitExit(15 * time.Second) {
		t.Fatal("the worker did not exit within 15 s of SIGTERM with -stop-timeout 1s while a handler ignored its context")
	}
	exit := time.Since(sigterm)
	if w.waitErr != nil {
		t.Errorf("the worker exited with %v", w.waitErr)
	}
	j, err := c.get(stuck[0])
	if err != nil {
		t.Fatal(err)
	}
	if j.Status != compute.StatusQueued || j.Attempt != 1 || !j.LeaseExpires.IsZero() || len(j.Errors) != 0 {
		t.Errorf("the abandoned job is %s at attempt %d, lease %v, errors %v; want queued again at attempt 1 with no lease and no error",
			j.Status, j.Attempt, j.LeaseExpires, j.Errors)
	}
	for _, e := range c.readLedger() {
		if e.pid != w.pid {
			t.Errorf("ledger entry %+v is not from the one worker %d", e, w.pid)
		}
	}
	c.checkInvariants(want)
	t.Logf("FIGURES poison: jobs=%d failed=%d exit_after_sigterm=%.1fs", len(want), len(poison), exit.Seconds())
}

// TestInvalidOutputsFailOnlyThatJob proves that a handler returning output
// file names the queue cannot store (here the same name twice) fails that
// job, with the reason recorded, and does not hold up the outcomes of the
// worker's other jobs (T18).
func TestInvalidOutputsFailOnlyThatJob(t *testing.T) {
	c := newCluster(t)
	w := c.startWorker(c.dbURL, "-queues", "outputs", "-concurrency", "2")
	want := make(map[compute.JobID]expect)
	bad := c.enqueue(want, []compute.Job{{Queue: "outputs", MaxAttempts: 2,
		Config: config{Outputs: []string{"twice.out", "twice.out"}}.String()}}, compute.StatusFailed)
	c.waitUntil(time.Minute, "the bad job's handler to return", func() (bool, error) {
		return c.has(entry{bad[0], 1, w.pid, "done"}), nil
	})
	// Jobs that finish after the bad one must still be written.
	c.enqueue(want, plainJobs("outputs", "good", 20), compute.StatusComplete)
	c.waitDrained(len(want), 30*time.Second)
	j, err := c.get(bad[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(j.Errors) == 0 || !strings.Contains(j.Errors[len(j.Errors)-1].Error, "output files") {
		t.Errorf("the bad job's errors %+v do not say its output files were invalid", j.Errors)
	}
	c.checkInvariants(want)
	t.Logf("FIGURES outputs: jobs=%d bad_attempts=%d", len(want), j.Attempt)
}

// holdCompletions makes every Complete statement wait, in a
// statement-level trigger that runs before any row is locked, for as long as
// the table hold_completions has a row. Everything else runs on.
const holdCompletions = `
CREATE TABLE public.hold_completions (on_ boolean);
CREATE FUNCTION public.hold_completions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WHILE current_query() LIKE '%SET status = ''complete''%' AND EXISTS (SELECT 1 FROM public.hold_completions) LOOP
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN NULL;
END $$;
CREATE TRIGGER hold_completions BEFORE UPDATE ON compute.jobs
    FOR EACH STATEMENT EXECUTE FUNCTION public.hold_completions();
INSERT INTO public.hold_completions VALUES (true);`

// TestReclaimedJobOutcomesInOneBatch proves that a worker copes with two
// outcomes of the same job waiting to be written together: it finished
// attempt 1, could not write it yet (the database held its writes), the
// job's lease was then found expired and the job requeued, and the same
// worker claimed and finished attempt 2. Only attempt 2 may be written, and
// the worker must run on: a batch holding both once crashed the worker
// (index out of range on an empty LeaseLostError) in
// TestPostgresCrashRestart.
func TestReclaimedJobOutcomesInOneBatch(t *testing.T) {
	c := newCluster(t)
	c.exec(holdCompletions)
	// Concurrency 3: a job holds its slot until its outcome is written, so
	// the blocked first outcome and the waiting second one take two slots
	// and the re-claim needs a third.
	w := c.startWorker(c.dbURL, "-queues", "again", "-concurrency", "3")
	want := make(map[compute.JobID]expect)

	// The first job's outcome occupies the writer...
	first := c.enqueue(want, plainJobs("again", "first", 1), compute.StatusComplete)
	c.waitUntil(time.Minute, "the worker to be writing the first job's outcome", func() (bool, error) {
		ctx, cancel := c.ctx()
		defer cancel()
		var n int
		err := c.q.Pool().QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
WHERE application_name = 'compute' AND state = 'active' AND query LIKE '%SET status = ''complete''%'`).Scan(&n)
		return n > 0 && c.has(entry{first[0], 1, w.pid, "done"}), err
	})
	// ...so the second job's outcome waits behind it.
	second := c.enqueue(want, plainJobs("again", "second", 1), compute.StatusComplete)
	c.waitUntil(time.Minute, "the worker to finish the second job", func() (bool, error) {
		return c.has(entry{second[0], 1, w.pid, "done"}), nil
	})
	// Its lease runs out (backdated here, as if the worker had stalled)
	// and a rescue requeues it; the same worker claims it again.
	c.waitUntil(time.Minute, "the second job to be requeued", func() (bool, error) {
		c.exec(`UPDATE compute.jobs SET lease_expires = now() - interval '1 second' WHERE status = 'in-progress' AND job_id = '\x` +
			hex.EncodeToString(second[0][:]) + `'`)
		ctx, cancel := c.ctx()
		defer cancel()
		n, err := c.q.RequeueStale(ctx)
		return n == 1, err
	})
	c.waitUntil(time.Minute, "the worker to finish the second job again", func() (bool, error) {
		return c.has(entry{second[0], 2, w.pid, "done"}), nil
	})
	c.exec(`DELETE FROM public.hold_completions`)

	// waitDrained fails at once if the worker dies.
	c.waitDrained(len(want), time.Minute)
	j, err := c.get(second[0])
	if err != nil {
		t.Fatal(err)
	}
	if j.Attempt != 2 {
		t.Errorf("the second job ended at attempt %d; want 2 (the re-claim, written once)", j.Attempt)
	}
	st := c.checkInvariants(want)
	t.Logf("FIGURES again: jobs=%d attempts=%d", len(want), st.attempts)
}
