package compute_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/internal/testdb"
)

// wantInvalid checks that err matches both its specific sentinel and
// ErrInvalid.
func wantInvalid(t *testing.T, what string, err, sentinel error) {
	t.Helper()
	if !errors.Is(err, sentinel) || !errors.Is(err, compute.ErrInvalid) {
		t.Errorf("%s: got %v, want an error matching %v and ErrInvalid", what, err, sentinel)
	}
}

// TestEnqueueRejectsBadInput checks every kind of bad job against Enqueue,
// EnqueueMany (the bad job in the middle of good ones) and EnqueueTx: each
// fails with its sentinel and ErrInvalid, and nothing is written.
func TestEnqueueRejectsBadInput(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	for _, tc := range []struct {
		name     string
		job      compute.Job
		sentinel error
	}{
		{"empty queue", compute.Job{}, compute.ErrInvalidQueue},
		{"33-character queue", compute.Job{Queue: strings.Repeat("q", 33)}, compute.ErrInvalidQueue},
		{"space in queue", compute.Job{Queue: "a b"}, compute.ErrInvalidQueue},
		{"leading dash", compute.Job{Queue: "-a"}, compute.ErrInvalidQueue},
		{"leading dot", compute.Job{Queue: ".a"}, compute.ErrInvalidQueue},
		{"unicode queue", compute.Job{Queue: "qüeue"}, compute.ErrInvalidQueue},
		{"SQL in queue", compute.Job{Queue: "a'; drop table compute.jobs; --"}, compute.ErrInvalidQueue},
		{"NUL in queue", compute.Job{Queue: "a\x00"}, compute.ErrInvalidQueue},
		{"config over 1 MiB", compute.Job{Queue: "ok", Config: strings.Repeat("x", 1<<20+1)}, compute.ErrConfigTooLarge},
		{"NUL in config", compute.Job{Queue: "ok", Config: `{"a": "b` + "\x00" + `"}`}, compute.ErrInvalidConfig},
		{"invalid UTF-8 config", compute.Job{Queue: "ok", Config: "caf\xe9"}, compute.ErrInvalidConfig},
		{"empty file name", compute.Job{Queue: "ok", InputFiles: []string{"a", ""}}, compute.ErrInvalidFiles},
		{"duplicate file name", compute.Job{Queue: "ok", InputFiles: []string{"a", "b", "a"}}, compute.ErrInvalidFiles},
		{"NUL in file name", compute.Job{Queue: "ok", InputFiles: []string{"a\x00b"}}, compute.ErrInvalidFiles},
		{"invalid UTF-8 file name", compute.Job{Queue: "ok", InputFiles: []string{"\xff"}}, compute.ErrInvalidFiles},
		{"priority above int16", compute.Job{Queue: "ok", Priority: math.MaxInt16 + 1}, compute.ErrInvalidJob},
		{"priority below int16", compute.Job{Queue: "ok", Priority: math.MinInt16 - 1}, compute.ErrInvalidJob},
		{"negative delay", compute.Job{Queue: "ok", Delay: -time.Second}, compute.ErrInvalidJob},
		{"RunAt and Delay", compute.Job{Queue: "ok", RunAt: time.Now(), Delay: time.Second}, compute.ErrInvalidJob},
		{"negative max attempts", compute.Job{Queue: "ok", MaxAttempts: -1}, compute.ErrInvalidJob},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := q.Enqueue(ctx, tc.job)
			wantInvalid(t, "Enqueue", err, tc.sentinel)

			good := compute.Job{Queue: "ok", Config: "fine"}
			ids, err := q.EnqueueMany(ctx, []compute.Job{good, tc.job, good})
			wantInvalid(t, "EnqueueMany", err, tc.sentinel)
			if ids != nil {
				t.Errorf("EnqueueMany returned ids %v with its error", ids)
			}
			if err != nil && !strings.Contains(err.Error(), "job 1") {
				t.Errorf("EnqueueMany error %q does not name the bad job's index 1", err)
			}

			// Validation fails before the statement, so the caller's
			// transaction stays usable and its commit writes nothing.
			err = pgx.BeginFunc(ctx, q.Pool(), func(tx pgx.Tx) error {
				_, err := q.EnqueueTx(ctx, tx, tc.job)
				wantInvalid(t, "EnqueueTx", err, tc.sentinel)
				_, err = q.EnqueueManyTx(ctx, tx, []compute.Job{good, tc.job})
				wantInvalid(t, "EnqueueManyTx", err, tc.sentinel)
				return nil
			})
			if err != nil {
				t.Errorf("commit after rejected EnqueueTx: %v", err)
			}
			if n := countJobs(t, q); n != 0 {
				t.Errorf("%d jobs written after bad input, want 0", n)
			}
		})
	}
}

// TestConfigSizeLimit checks the default limit of 1 MiB and
// WithMaxConfigSize: configs at the limit go in, one byte more does not.
func TestConfigSizeLimit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	connString := testdb.New(t)
	q := openQueue(t, connString, compute.WithMigrate())
	small := openQueue(t, connString, compute.WithMaxConfigSize(10))

	for _, tc := range []struct {
		q     *compute.Queue
		limit int
	}{{q, 1 << 20}, {small, 10}} {
		before := countJobs(t, q)
		_, err := tc.q.Enqueue(ctx, compute.Job{Queue: "size", Config: strings.Repeat("x", tc.limit+1)})
		wantInvalid(t, fmt.Sprintf("config of %d bytes, limit %d", tc.limit+1, tc.limit), err, compute.ErrConfigTooLarge)
		if n := countJobs(t, q); n != before {
			t.Errorf("%d jobs written by a rejected enqueue", n-before)
		}
		if _, err := tc.q.Enqueue(ctx, compute.Job{Queue: "size", Config: strings.Repeat("x", tc.limit)}); err != nil {
			t.Errorf("config of exactly %d bytes: %v", tc.limit, err)
		}
	}
	if n := countJobs(t, q); n != 2 {
		t.Errorf("%d jobs, want the 2 at the limit", n)
	}
}

// TestBadOptionsFailAtConstruction checks that out-of-range options fail
// Open and New with ErrInvalidOption.
func TestBadOptionsFailAtConstruction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	connString := testdb.New(t)
	for name, opt := range map[string]compute.Option{
		"negative max config": compute.WithMaxConfigSize(-1),
		"lease under 1s":      compute.WithLease(10 * time.Millisecond),
		"negative lease":      compute.WithLease(-time.Second),
		"negative cooldown":   compute.WithNotifyCooldown(-time.Millisecond),
		"cooldown over 1s":    compute.WithNotifyCooldown(2 * time.Second),
		// Each of these opened, then every claim failed (SQLSTATE 22021
		// for the NUL byte).
		"worker id with a NUL byte":     compute.WithWorkerID("host\x00/1"),
		"worker id not UTF-8":           compute.WithWorkerID("host\xff/1"),
		"worker id over the byte limit": compute.WithWorkerID(strings.Repeat("w", 257)),
	} {
		q, err := compute.Open(ctx, connString, opt)
		if q != nil {
			q.Close()
		}
		wantInvalid(t, "Open with "+name, err, compute.ErrInvalidOption)
	}
	_, err := compute.New(ctx, nil)
	wantInvalid(t, "New with a nil pool", err, compute.ErrInvalidOption)
	_, err = compute.New(ctx, newQueue(t).Pool(), compute.WithWorkerID("host\x00/1"))
	wantInvalid(t, "New with a worker id with a NUL byte", err, compute.ErrInvalidOption)
}

// TestNewWorkerRefusesConcurrencyOverTheClaimLimit checks that NewWorker
// refuses a Concurrency one claim cannot take (it was accepted, and then
// every claim was refused and retried forever), saying the limit and what to
// do, and that a worker at the limit runs jobs.
func TestNewWorkerRefusesConcurrencyOverTheClaimLimit(t *testing.T) {
	t.Parallel()
	_, err := compute.NewWorker(newQueue(t), compute.WorkerConfig{Queues: map[string]compute.QueueConfig{"q": {Handler: idle, Concurrency: 10001}}})
	wantInvalid(t, "NewWorker with Concurrency 10001", err, compute.ErrInvalidOption)
	if err != nil && (!strings.Contains(err.Error(), "10000") || !strings.Contains(err.Error(), "run more worker processes")) {
		t.Errorf("the error %q does not say the limit and what to do", err)
	}
	job := runToEnd(t, compute.QueueConfig{Handler: idle, Concurrency: 10000}, compute.Job{})[0]
	if job.Status != compute.StatusComplete {
		t.Errorf("a worker with Concurrency 10000 left its job %s", job.Status)
	}
}

// TestWorkerIDAtItsLimitIsStoredByClaims checks that the longest id
// WithWorkerID accepts, in multi-byte characters, is what a claim writes.
func TestWorkerIDAtItsLimitIsStoredByClaims(t *testing.T) {
	t.Parallel()
	id := strings.Repeat("é", 128) // 256 bytes
	q := newQueue(t, compute.WithWorkerID(id))
	if _, err := q.Enqueue(t.Context(), compute.Job{Queue: "q"}); err != nil {
		t.Fatal(err)
	}
	jobs, err := q.Claim(t.Context(), "q", 1)
	if err != nil || len(jobs) != 1 {
		t.Fatalf("claim: %d jobs, %v", len(jobs), err)
	}
	if got := queryOne[string](t, q.Pool(), `SELECT worker FROM compute.jobs WHERE job_id = $1`, jobs[0].ID[:]); got != id {
		t.Errorf("the claim stored worker %q, want %q", got, id)
	}
}

// TestMetaRejectsBadInput checks keys and values outside the schema's limits
// against SetMeta, GetMeta and DeleteMeta: ErrInvalidMeta, nothing written.
func TestMetaRejectsBadInput(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	for _, tc := range []struct{ name, key, value string }{
		{"empty key", "", "v"},
		{"2-character key", "ab", "v"},
		{"33-character key", strings.Repeat("k", 33), "v"},
		{"NUL in key", "ab\x00", "v"},
		{"invalid UTF-8 key", "ab\xff", "v"},
		{"257-character value", "key", strings.Repeat("é", 257)},
		{"NUL in value", "key", "a\x00b"},
		{"invalid UTF-8 value", "key", "\xc3"},
	} {
		err := q.SetMeta(ctx, tc.key, tc.value)
		wantInvalid(t, "SetMeta "+tc.name, err, compute.ErrInvalidMeta)
		if tc.value == "v" {
			_, err = q.GetMeta(ctx, tc.key)
			wantInvalid(t, "GetMeta "+tc.name, err, compute.ErrInvalidMeta)
			wantInvalid(t, "DeleteMeta "+tc.name, q.DeleteMeta(ctx, tc.key), compute.ErrInvalidMeta)
		}
	}
	if n := queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.meta`); n != 0 {
		t.Errorf("%d meta rows after bad input, want 0", n)
	}
}

// TestOtherCallsRejectBadInput checks the arguments of Claim, List, Expire,
// Complete, Fail and Heartbeat: ErrInvalid, and the held job unchanged.
func TestOtherCallsRejectBadInput(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	enqueue(t, q, compute.Job{Queue: "ok"})
	enqueue(t, q, compute.Job{Queue: "ok"})
	job := claimOne(t, q, "ok")
	before := takeSnapshot(t, q, job.ID)

	_, err := q.Claim(ctx, "bad queue", 1)
	wantInvalid(t, "Claim of a bad queue", err, compute.ErrInvalidQueue)
	_, err = q.Claim(ctx, "ok", 0)
	wantInvalid(t, "Claim of 0 jobs", err, compute.ErrInvalidOption)
	_, err = q.Claim(ctx, "ok", 10001)
	wantInvalid(t, "Claim of 10001 jobs", err, compute.ErrInvalidOption)
	_, err = q.List(ctx, compute.ListOptions{Queue: "ok'--"})
	wantInvalid(t, "List of a bad queue", err, compute.ErrInvalidQueue)
	_, err = q.List(ctx, compute.ListOptions{Queue: "ok", Status: "running"})
	wantInvalid(t, "List of a bad status", err, compute.ErrInvalidJob)
	_, err = q.List(ctx, compute.ListOptions{Queue: "ok", Limit: -1})
	wantInvalid(t, "List with a negative limit", err, compute.ErrInvalidOption)
	_, err = q.Expire(ctx, 0)
	wantInvalid(t, "Expire with zero retention", err, compute.ErrInvalidOption)

	for name, outputs := range map[string][]string{
		"empty":     {""},
		"duplicate": {"o", "o"},
		"NUL":       {"o\x00"},
		"not UTF-8": {"\xfe"},
	} {
		err := q.Complete(ctx, compute.Completion{Job: job, OutputFiles: outputs})
		wantInvalid(t, "Complete with "+name+" output name", err, compute.ErrInvalidFiles)
	}
	wantInvalid(t, "Complete without a job", q.Complete(ctx, compute.Completion{}), compute.ErrInvalidJob)
	wantInvalid(t, "Fail with a negative RetryIn", q.Fail(ctx, compute.Failure{Job: job, RetryIn: -time.Second}), compute.ErrInvalidJob)
	wantInvalid(t, "Fail without a job", q.Fail(ctx, compute.Failure{}), compute.ErrInvalidJob)
	wantInvalid(t, "Heartbeat of nil", q.Heartbeat(ctx, nil), compute.ErrInvalidJob)

	if after := takeSnapshot(t, q, job.ID); !after.equal(before) {
		t.Errorf("rejected calls changed the job:\nbefore %+v\nafter  %+v", before, after)
	}
	// A batch with one bad completion writes none of it.
	other := claimOne(t, q, "ok")
	err = q.Complete(ctx, compute.Completion{Job: other}, compute.Completion{Job: job, OutputFiles: []string{""}})
	wantInvalid(t, "Complete of a batch with one bad completion", err, compute.ErrInvalidFiles)
	if got := status(t, q, other.ID); got != compute.StatusInProgress {
		t.Errorf("the good job of a rejected batch is %s, want in-progress", got)
	}
}

// TestUnknownJobIDIsNotFound checks Get, Cancel and Retry of an id no job
// has.
func TestUnknownJobIDIsNotFound(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	enqueue(t, q, compute.Job{Queue: "ok"})
	unknown := compute.JobID{0xde, 0xad, 15: 1}
	if _, err := q.Get(ctx, unknown); !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("Get: %v, want ErrNotFound", err)
	}
	if err := q.Cancel(ctx, unknown, ""); !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("Cancel: %v, want ErrNotFound", err)
	}
	if err := q.Retry(ctx, unknown); !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("Retry: %v, want ErrNotFound", err)
	}
	if n := countJobs(t, q); n != 1 {
		t.Errorf("%d jobs, want the 1 enqueued", n)
	}
}

// secret is the password the tests put in connection strings; no error
// text or log line may contain it.
const secret = "S3cretPw"

// closedPort returns a local TCP port nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

// leaks reports the first error in err's chain whose text holds the secret.
func leaks(err error) string {
	for _, e := range chain(err) {
		if strings.Contains(e.Error(), secret) {
			return e.Error()
		}
	}
	return ""
}

// chain lists err and every error it wraps.
func chain(err error) []error {
	if err == nil {
		return nil
	}
	all := []error{err}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		all = append(all, chain(u.Unwrap())...)
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			all = append(all, chain(e)...)
		}
	}
	return all
}

// TestOpenUnreachableDatabaseIsUnavailable opens a URL and a key=value
// string on a port nothing listens on: ErrUnavailable, no password in the
// error.
func TestOpenUnreachableDatabaseIsUnavailable(t *testing.T) {
	t.Parallel()
	port := closedPort(t)
	for _, connString := range []string{
		fmt.Sprintf("postgres://user:%s@127.0.0.1:%d/x?sslmode=disable", secret, port),
		fmt.Sprintf("host=127.0.0.1 port=%d user=user password=%s dbname=x sslmode=disable", port, secret),
		fmt.Sprintf("host=127.0.0.1 port=%d user=user password='%s with space' dbname=x sslmode=disable", port, secret),
		fmt.Sprintf("postgres://user@127.0.0.1:%d/x?sslmode=disable&password=%s", port, secret),
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		q, err := compute.Open(ctx, connString)
		cancel()
		if q != nil {
			q.Close()
		}
		redacted := strings.ReplaceAll(connString, secret, "***")
		if !errors.Is(err, compute.ErrUnavailable) {
			t.Errorf("Open(%s): %v, want ErrUnavailable", redacted, err)
		}
		if text := leaks(err); text != "" {
			t.Errorf("Open(%s): the error holds the password: %s", redacted, text)
		}
	}
}

// TestUnparsableConnStringHidesPassword checks that connection strings pgx
// cannot parse fail with ErrInvalidOption and without the password.
func TestUnparsableConnStringHidesPassword(t *testing.T) {
	t.Parallel()
	for _, connString := range []string{
		"postgres://user:" + secret + "@127.0.0.1:notaport/x",
		"postgres://user:" + secret + "@127.0.0.1:5432/x?sslmode=bogus",
		"postgres://user:" + secret + "%zz@127.0.0.1:5432/x",
		"postgres://user:" + secret + " x@127.0.0.1:notaport/x",
		"host=127.0.0.1 password=" + secret + " port=notaport",
		"host=127.0.0.1 password='" + secret + " x' port=notaport",
		"host=127.0.0.1 password=" + secret + " sslmode=bogus",
		// libpq syntax allows spaces around '='.
		"host=127.0.0.1 password =" + secret + " port=notaport",
		"host=127.0.0.1 password = '" + secret + "' port=notaport",
		"host=127.0.0.1 password= " + secret + " port=notaport",
	} {
		q, err := compute.Open(context.Background(), connString)
		if q != nil {
			q.Close()
		}
		redacted := strings.ReplaceAll(connString, secret, "***")
		wantInvalid(t, "Open("+redacted+")", err, compute.ErrInvalidOption)
		if text := leaks(err); text != "" {
			t.Errorf("Open(%s): the error holds the password: %s", redacted, text)
		}
	}
}

// syncBuffer is a log sink that many goroutines write to; warned is
// signalled on the first warning or error line.
type syncBuffer struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	warned chan struct{} // closed once
	once   sync.Once
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if bytes.Contains(p, []byte("level=WARN")) || bytes.Contains(p, []byte("level=ERROR")) {
		b.once.Do(func() { close(b.warned) })
	}
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestLogsHideThePassword runs a Queue and a Worker whose connection string
// holds a password, makes their database disappear under them, and checks
// that nothing they log, and no error they return, holds the password.
func TestLogsHideThePassword(t *testing.T) {
	t.Parallel()
	// The test server trusts local connections, so the password is ignored
	// but travels through every connection the library makes.
	u, err := url.Parse(testdb.New(t))
	if err != nil {
		t.Fatal(err)
	}
	dbName := strings.TrimPrefix(u.Path, "/")
	u.User = url.UserPassword(u.User.Username(), secret)
	logs := &syncBuffer{warned: make(chan struct{})}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	q := openQueue(t, u.String(), compute.WithMigrate(), compute.WithLogger(logger))

	w, err := compute.NewWorker(q, compute.WorkerConfig{
		Queues: map[string]compute.QueueConfig{"logs": {Handler: func(ctx context.Context, job *compute.Job) ([]string, error) {
			return nil, errors.New("handler failed")
		}}},
		PollInterval:        50 * time.Millisecond,
		MaintenanceInterval: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- w.Run(context.Background()) }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := w.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-ran; err != nil {
			t.Errorf("run: %v", err)
		}
		if strings.Contains(logs.String(), secret) {
			t.Errorf("the log holds the password:\n%s", logs.String())
		}
	}()

	// The database goes away: every pooled and listening connection is cut
	// and every reconnect is refused.
	admin := *u
	admin.Path = "/postgres"
	conn, err := pgx.Connect(context.Background(), admin.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), "DROP DATABASE "+pgx.Identifier{dbName}.Sanitize()+" WITH (FORCE)"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-logs.warned:
	case <-time.After(30 * time.Second):
		t.Fatalf("no warning logged within 30s of the database going away; log:\n%s", logs.String())
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for name, err := range map[string]error{
		"Migrate": q.Migrate(ctx),
		"Enqueue": func() error { _, err := q.Enqueue(ctx, compute.Job{Queue: "logs"}); return err }(),
		"Claim":   func() error { _, err := q.Claim(ctx, "logs", 1); return err }(),
	} {
		if err == nil {
			t.Errorf("%s on a dropped database succeeded", name)
		}
		if text := leaks(err); text != "" {
			t.Errorf("%s: the error holds the password: %s", name, text)
		}
	}
}

// someJob stands for a claimed job in calls that must fail before they
// reach the database.
var someJob = &compute.Job{ID: compute.JobID{1, 15: 1}, Attempt: 1, Worker: "w"}

// everyCall runs each database method of the Queue once and returns the
// errors by method name. tx is used by EnqueueTx.
func everyCall(ctx context.Context, q *compute.Queue, tx pgx.Tx) map[string]error {
	errs := make(map[string]error)
	call := func(name string, err error) { errs[name] = err }
	_, err := q.Enqueue(ctx, compute.Job{Queue: "q"})
	call("Enqueue", err)
	_, err = q.EnqueueMany(ctx, []compute.Job{{Queue: "q"}, {Queue: "q"}})
	call("EnqueueMany", err)
	_, err = q.EnqueueTx(ctx, tx, compute.Job{Queue: "q"})
	call("EnqueueTx", err)
	_, err = q.Claim(ctx, "q", 1)
	call("Claim", err)
	call("Complete", q.Complete(ctx, compute.Completion{Job: someJob}))
	call("Fail", q.Fail(ctx, compute.Failure{Job: someJob}))
	call("Heartbeat", q.Heartbeat(ctx, someJob))
	_, err = q.Get(ctx, someJob.ID)
	call("Get", err)
	_, err = q.List(ctx, compute.ListOptions{Queue: "q"})
	call("List", err)
	call("Cancel", q.Cancel(ctx, someJob.ID, ""))
	call("Retry", q.Retry(ctx, someJob.ID))
	_, err = q.Counts(ctx)
	call("Counts", err)
	_, err = q.RequeueStale(ctx)
	call("RequeueStale", err)
	_, err = q.Expire(ctx, time.Hour)
	call("Expire", err)
	_, err = q.GetMeta(ctx, "key")
	call("GetMeta", err)
	call("SetMeta", q.SetMeta(ctx, "key", "v"))
	call("DeleteMeta", q.DeleteMeta(ctx, "key"))
	return errs
}

// TestCallsAfterCloseReturnErrClosed checks every method after Close, on a
// Queue that owns its pool and on one made with New on the caller's pool,
// which Close must leave open.
func TestCallsAfterCloseReturnErrClosed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	connString := testdb.New(t)
	pool, err := pgxpool.New(ctx, connString)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	owned := openQueue(t, connString, compute.WithMigrate())
	borrowed, err := compute.New(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	for name, q := range map[string]*compute.Queue{"Open": owned, "New": borrowed} {
		q.Close()
		q.Close() // twice is fine
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			for method, err := range everyCall(ctx, q, tx) {
				if !errors.Is(err, compute.ErrClosed) {
					t.Errorf("%s queue: %s after Close: %v, want ErrClosed", name, method, err)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for method, err := range map[string]error{"Migrate": q.Migrate(ctx), "MigrateTo": q.MigrateTo(ctx, 0)} {
			if !errors.Is(err, compute.ErrClosed) {
				t.Errorf("%s queue: %s after Close: %v, want ErrClosed", name, method, err)
			}
		}
	}
	if err := pool.Ping(ctx); err != nil {
		t.Errorf("the caller's pool after closing the Queue made with New: %v", err)
	}
	if n := queryOne[int64](t, pool, `SELECT count(*) FROM compute.jobs`); n != 0 {
		t.Errorf("%d jobs written after Close", n)
	}
}

// TestCallsOnUnmigratedDatabaseReturnErrNotMigrated checks every method on
// a database without the compute schema, and on one at an older version.
func TestCallsOnUnmigratedDatabaseReturnErrNotMigrated(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := openQueue(t, testdb.New(t))
	old := openQueue(t, testdb.New(t))
	if err := old.MigrateTo(ctx, 1); err != nil {
		t.Fatal(err)
	}
	for name, q := range map[string]*compute.Queue{"never migrated": q, "version 1": old} {
		for method, err := range everyCallInTx(t, q) {
			if name == "version 1" && v1Only[method] {
				if err != nil && !errors.Is(err, compute.ErrNotFound) {
					t.Errorf("%s: %s: %v", name, method, err)
				}
				continue
			}
			if !errors.Is(err, compute.ErrNotMigrated) {
				t.Errorf("%s: %s: %v, want ErrNotMigrated", name, method, err)
			}
		}
	}
}

// v1Only are the methods that read and write only v1 tables and columns,
// so they work on a version 1 schema.
var v1Only = map[string]bool{"Counts": true, "Expire": true, "GetMeta": true, "SetMeta": true, "DeleteMeta": true}

// everyCallInTx runs everyCall with a transaction that is rolled back.
func everyCallInTx(t *testing.T, q *compute.Queue) map[string]error {
	t.Helper()
	ctx := context.Background()
	tx, err := q.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	return everyCall(ctx, q, tx)
}

// TestOpenMissingDatabaseIsUnavailable opens a database that does not exist
// on a running server: Open promises an error matching one of its
// sentinels, and ErrUnavailable ("check the connection string") is the one
// that fits.
func TestOpenMissingDatabaseIsUnavailable(t *testing.T) {
	t.Parallel()
	u, err := url.Parse(testdb.New(t))
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/no_such_database"
	u.User = url.UserPassword(u.User.Username(), secret)
	q, err := compute.Open(context.Background(), u.String())
	if q != nil {
		q.Close()
	}
	if !errors.Is(err, compute.ErrUnavailable) {
		t.Errorf("Open of a missing database: %v, want ErrUnavailable", err)
	}
	if text := leaks(err); text != "" {
		t.Errorf("the error holds the password: %s", text)
	}
}

// TestOpenRefusesTargetsThatAllowAStandby: a target_session_attrs that
// lets the driver pick a standby would send every write there; Open, New
// and WithDirectURL refuse it with ErrInvalidOption, naming the setting,
// and accept the ones that pick a server that takes writes.
func TestOpenRefusesTargetsThatAllowAStandby(t *testing.T) {
	t.Parallel()
	dbURL := testdb.New(t)
	openQueue(t, dbURL, compute.WithMigrate()).Close()
	for _, tsa := range []string{"read-only", "standby", "prefer-standby"} {
		withTSA := dbURL + "&target_session_attrs=" + tsa
		if _, err := compute.Open(t.Context(), withTSA); !errors.Is(err, compute.ErrInvalidOption) || !strings.Contains(err.Error(), tsa) {
			t.Errorf("Open with target_session_attrs=%s = %v, want ErrInvalidOption naming it", tsa, err)
		}
		if _, err := compute.Open(t.Context(), dbURL, compute.WithDirectURL(withTSA)); !errors.Is(err, compute.ErrInvalidOption) || !strings.Contains(err.Error(), tsa) {
			t.Errorf("WithDirectURL with target_session_attrs=%s = %v, want ErrInvalidOption naming it", tsa, err)
		}
		cfg, err := pgxpool.ParseConfig(withTSA)
		if err != nil {
			t.Fatal(err)
		}
		cfg.MinConns = 0
		pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := compute.New(t.Context(), pool); !errors.Is(err, compute.ErrInvalidOption) || !strings.Contains(err.Error(), tsa) {
			t.Errorf("New on a pool with target_session_attrs=%s = %v, want ErrInvalidOption naming it", tsa, err)
		}
		pool.Close()
	}
	for _, tsa := range []string{"any", "read-write", "primary"} {
		withTSA := dbURL + "&target_session_attrs=" + tsa
		q := openQueue(t, withTSA, compute.WithDirectURL(withTSA))
		enqueue(t, q, compute.Job{Queue: "tsa"})
	}

	// New cannot make a caller's pool of several hosts ask for a server
	// that takes writes, as Open does: it refuses it, naming the fix.
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = u.Host + ",localhost:" + u.Port()
	for _, tc := range []struct {
		query string
		ok    bool
	}{{"", false}, {"&target_session_attrs=read-write", true}} {
		pool, err := pgxpool.New(t.Context(), u.String()+tc.query)
		if err != nil {
			t.Fatal(err)
		}
		q, err := compute.New(t.Context(), pool)
		switch {
		case tc.ok && err != nil:
			t.Errorf("New on a pool of two hosts with %q: %v", tc.query, err)
		case !tc.ok && (!errors.Is(err, compute.ErrInvalidOption) || !strings.Contains(err.Error(), "target_session_attrs=read-write")):
			t.Errorf("New on a pool of two hosts without target_session_attrs = %v, want ErrInvalidOption naming target_session_attrs=read-write", err)
		}
		if q != nil {
			q.Close()
		}
		pool.Close()
	}
}

// TestOpenRefusesAnExecModeWithoutItsCache: statement_cache_capacity=0
// leaves pgx's default mode (cache_statement) without its cache, and
// description_cache_capacity=0 does so to cache_describe: pgx then fails
// every statement, which Open and New reported as success. They fail with
// ErrInvalidOption naming the fix, which works.
func TestOpenRefusesAnExecModeWithoutItsCache(t *testing.T) {
	t.Parallel()
	dbURL := testdb.New(t)
	openQueue(t, dbURL, compute.WithMigrate()).Close()
	for _, bad := range []string{"statement_cache_capacity=0", "default_query_exec_mode=cache_describe&description_cache_capacity=0"} {
		if _, err := compute.Open(t.Context(), dbURL+"&"+bad); !errors.Is(err, compute.ErrInvalidOption) || !strings.Contains(err.Error(), "default_query_exec_mode=exec") {
			t.Errorf("Open with %s = %v, want ErrInvalidOption naming default_query_exec_mode=exec", bad, err)
		}
		pool, err := pgxpool.New(t.Context(), dbURL+"&"+bad)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := compute.New(t.Context(), pool); !errors.Is(err, compute.ErrInvalidOption) {
			t.Errorf("New on a pool with %s = %v, want ErrInvalidOption", bad, err)
		}
		pool.Close()
		if _, err := compute.Open(t.Context(), dbURL, compute.WithDirectURL(dbURL+"&"+bad)); !errors.Is(err, compute.ErrInvalidOption) || !strings.Contains(err.Error(), "WithDirectURL") {
			t.Errorf("WithDirectURL with %s = %v, want ErrInvalidOption naming WithDirectURL", bad, err)
		}
		q := openQueue(t, dbURL+"&"+bad+"&default_query_exec_mode=exec")
		enqueue(t, q, compute.Job{Queue: "nocache"})
	}
}
