package compute

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/computeplatform/compute/internal/testdb"
)

// planNode is the part of EXPLAIN (ANALYZE, FORMAT JSON) output the plan
// checks read.
type planNode struct {
	NodeType        string     `json:"Node Type"`
	RelationName    string     `json:"Relation Name"`
	IndexName       string     `json:"Index Name"`
	ActualRows      float64    `json:"Actual Rows"`
	ActualLoops     float64    `json:"Actual Loops"`
	RemovedByFilter float64    `json:"Rows Removed by Filter"`
	RemovedByCheck  float64    `json:"Rows Removed by Index Recheck"`
	Plans           []planNode `json:"Plans"`
}

// jobsRowsRead sums the rows of compute.jobs that the plan's scans read,
// kept or filtered out, over all their loops, and lists the scans.
func (n planNode) jobsRowsRead() (rows float64, scans []string) {
	if n.RelationName == "jobs" {
		rows += (n.ActualRows + n.RemovedByFilter + n.RemovedByCheck) * n.ActualLoops
		scans = append(scans, n.NodeType+" "+n.IndexName)
	}
	for _, c := range n.Plans {
		r, s := c.jobsRowsRead()
		rows, scans = rows+r, append(scans, s...)
	}
	return rows, scans
}

// explainPrepared runs EXPLAIN (ANALYZE, FORMAT JSON) of the prepared
// statement name with args (SQL literals) under each plan_cache_mode, the
// custom plan and the generic one a pooled prepared statement may switch
// to, and calls check with each plan and its raw text.
func explainPrepared(t *testing.T, conn *pgx.Conn, name, args string, check func(mode string, plan planNode, raw []byte)) {
	t.Helper()
	ctx := t.Context()
	for _, mode := range []string{"force_custom_plan", "force_generic_plan"} {
		if _, err := conn.Exec(ctx, "SET plan_cache_mode = "+mode); err != nil {
			t.Fatal(err)
		}
		var raw []byte
		if err := conn.QueryRow(ctx, fmt.Sprintf("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE %s(%s)", name, args)).Scan(&raw); err != nil {
			t.Fatal(err)
		}
		var plans []struct{ Plan planNode }
		if err := json.Unmarshal(raw, &plans); err != nil || len(plans) != 1 {
			t.Fatalf("unexpected EXPLAIN output (%v): %s", err, raw)
		}
		check(mode, plans[0].Plan, raw)
	}
}

// migratedConn opens a migrated test database and returns a plain
// connection to it, closed at the end of the test.
func migratedConn(t *testing.T) *pgx.Conn {
	t.Helper()
	connString := testdb.New(t)
	q, err := Open(t.Context(), connString, WithMigrate())
	if err != nil {
		t.Fatal(err)
	}
	q.Close()
	conn, err := pgx.Connect(t.Context(), connString)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// TestUniqueLookupReadsOnlyLiveRowsOfTheKey checks findDuplicates' plans
// for keys with a long history, in the custom and in the generic plan. Key
// "done" has 20,000 complete jobs and no live one, the state of every
// unique Submit that creates a job; key "retried" has as many complete
// jobs and one queued job older than them all (Retry keeps created). The
// active and queued scopes read only the key's live rows, and the window
// scope only the rows inside its window (one hour; the history is a day
// old). Before migration 10 the active and queued scopes walked every
// finished job of the key through jobs_unique and filtered it out.
func TestUniqueLookupReadsOnlyLiveRowsOfTheKey(t *testing.T) {
	t.Parallel()
	conn := migratedConn(t)
	ctx := t.Context()
	const load = `
INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed, finished, unique_key)
SELECT uuid_send(gen_random_uuid()), 'complete', 'u', '{}', '{}', now() - interval '1 day', now(), now(), k
FROM generate_series(1, 20000), unnest(ARRAY['done', 'retried']) AS k;
INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed, unique_key)
VALUES (uuid_send(gen_random_uuid()), 'queued', 'u', '{}', '{}', now() - interval '2 days', now(), 'retried');
ANALYZE compute.jobs;`
	if _, err := conn.Exec(ctx, load); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "PREPARE find_duplicates AS "+findDuplicates); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		key    string
		scope  UniqueScope
		window string // microseconds
		found  float64
	}{
		{"done", UniqueWhileActive, "0", 0},
		{"done", UniqueWhileQueued, "0", 0},
		{"done", UniqueWithinWindow, "3600000000", 0},
		{"retried", UniqueWhileActive, "0", 1},
		{"retried", UniqueWhileQueued, "0", 1},
	} {
		args := fmt.Sprintf("'{u}', '{%s}', '{%d}', '{%s}'", c.key, c.scope, c.window)
		explainPrepared(t, conn, "find_duplicates", args, func(mode string, plan planNode, raw []byte) {
			read, scans := plan.jobsRowsRead()
			if plan.ActualRows != c.found || read > c.found {
				t.Errorf("key %s, scope %d, %s: found %v jobs reading %v rows of compute.jobs through %v; want %v found reading no more\n%s",
					c.key, c.scope, mode, plan.ActualRows, read, scans, c.found, raw)
			}
		})
	}
}
