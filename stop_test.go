package compute_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/internal/faulttest"
	"github.com/computeplatform/compute/internal/testdb"
)

// logWatch is a logger that also tells when a line containing a text was
// logged.
type logWatch struct {
	mu    sync.Mutex
	t     testing.TB
	lines []string
	seen  map[string]chan struct{}
}

func (l *logWatch) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	line := string(bytes.TrimRight(p, "\n"))
	l.lines = append(l.lines, line)
	for text, ch := range l.seen {
		if strings.Contains(line, text) {
			close(ch)
			delete(l.seen, text)
		}
	}
	return len(p), nil
}

// when returns a channel closed once a line containing text is logged.
func (l *logWatch) when(text string) <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	ch := make(chan struct{})
	l.seen[text] = ch
	return ch
}

// newLogWatch returns a logWatch and the option that logs through it; the
// lines are printed when the test fails.
func newLogWatch(t *testing.T) (*logWatch, compute.Option) {
	l := &logWatch{t: t, seen: make(map[string]chan struct{})}
	t.Cleanup(func() {
		if t.Failed() {
			l.mu.Lock()
			defer l.mu.Unlock()
			t.Logf("log:\n%s", strings.Join(l.lines, "\n"))
		}
	})
	return l, compute.WithLogger(slog.New(slog.NewTextHandler(l, nil)))
}

// proxied returns a connection string to the test database through a
// faulttest.Proxy, which the test can cut and blackhole.
func proxied(t *testing.T) (*faulttest.Proxy, string) {
	t.Helper()
	connString := testdb.New(t)
	cfg, err := pgconn.ParseConfig(connString)
	if err != nil {
		t.Fatal(err)
	}
	p, err := faulttest.NewProxy(fmt.Sprintf("%s:%d", cfg.Host, cfg.Port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	through := fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable&connect_timeout=2", cfg.User, p.Port(), cfg.Database)
	if cfg.Password != "" {
		through = fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/%s?sslmode=disable&connect_timeout=2", cfg.User, cfg.Password, p.Port(), cfg.Database)
	}
	return p, through
}

// TestWorkerStopIsBoundedWhileTheDatabaseIsAway is the report: a
// job has finished and its outcome cannot be written (the completer is
// already retrying), another still runs, and the database stops
// answering. Shutdown with a 1 s deadline must return by that deadline
// plus its margin, and Run within the grace period plus its give-up, and
// the log must say which outcomes were not written. Before, the completer
// retried for as long as the database was away and Shutdown waited for
// it.
func TestWorkerStopIsBoundedWhileTheDatabaseIsAway(t *testing.T) {
	t.Parallel()
	p, connString := proxied(t)
	log, logOpt := newLogWatch(t)
	q := openQueue(t, connString, compute.WithMigrate(), logOpt, compute.WithLease(3*time.Second))
	started := make(chan struct{}, 2)
	release := make(chan struct{})
	w, err := compute.NewWorker(q, compute.WorkerConfig{PollInterval: 50 * time.Millisecond, Queues: map[string]compute.QueueConfig{
		"q": {Handler: func(ctx context.Context, job *compute.Job) ([]string, error) {
			started <- struct{}{}
			if job.Config == `{"quick": true}` {
				<-release
				return nil, nil
			}
			<-ctx.Done()
			return nil, ctx.Err()
		}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	enqueueAll(t, q, []compute.Job{{Queue: "q", Config: `{"quick": true}`}, {Queue: "q"}})
	done := make(chan error, 1)
	go func() { done <- w.Run(context.Background()) }()
	receive(t, started, liveness, "the first job to start")
	receive(t, started, liveness, "the second job to start")

	p.Blackhole(true)
	p.CutAll()
	retrying := log.when("writing job outcomes failed; retrying")
	close(release)
	receive(t, retrying, liveness, "the completer to retry the outcome it cannot write")
	unwritten := log.when("could not write job outcomes before stopping")

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	begin := time.Now()
	if err := w.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want the deadline's error", err)
	}
	// The margin is 5 s; 3 s more for a loaded machine.
	if took := time.Since(begin); took > 9*time.Second {
		t.Errorf("Shutdown with a 1 s deadline took %s", took.Round(time.Millisecond))
	}
	// Run: 1 s of grace, then at most 15 s; 4 s more for a loaded machine.
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
	case <-time.After(20*time.Second - time.Since(begin)):
		t.Fatalf("Run had not returned %s after Shutdown began", time.Since(begin).Round(time.Millisecond))
	}
	select {
	case <-unwritten:
	default:
		t.Errorf("the log does not say which outcomes were not written")
	}
	p.Blackhole(false)
}

// TestWorkerIgnoresAForgedCancelNotification: any role may NOTIFY, so a
// compute_cancel notification only makes the worker ask the database,
// which says the job is still this worker's: the handler goes on, its
// result is written, and the job runs once. Before, the notification
// alone cancelled the handler and discarded its result, and the job ran
// again after its lease expired.
func TestWorkerIgnoresAForgedCancelNotification(t *testing.T) {
	t.Parallel()
	// A one-minute lease: the heartbeat's own rounds come every 20 s, so
	// a renewal soon after the notification is the recheck it caused.
	q := newQueue(t, withTestLog(t), compute.WithLease(time.Minute))
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	cancelled := make(chan struct{})
	startWorker(t, q, compute.WorkerConfig{PollInterval: 100 * time.Millisecond, Queues: map[string]compute.QueueConfig{
		"c": {Handler: func(ctx context.Context, job *compute.Job) ([]string, error) {
			started <- struct{}{}
			select {
			case <-release:
				return []string{"written"}, nil
			case <-ctx.Done():
				close(cancelled)
				return nil, ctx.Err()
			}
		}},
	}})
	waitListener(t, q, 0)
	id := enqueue(t, q, compute.Job{Queue: "c"})
	receive(t, started, liveness, "the handler to start")
	lease := queryOne[time.Time](t, q.Pool(), `SELECT lease_expires FROM compute.jobs WHERE job_id = $1`, id[:])

	mustExec(t, q.Pool(), `SELECT pg_notify('compute_cancel', encode($1::bytea, 'hex'))`, id[:])
	waitUntil(t, promptly, "the worker to recheck the job, or to cancel it", func() bool {
		select {
		case <-cancelled:
			return true
		default:
		}
		return queryOne[time.Time](t, q.Pool(), `SELECT lease_expires FROM compute.jobs WHERE job_id = $1`, id[:]).After(lease)
	})
	select {
	case <-cancelled:
		t.Fatal("a forged compute_cancel notification cancelled the handler")
	default:
	}
	close(release)
	job := awaitStatus(t, q, id, compute.StatusComplete, compute.StatusFailed)
	if job.Status != compute.StatusComplete || job.Attempt != 1 || len(job.OutputFiles) != 1 {
		t.Errorf("job: %s at attempt %d with outputs %q; want complete at attempt 1 with its output", job.Status, job.Attempt, job.OutputFiles)
	}
}
