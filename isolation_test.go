package compute_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/internal/testdb"
	"github.com/jackc/pgx/v5"
)

// TestOwnTransactionsAreReadCommittedWhateverTheDefault sets the database's
// default_transaction_isolation to REPEATABLE READ, then SERIALIZABLE, and
// checks every transaction the library opens itself: Migrate, a unique
// Submit (which needs READ COMMITTED and once refused the library's own
// transaction), the gated claim (whose counts must see what the previous
// holder of the queue's lock committed, or MaxRunning is overshot) and the
// periodic scheduler. A caller's own transaction at that default is still
// refused for unique jobs, with ErrInvalidOption.
func TestOwnTransactionsAreReadCommittedWhateverTheDefault(t *testing.T) {
	t.Parallel()
	for _, level := range []string{"repeatable read", "serializable"} {
		t.Run(level, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			connString := testdb.New(t)
			cfg, err := pgx.ParseConfig(connString)
			if err != nil {
				t.Fatal(err)
			}
			admin, err := pgx.Connect(ctx, connString)
			if err != nil {
				t.Fatal(err)
			}
			defer admin.Close(context.Background())
			mustExec(t, admin, fmt.Sprintf(`ALTER DATABASE %s SET default_transaction_isolation = '%s'`,
				pgx.Identifier{cfg.Database}.Sanitize(), level))

			q := openQueue(t, connString, compute.WithMigrate())
			if got := queryOne[string](t, q.Pool(), `SHOW default_transaction_isolation`); got != level {
				t.Fatalf("new connections run at %q, want %q: the test shows nothing", got, level)
			}

			job := compute.Job{Queue: "u", Unique: compute.Unique{Key: "k"}}
			if first, err := q.Submit(ctx, job); err != nil {
				t.Errorf("unique Submit at a %s default: %v", level, err)
			} else if again, err := q.Submit(ctx, job); err != nil || !again[0].Duplicate || again[0].ID != first[0].ID {
				t.Errorf("second unique Submit = %+v, %v; want a duplicate of %s", again, err, first[0].ID)
			}
			tx, err := q.Pool().Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			_, err = q.SubmitTx(ctx, tx, compute.Job{Queue: "u", Unique: compute.Unique{Key: "in-tx"}})
			_ = tx.Rollback(ctx)
			if !errors.Is(err, compute.ErrInvalidOption) {
				t.Fatalf("unique SubmitTx in the caller's %s transaction: %v, want ErrInvalidOption", level, err)
			}

			// Two gated claims from separate pools queue behind the queue's
			// claim lock; between their starts, more urgent jobs arrive. A
			// claim whose counts came from a snapshot older than the lock
			// would miss the other's jobs and pick different rows: both
			// would take MaxRunning.
			const maxRunning = 5
			setSettings(t, q, "cap", compute.QueueSettings{MaxRunning: maxRunning})
			enqueueAll(t, q, slices.Repeat([]compute.Job{{Queue: "cap", Priority: 5}}, 20))
			const lockClassClaim = 0x636f6d63 // limits.go
			mustExec(t, admin, `SELECT pg_advisory_lock($1, hashtext('cap'))`, lockClassClaim)
			var mu sync.Mutex
			claimed := 0
			var wg sync.WaitGroup
			for i, urgent := range []int{0, maxRunning} {
				c := openQueue(t, connString, compute.WithWorkerID(fmt.Sprint("w", i)))
				enqueueAll(t, q, slices.Repeat([]compute.Job{{Queue: "cap", Priority: 0}}, urgent))
				wg.Go(func() {
					jobs, err := c.Claim(ctx, "cap", maxRunning)
					if err != nil {
						t.Errorf("gated claim at a %s default: %v", level, err)
					}
					mu.Lock()
					claimed += len(jobs)
					mu.Unlock()
				})
				waitUntil(t, liveness, fmt.Sprintf("claim %d waiting for the queue's claim lock", i+1), func() bool {
					return queryOne[int64](t, admin, `SELECT count(*) FROM pg_locks
						WHERE locktype = 'advisory' AND classid = $1 AND NOT granted
						  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`, lockClassClaim) == int64(i+1)
				})
			}
			mustExec(t, admin, `SELECT pg_advisory_unlock($1, hashtext('cap'))`, lockClassClaim)
			wg.Wait()
			running := queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.jobs WHERE queue = 'cap' AND status = 'in-progress'`)
			if claimed != maxRunning || running != maxRunning {
				t.Errorf("the claims got %d jobs, %d in progress; want MaxRunning %d", claimed, running, maxRunning)
			}

			r := startWorker(t, q, compute.WorkerConfig{
				Queues:   map[string]compute.QueueConfig{"unrelated": {Handler: idle}},
				Periodic: []compute.PeriodicJob{{Name: "beat", Every: time.Second, Job: compute.Job{Queue: "beats"}}},
			})
			waitUntil(t, liveness, "two periodic ticks", func() bool { return len(ticks(t, q, "beats")) >= 2 })
			r.stop(t)
		})
	}
}
