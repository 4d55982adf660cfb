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
	if _, err := conn.Exec(ctx, "PREPARE find_duplicates AS "+findDuplicatesSQL); err != nil {
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

// TestListOfASmallQueueReadsOnlyThatQueue checks List's plans for a queue
// of five jobs (one per status) in a table of 48,050 jobs of another queue
// in every status, in the custom and in the generic plan, for the first
// page and a later one: whatever the status asked for, the statement reads
// no more rows of compute.jobs than the small queue has plus the jobs in
// progress in the whole cluster (in-progress jobs are found through
// jobs_running, keyed by worker). A deep page of the large queue's
// complete, failed or expired jobs reads about one page. Before migration
// 10, a listing without a status or of complete or expired jobs read the
// whole table, and so did a generic plan of queued jobs.
func TestListOfASmallQueueReadsOnlyThatQueue(t *testing.T) {
	t.Parallel()
	conn := migratedConn(t)
	ctx := t.Context()
	const load = `
INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed, worker)
SELECT uuid_send(gen_random_uuid()), s, 'busy', '{}', '{}', now(), now(), 'w'
FROM unnest(ARRAY['complete', 'queued', 'failed', 'expired', 'in-progress'], ARRAY[30000, 3000, 5000, 10000, 50]) AS c(s, n),
     generate_series(1, n);
INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed, worker)
SELECT uuid_send(gen_random_uuid()), s, 'rare', '{}', '{}', now(), now(), 'w'
FROM unnest(ARRAY['complete', 'queued', 'failed', 'expired', 'in-progress']) AS s;
ANALYZE compute.jobs;`
	if _, err := conn.Exec(ctx, load); err != nil {
		t.Fatal(err)
	}
	var second string // the rare queue's second job id, in hex: page two starts after it
	if err := conn.QueryRow(ctx, `SELECT encode(job_id, 'hex') FROM compute.jobs WHERE queue = 'rare' ORDER BY job_id OFFSET 1 LIMIT 1`).Scan(&second); err != nil {
		t.Fatal(err)
	}
	const bound = 5 + 51 // the rare queue's jobs, and the cluster's jobs in progress
	for i, status := range []Status{"", StatusQueued, StatusInProgress, StatusComplete, StatusFailed, StatusExpired} {
		sql := listJobs
		if status != "" {
			sql = listByStatus[status]
		}
		name := fmt.Sprintf("list_%d", i)
		if _, err := conn.Exec(ctx, "PREPARE "+name+" AS "+sql); err != nil {
			t.Fatal(err)
		}
		for _, page := range []struct {
			after string
			want  float64
		}{{"NULL", 1}, {`'\x` + second + `'::bytea`, 1}} {
			want := page.want
			if status == "" {
				want = map[string]float64{"NULL": 5}[page.after]
				if want == 0 {
					want = 3
				}
			}
			explainPrepared(t, conn, name, "'rare', "+page.after+", 100", func(mode string, plan planNode, raw []byte) {
				read, scans := plan.jobsRowsRead()
				if read > bound || (page.after == "NULL" && plan.ActualRows != want) {
					t.Errorf("List of status %q after %s, %s: %v jobs, reading %v rows of compute.jobs through %v; want at most %d read\n%s",
						status, page.after, mode, plan.ActualRows, read, scans, bound, raw)
				}
			})
		}
	}
	for i, status := range []Status{StatusComplete, StatusFailed, StatusExpired} {
		var after string // page two of 100 starts after the 900th job of the status
		if err := conn.QueryRow(ctx, `SELECT encode(job_id, 'hex') FROM compute.jobs WHERE queue = 'busy' AND status = $1
			ORDER BY job_id OFFSET 899 LIMIT 1`, status).Scan(&after); err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("deep_%d", i)
		if _, err := conn.Exec(ctx, "PREPARE "+name+" AS "+listByStatus[status]); err != nil {
			t.Fatal(err)
		}
		explainPrepared(t, conn, name, `'busy', '\x`+after+`'::bytea, 100`, func(mode string, plan planNode, raw []byte) {
			read, scans := plan.jobsRowsRead()
			if read > 101 || plan.ActualRows != 100 {
				t.Errorf("List of status %q after its 900th job, %s: %v jobs, reading %v rows of compute.jobs through %v; want 100 read\n%s",
					status, mode, plan.ActualRows, read, scans, raw)
			}
		})
	}
}
