//go:build linux

package faulttest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/internal/testdb"
	"github.com/jackc/pgx/v5"
)

// workerBin is the examples/worker binary, built once by TestMain (without
// -race: the worker is the system under test, not the test).
var workerBin string

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "compute-faulttest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "faulttest:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	root, err := moduleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "faulttest:", err)
		return 1
	}
	workerBin = filepath.Join(dir, "worker")
	// go test puts its own go first in PATH.
	build := exec.Command("go", "build", "-o", workerBin, "./examples/worker")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "faulttest: building examples/worker: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// moduleRoot walks up from the working directory to the directory holding
// go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// cluster is one test's world: a private PostgreSQL server with one
// database, the test's own Queue on it, and the worker processes the test
// starts. Only the test's goroutine uses it.
type cluster struct {
	t       *testing.T
	srv     *testdb.Server
	dbURL   string         // the test database, for workers (application_name compute)
	q       *compute.Queue // the test's own queue (application_name faulttest)
	dir     string
	ledger  string // COMPUTE_LEDGER of every worker
	workers []*worker
}

// newCluster starts a private server (the tests crash and restart it), makes
// a fresh database and opens the test's queue on it. Everything is stopped
// at cleanup: worker processes first, then the queue, then the server.
func newCluster(t *testing.T) *cluster {
	t.Helper()
	return newClusterOn(t, startServer(t), "faulttest")
}

// startServer starts a private server, closed at cleanup. Without
// PostgreSQL it skips the test, unless CI=true.
func startServer(t *testing.T) *testdb.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := testdb.StartLocal(ctx, t.Logf)
	if err != nil {
		if errors.Is(err, testdb.ErrNoPostgres) && os.Getenv("CI") != "true" {
			t.Skip(err.Error())
		}
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Error(err)
		}
	})
	return srv
}

// newClusterOn makes a fresh database on srv, opens the test's queue on it,
// and stops the workers the test starts at cleanup.
func newClusterOn(t *testing.T, srv *testdb.Server, dbName string) *cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dbURL, err := srv.CreateDatabase(ctx, dbName)
	if err != nil {
		t.Fatal(err)
	}
	return clusterAt(t, srv, dbURL)
}

// clusterAt opens the test's queue on the database at dbURL (served by srv),
// and stops the workers the test starts at cleanup.
func clusterAt(t *testing.T, srv *testdb.Server, dbURL string) *cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The test's own connections carry their own application_name, so
	// terminating the workers' backends ('compute') spares them.
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	query := u.Query()
	query.Set("application_name", "faulttest")
	u.RawQuery = query.Encode()
	q, err := compute.Open(ctx, u.String(), compute.WithMigrate())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(q.Close)
	dir := t.TempDir()
	c := &cluster{t: t, srv: srv, dbURL: dbURL, q: q, dir: dir, ledger: filepath.Join(dir, "ledger")}
	t.Cleanup(c.stopWorkers)
	return c
}

// worker is one worker process.
type worker struct {
	name, id       string // id is the worker id it writes into jobs
	pid            int
	cmd            *exec.Cmd
	stdout, stderr string // paths of its output files
	exited         chan struct{}
	waitErr        error // Wait's result; read after exited is closed
	stopping       bool  // the test killed or stopped it: exiting is expected
}

// startWorker runs the worker binary with args against dbURL.
func (c *cluster) startWorker(dbURL string, args ...string) *worker {
	c.t.Helper()
	name := fmt.Sprintf("w%d", len(c.workers)+1)
	w := &worker{
		name:   name,
		stdout: filepath.Join(c.dir, name+".stdout"),
		stderr: filepath.Join(c.dir, name+".stderr"),
		exited: make(chan struct{}),
	}
	stdout, err := os.Create(w.stdout)
	if err != nil {
		c.t.Fatal(err)
	}
	defer stdout.Close() // the child has its own copy
	stderr, err := os.Create(w.stderr)
	if err != nil {
		c.t.Fatal(err)
	}
	defer stderr.Close()
	w.cmd = exec.Command(workerBin, args...)
	w.cmd.Env = append(os.Environ(), "DATABASE_URL="+dbURL, "COMPUTE_LEDGER="+c.ledger)
	w.cmd.Stdout, w.cmd.Stderr = stdout, stderr
	// If the test binary dies without cleaning up, its workers die too.
	w.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := w.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	w.pid = w.cmd.Process.Pid
	w.id = fmt.Sprintf("worker-%d", w.pid)
	go func() {
		w.waitErr = w.cmd.Wait()
		close(w.exited)
	}()
	c.workers = append(c.workers, w)
	c.t.Logf("started %s (pid %d): %s", name, w.pid, strings.Join(args, " "))
	return w
}

// signal sends sig to the worker.
func (w *worker) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := w.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("%s: sending %v: %v", w.name, sig, err)
	}
}

// waitExit waits up to timeout for the worker to exit; it reports whether
// it did.
func (w *worker) waitExit(timeout time.Duration) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-w.exited:
		return true
	case <-t.C:
		return false
	}
}

// terminate sends SIGTERM, the graceful stop.
func (w *worker) terminate(t *testing.T) {
	t.Helper()
	w.stopping = true
	w.signal(t, syscall.SIGTERM)
}

// kill SIGKILLs the worker and waits for it to be gone.
func (w *worker) kill(t *testing.T) {
	t.Helper()
	w.stopping = true
	w.signal(t, syscall.SIGKILL)
	if !w.waitExit(30 * time.Second) {
		t.Fatalf("%s (pid %d) did not die after SIGKILL", w.name, w.pid)
	}
}

func (w *worker) alive() bool {
	select {
	case <-w.exited:
		return false
	default:
		return true
	}
}

// stopWorkers kills every worker still running and waits for it, and on
// failure prints the tail of each worker's log.
func (c *cluster) stopWorkers() {
	for _, w := range c.workers {
		if w.alive() {
			w.stopping = true
			_ = w.cmd.Process.Signal(syscall.SIGCONT) // in case a test stopped it
			_ = w.cmd.Process.Kill()
			<-w.exited
		}
	}
	// FAULTTEST_LOGS=1 prints the logs of passing tests too.
	if c.t.Failed() || os.Getenv("FAULTTEST_LOGS") != "" {
		for _, w := range c.workers {
			c.t.Logf("--- %s (pid %d, %v) stderr, last lines:\n%s", w.name, w.pid, w.waitErr, tail(w.stderr, 40))
			if crash := crashReport(w.stderr); crash != "" {
				c.t.Logf("--- %s crashed:\n%s", w.name, crash)
			}
			if out := tail(w.stdout, 20); out != "" {
				c.t.Logf("--- %s stdout:\n%s", w.name, out)
			}
		}
	}
}

// crashReport returns the start of a Go runtime crash report (a panic or
// fatal error) in a log file, or "".
func crashReport(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(string(b), "\n")
	for i, line := range lines {
		if strings.HasPrefix(line, "panic: ") || strings.HasPrefix(line, "fatal error: ") {
			return strings.Join(lines[i:min(len(lines), i+80)], "\n")
		}
	}
	return ""
}

// dumpGoroutines makes every live worker print its goroutines (SIGQUIT) and
// logs the dumps, shortened to the worker's log and the goroutines that run
// this module's code (the whole dump stays in the worker's stderr file):
// for a worker that hangs, this shows which call it hangs in. It logs what
// the database's sessions are doing first.
func (c *cluster) dumpGoroutines() {
	c.logSessions()
	for _, w := range c.workers {
		if !w.alive() {
			continue
		}
		w.stopping = true
		_ = w.cmd.Process.Signal(syscall.SIGCONT)
		_ = w.cmd.Process.Signal(syscall.SIGQUIT)
		if w.waitExit(10 * time.Second) {
			c.t.Logf("--- %s (pid %d) log and goroutine dump (%s):\n%s", w.name, w.pid, w.stderr, ownGoroutines(tail(w.stderr, 2000)))
		}
	}
}

// ownGoroutines keeps the lines of a SIGQUIT dump that matter here: what
// came before it (the worker's log) and the goroutines with a frame of
// this module, each frame as its function and, for this module's code, its
// line.
func ownGoroutines(dump string) string {
	var out []string
	blocks := strings.Split(dump, "\n\n")
	for i, b := range blocks {
		if i == 0 {
			out = append(out, b)
			continue
		}
		if !strings.Contains(b, "computeplatform/compute") || !strings.HasPrefix(strings.TrimSpace(b), "goroutine ") {
			continue
		}
		var keep []string
		own := false // the last frame is this module's
		for line := range strings.SplitSeq(b, "\n") {
			if !strings.HasPrefix(line, "\t") {
				frame := strings.TrimPrefix(line, "created by ")
				own = strings.HasPrefix(frame, "github.com/computeplatform/compute") || strings.HasPrefix(frame, "main.")
			} else if !own {
				continue // the file and line of a frame outside this module
			}
			line, _, _ = strings.Cut(line, " fp=")
			keep = append(keep, line)
		}
		out = append(out, strings.Join(keep, "\n"))
	}
	return strings.Join(out, "\n\n")
}

// logSessions logs the test database's sessions, what they wait for and the
// locks they wait on, for a wait that timed out.
func (c *cluster) logSessions() {
	ctx, cancel := c.ctx()
	defer cancel()
	// One text per session: format() prints NULL (a column this role may
	// not see) as an empty string, so no row can fail the scan.
	rows, err := c.q.Pool().Query(ctx, `
SELECT format('pid %s %L %s wait=%s started %s xact %s waits for %L: %s',
              a.pid, a.application_name, a.state, a.wait_event_type || '/' || a.wait_event,
              a.backend_start, a.xact_start,
              (SELECT string_agg(l.locktype || ' ' || l.mode, ', ') FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted),
              left(a.query, 120))
FROM pg_stat_activity a WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
ORDER BY a.backend_start`)
	if err != nil {
		c.t.Logf("sessions: %v", err)
		return
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	c.t.Logf("sessions (err %v):\n%s", err, strings.Join(lines, "\n"))
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// waitUntil polls cond every 50 ms until it returns true, and fails the test
// if that takes longer than timeout, or at once if a worker the test did not
// stop has exited. Errors from cond (a database that is restarting) count as
// "not yet"; the last one is reported on timeout. It returns how long it
// waited.
func (c *cluster) waitUntil(timeout time.Duration, what string, cond func() (bool, error)) time.Duration {
	c.t.Helper()
	began := time.Now()
	deadline := began.Add(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		ok, err := cond()
		if ok {
			return time.Since(began)
		}
		if err != nil {
			lastErr = err
		}
		for _, w := range c.workers {
			if !w.stopping && !w.alive() {
				report := crashReport(w.stderr)
				if report == "" {
					report = tail(w.stderr, 40)
				}
				c.t.Fatalf("while waiting for %s, %s (pid %d) exited (%v):\n%s", what, w.name, w.pid, w.waitErr, report)
			}
		}
		if time.Now().After(deadline) {
			c.dumpGoroutines()
			c.t.Fatalf("waited %s for %s; last error: %v", timeout, what, lastErr)
		}
		<-tick.C
	}
}

// ctx returns a context for one of the test's own database calls.
func (c *cluster) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Second)
}

// exec runs SQL on the test database, outside the workers' sight.
func (c *cluster) exec(sql string) {
	c.t.Helper()
	ctx, cancel := c.ctx()
	defer cancel()
	if _, err := c.q.Pool().Exec(ctx, sql); err != nil {
		c.t.Fatal(err)
	}
}

// counts returns how many jobs are live (queued or in progress) and how many
// there are in all.
func (c *cluster) counts() (live, total int64, err error) {
	ctx, cancel := c.ctx()
	defer cancel()
	byQueue, err := c.q.Counts(ctx)
	if err != nil {
		return 0, 0, err
	}
	for _, byStatus := range byQueue {
		for status, n := range byStatus {
			total += n
			if status == compute.StatusQueued || status == compute.StatusInProgress {
				live += n
			}
		}
	}
	return live, total, nil
}

// waitFinished waits until at least n jobs are no longer live.
func (c *cluster) waitFinished(n int, timeout time.Duration) {
	c.t.Helper()
	c.waitUntil(timeout, fmt.Sprintf("%d finished jobs", n), func() (bool, error) {
		live, total, err := c.counts()
		return total-live >= int64(n), err
	})
}

// waitDrained waits until the database holds exactly n jobs and none is
// live, and returns how long that took.
func (c *cluster) waitDrained(n int, timeout time.Duration) time.Duration {
	c.t.Helper()
	return c.waitUntil(timeout, fmt.Sprintf("all %d jobs to finish", n), func() (bool, error) {
		live, total, err := c.counts()
		return live == 0 && total == int64(n), err
	})
}

// config is the worker's job config (see examples/worker).
type config struct {
	SleepMS      int      `json:"sleep_ms,omitempty"`
	Fail         bool     `json:"fail,omitempty"`
	Panic        bool     `json:"panic,omitempty"`
	Outputs      []string `json:"outputs,omitempty"`
	IgnoreCancel bool     `json:"ignore_cancel,omitempty"`
}

func (cfg config) String() string {
	b, err := json.Marshal(cfg)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// expect is what a job must look like at the end of a test.
type expect struct {
	queue   string
	status  compute.Status
	outputs []string // for complete jobs
}

// plainJobs makes n jobs on queue that sleep 0-20 ms and complete with one
// output file named after prefix and their index; each config is unique,
// so the jobs may be enqueued with content ids.
func plainJobs(queue, prefix string, n int) []compute.Job {
	jobs := make([]compute.Job, n)
	for i := range jobs {
		cfg := config{SleepMS: rand.IntN(21), Outputs: []string{fmt.Sprintf("%s-%d.out", prefix, i)}}
		jobs[i] = compute.Job{Queue: queue, Config: cfg.String(), ContentID: true}
	}
	return jobs
}

// enqueue submits jobs and records what each must end as in want. A
// database that is unavailable is retried until timeout: the jobs have
// content ids, so a retry after an ambiguous failure creates nothing twice.
func (c *cluster) enqueue(want map[compute.JobID]expect, jobs []compute.Job, status compute.Status) []compute.JobID {
	c.t.Helper()
	var ids []compute.JobID
	c.waitUntil(time.Minute, "the enqueue to succeed", func() (bool, error) {
		ctx, cancel := c.ctx()
		defer cancel()
		var err error
		ids, err = c.q.EnqueueMany(ctx, jobs)
		if err != nil && !errors.Is(err, compute.ErrUnavailable) {
			c.t.Fatal(err)
		}
		return err == nil, err
	})
	for i, id := range ids {
		var cfg config
		_ = json.Unmarshal([]byte(jobs[i].Config), &cfg) // malformed configs have no outputs
		want[id] = expect{queue: jobs[i].Queue, status: status, outputs: cfg.Outputs}
	}
	return ids
}

// get reads one job.
func (c *cluster) get(id compute.JobID) (*compute.Job, error) {
	ctx, cancel := c.ctx()
	defer cancel()
	return c.q.Get(ctx, id)
}

// entry is one ledger line: a worker process started an attempt of a job,
// or its handler returned success.
type entry struct {
	job     compute.JobID
	attempt int
	pid     int
	event   string // "start" or "done"
}

// readLedger parses the ledger. A last line without its newline is being
// written and is left for the next read.
func (c *cluster) readLedger() []entry {
	c.t.Helper()
	lines := c.readLedgerLines()
	entries := make([]entry, len(lines))
	for i, l := range lines {
		entries[i] = l.entry
	}
	return entries
}

// timedEntry is a ledger line with the worker's wall-clock time and the
// job's partition key (zero and "" on lines of the older four-field form).
// All workers run on this machine, so their clocks agree with each other
// and with the test's.
type timedEntry struct {
	entry
	at  time.Time
	key string
}

// readLedgerLines parses every complete line of the ledger.
func (c *cluster) readLedgerLines() []timedEntry {
	c.t.Helper()
	b, err := os.ReadFile(c.ledger)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		c.t.Fatal(err)
	}
	text := string(b)
	text = text[:strings.LastIndexByte(text, '\n')+1]
	var entries []timedEntry
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		e, at, key, err := parseLedgerLine(sc.Text())
		if err != nil {
			c.t.Fatal(err)
		}
		entries = append(entries, timedEntry{e, at, key})
	}
	return entries
}

// parseLedgerLine parses one ledger line: "<job id> <attempt> <pid>
// <start|done>", then (from workers that write them) the wall-clock time in
// Unix nanoseconds and the Go-quoted partition key. Lines without them give
// a zero time and an empty key.
func parseLedgerLine(line string) (e entry, at time.Time, key string, err error) {
	bad := func(why string) (entry, time.Time, string, error) {
		return entry{}, time.Time{}, "", fmt.Errorf("bad ledger line %q: %s", line, why)
	}
	f := strings.SplitN(line, " ", 6)
	if len(f) != 4 && len(f) != 6 {
		return bad("want 4 or 6 fields")
	}
	id, err := compute.ParseJobID(f[0])
	if err != nil {
		return bad(err.Error())
	}
	attempt, err1 := strconv.Atoi(f[1])
	pid, err2 := strconv.Atoi(f[2])
	if err1 != nil || err2 != nil || (f[3] != "start" && f[3] != "done") {
		return bad("attempt, pid or event")
	}
	e = entry{job: id, attempt: attempt, pid: pid, event: f[3]}
	if len(f) == 6 {
		nanos, err := strconv.ParseInt(f[4], 10, 64)
		if err != nil {
			return bad("time: " + err.Error())
		}
		if key, err = strconv.Unquote(f[5]); err != nil {
			return bad("partition key: " + err.Error())
		}
		at = time.Unix(0, nanos)
	}
	return e, at, key, nil
}

// has reports whether the ledger holds the entry.
func (c *cluster) has(e entry) bool {
	return slices.Contains(c.readLedger(), e)
}

// attemptKey names one attempt of one job.
type attemptKey struct {
	job     compute.JobID
	attempt int
}

// openAttempts returns the attempts that pid started and whose handler has
// not (yet) succeeded.
func openAttempts(ledger []entry, pid int) []attemptKey {
	done := make(map[attemptKey]bool)
	for _, e := range ledger {
		if e.pid == pid && e.event == "done" {
			done[attemptKey{e.job, e.attempt}] = true
		}
	}
	var open []attemptKey
	for _, e := range ledger {
		k := attemptKey{e.job, e.attempt}
		if e.pid == pid && e.event == "start" && !done[k] {
			open = append(open, k)
		}
	}
	return open
}

// listAll reads every job of the queues.
func (c *cluster) listAll(queues []string) map[compute.JobID]*compute.Job {
	c.t.Helper()
	jobs := make(map[compute.JobID]*compute.Job)
	for _, queue := range queues {
		opts := compute.ListOptions{Queue: queue, Limit: 10000}
		for {
			ctx, cancel := c.ctx()
			page, err := c.q.List(ctx, opts)
			cancel()
			if err != nil {
				c.t.Fatal(err)
			}
			if len(page) == 0 {
				break
			}
			for _, j := range page {
				jobs[j.ID] = j
			}
			opts.After = page[len(page)-1].ID
		}
	}
	return jobs
}

// stats sums up what the ledger saw.
type stats struct {
	attempts int // attempts started
	reruns   int // jobs started more than once
}

// checkInvariants checks the end state against want and the ledger:
//   - the database holds exactly the jobs enqueued, each in its expected
//     status, complete ones with exactly the output files their config
//     asked for, and no job past its max attempts;
//   - no attempt of a job was started by two processes (the claim is
//     exclusive), and no attempt succeeded twice;
//   - each complete job's final row (attempt, worker) names an attempt
//     whose handler succeeded in that very process: no stale holder wrote
//     the result.
func (c *cluster) checkInvariants(want map[compute.JobID]expect) stats {
	c.t.Helper()
	var queues []string
	for _, e := range want {
		if !slices.Contains(queues, e.queue) {
			queues = append(queues, e.queue)
		}
	}
	jobs := c.listAll(queues)
	if len(jobs) != len(want) {
		c.t.Errorf("the database holds %d jobs; %d were enqueued", len(jobs), len(want))
	}
	ledger := c.readLedger()
	starts := make(map[attemptKey][]int)
	dones := make(map[attemptKey][]int)
	for _, e := range ledger {
		k := attemptKey{e.job, e.attempt}
		if e.event == "start" {
			starts[k] = append(starts[k], e.pid)
		} else {
			dones[k] = append(dones[k], e.pid)
		}
		if _, ok := want[e.job]; !ok {
			c.t.Errorf("the ledger names job %s, which the test never enqueued", e.job)
		}
	}
	var st stats
	startedJobs := make(map[compute.JobID]int)
	for k, pids := range starts {
		st.attempts++
		startedJobs[k.job]++
		if len(pids) > 1 {
			c.t.Errorf("job %s attempt %d was started by %d processes %v: a claim was not exclusive", k.job, k.attempt, len(pids), pids)
		}
	}
	for _, n := range startedJobs {
		if n > 1 {
			st.reruns++
		}
	}
	for k, pids := range dones {
		if len(pids) > 1 || !slices.Contains(starts[k], pids[0]) {
			c.t.Errorf("job %s attempt %d: done by %v but started by %v", k.job, k.attempt, pids, starts[k])
		}
	}
	bad := 0
	for id, e := range want {
		j, ok := jobs[id]
		if !ok {
			c.t.Errorf("job %s is missing from the database", id)
			continue
		}
		var problems []string
		if j.Status != e.status {
			problems = append(problems, fmt.Sprintf("status %s, want %s (errors %v)", j.Status, e.status, j.Errors))
		}
		if j.Spent() > j.MaxAttempts {
			problems = append(problems, fmt.Sprintf("%d attempts spent (%d claims, %d snoozes), past max attempts %d", j.Spent(), j.Attempt, j.Snoozes, j.MaxAttempts))
		}
		if j.Status == compute.StatusComplete {
			if !slices.Equal(j.OutputFiles, e.outputs) {
				problems = append(problems, fmt.Sprintf("output files %q, want %q", j.OutputFiles, e.outputs))
			}
			k := attemptKey{id, j.Attempt}
			if !slices.ContainsFunc(dones[k], func(pid int) bool { return fmt.Sprintf("worker-%d", pid) == j.Worker }) {
				problems = append(problems, fmt.Sprintf("complete at attempt %d by %s, but the ledger shows no success of that attempt in that process (done by %v)",
					j.Attempt, j.Worker, dones[k]))
			}
		}
		if len(problems) > 0 {
			if bad++; bad <= 10 {
				c.t.Errorf("job %s: %s", id, strings.Join(problems, "; "))
			}
		}
	}
	if bad > 10 {
		c.t.Errorf("... and %d more bad jobs", bad-10)
	}
	return st
}
