package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/internal/testdb"
)

// TestMain shares one PostgreSQL server between the tests; each test gets
// a database of its own.
func TestMain(m *testing.M) { os.Exit(testdb.Run(m)) }

// result is one run of the command.
type result struct {
	code           int
	stdout, stderr string
}

// cli runs the command in-process with stdin as its input.
func cli(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out, errOut bytes.Buffer
	code := run(ctx, args, strings.NewReader(stdin), &out, &errOut)
	return result{code, out.String(), errOut.String()}
}

// must runs the command and fails the test unless it exits 0.
func must(t *testing.T, args ...string) string {
	t.Helper()
	r := cli(t, "", args...)
	if r.code != 0 {
		t.Fatalf("compute %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// mustJSON runs the command with --output json and decodes its document.
func mustJSON[T any](t *testing.T, args ...string) T {
	t.Helper()
	out := must(t, append(args, "--output", "json")...)
	var v T
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("compute %s: output is not one JSON document: %v\n%s", strings.Join(args, " "), err, out)
	}
	return v
}

// wantExit checks an exit status and returns the result.
func wantExit(t *testing.T, code int, args ...string) result {
	t.Helper()
	r := cli(t, "", args...)
	if r.code != code {
		t.Fatalf("compute %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, code, r.stdout, r.stderr)
	}
	return r
}

// migrated returns the connection string of a fresh database migrated by
// the command, and a Queue on it for checking outcomes.
func migrated(t *testing.T) (string, *compute.Queue) {
	t.Helper()
	db := testdb.New(t)
	must(t, "migrate", "--database-url", db)
	q, err := compute.Open(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(q.Close)
	return db, q
}

func status(t *testing.T, q *compute.Queue, id string) string {
	t.Helper()
	jid, err := compute.ParseJobID(id)
	if err != nil {
		t.Fatal(err)
	}
	var s *string
	if err := q.Pool().QueryRow(context.Background(), `SELECT status FROM compute.jobs WHERE job_id = $1`, jid[:]).Scan(&s); err != nil && !strings.Contains(err.Error(), "no rows") {
		t.Fatal(err)
	}
	if s == nil {
		return "gone"
	}
	return *s
}

func count(t *testing.T, q *compute.Queue, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := q.Pool().QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

type jobDoc struct {
	ID           string                 `json:"id"`
	Queue        string                 `json:"queue"`
	Status       string                 `json:"status"`
	Attempt      int                    `json:"attempt"`
	MaxAttempts  int                    `json:"max_attempts"`
	Priority     int                    `json:"priority"`
	Created      time.Time              `json:"created"`
	RunAt        time.Time              `json:"run_at"`
	PartitionKey string                 `json:"partition_key"`
	UniqueKey    string                 `json:"unique_key"`
	InputFiles   []string               `json:"input_files"`
	Errors       []compute.AttemptError `json:"errors"`
	Config       *string                `json:"config"`
	Events       []struct {
		Cursor string `json:"cursor"`
		Status string `json:"status"`
	} `json:"events"`
}

func TestMigrateStatusAndVersion(t *testing.T) {
	t.Parallel()
	db := testdb.New(t)
	type versions struct{ Current, Latest int64 }
	v := mustJSON[versions](t, "migrate", "status", "--database-url", db)
	if v.Current != 0 || v.Latest < 12 {
		t.Fatalf("fresh database: status %+v, want current 0 and latest >= 12", v)
	}
	if out := must(t, "migrate", "status", "--database-url", db); !strings.Contains(out, "behind") {
		t.Errorf("status of a fresh database does not say it is behind: %q", out)
	}
	moved := mustJSON[struct{ From, To int64 }](t, "migrate", "--database-url", db)
	if moved.From != 0 || moved.To != v.Latest {
		t.Fatalf("migrate moved %+v, want 0 -> %d", moved, v.Latest)
	}
	if out := must(t, "migrate", "--database-url", db); !strings.Contains(out, "nothing to do") {
		t.Errorf("second migrate: %q", out)
	}
	// Down needs a confirmation; without a terminal, --yes.
	r := wantExit(t, 2, "migrate", "--to", "4", "--database-url", db)
	if !strings.Contains(r.stderr, "--yes") {
		t.Errorf("refused downward migration does not mention --yes: %s", r.stderr)
	}
	if v := mustJSON[versions](t, "migrate", "status", "--database-url", db); v.Current != v.Latest {
		t.Fatalf("refused downward migration changed the version to %d", v.Current)
	}
	must(t, "migrate", "--to", "4", "--yes", "--database-url", db)
	if v := mustJSON[versions](t, "migrate", "status", "--database-url", db); v.Current != 4 {
		t.Fatalf("after --to 4: version %d", v.Current)
	}
	wantExit(t, 2, "migrate", "--to", "999", "--database-url", db)
	must(t, "migrate", "--database-url", db)

	ver := mustJSON[struct {
		Version string `json:"version"`
		Schema  int64  `json:"schema"`
	}](t, "version")
	if ver.Version == "" || ver.Schema != v.Latest {
		t.Errorf("version: %+v, want schema %d", ver, v.Latest)
	}
	if out := must(t, "version"); !strings.HasPrefix(out, "compute ") {
		t.Errorf("version: %q", out)
	}
}

func TestEnqueueListGet(t *testing.T) {
	t.Parallel()
	db, q := migrated(t)
	cfgFile := filepath.Join(t.TempDir(), "job.json")
	if err := os.WriteFile(cfgFile, []byte(`{"from": "file"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	first := must(t, "enqueue", "--database-url", db, "--queue", "thumbs", "--config", `{"w": 256}`,
		"--input", "a.png", "--input", "b.png", "--priority", "3", "--partition-key", "cust-1", "--max-attempts", "7")
	id := strings.TrimSpace(first)
	if _, err := compute.ParseJobID(id); err != nil {
		t.Fatalf("enqueue printed %q, not a job id", first)
	}
	fromFile := mustJSON[struct {
		ID        string `json:"id"`
		Duplicate bool   `json:"duplicate"`
	}](t, "enqueue", "--database-url", db, "--queue", "thumbs", "--config", "@"+cfgFile, "--unique-key", "k1", "--delay", "1h")
	again := mustJSON[struct {
		ID        string `json:"id"`
		Duplicate bool   `json:"duplicate"`
	}](t, "enqueue", "--database-url", db, "--queue", "thumbs", "--unique-key", "k1")
	if fromFile.Duplicate || !again.Duplicate || again.ID != fromFile.ID {
		t.Fatalf("unique key: first %+v, second %+v; want the second to be a duplicate of the first", fromFile, again)
	}
	r := cli(t, `{"from": "stdin"}`, "enqueue", "--database-url", db, "--queue", "other", "--config", "@-", "--run-at", "2030-01-02T15:04:05Z")
	if r.code != 0 {
		t.Fatalf("enqueue --config @-: exit %d: %s", r.code, r.stderr)
	}
	stdinJob, err := q.Get(context.Background(), mustID(t, strings.TrimSpace(r.stdout)))
	if err != nil || stdinJob.Config != `{"from": "stdin"}` || !stdinJob.RunAt.Equal(time.Date(2030, 1, 2, 15, 4, 5, 0, time.UTC)) {
		t.Errorf("job enqueued from stdin: %+v, %v", stdinJob, err)
	}
	if got, err := q.Get(context.Background(), mustID(t, fromFile.ID)); err != nil || got.Config != `{"from": "file"}` {
		t.Errorf("job enqueued with --config @file: %+v, %v", got, err)
	}

	jobs := mustJSON[[]jobDoc](t, "jobs", "list", "--database-url", db, "--queue", "thumbs")
	if len(jobs) != 2 || jobs[0].ID != id || jobs[1].ID != fromFile.ID {
		t.Fatalf("jobs list --queue thumbs: %+v, want %s then %s", jobs, id, fromFile.ID)
	}
	j := jobs[0]
	if j.Queue != "thumbs" || j.Status != "queued" || j.Attempt != 0 || j.MaxAttempts != 7 || j.Priority != 3 ||
		j.PartitionKey != "cust-1" || j.Created.IsZero() || strings.Join(j.InputFiles, ",") != "a.png,b.png" {
		t.Errorf("listed job: %+v", j)
	}
	if time.Until(jobs[1].RunAt) < 50*time.Minute {
		t.Errorf("--delay 1h: run_at %s", jobs[1].RunAt)
	}
	all := mustJSON[[]jobDoc](t, "jobs", "list", "--database-url", db)
	if len(all) != 3 {
		t.Errorf("jobs list without a queue: %d jobs, want 3", len(all))
	}
	byKey := mustJSON[[]jobDoc](t, "jobs", "list", "--database-url", db, "--partition-key", "cust-1", "--status", "queued")
	if len(byKey) != 1 || byKey[0].ID != id {
		t.Errorf("jobs list --partition-key: %+v", byKey)
	}
	page := mustJSON[[]jobDoc](t, "jobs", "list", "--database-url", db, "--limit", "1", "--after", id, "--queue", "thumbs")
	if len(page) != 1 || page[0].ID != fromFile.ID {
		t.Errorf("second page: %+v", page)
	}
	if out := must(t, "jobs", "list", "--database-url", db); !strings.Contains(out, id) || !strings.Contains(out, "STATUS") {
		t.Errorf("table output lacks the job or the header:\n%s", out)
	}

	if err := q.Cancel(context.Background(), mustID(t, id), "operator says no"); err != nil {
		t.Fatal(err)
	}
	got := mustJSON[jobDoc](t, "jobs", "get", id, "--database-url", db)
	if got.Config == nil || *got.Config != `{"w": 256}` || got.Status != "failed" || len(got.Errors) != 1 ||
		!strings.Contains(got.Errors[0].Error, "operator says no") {
		t.Fatalf("jobs get: %+v", got)
	}
	if len(got.Events) != 2 || got.Events[0].Status != "queued" || got.Events[1].Status != "failed" || got.Events[1].Cursor == "" {
		t.Errorf("jobs get timeline: %+v, want queued then failed", got.Events)
	}
	out := must(t, "jobs", "get", id, "--database-url", db)
	for _, want := range []string{`{"w": 256}`, "operator says no", "timeline", "a.png, b.png"} {
		if !strings.Contains(out, want) {
			t.Errorf("jobs get table output lacks %q:\n%s", want, out)
		}
	}
	hexID := strings.ReplaceAll(id, "-", "")
	if got := mustJSON[jobDoc](t, "jobs", "get", hexID, "--database-url", db); got.ID != id {
		t.Errorf("jobs get with the 32-hex form: %s", got.ID)
	}
	wantExit(t, 1, "jobs", "get", "00000000-0000-7000-8000-000000000000", "--database-url", db)
	wantExit(t, 2, "enqueue", "--database-url", db, "--queue", "bad queue!")
	wantExit(t, 2, "enqueue", "--database-url", db)
}

func mustID(t *testing.T, s string) compute.JobID {
	t.Helper()
	id, err := compute.ParseJobID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func enqueueMany(t *testing.T, q *compute.Queue, queue string, n int) []string {
	t.Helper()
	jobs := make([]compute.Job, n)
	for i := range jobs {
		jobs[i] = compute.Job{Queue: queue, Config: fmt.Sprint(i)}
	}
	ids, err := q.EnqueueMany(context.Background(), jobs)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, n)
	for i, id := range ids {
		out[i] = id.String()
	}
	return out
}

func TestJobActionsByID(t *testing.T) {
	t.Parallel()
	db, q := migrated(t)
	ids := enqueueMany(t, q, "work", 3)
	running, err := q.Claim(context.Background(), "work", 1)
	if err != nil || len(running) != 1 || running[0].ID.String() != ids[0] {
		t.Fatalf("claim: %v %v", running, err)
	}

	// Cancel two (one running, one queued), by id.
	res := mustJSON[struct {
		Changed int `json:"changed"`
		Results []struct {
			ID string `json:"id"`
			OK bool   `json:"ok"`
		} `json:"results"`
	}](t, "jobs", "cancel", ids[0], ids[1], "--reason", "test", "--database-url", db)
	if res.Changed != 2 || len(res.Results) != 2 || !res.Results[0].OK {
		t.Fatalf("cancel: %+v", res)
	}
	if status(t, q, ids[0]) != "failed" || status(t, q, ids[1]) != "failed" || status(t, q, ids[2]) != "queued" {
		t.Fatal("cancel by id did not fail exactly the two jobs")
	}
	// Cancelling a finished job fails that id and says why.
	r := wantExit(t, 1, "jobs", "cancel", ids[0], "--database-url", db)
	if !strings.Contains(r.stderr, "status does not allow") {
		t.Errorf("cancel of a failed job: %s", r.stderr)
	}
	if out := must(t, "jobs", "retry", ids[1], "--database-url", db); !strings.Contains(out, "retried "+ids[1]) {
		t.Errorf("retry: %q", out)
	}
	if status(t, q, ids[1]) != "queued" {
		t.Fatal("retry by id did not queue the job")
	}
	must(t, "jobs", "delete", ids[0], "--database-url", db)
	if status(t, q, ids[0]) != "gone" {
		t.Fatal("delete by id left the job")
	}
	// A running job cannot be deleted.
	running, err = q.Claim(context.Background(), "work", 1)
	if err != nil || len(running) != 1 {
		t.Fatalf("claim: %v %v", running, err)
	}
	r = wantExit(t, 1, "jobs", "delete", running[0].ID.String(), ids[2], "--database-url", db)
	if !strings.Contains(r.stderr, "cancel it first") {
		t.Errorf("delete of a running job: %s", r.stderr)
	}
	if status(t, q, running[0].ID.String()) != "in-progress" {
		t.Fatal("delete removed a running job")
	}
	wantExit(t, 1, "jobs", "retry", "00000000-0000-7000-8000-000000000000", "--database-url", db)
	wantExit(t, 2, "jobs", "retry", "not-an-id", "--database-url", db)
	wantExit(t, 2, "jobs", "retry", "--database-url", db)
	wantExit(t, 2, "jobs", "retry", ids[1], "--queue", "work", "--database-url", db)
}

// TestJobActionsByFilter covers the bulk path: more than one batch, the
// confirmation, and that other queues are untouched.
func TestJobActionsByFilter(t *testing.T) {
	db, q := migrated(t)
	enqueueMany(t, q, "bulk", 2500)
	others := enqueueMany(t, q, "keep", 3)
	countBulk := func(status string) int {
		return count(t, q, `SELECT count(*) FROM compute.jobs WHERE queue = 'bulk' AND status = $1`, status)
	}

	// No terminal and no --yes: refused with exit 2, nothing changed.
	r := wantExit(t, 2, "jobs", "cancel", "--queue", "bulk", "--database-url", db)
	if !strings.Contains(r.stderr, "pass --yes") {
		t.Errorf("refusal does not say to pass --yes: %s", r.stderr)
	}
	if countBulk("queued") != 2500 {
		t.Fatal("a refused bulk cancel changed jobs")
	}
	// A terminal that answers no: exit 1, nothing changed.
	terminal := isTerminal
	isTerminal = func(io.Reader) bool { return true }
	defer func() { isTerminal = terminal }()
	r = cli(t, "n\n", "jobs", "cancel", "--queue", "bulk", "--database-url", db)
	if r.code != 1 || !strings.Contains(r.stderr, "[y/N]") || countBulk("queued") != 2500 {
		t.Fatalf("declined confirmation: exit %d, stderr %s, queued %d", r.code, r.stderr, countBulk("queued"))
	}
	// Yes on the terminal: every match cancelled, across batches.
	r = cli(t, "yes\n", "jobs", "cancel", "--queue", "bulk", "--database-url", db)
	if r.code != 0 || !strings.Contains(r.stdout, "cancelled 2500 job(s)") {
		t.Fatalf("confirmed cancel: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if countBulk("failed") != 2500 {
		t.Fatalf("bulk cancel: %d failed, want 2500", countBulk("failed"))
	}
	isTerminal = terminal

	retried := mustJSON[struct {
		Changed int `json:"changed"`
	}](t, "jobs", "retry", "--queue", "bulk", "--status", "failed", "--yes", "--database-url", db)
	if retried.Changed != 2500 || countBulk("queued") != 2500 {
		t.Fatalf("bulk retry changed %d, %d queued; want 2500", retried.Changed, countBulk("queued"))
	}
	wantExit(t, 2, "jobs", "retry", "--status", "complete", "--yes", "--database-url", db)

	deleted := mustJSON[struct {
		Changed int `json:"changed"`
	}](t, "jobs", "delete", "--queue", "bulk", "--yes", "--database-url", db)
	if deleted.Changed != 2500 || count(t, q, `SELECT count(*) FROM compute.jobs WHERE queue = 'bulk'`) != 0 {
		t.Fatalf("bulk delete changed %d", deleted.Changed)
	}
	for _, id := range others {
		if status(t, q, id) != "queued" {
			t.Fatalf("job %s of another queue was touched", id)
		}
	}
}

type queueDoc struct {
	Name                  string           `json:"name"`
	Paused                bool             `json:"paused"`
	Counts                map[string]int64 `json:"counts"`
	CountsEstimated       bool             `json:"counts_estimated"`
	Runnable              int64            `json:"runnable"`
	OldestRunnableSeconds float64          `json:"oldest_runnable_seconds"`
	Workers               int              `json:"workers"`
	Rules                 struct {
		MaxRunning        int     `json:"max_running"`
		RateLimit         int     `json:"rate_limit"`
		RatePeriodSeconds float64 `json:"rate_period_seconds"`
		Fair              bool    `json:"fair"`
	} `json:"rules"`
}

func TestQueues(t *testing.T) {
	t.Parallel()
	db, q := migrated(t)
	enqueueMany(t, q, "q1", 4)
	claimed, err := q.Claim(context.Background(), "q1", 2)
	if err != nil || len(claimed) != 2 {
		t.Fatalf("claim: %v %v", claimed, err)
	}
	if err := q.Complete(context.Background(), compute.Completion{Job: claimed[0]}); err != nil {
		t.Fatal(err)
	}
	must(t, "queues", "pause", "q1", "--database-url", db)
	must(t, "queues", "pause", "empty", "--database-url", db)
	set := mustJSON[struct {
		Name  string `json:"name"`
		Rules struct {
			MaxRunning        int     `json:"max_running"`
			RateLimit         int     `json:"rate_limit"`
			RatePeriodSeconds float64 `json:"rate_period_seconds"`
		} `json:"rules"`
	}](t, "queues", "set", "q1", "--max-running", "5", "--rate-limit", "10", "--rate-period", "1m", "--database-url", db)
	if set.Rules.MaxRunning != 5 || set.Rules.RateLimit != 10 || set.Rules.RatePeriodSeconds != 60 {
		t.Fatalf("queues set: %+v", set)
	}
	// A flag not given keeps its value.
	must(t, "queues", "set", "q1", "--fair", "--database-url", db)
	s, err := q.GetQueueSettings(context.Background(), "q1")
	if err != nil || s.MaxRunning != 5 || !s.Fair || !s.Paused {
		t.Fatalf("settings after two sets: %+v %v", s, err)
	}
	wantExit(t, 2, "queues", "set", "q1", "--rate-limit", "0", "--database-url", db) // a period with no limit

	queues := mustJSON[[]queueDoc](t, "queues", "list", "--database-url", db)
	if len(queues) != 2 || queues[0].Name != "empty" || queues[1].Name != "q1" {
		t.Fatalf("queues list: %+v", queues)
	}
	q1 := queues[1]
	if !q1.Paused || q1.Counts["queued"] != 2 || q1.Counts["in_progress"] != 1 || q1.Counts["complete"] != 1 ||
		q1.Counts["failed"] != 0 || q1.CountsEstimated || q1.Runnable != 2 || q1.OldestRunnableSeconds <= 0 ||
		q1.Rules.MaxRunning != 5 || !q1.Rules.Fair {
		t.Errorf("q1: %+v", q1)
	}
	if _, err := q.Pool().Exec(context.Background(), `ANALYZE compute.jobs`); err != nil { // estimates need statistics
		t.Fatal(err)
	}
	est := mustJSON[[]queueDoc](t, "queues", "list", "--estimate", "--database-url", db)
	if len(est) != 2 || !est[1].CountsEstimated || est[1].Counts["queued"] != 2 {
		t.Errorf("queues list --estimate: %+v", est)
	}
	if r := mustJSON[struct {
		Name   string `json:"name"`
		Paused bool   `json:"paused"`
	}](t, "queues", "resume", "q1", "--database-url", db); r.Name != "q1" || r.Paused {
		t.Errorf("queues resume: %+v", r)
	}
	if s, _ := q.GetQueueSettings(context.Background(), "q1"); s.Paused {
		t.Error("resume left q1 paused")
	}
	if out := must(t, "queues", "list", "--database-url", db); !strings.Contains(out, "max 5 running") {
		t.Errorf("queues list table:\n%s", out)
	}
	wantExit(t, 2, "queues", "pause", "--database-url", db)
}

// TestWorkersPeriodicExplain runs a real worker with a periodic schedule
// and reads what it leaves in the registry and the periodic table.
func TestWorkersPeriodicExplain(t *testing.T) {
	t.Parallel()
	db, q := migrated(t)
	w, err := compute.NewWorker(q, compute.WorkerConfig{
		Queues: map[string]compute.QueueConfig{"served": {Handler: func(ctx context.Context, j *compute.Job) ([]string, error) {
			return nil, nil
		}}},
		Periodic: []compute.PeriodicJob{{Name: "tick", Every: time.Second, Job: compute.Job{Queue: "served"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
	}()

	type workerDoc struct {
		ID     string   `json:"id"`
		Queues []string `json:"queues"`
		Live   bool     `json:"live"`
	}
	type tickDoc struct {
		Name     string    `json:"name"`
		LastTick time.Time `json:"last_tick"`
	}
	deadline := time.Now().Add(30 * time.Second)
	var workers []workerDoc
	var ticks []tickDoc
	for time.Now().Before(deadline) {
		workers = mustJSON[[]workerDoc](t, "workers", "list", "--database-url", db)
		ticks = mustJSON[[]tickDoc](t, "periodic", "list", "--database-url", db)
		if len(workers) == 1 && len(ticks) == 1 {
			break
		}
		time.Sleep(50 * time.Millisecond) // polling a condition with a deadline
	}
	if len(workers) != 1 || !workers[0].Live || strings.Join(workers[0].Queues, ",") != "served" {
		t.Fatalf("workers list: %+v", workers)
	}
	if len(ticks) != 1 || ticks[0].Name != "tick" || ticks[0].LastTick.IsZero() {
		t.Fatalf("periodic list: %+v", ticks)
	}
	if out := must(t, "workers", "list", "--database-url", db); !strings.Contains(out, "live") {
		t.Errorf("workers list table:\n%s", out)
	}
	if out := must(t, "periodic", "list", "--database-url", db); !strings.Contains(out, "tick") {
		t.Errorf("periodic list table:\n%s", out)
	}

	// Explain a job of a paused queue nobody serves.
	id := strings.TrimSpace(must(t, "enqueue", "--queue", "lonely", "--database-url", db))
	must(t, "queues", "pause", "lonely", "--database-url", db)
	ex := mustJSON[struct {
		ID      string `json:"id"`
		Status  string `json:"status"`
		Reasons []struct {
			Kind string `json:"kind"`
			Text string `json:"text"`
		} `json:"reasons"`
	}](t, "explain", id, "--database-url", db)
	kinds := map[string]bool{}
	for _, r := range ex.Reasons {
		kinds[r.Kind] = true
	}
	if ex.ID != id || ex.Status != "queued" || !kinds[string(compute.ReasonPaused)] || !kinds[string(compute.ReasonNoWorkers)] {
		t.Errorf("explain: %+v", ex)
	}
	if out := must(t, "explain", id, "--database-url", db); !strings.Contains(out, "paused") {
		t.Errorf("explain table:\n%s", out)
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// follow starts events follow and returns its output and a stop function
// that cancels it (as SIGINT does) and returns its exit status.
func follow(t *testing.T, args ...string) (*syncBuffer, func() int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out, errOut := &syncBuffer{}, &syncBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append([]string{"events", "follow"}, args...), strings.NewReader(""), out, errOut)
	}()
	stop := func() int {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("events follow: exit %d: %s", code, errOut.String())
			}
			return code
		case <-time.After(10 * time.Second):
			t.Fatal("events follow did not stop within 10s of its context ending")
			return -1
		}
	}
	return out, stop
}

// waitFor polls until cond holds or fails the test after 20 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestEventsFollow(t *testing.T) {
	t.Parallel()
	db, q := migrated(t)
	before := enqueueMany(t, q, "old", 1)[0]

	// From the oldest retained event, then live, filtered to one queue.
	out, stop := follow(t, "--queue", "watched", "--output", "json", "--database-url", db)
	other := enqueueMany(t, q, "noise", 1)[0]
	watched := enqueueMany(t, q, "watched", 1)[0]
	if err := q.Cancel(context.Background(), mustID(t, watched), ""); err != nil {
		t.Fatal(err)
	}
	type eventDoc struct {
		Cursor  string `json:"cursor"`
		JobID   string `json:"job_id"`
		Queue   string `json:"queue"`
		Status  string `json:"status"`
		Attempt int    `json:"attempt"`
	}
	var events []eventDoc
	waitFor(t, "the watched job's queued and failed events", func() bool {
		events = events[:0]
		for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			if line == "" {
				continue
			}
			var ev eventDoc
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				t.Fatalf("follow line is not a JSON object: %q", line)
			}
			events = append(events, ev)
		}
		return len(events) == 2
	})
	stop()
	if events[0].JobID != watched || events[0].Status != "queued" || events[1].Status != "failed" || events[0].Cursor == "" {
		t.Fatalf("followed events: %+v", events)
	}
	if s := out.String(); strings.Contains(s, other) || strings.Contains(s, before) {
		t.Errorf("--queue watched printed other queues' events:\n%s", s)
	}

	// Without a filter the retained events start at the oldest; --from
	// resumes after a printed cursor.
	all, stop := follow(t, "--database-url", db)
	waitFor(t, "the first job's event", func() bool { return strings.Contains(all.String(), before) })
	stop()
	resumed, stop := follow(t, "--from", events[0].Cursor, "--output", "json", "--database-url", db)
	waitFor(t, "the event after the cursor", func() bool { return strings.Contains(resumed.String(), `"failed"`) })
	stop()
	if strings.Contains(resumed.String(), `"queued"`) {
		t.Errorf("--from printed the event at its cursor again:\n%s", resumed.String())
	}

	// --from now skips the past.
	now, stop := follow(t, "--from", "now", "--database-url", db)
	// The header comes once the starting point is read.
	waitFor(t, "the header", func() bool { return strings.HasPrefix(now.String(), "CURSOR") })
	late := enqueueMany(t, q, "late", 1)[0]
	waitFor(t, "the new job's event", func() bool { return strings.Contains(now.String(), late) })
	stop()
	if strings.Contains(now.String(), before) {
		t.Errorf("--from now printed an old event:\n%s", now.String())
	}
	wantExit(t, 2, "events", "follow", "--from", "yesterday", "--database-url", db)
}

type doctorDoc struct {
	OK     bool `json:"ok"`
	Checks []struct {
		Name   string `json:"name"`
		Status string `json:"status"`
		Detail string `json:"detail"`
		Advice string `json:"advice"`
	} `json:"checks"`
}

func (d doctorDoc) status(name string) string {
	for _, c := range d.Checks {
		if c.Name == name {
			return c.Status
		}
	}
	return "missing"
}

func doctor(t *testing.T, db string, code int) doctorDoc {
	t.Helper()
	r := wantExit(t, code, "doctor", "--output", "json", "--database-url", db)
	var d doctorDoc
	if err := json.Unmarshal([]byte(r.stdout), &d); err != nil {
		t.Fatalf("doctor output: %v\n%s", err, r.stdout)
	}
	return d
}

func TestDoctor(t *testing.T) {
	t.Parallel()
	// A database never migrated fails the schema check.
	bare := testdb.New(t)
	if d := doctor(t, bare, 1); d.OK || d.status("schema version") != "fail" {
		t.Fatalf("doctor on a bare database: %+v", d)
	}

	db, q := migrated(t)
	d := doctor(t, db, 0)
	for _, name := range []string{"schema version", "notifications", "vacuum horizon", "compute.jobs vacuum", "expired leases", "queues served"} {
		if d.status(name) != "ok" {
			t.Errorf("healthy database: check %q is %s: %+v", name, d.status(name), d)
		}
	}
	if out := must(t, "doctor", "--database-url", db); !strings.Contains(out, "delivered end to end") {
		t.Errorf("doctor table:\n%s", out)
	}

	// Notifications turned off are a warning: workers poll.
	if err := q.SetMeta(context.Background(), compute.MetaNotify, "off"); err != nil {
		t.Fatal(err)
	}
	if d := doctor(t, db, 0); !d.OK || d.status("notifications") != "warn" {
		t.Errorf("notify off: %+v", d)
	}
	if err := q.DeleteMeta(context.Background(), compute.MetaNotify); err != nil {
		t.Fatal(err)
	}

	// A backlog nobody serves is a warning: exit 0.
	enqueueMany(t, q, "orphan", 2)
	d = doctor(t, db, 0)
	if !d.OK || d.status("queues served") != "warn" {
		t.Errorf("backlog without workers: %+v", d)
	}
	// A running job whose lease ran out long ago, with nobody to rescue
	// it, fails.
	claimed, err := q.Claim(context.Background(), "orphan", 1)
	if err != nil || len(claimed) != 1 {
		t.Fatalf("claim: %v %v", claimed, err)
	}
	count(t, q, `WITH u AS (UPDATE compute.jobs SET lease_expires = now() - interval '10 minutes' WHERE job_id = $1 RETURNING 1) SELECT count(*) FROM u`, claimed[0].ID[:])
	d = doctor(t, db, 1)
	if d.OK || d.status("expired leases") != "fail" {
		t.Errorf("expired lease: %+v", d)
	}
	// A schema behind the latest fails.
	must(t, "migrate", "--to", "9", "--yes", "--database-url", db)
	if d := doctor(t, db, 1); d.status("schema version") != "fail" {
		t.Errorf("schema behind: %+v", d)
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	db := "postgres://nobody@127.0.0.1:1/none" // never reached: usage errors come first
	for _, args := range [][]string{
		{},
		{"nonsense"},
		{"jobs"},
		{"jobs", "frobnicate"},
		{"jobs", "list", "--bogus"},
		{"jobs", "list", "--output", "yaml", "--database-url", db},
		{"jobs", "list", "--status", "sleeping", "--database-url", db},
		{"jobs", "list", "--limit", "0", "--database-url", db},
		{"jobs", "list", "extra", "--database-url", db},
		{"jobs", "get", "--database-url", db},
		{"jobs", "get", "nope", "--database-url", db},
		{"jobs", "cancel", "--database-url", db},
		{"jobs", "delete", "--queue", "q", "--database-url", db},
		{"queues", "set", "--database-url", db},
		{"queues", "set", "q", "--max-running", "many", "--database-url", db},
		{"explain", "a", "b", "--database-url", db},
		{"migrate", "sideways", "--database-url", db},
		{"enqueue", "--queue", "q", "--run-at", "tomorrow", "--database-url", db},
		{"enqueue", "--queue", "q", "--delay", "1s", "--run-at", "2030-01-01T00:00:00Z", "--database-url", db},
		{"events", "follow", "--from", "1.2", "--database-url", db},
		{"version", "now"},
	} {
		r := cli(t, "", args...)
		if r.code != 2 {
			t.Errorf("compute %s: exit %d, want 2\n%s", strings.Join(args, " "), r.code, r.stderr)
			continue
		}
		if !strings.Contains(r.stderr, "Usage:") && !strings.Contains(r.stderr, "--help") {
			t.Errorf("compute %s: stderr does not say what is expected:\n%s", strings.Join(args, " "), r.stderr)
		}
	}
	// --help at every level prints usage on stdout and exits 0.
	for _, args := range [][]string{{"--help"}, {"help"}, {"help", "jobs"}, {"jobs", "--help"}, {"jobs", "list", "--help"},
		{"queues", "set", "-h"}, {"events", "follow", "--help"}, {"doctor", "--help"}, {"migrate", "--help"}, {"ui", "--help"}} {
		r := cli(t, "", args...)
		if r.code != 0 || !strings.Contains(r.stdout, "Usage: compute") {
			t.Errorf("compute %s: exit %d, stdout:\n%s", strings.Join(args, " "), r.code, r.stdout)
		}
	}
}

// TestPasswordNeverShown runs commands that succeed and commands that fail
// with a password in --database-url and checks no output holds it.
func TestPasswordNeverShown(t *testing.T) {
	t.Parallel()
	db, q := migrated(t)
	const secret = "Sup3r-s3cret-pw"
	// A role of its own (trust authentication accepts any password, but
	// the point is that the command never repeats it), dropped at the end.
	role := fmt.Sprintf("cli_secret_%d", time.Now().UnixNano())
	if _, err := q.Pool().Exec(context.Background(), `CREATE ROLE `+role+` LOGIN SUPERUSER PASSWORD '`+secret+`'`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := q.Pool().Exec(context.Background(), `DROP ROLE `+role); err != nil {
			t.Errorf("drop role: %v", err)
		}
	})
	u, err := url.Parse(db)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(role, secret)
	withPW := u.String()
	bad := *u
	bad.Host = "127.0.0.1:1"
	unreachable := bad.String()
	missing := *u
	missing.Path = "/no_such_database_here"
	kv := "host=127.0.0.1 port=1 user=" + role + " password=" + secret + " dbname=x"

	id := strings.TrimSpace(must(t, "enqueue", "--queue", "pw", "--database-url", withPW))
	runs := []result{}
	for _, args := range [][]string{
		{"jobs", "list", "--database-url", withPW},
		{"jobs", "get", id, "--output", "json", "--database-url", withPW},
		{"queues", "list", "--database-url", withPW},
		{"doctor", "--database-url", withPW},
		{"migrate", "status", "--database-url", withPW},
		{"jobs", "list", "--database-url", unreachable},
		{"jobs", "list", "--database-url", missing.String()},
		{"doctor", "--database-url", kv},
		{"--database-url", unreachable, "queues", "list"},
		{"jobs", "list", "--database-url", "postgres://" + role + ":" + secret + "@127.0.0.1:badport/x"},
		{"jobs", "list", "--bogus", "--database-url", withPW},
		{"migrate", "--database-url", withPW, "--direct-url", unreachable},
		{"migrate", "--database-url", withPW, "--direct-url=" + unreachable},
		{"migrate", "--database-url", withPW, "--direct-url", kv},
		{"events", "follow", "--database-url", withPW, "--direct-url", "postgres://" + role + ":" + secret + "@127.0.0.1:badport/x"},
	} {
		r := cli(t, "", args...)
		runs = append(runs, r)
		if strings.Contains(r.stdout+r.stderr, secret) {
			t.Errorf("compute %s printed the password:\n%s\n%s", strings.Join(args, " "), r.stdout, r.stderr)
		}
	}
	if runs[0].code != 0 || runs[5].code != 1 || runs[6].code != 1 {
		t.Errorf("exit statuses %d %d %d, want 0 1 1 (stderr: %s / %s)", runs[0].code, runs[5].code, runs[6].code, runs[5].stderr, runs[6].stderr)
	}
}

// TestDatabaseURLFromEnvironment checks the fallback to DATABASE_URL.
func TestDatabaseURLFromEnvironment(t *testing.T) {
	db, _ := migrated(t)
	t.Setenv("DATABASE_URL", db)
	if v := mustJSON[struct{ Current, Latest int64 }](t, "migrate", "status"); v.Current == 0 || v.Current != v.Latest {
		t.Errorf("status through DATABASE_URL: %+v", v)
	}
}

// TestBuiltBinary builds the command and runs it once as a process.
func TestBuiltBinary(t *testing.T) {
	t.Parallel()
	db, q := migrated(t)
	enqueueMany(t, q, "bin", 2)
	bin := filepath.Join(t.TempDir(), "compute")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "queues", "list", "--output", "json")
	cmd.Env = append(os.Environ(), "DATABASE_URL="+db)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("compute queues list: %v", err)
	}
	var queues []queueDoc
	if err := json.Unmarshal(out, &queues); err != nil {
		t.Fatalf("output: %v\n%s", err, out)
	}
	if len(queues) != 1 || queues[0].Name != "bin" || queues[0].Counts["queued"] != 2 {
		t.Errorf("queues: %+v", queues)
	}
	cmd = exec.Command(bin, "jobs", "list", "--nope")
	if err := cmd.Run(); err == nil || cmd.ProcessState.ExitCode() != 2 {
		t.Errorf("wrong flag: %v, exit %d; want exit 2", err, cmd.ProcessState.ExitCode())
	}
}

// TestJobsListShowsThePageBeforeAnUnreadableRow: a row written by plain SQL
// that the library cannot read ends the page; the jobs before it are
// printed, and the error names the row and how to read on (exit 1).
func TestJobsListShowsThePageBeforeAnUnreadableRow(t *testing.T) {
	t.Parallel()
	db, q := migrated(t)
	id := strings.TrimSpace(must(t, "enqueue", "--database-url", db, "--queue", "mail"))
	if _, err := q.Pool().Exec(context.Background(), `INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed)
		VALUES ('\xffffffffffffffffffffffffffffffff', 'queued', 'mail', '{}', ARRAY['a', NULL], now(), now())`); err != nil {
		t.Fatal(err)
	}
	r := wantExit(t, 1, "jobs", "list", "--database-url", db, "--queue", "mail")
	if !strings.Contains(r.stdout, id) || !strings.Contains(r.stderr, "column input_files") ||
		!strings.Contains(r.stderr, "--after ffffffff-ffff-ffff-ffff-ffffffffffff") {
		t.Errorf("jobs list beside an unreadable row:\nstdout:\n%s\nstderr:\n%s\nwant the job %s listed and the row named", r.stdout, r.stderr, id)
	}
}

// TestUIServesTheDashboard starts "compute ui" on a free port, reads the
// address it prints, fetches the overview and a job's page, and stops it
// the way Ctrl-C does (its context ends); read-only refuses a change.
func TestUIServesTheDashboard(t *testing.T) {
	db, q := migrated(t)
	id, err := q.Enqueue(t.Context(), compute.Job{Queue: "ui-test", Config: `{"n":1}`})
	if err != nil {
		t.Fatal(err)
	}
	for _, readOnly := range []bool{false, true} {
		args := []string{"ui", "--addr", "127.0.0.1:0", "--database-url", db}
		if readOnly {
			args = append(args, "--read-only")
		}
		ctx, cancel := context.WithCancel(t.Context())
		out, w := io.Pipe()
		var errOut bytes.Buffer
		done := make(chan int, 1)
		go func() {
			code := run(ctx, args, strings.NewReader(""), w, &errOut)
			w.Close()
			done <- code
		}()
		line, err := bufio.NewReader(out).ReadString('\n')
		if err != nil {
			cancel()
			t.Fatalf("compute ui printed no address: %v\nstderr: %s", err, errOut.String())
		}
		go func() { _, _ = io.Copy(io.Discard, out) }()
		base := strings.TrimSpace(line[strings.Index(line, "http://"):strings.Index(line, " (Ctrl-C")])
		for _, path := range []string{"", "jobs/" + id.String()} {
			res, err := http.Get(base + path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != http.StatusOK || !strings.Contains(string(body), "ui-test") {
				t.Errorf("GET %s%s: %d\n%s", base, path, res.StatusCode, body)
			}
		}
		res, err := http.PostForm(base+"queues/ui-test/pause", url.Values{})
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusForbidden {
			t.Errorf("read-only=%v: a POST without a token: %d, want 403", readOnly, res.StatusCode)
		}
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("compute ui exited %d after its context ended\nstderr: %s", code, errOut.String())
		}
	}
}
