package computetest_test

import (
	"testing"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/computetest"
)

func TestNewQueueGivesEachTestAMigratedDatabaseDroppedAtCleanup(t *testing.T) {
	t.Parallel()
	outer := computetest.NewQueue(t)
	var innerDB string
	t.Run("inner", func(t *testing.T) {
		q := computetest.NewQueue(t)
		current, latest, err := q.SchemaVersion(t.Context())
		if err != nil || current != latest || latest == 0 {
			t.Fatalf("SchemaVersion = %d, %d, %v; want the latest version", current, latest, err)
		}
		if err := q.Pool().QueryRow(t.Context(), "SELECT current_database()").Scan(&innerDB); err != nil {
			t.Fatal(err)
		}
		enqueue(t, q, compute.Job{Queue: "emails", Config: `{}`})
		computetest.RequireNotEnqueued(t, outer, computetest.Match{Queue: "emails"}) // another database
	})
	var left int
	if err := outer.Pool().QueryRow(t.Context(), "SELECT count(*) FROM pg_database WHERE datname = $1", innerDB).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if innerDB == "" || left != 0 {
		t.Fatalf("the inner test's database %q: %d left after its cleanup, want it dropped", innerDB, left)
	}
}

func TestNewQueuePassesOptions(t *testing.T) {
	t.Parallel()
	q := computetest.NewQueue(t, compute.WithWorkerID("tester-1"))
	if got := q.WorkerID(); got != "tester-1" {
		t.Fatalf("WorkerID = %q, want the option's tester-1", got)
	}
}
