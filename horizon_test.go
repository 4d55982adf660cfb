package compute_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/computeplatform/compute"
)

// TestOldestHorizonNamesAnIdleTransaction: an idle transaction holding a
// snapshot is found, with its application name, and a Worker warns about it.
func TestOldestHorizonNamesAnIdleTransaction(t *testing.T) {
	t.Parallel()
	logs := &syncBuffer{warned: make(chan struct{})}
	q := newQueue(t, compute.WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	ctx := t.Context()
	conn, err := q.Pool().Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	mustExec(t, conn, `SET application_name = 'report-job'`)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	mustExec(t, tx, `SET TRANSACTION ISOLATION LEVEL REPEATABLE READ`)
	mustExec(t, tx, `SELECT count(*) FROM compute.jobs`)
	h, err := q.OldestHorizon(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h == nil || h.Kind != "session" || !strings.Contains(h.Detail, "report-job") {
		t.Fatalf("OldestHorizon = %+v, want the report-job session", h)
	}
	r := startWorker(t, q, compute.WorkerConfig{
		Queues:                 map[string]compute.QueueConfig{"x": {Handler: idle}},
		LongTransactionWarning: time.Nanosecond,
	})
	defer r.stop(t)
	waitUntil(t, liveness, "the warning", func() bool { return strings.Contains(logs.String(), "report-job") })
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
}
