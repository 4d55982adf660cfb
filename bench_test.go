package compute_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/internal/testdb"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Throughput benchmarks report jobs/s (jobs finished by the timed part over
// its wall time); the latency benchmark reports p50-ms and p99-ms. Each
// benchmark run gets a database of its own from testdb.New, set up before
// the timer starts. The harness's server runs with fsync=off, so absolute
// figures are higher than on a durable server; compare them with each other.

// benchPoolSize sets the pool size in connString, so that n goroutines never
// wait for a connection: the default pool (max(4, cores)) would turn an
// 8-goroutine benchmark into a 4-goroutine one.
func benchPoolSize(tb testing.TB, connString string, n int) string {
	tb.Helper()
	u, err := url.Parse(connString)
	if err != nil {
		tb.Fatalf("connection string is not a URL: %v", err)
	}
	v := u.Query()
	v.Set("pool_max_conns", strconv.Itoa(n))
	u.RawQuery = v.Encode()
	return u.String()
}

// benchWarmPool opens n connections before the timer starts, so the timed
// part does not pay for connection setup.
func benchWarmPool(tb testing.TB, pool *pgxpool.Pool, n int) {
	tb.Helper()
	conns := make([]*pgxpool.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Release()
		}
	}()
	for range n {
		c, err := pool.Acquire(tb.Context())
		if err != nil {
			tb.Fatal(err)
		}
		conns = append(conns, c)
	}
}

// benchJobs makes n small jobs for queue: a short JSON config and one or two
// input files, like a typical submission.
func benchJobs(queue string, n int) []compute.Job {
	jobs := make([]compute.Job, n)
	for i := range jobs {
		jobs[i] = compute.Job{
			Queue:      queue,
			Config:     fmt.Sprintf(`{"frame":%d,"quality":"high"}`, i),
			InputFiles: []string{"scenes/shot-042.blend"},
		}
		if i%2 == 1 {
			jobs[i].InputFiles = append(jobs[i].InputFiles, "textures/wood.png")
		}
	}
	return jobs
}

// benchPreload enqueues n jobs to queue in batches of 10,000, then analyzes
// the table: a production table is analyzed by autovacuum soon after a bulk
// load, and leaving it to autovacuum's timing here would make the figures
// depend on whether it had run yet.
func benchPreload(tb testing.TB, q *compute.Queue, queue string, n int) {
	tb.Helper()
	const chunk = 10000
	jobs := benchJobs(queue, min(n, chunk))
	for left := n; left > 0; left -= chunk {
		if _, err := q.EnqueueMany(tb.Context(), jobs[:min(left, chunk)]); err != nil {
			tb.Fatal(err)
		}
	}
	if _, err := q.Pool().Exec(tb.Context(), "ANALYZE compute.jobs"); err != nil {
		tb.Fatal(err)
	}
}

// benchStartWorker runs w in a goroutine. The returned stop shuts it down
// and waits for Run to return; it also runs at cleanup, so a benchmark that
// fails half way still joins the worker.
func benchStartWorker(tb testing.TB, w *compute.Worker) (stop func()) {
	ran := make(chan error, 1)
	go func() { ran <- w.Run(context.Background()) }()
	stop = sync.OnceFunc(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := w.Shutdown(ctx); err != nil {
			tb.Errorf("worker shutdown: %v", err)
		}
		if err := <-ran; err != nil {
			tb.Errorf("worker run: %v", err)
		}
	})
	tb.Cleanup(stop)
	return stop
}

// benchReportJobs reports jobs per second of timed wall time.
func benchReportJobs(b *testing.B, jobs int64) {
	b.ReportMetric(float64(jobs)/b.Elapsed().Seconds(), "jobs/s")
}

// BenchmarkEnqueueMany submits b.N batches of small jobs, one EnqueueMany
// (one statement) per batch.
func BenchmarkEnqueueMany(b *testing.B) {
	for _, batch := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			q := newQueue(b)
			jobs := benchJobs("bench", batch)
			b.ResetTimer()
			for range b.N {
				if _, err := q.EnqueueMany(b.Context(), jobs); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			benchReportJobs(b, int64(b.N)*int64(batch))
		})
	}
}

// BenchmarkEnqueueOne submits b.N jobs one Enqueue (one transaction) each,
// from 8 goroutines, as a web application submitting one job per request.
func BenchmarkEnqueueOne(b *testing.B) {
	const goroutines = 8
	q := openQueue(b, benchPoolSize(b, testdb.New(b), goroutines), compute.WithMigrate())
	benchWarmPool(b, q.Pool(), goroutines)
	job := benchJobs("bench", 2)[1]
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	for range goroutines {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				if _, err := q.Enqueue(b.Context(), job); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	benchReportJobs(b, int64(b.N))
}

// BenchmarkClaimComplete claims b.N batches of preloaded jobs and completes
// each batch in one call, as a worker's claim and completer loops do: from
// one goroutine, and under parallel/ from 4 goroutines with a Queue (and
// pool) each, as 4 worker processes would.
func BenchmarkClaimComplete(b *testing.B) {
	batches := []int{1, 10, 100, 1000}
	for _, batch := range batches {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) { benchClaimComplete(b, batch, 1) })
	}
	b.Run("parallel", func(b *testing.B) {
		for _, batch := range batches {
			b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) { benchClaimComplete(b, batch, 4) })
		}
	})
}

func benchClaimComplete(b *testing.B, batch, goroutines int) {
	connString := testdb.New(b)
	queues := make([]*compute.Queue, goroutines)
	for i := range queues {
		queues[i] = openQueue(b, connString, compute.WithMigrate())
	}
	benchPreload(b, queues[0], "bench", b.N*batch)
	var next, done atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	for _, q := range queues {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				jobs, err := q.Claim(b.Context(), "bench", batch)
				if err != nil {
					b.Error(err)
					return
				}
				if len(jobs) == 0 {
					b.Error("claim found no job, but enough were preloaded")
					return
				}
				completions := make([]compute.Completion, len(jobs))
				for i, job := range jobs {
					completions[i] = compute.Completion{Job: job}
				}
				if err := q.Complete(b.Context(), completions...); err != nil {
					b.Error(err)
					return
				}
				done.Add(int64(len(jobs)))
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	benchReportJobs(b, done.Load())
}

// BenchmarkWorkerBurnDown preloads burnDownJobs no-op jobs per iteration and
// times a Worker (concurrency 100) from Run until all of them ran and
// Shutdown has written the last outcome back.
func BenchmarkWorkerBurnDown(b *testing.B) {
	const burnDownJobs = 20000
	q := newQueue(b)
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		benchPreload(b, q, "bench", burnDownJobs)
		var ran atomic.Int64
		all := make(chan struct{})
		w, err := compute.NewWorker(q, compute.WorkerConfig{Queues: map[string]compute.QueueConfig{
			"bench": {Concurrency: 100, Handler: func(context.Context, *compute.Job) ([]string, error) {
				if ran.Add(1) == burnDownJobs {
					close(all)
				}
				return nil, nil
			}},
		}})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()

		stop := benchStartWorker(b, w)
		deadline := time.NewTimer(5 * time.Minute)
		select {
		case <-all:
			deadline.Stop()
		case <-deadline.C:
			b.Fatalf("only %d of %d jobs ran within 5 minutes", ran.Load(), burnDownJobs)
		}
		stop() // Shutdown promises every outcome is written; the counts below check it

		b.StopTimer()
		counts, err := q.Counts(b.Context())
		if err != nil {
			b.Fatal(err)
		}
		want := int64(i+1) * burnDownJobs
		if got := counts["bench"]; got[compute.StatusComplete] != want || got[compute.StatusQueued] != 0 || got[compute.StatusInProgress] != 0 {
			b.Fatalf("after the burn-down: counts %v, want %d complete and nothing queued or in progress", got, want)
		}
		b.StartTimer()
	}
	b.StopTimer()
	benchReportJobs(b, int64(b.N)*burnDownJobs)
}

// benchPickup is a handler's report that it started a job.
type benchPickup struct {
	id compute.JobID
	at time.Time
}

// BenchmarkPickupLatency measures, for an idle Worker, the time from
// Enqueue's return (the commit) to the handler's start, woken by the insert
// notification (notify) or found by polling alone with the default
// PollInterval of 1 s (poll-only). Both times come from this process's
// monotonic clock. The default Concurrency (10) is kept on purpose: with 1,
// every claim fills all slots, so the worker claims again as soon as a job
// ends and would catch the next job by that claim rather than by the path
// this benchmark measures.
func BenchmarkPickupLatency(b *testing.B) {
	b.Run("notify", func(b *testing.B) { benchPickupLatency(b, false, 200) })
	// A poll-only pickup takes about half a second, so fewer samples keep
	// the run under a minute.
	b.Run("poll-only", func(b *testing.B) { benchPickupLatency(b, true, 50) })
}

func benchPickupLatency(b *testing.B, pollOnly bool, samples int) {
	const pollInterval = time.Second // WorkerConfig's default, set here only to spread the arrivals
	q := newQueue(b)
	started := make(chan benchPickup)
	w, err := compute.NewWorker(q, compute.WorkerConfig{
		PollOnly:     pollOnly,
		PollInterval: pollInterval,
		Queues: map[string]compute.QueueConfig{
			"bench": {Handler: func(ctx context.Context, job *compute.Job) ([]string, error) {
				p := benchPickup{id: job.ID, at: time.Now()}
				select {
				case started <- p:
				case <-ctx.Done():
				}
				return nil, nil
			}},
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	benchStartWorker(b, w)
	if !pollOnly {
		benchWaitListening(b, q)
	}
	for range 3 { // warm up the pool's connections and statement caches
		benchPickupSample(b, q, started)
	}

	latencies := make([]time.Duration, 0, b.N*samples)
	b.ResetTimer()
	for range b.N {
		for range samples {
			if pollOnly {
				// Jobs reach an idle worker at random moments of its poll
				// cycle; enqueuing right after the previous job would
				// always land at the start of a fresh cycle and measure
				// the worst case. This is the arrival process, not a wait
				// for a condition.
				benchPause(b, rand.N(pollInterval))
			}
			latencies = append(latencies, benchPickupSample(b, q, started))
		}
	}
	b.StopTimer()
	slices.Sort(latencies)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(benchPercentile(latencies, 0.50)), "p50-ms")
	b.ReportMetric(ms(benchPercentile(latencies, 0.99)), "p99-ms")
	b.ReportMetric(0, "ns/op") // one op is a whole series of samples: meaningless
}

// benchPickupSample enqueues one job and returns how long after Enqueue
// returned its handler started.
func benchPickupSample(b *testing.B, q *compute.Queue, started <-chan benchPickup) time.Duration {
	id, err := q.Enqueue(b.Context(), compute.Job{Queue: "bench"})
	enqueued := time.Now()
	if err != nil {
		b.Fatal(err)
	}
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	select {
	case p := <-started:
		if p.id != id {
			b.Fatalf("handler started job %s, want %s (one job at a time)", p.id, id)
		}
		return p.at.Sub(enqueued)
	case <-timeout.C:
		b.Fatalf("job %s not picked up within 30s", id)
		return 0
	}
}

// benchPause lets d pass (or the benchmark's context end).
func benchPause(b *testing.B, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-b.Context().Done():
	}
}

// benchWaitListening waits until the worker's listener has its LISTEN in
// place (its last statement is then the LISTEN, or later its own probe
// "SELECT pg_notify(...)", in pg_stat_activity), so no notify sample is
// found by a poll while the listener is still connecting.
func benchWaitListening(b *testing.B, q *compute.Queue) {
	const probed = `
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'idle'
  AND (query LIKE 'LISTEN %' OR ltrim(query) LIKE 'SELECT pg_notify(%')`
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		if err := q.Pool().QueryRow(b.Context(), probed).Scan(&n); err != nil {
			b.Fatal(err)
		}
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			b.Fatal("the worker's listener sent no probe within 30s")
		}
		benchPause(b, 10*time.Millisecond)
	}
}

// benchPercentile returns the nearest-rank percentile p (0..1] of sorted.
func benchPercentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// benchPlanNode is the part of EXPLAIN (FORMAT JSON) output the plan check
// reads.
type benchPlanNode struct {
	NodeType     string          `json:"Node Type"`
	IndexName    string          `json:"Index Name"`
	RelationName string          `json:"Relation Name"`
	Plans        []benchPlanNode `json:"Plans"`
}

func (n benchPlanNode) walk(visit func(benchPlanNode)) {
	visit(n)
	for _, c := range n.Plans {
		c.walk(visit)
	}
}

// TestClaimUsesPartialIndex proves that the claim finds queued jobs through
// the partial index jobs_claim, updates them through a Tid Scan and never
// scans the table, with finished rows outnumbering queued ones ten to one
// after ANALYZE, in both the custom plan and the generic plan a prepared
// statement may switch to (pgx prepares statements, so both occur in
// production), for a small claim and for one that takes most of the queue
// (for which the planner once hashed the whole table). It explains the statement the
// library really sends: it runs a Claim and reads the text from
// pg_stat_activity, so the check follows any change to the SQL.
func TestClaimUsesPartialIndex(t *testing.T) {
	t.Parallel()
	connString := testdb.New(t)
	q := openQueue(t, connString, compute.WithMigrate())
	ctx := t.Context()

	const load = `
INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed, finished)
SELECT uuid_send(gen_random_uuid()), 'complete', CASE WHEN i % 2 = 0 THEN 'render' ELSE 'encode' END,
       '{}', '{}', now() - interval '1 hour', now(), now()
FROM generate_series(1, 20000) i;
INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed, priority, run_at)
SELECT uuid_send(gen_random_uuid()), 'queued', CASE WHEN i % 2 = 0 THEN 'render' ELSE 'encode' END,
       '{}', '{}', now(), now(), i % 3, now() - i * interval '1 millisecond'
FROM generate_series(1, 2000) i;
ANALYZE compute.jobs;`
	if _, err := q.Pool().Exec(ctx, load); err != nil {
		t.Fatal(err)
	}

	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	claimSQL := benchClaimSQL(t, q, conn)
	if _, err := conn.Exec(ctx, "PREPARE claim_plan AS "+claimSQL); err != nil {
		t.Fatalf("prepare the claim statement read from pg_stat_activity: %v\n%s", err, claimSQL)
	}
	for _, c := range []struct {
		mode string
		n    int
	}{{"force_custom_plan", 100}, {"force_generic_plan", 100}, {"force_custom_plan", 900}, {"force_generic_plan", 900}} {
		t.Run(fmt.Sprintf("%s/%d", c.mode, c.n), func(t *testing.T) {
			if _, err := conn.Exec(ctx, "SET plan_cache_mode = "+c.mode); err != nil {
				t.Fatal(err)
			}
			var out []byte
			err := conn.QueryRow(ctx, fmt.Sprintf("EXPLAIN (FORMAT JSON) EXECUTE claim_plan('render', %d, 'worker-1', 30000000, 1048576)", c.n)).Scan(&out)
			if err != nil {
				t.Fatal(err)
			}
			var plans []struct{ Plan benchPlanNode }
			if err := json.Unmarshal(out, &plans); err != nil || len(plans) != 1 {
				t.Fatalf("unexpected EXPLAIN output (%v): %s", err, out)
			}
			usesIndex, usesTid := false, false
			plans[0].Plan.walk(func(n benchPlanNode) {
				// A claim of most of the queue may read the index
				// as a bitmap and sort: still queued rows only.
				if (n.NodeType == "Index Scan" || n.NodeType == "Bitmap Index Scan") && n.IndexName == "jobs_claim" {
					usesIndex = true
				}
				if n.NodeType == "Tid Scan" && n.RelationName == "jobs" {
					usesTid = true
				}
				if n.NodeType == "Seq Scan" && n.RelationName == "jobs" {
					t.Errorf("the claim scans compute.jobs sequentially")
				}
			})
			if !usesIndex {
				t.Errorf("the claim does not read jobs_claim")
			}
			if !usesTid {
				t.Errorf("the claim does not update through a Tid Scan")
			}
			if t.Failed() {
				t.Logf("plan: %s", out)
			}
		})
	}
}

// benchClaimSQL runs a Claim on an empty queue (so nothing is claimed) and
// returns the statement text its connection last sent, read through conn,
// which is not one of the queue's connections.
func benchClaimSQL(t *testing.T, q *compute.Queue, conn *pgx.Conn) string {
	t.Helper()
	if _, err := q.Claim(t.Context(), "nothing-here", 1); err != nil {
		t.Fatal(err)
	}
	var sql string
	var truncated bool
	err := conn.QueryRow(t.Context(), `
SELECT query, octet_length(query) >= (SELECT setting::int - 1 FROM pg_settings WHERE name = 'track_activity_query_size')
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE '%FOR UPDATE SKIP LOCKED%'`).Scan(&sql, &truncated)
	if err != nil {
		t.Fatalf("find the claim statement in pg_stat_activity: %v", err)
	}
	if truncated {
		t.Fatalf("the claim statement is longer than track_activity_query_size; raise it for the test server:\n%s", sql)
	}
	return sql
}
