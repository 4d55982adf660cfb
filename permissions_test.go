package compute_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/internal/testdb"
	"github.com/jackc/pgx/v5"
)

// runtimeGrants are the grants the README and the package guide give a role
// that only enqueues and runs jobs.
const runtimeGrants = `
GRANT USAGE ON SCHEMA compute TO %[1]s;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA compute TO %[1]s;`

// TestRuntimeRoleWithDocumentedGrantsCanUseEveryFeature migrates as the
// owner, then works as a role with only the documented grants: enqueue
// (unique too), queue rules, a worker with a periodic job and retention,
// the journal, Wait and Explain.
func TestRuntimeRoleWithDocumentedGrantsCanUseEveryFeature(t *testing.T) {
	t.Parallel()
	conn := testdb.New(t)
	owner := openQueue(t, conn, compute.WithMigrate())
	role := fmt.Sprintf("runtime_%08x", rand.Uint32())
	password := fmt.Sprintf("pw%016x", rand.Uint64())
	mustExec(t, owner.Pool(), fmt.Sprintf(`CREATE ROLE %s LOGIN PASSWORD '%s'`, role, password))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		owner.Pool().Exec(ctx, fmt.Sprintf(`DROP OWNED BY %[1]s; DROP ROLE %[1]s`, role))
	})
	mustExec(t, owner.Pool(), fmt.Sprintf(runtimeGrants, role))

	cfg, err := pgx.ParseConfig(conn)
	if err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("postgres://%s:%s@%s:%d/%s?sslmode=disable", role, password, cfg.Host, cfg.Port, cfg.Database)
	q := openQueue(t, url, compute.WithMigrate()) // only checks the version
	ctx := t.Context()

	if _, err := q.Submit(ctx, compute.Job{Queue: "rt", Unique: compute.Unique{Key: "k"}}); err != nil {
		t.Fatalf("unique enqueue as the runtime role: %v", err)
	}
	if err := q.SetQueueSettings(ctx, "rt", compute.QueueSettings{KeyMaxRunning: 2, RateLimit: 100, RatePeriod: time.Minute}); err != nil {
		t.Fatalf("queue settings as the runtime role: %v", err)
	}
	id := enqueue(t, q, compute.Job{Queue: "rt", PartitionKey: "acme"})
	r := startWorker(t, q, compute.WorkerConfig{
		Queues:              map[string]compute.QueueConfig{"rt": {Handler: idle}},
		MaintenanceInterval: 50 * time.Millisecond,
		Periodic:            []compute.PeriodicJob{{Name: "rt-tick", Every: time.Second, Job: compute.Job{Queue: "rt"}}},
	})
	defer r.stop(t)
	if _, err := q.Wait(ctx, id); err != nil {
		t.Fatalf("Wait as the runtime role: %v", err)
	}
	if _, err := q.Explain(ctx, id); err != nil {
		t.Fatalf("Explain as the runtime role: %v", err)
	}
	if _, err := q.Events(ctx, compute.Cursor{}, 10); err != nil {
		t.Fatalf("Events as the runtime role: %v", err)
	}
	if _, err := q.RebaseJournal(ctx); err != nil {
		t.Fatalf("RebaseJournal as the runtime role: %v", err)
	}
	waitUntil(t, liveness, "a periodic job", func() bool {
		return queryOne[int64](t, owner.Pool(), `SELECT count(*) FROM compute.periodic WHERE name = 'rt-tick'`) == 1
	})
	if _, err := q.Purge(ctx, compute.StatusComplete, time.Hour); err != nil {
		t.Fatalf("Purge as the runtime role: %v", err)
	}
}
