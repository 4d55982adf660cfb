package computetest_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/computetest"
)

func TestRequireEnqueuedMatchesEachField(t *testing.T) {
	t.Parallel()
	q := computetest.NewQueue(t)
	id := enqueue(t, q,
		compute.Job{Queue: "emails", Config: `{"to": "ada@example.com", "tags": ["a", "b"], "opts": {"html": true}}`},
		compute.Job{Queue: "emails", Config: `{"to": "bob@example.com"}`, PartitionKey: "acme"},
		compute.Job{Queue: "emails", Config: `not json at all`, Unique: compute.Unique{Key: "k1"}},
		compute.Job{Queue: "reports", Config: `{"to": "ada@example.com"}`},
	)
	for _, tc := range []struct {
		name string
		m    computetest.Match
		want []compute.JobID
	}{
		{"queue", computetest.Match{Queue: "emails"}, id[:3]},
		{"any queue", computetest.Match{}, id},
		{"config key", computetest.Match{Queue: "emails", Config: `{"to": "ada@example.com"}`}, id[:1]},
		{"config in any queue", computetest.Match{Config: `{"to": "ada@example.com"}`}, []compute.JobID{id[0], id[3]}},
		{"nested object", computetest.Match{Config: `{"opts": {"html": true}}`}, id[:1]},
		{"array element, any order", computetest.Match{Config: `{"tags": ["b"]}`}, id[:1]},
		{"empty object matches every JSON object", computetest.Match{Queue: "emails", Config: `{}`}, id[:2]},
		{"partition key", computetest.Match{PartitionKey: "acme"}, id[1:2]},
		{"unique key", computetest.Match{UniqueKey: "k1"}, id[2:3]},
		{"status", computetest.Match{Queue: "emails", Status: compute.StatusQueued}, id[:3]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ids(computetest.RequireEnqueued(t, q, tc.m))
			if !slices.Equal(got, tc.want) {
				t.Fatalf("RequireEnqueued(%+v) = %v, want %v", tc.m, got, tc.want)
			}
		})
	}
	// Every field must match.
	computetest.RequireNotEnqueued(t, q, computetest.Match{Queue: "reports", PartitionKey: "acme"})
	computetest.RequireNotEnqueued(t, q, computetest.Match{Queue: "emails", Config: `{"to": "eve@example.com"}`})
	computetest.RequireNotEnqueued(t, q, computetest.Match{Queue: "emails", Status: compute.StatusComplete})
}

func TestRequireEnqueuedReadsTheJobsFields(t *testing.T) {
	t.Parallel()
	q := computetest.NewQueue(t)
	want := compute.Job{Queue: "thumbs", Config: `{"w": 256}`, InputFiles: []string{"a.png", "b.png"},
		Priority: 3, MaxAttempts: 7, PartitionKey: "acme", Unique: compute.Unique{Key: "thumb:1"}}
	id := enqueue(t, q, want)[0]
	got := computetest.RequireEnqueued(t, q, computetest.Match{Queue: "thumbs"})[0]
	stored, err := q.Get(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != id || got.Queue != want.Queue || got.Config != want.Config || !slices.Equal(got.InputFiles, want.InputFiles) ||
		got.Priority != 3 || got.MaxAttempts != 7 || got.PartitionKey != "acme" || got.Unique.Key != "thumb:1" ||
		got.Status != compute.StatusQueued || !got.RunAt.Equal(stored.RunAt) || !got.Created.Equal(stored.Created) {
		t.Fatalf("RequireEnqueued returned %+v; the stored job is %+v", got, stored)
	}
}

func TestRequireFailuresSayWhatWasFound(t *testing.T) {
	t.Parallel()
	q := computetest.NewQueue(t)

	msg := failure(t, func(tb testing.TB) { computetest.RequireEnqueued(tb, q, computetest.Match{Queue: "emails"}) })
	if !strings.Contains(msg, `queue "emails" holds no jobs at all`) {
		t.Errorf("RequireEnqueued on an empty queue failed with %q, want it to say the queue holds no jobs", msg)
	}

	id := enqueue(t, q, compute.Job{Queue: "emails", Config: `{"to": "bob@example.com"}`, PartitionKey: "acme"})[0]
	msg = failure(t, func(tb testing.TB) {
		computetest.RequireEnqueued(tb, q, computetest.Match{Queue: "emails", Config: `{"to": "ada@example.com"}`})
	})
	for _, want := range []string{`no job matches queue "emails", status queued, config containing {"to": "ada@example.com"}`,
		"found instead", id.String(), `partition_key="acme"`, `config={"to": "bob@example.com"}`} {
		if !strings.Contains(msg, want) {
			t.Errorf("RequireEnqueued failed with %q; want it to contain %q", msg, want)
		}
	}

	msg = failure(t, func(tb testing.TB) { computetest.RequireNotEnqueued(tb, q, computetest.Match{PartitionKey: "acme"}) })
	if !strings.Contains(msg, `want no job matching status queued, partition key "acme", found 1:`) || !strings.Contains(msg, id.String()) {
		t.Errorf("RequireNotEnqueued failed with %q; want it to list job %s", msg, id)
	}

	msg = failure(t, func(tb testing.TB) { computetest.RequireEnqueued(tb, q, computetest.Match{Config: `{to: ada}`}) })
	if !strings.Contains(msg, "is not JSON") {
		t.Errorf("a Match.Config that is not JSON failed with %q, want it to say so", msg)
	}

	if msg := failure(t, func(tb testing.TB) { computetest.RequireEnqueued(tb, q, computetest.Match{Queue: "emails"}) }); msg != "" {
		t.Errorf("RequireEnqueued of an enqueued job failed: %s", msg)
	}
}

func TestRequireEnqueuedTxSeesTheUncommittedTransaction(t *testing.T) {
	t.Parallel()
	q := computetest.NewQueue(t)
	ctx := t.Context()
	tx := begin(t, q)
	id, err := q.EnqueueTx(ctx, tx, compute.Job{Queue: "emails", Config: `{"to": "ada@example.com"}`})
	if err != nil {
		t.Fatal(err)
	}

	m := computetest.Match{Queue: "emails", Config: `{"to": "ada@example.com"}`}
	if got := ids(computetest.RequireEnqueuedTx(t, tx, m)); !slices.Equal(got, []compute.JobID{id}) {
		t.Fatalf("RequireEnqueuedTx = %v, want the transaction's job %s", got, id)
	}
	computetest.RequireNotEnqueued(t, q, m) // not committed: invisible outside
	computetest.RequireNotEnqueuedTx(t, tx, computetest.Match{Queue: "emails", Config: `{"to": "bob@example.com"}`})

	// The lookups left the transaction as it was: usable, and without
	// their temporary function.
	var leftover bool
	if err := tx.QueryRow(ctx, "SELECT to_regprocedure('pg_temp.computetest_jsonb(text)') IS NOT NULL").Scan(&leftover); err != nil {
		t.Fatalf("the transaction is not usable after the lookups: %v", err)
	}
	if leftover {
		t.Error("the lookup's temporary function outlived its savepoint")
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	computetest.RequireEnqueued(t, q, m)
}

func TestRequireEnqueuedTxFailsOnAFailedTransaction(t *testing.T) {
	t.Parallel()
	q := computetest.NewQueue(t)
	ctx := t.Context()
	tx := begin(t, q)
	if _, err := tx.Exec(ctx, "SELECT 1/0"); err == nil {
		t.Fatal("SELECT 1/0 succeeded")
	}
	msg := failure(t, func(tb testing.TB) { computetest.RequireEnqueuedTx(tb, tx, computetest.Match{Queue: "emails"}) })
	if !strings.Contains(msg, "computetest:") || !strings.Contains(msg, "25P02") {
		t.Fatalf("RequireEnqueuedTx in an aborted transaction failed with %q, want the server's in_failed_sql_transaction error", msg)
	}
}
