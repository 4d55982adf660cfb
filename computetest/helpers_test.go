package computetest_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/internal/testdb"
)

// TestMain uses the harness's Run, which also leaves the Example functions
// out when no PostgreSQL can be had (they cannot skip). The separate
// module in internal/outside proves the package works without a TestMain.
func TestMain(m *testing.M) { os.Exit(testdb.RunWithExamples(m)) }

// recorder is a testing.TB whose failures are recorded instead of failing
// the test, so tests can check what the helpers say when they fail. Every
// other method is the real test's.
type recorder struct {
	testing.TB
	mu     sync.Mutex
	failed string
}

func (r *recorder) fail(msg string) {
	r.mu.Lock()
	r.failed = msg
	r.mu.Unlock()
	runtime.Goexit() // as t.FailNow does: the helper stops here
}

func (r *recorder) Fatalf(format string, args ...any) { r.fail(fmt.Sprintf(format, args...)) }
func (r *recorder) Fatal(args ...any)                 { r.fail(fmt.Sprint(args...)) }

// failure runs f with a recorder in a goroutine of its own (a failing
// helper ends it with runtime.Goexit) and returns the failure message, or
// "" when f did not fail.
func failure(t *testing.T, f func(tb testing.TB)) string {
	t.Helper()
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}

// enqueue enqueues jobs and fails the test on error.
func enqueue(t *testing.T, q *compute.Queue, jobs ...compute.Job) []compute.JobID {
	t.Helper()
	ids, err := q.EnqueueMany(t.Context(), jobs)
	if err != nil {
		t.Fatalf("EnqueueMany: %v", err)
	}
	return ids
}

// begin starts a transaction on q's pool, rolled back at cleanup unless
// the test commits it.
func begin(t *testing.T, q *compute.Queue) pgx.Tx {
	t.Helper()
	tx, err := q.Pool().Begin(t.Context())
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	return tx
}

// ids lists the jobs' ids.
func ids(jobs []*compute.Job) []compute.JobID {
	out := make([]compute.JobID, len(jobs))
	for i, j := range jobs {
		out[i] = j.ID
	}
	return out
}
