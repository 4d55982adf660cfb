package main

// Table-health workload (s), compute only: a sustained soak of the bare
// claim / heartbeat / complete loop against a steady producer, sampled at a
// fixed interval for throughput, claim latency, the table's dead tuples,
// autovacuum runs, relation sizes, the heartbeat HOT ratio and the buffers
// one claim's locking sub-select touches. Optionally a session holds an
// old snapshot (BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1) for the
// whole soak, so vacuum cannot remove anything deleted after it began.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/computeplatform/compute"
)

// soakConfig is the soak's part of the flags.
type soakConfig struct {
	duration   time.Duration
	sample     time.Duration
	goroutines int
	batch      int
	heartbeats int // Heartbeat calls per claimed batch before Complete
	backlog    int // queued jobs the producer keeps ahead of the claimers
	holdXmin   bool
}

// soakSample is one sampling interval.
type soakSample struct {
	at                   time.Duration
	jobsPerSec           float64
	claimP50, claimP99   time.Duration
	claimMax             time.Duration
	complP50             time.Duration
	liveTup, deadTup     int64
	upd, hotUpd          int64
	heartbeats           int64 // client-side count, cumulative
	autovacuums, vacuums int64
	analyzes             int64
	tableMB              float64
	indexMB              map[string]float64
	claimBuffers         int64 // shared hit+read of one claim sub-select (EXPLAIN ANALYZE BUFFERS)
	claimExplainMS       float64
	xminAge              int64 // age(backend_xmin) of the oldest holder in this database
	xminHolder           string
	detectMS             float64 // how long the detection query took
}

// indexNames are the compute.jobs indexes the soak reports sizes for.
var indexNames = []string{"jobs_pkey", "jobs_claim", "jobs_running", "jobs_finished", "jobs_failed"}

// oldestXminQuery is the check a worker could run to warn about a session
// holding back vacuum: the oldest snapshot or transaction in this database
// (since PostgreSQL 14, sessions in other databases do not hold back this
// database's tables), and replication slots and prepared transactions,
// which hold back every database.
const oldestXminQuery = `
SELECT kind, who, xmin_age, coalesce(extract(epoch FROM held_for), 0)::float8, detail FROM (
    SELECT 'session' AS kind, pid::text AS who, age(backend_xmin) AS xmin_age, now() - xact_start AS held_for,
           coalesce(application_name, '') || ' / ' || coalesce(state, '') || ' / ' || coalesce(usename::text, '') AS detail
    FROM pg_stat_activity
    WHERE backend_xmin IS NOT NULL AND datname = current_database() AND pid <> pg_backend_pid()
  UNION ALL
    SELECT 'slot', slot_name::text, greatest(age(xmin), age(catalog_xmin)), NULL, slot_type
    FROM pg_replication_slots WHERE xmin IS NOT NULL OR catalog_xmin IS NOT NULL
  UNION ALL
    SELECT 'prepared', gid, age(transaction), now() - prepared, owner::text
    FROM pg_prepared_xacts
) h ORDER BY xmin_age DESC LIMIT 1`

// claimExplain is the claim's locking sub-select, as claimJobs runs it,
// for EXPLAIN (ANALYZE, BUFFERS) inside a rolled-back transaction.
const claimExplain = `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)
SELECT ctid FROM compute.jobs
WHERE status = 'queued' AND queue = $1 AND run_at <= now()
ORDER BY priority, run_at
LIMIT $2
FOR UPDATE SKIP LOCKED`

// latencies collects call durations for one interval.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

// take returns the interval's durations sorted, and starts a new interval.
func (l *latencies) take() []time.Duration {
	l.mu.Lock()
	d := l.d
	l.d = nil
	l.mu.Unlock()
	slices.Sort(d)
	return d
}

// soak runs workload (s) on cs's fresh database and prints its samples to
// out.
func (s *computeSystem) soak(ctx context.Context, cfg soakConfig, conn string, out io.Writer) error {
	pool := s.q.Pool()
	var (
		inserted, claimed, done, heartbeats atomic.Int64
		claimLat, complLat                  latencies
		wg                                  sync.WaitGroup
		errOnce                             sync.Once
		firstErr                            error
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	fail := func(err error) { errOnce.Do(func() { firstErr = err; cancel() }) }

	// Prime the backlog before the clock starts.
	prime := func(ctx context.Context) error {
		jobs := make([]compute.Job, 1000)
		for i := range jobs {
			jobs[i] = compute.Job{Queue: benchQueue, Config: numConfig(i)}
		}
		_, err := s.q.EnqueueMany(ctx, jobs)
		if err == nil {
			inserted.Add(int64(len(jobs)))
		}
		return err
	}
	for inserted.Load() < int64(cfg.backlog) {
		if err := prime(ctx); err != nil {
			return err
		}
	}
	if err := s.vacuum(ctx); err != nil {
		return err
	}

	if cfg.holdXmin {
		// The connection string carries pool_max_conns, which only
		// pgxpool understands.
		pcfg, err := pgxpool.ParseConfig(conn)
		if err != nil {
			return err
		}
		hold, err := pgx.ConnectConfig(ctx, pcfg.ConnConfig)
		if err != nil {
			return err
		}
		defer hold.Close(context.Background())
		if _, err := hold.Exec(ctx, `SET application_name = 'bench-xmin-holder'`); err != nil {
			return err
		}
		if _, err := hold.Exec(ctx, `BEGIN ISOLATION LEVEL REPEATABLE READ`); err != nil {
			return err
		}
		if _, err := hold.Exec(ctx, `SELECT 1`); err != nil {
			return err
		}
		progressf("soak: a session holds a REPEATABLE READ snapshot for the whole soak")
	}

	// The producer keeps about cfg.backlog jobs queued ahead of the
	// claimers, in EnqueueMany batches of 1,000.
	wg.Go(func() {
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for ctx.Err() == nil {
			if inserted.Load()-claimed.Load() < int64(cfg.backlog) {
				if err := prime(ctx); err != nil && ctx.Err() == nil {
					fail(fmt.Errorf("soak producer: %w", err))
				}
				continue
			}
			select {
			case <-ctx.Done():
			case <-t.C:
			}
		}
	})
	for range cfg.goroutines {
		wg.Go(func() {
			for ctx.Err() == nil {
				t0 := time.Now()
				jobs, err := s.q.Claim(ctx, benchQueue, cfg.batch)
				if err != nil {
					if ctx.Err() == nil {
						fail(fmt.Errorf("soak claim: %w", err))
					}
					return
				}
				claimLat.add(time.Since(t0))
				claimed.Add(int64(len(jobs)))
				if len(jobs) == 0 {
					continue
				}
				for range cfg.heartbeats {
					if err := s.q.Heartbeat(ctx, jobs...); err != nil {
						if ctx.Err() == nil {
							fail(fmt.Errorf("soak heartbeat: %w", err))
						}
						return
					}
					heartbeats.Add(int64(len(jobs)))
				}
				completions := make([]compute.Completion, len(jobs))
				for i, j := range jobs {
					completions[i] = compute.Completion{Job: j}
				}
				t1 := time.Now()
				// Complete with a context that outlives the soak's end, so
				// no claimed batch is left in progress.
				if err := s.q.Complete(context.WithoutCancel(ctx), completions...); err != nil {
					fail(fmt.Errorf("soak complete: %w", err))
					return
				}
				complLat.add(time.Since(t1))
				done.Add(int64(len(jobs)))
			}
		})
	}

	sampleDB := func(sm *soakSample) error {
		err := pool.QueryRow(ctx, `
SELECT n_live_tup, n_dead_tup, n_tup_upd, n_tup_hot_upd, autovacuum_count, vacuum_count, autoanalyze_count + analyze_count,
       pg_relation_size('compute.jobs')
FROM pg_stat_user_tables WHERE relid = 'compute.jobs'::regclass`).
			Scan(&sm.liveTup, &sm.deadTup, &sm.upd, &sm.hotUpd, &sm.autovacuums, &sm.vacuums, &sm.analyzes, new(int64))
		if err != nil {
			return err
		}
		var tbl int64
		if err := pool.QueryRow(ctx, `SELECT pg_relation_size('compute.jobs')`).Scan(&tbl); err != nil {
			return err
		}
		sm.tableMB = float64(tbl) / (1 << 20)
		sm.indexMB = map[string]float64{}
		for _, ix := range indexNames {
			var n int64
			if err := pool.QueryRow(ctx, `SELECT pg_relation_size($1::regclass)`, "compute."+ix).Scan(&n); err != nil {
				return err
			}
			sm.indexMB[ix] = float64(n) / (1 << 20)
		}
		// One claim's sub-select under EXPLAIN ANALYZE, rolled back.
		err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			var plan []byte
			if err := tx.QueryRow(ctx, claimExplain, benchQueue, cfg.batch).Scan(&plan); err != nil {
				return err
			}
			var p []struct {
				Plan          map[string]any `json:"Plan"`
				ExecutionTime float64        `json:"Execution Time"`
			}
			if err := json.Unmarshal(plan, &p); err != nil {
				return err
			}
			if len(p) == 1 {
				hit, _ := p[0].Plan["Shared Hit Blocks"].(float64)
				read, _ := p[0].Plan["Shared Read Blocks"].(float64)
				sm.claimBuffers = int64(hit + read)
				sm.claimExplainMS = p[0].ExecutionTime
			}
			return errRollback
		})
		if err != nil && !errors.Is(err, errRollback) {
			return err
		}
		t0 := time.Now()
		var kind, who, detail string
		var heldFor float64
		err = pool.QueryRow(ctx, oldestXminQuery).Scan(&kind, &who, &sm.xminAge, &heldFor, &detail)
		sm.detectMS = float64(time.Since(t0).Microseconds()) / 1000
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			sm.xminAge, sm.xminHolder = 0, "-"
		case err != nil:
			return err
		default:
			sm.xminHolder = fmt.Sprintf("%s %s (%s, %.0fs)", kind, who, detail, heldFor)
		}
		return nil
	}

	fmt.Fprintf(out, "soak: %s, %d goroutines x Claim(%d), %d heartbeat(s) per batch, backlog %d, hold xmin %v\n",
		cfg.duration, cfg.goroutines, cfg.batch, cfg.heartbeats, cfg.backlog, cfg.holdXmin)
	fmt.Fprintln(out, "t_s\tjobs/s\tclaim_p50_ms\tclaim_p99_ms\tclaim_max_ms\tcompl_p50_ms\tclaim_bufs\tclaim_explain_ms\tlive\tdead\tautovac\tautoanalyze\thb_hot_ratio\ttable_MB\t"+
		strings.Join(indexNames, "_MB\t")+"_MB\txmin_age\tdetect_ms\txmin_holder")
	start := time.Now()
	var prev soakSample
	var prevDone int64
	prevAt := start
	printSample := func() error {
		var sm soakSample
		now := time.Now()
		d := done.Load()
		sm.at = now.Sub(start)
		sm.jobsPerSec = float64(d-prevDone) / now.Sub(prevAt).Seconds()
		prevDone, prevAt = d, now
		cl, co := claimLat.take(), complLat.take()
		sm.claimP50, sm.claimP99, sm.complP50 = quantile(cl, 0.5), quantile(cl, 0.99), quantile(co, 0.5)
		if len(cl) > 0 {
			sm.claimMax = cl[len(cl)-1]
		}
		sm.heartbeats = heartbeats.Load()
		if err := sampleDB(&sm); err != nil {
			return err
		}
		hot := "-"
		if hb := sm.heartbeats - prev.heartbeats; hb > 0 {
			hot = fmt.Sprintf("%.3f", float64(sm.hotUpd-prev.hotUpd)/float64(hb))
		}
		ix := make([]string, len(indexNames))
		for i, n := range indexNames {
			ix[i] = fmt.Sprintf("%.1f", sm.indexMB[n])
		}
		fmt.Fprintf(out, "%.0f\t%.0f\t%.2f\t%.2f\t%.1f\t%.2f\t%d\t%.2f\t%d\t%d\t%d\t%d\t%s\t%.1f\t%s\t%d\t%.2f\t%s\n",
			sm.at.Seconds(), sm.jobsPerSec, ms(sm.claimP50), ms(sm.claimP99), ms(sm.claimMax), ms(sm.complP50),
			sm.claimBuffers, sm.claimExplainMS, sm.liveTup, sm.deadTup, sm.autovacuums, sm.analyzes, hot,
			sm.tableMB, strings.Join(ix, "\t"), sm.xminAge, sm.detectMS, sm.xminHolder)
		if f, ok := out.(interface{ Sync() error }); ok {
			_ = f.Sync()
		}
		prev = sm
		return nil
	}
	t := time.NewTicker(cfg.sample)
	end := time.NewTimer(cfg.duration)
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-end.C:
			break loop
		case <-t.C:
			if err := printSample(); err != nil {
				fail(fmt.Errorf("soak sample: %w", err))
			}
		}
	}
	t.Stop()
	total := done.Load()
	elapsed := time.Since(start)
	cancel()
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	fmt.Fprintf(out, "soak total: %d jobs in %s, %.0f jobs/s, %d heartbeats\n", total, elapsed.Round(time.Millisecond),
		float64(total)/elapsed.Seconds(), heartbeats.Load())
	return nil
}

var errRollback = errors.New("rollback")

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
