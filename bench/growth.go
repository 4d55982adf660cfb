package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

type growthResult struct {
	finished, queued int
	jobsPerSec       []float64 // one per burn-down
	reruns           int       // handler calls beyond one per job, all burn-downs
	load             time.Duration
	sizes            relSizes     // after the load's VACUUM ANALYZE, before the burn-downs
	vacuum, freeze   vacuumResult // after the last burn-down
}

// relSizes are compute.jobs' sizes in bytes.
type relSizes struct {
	heap, toast int64 // toast: the TOAST table and its index
	indexes     []namedSize
}

type namedSize struct {
	name  string
	bytes int64
}

func (r relSizes) total() int64 {
	t := r.heap + r.toast
	for _, ix := range r.indexes {
		t += ix.bytes
	}
	return t
}

// vacuumResult is one timed VACUUM of compute.jobs, with what its VERBOSE
// report says about the heap.
type vacuumResult struct {
	elapsed        time.Duration
	scanned, pages int64 // heap pages scanned, and the heap's pages
	ran            bool
	hits, misses   int64 // buffer usage of the whole VACUUM
	dirtied        int64
}

// growthStep is one step of workload (d), on a fresh database: it loads
// finished complete rows and queued rows of other queues (then VACUUM
// ANALYZE), measures the table, times -growth-runs burn-downs of the bench
// queue (the table shows their median), then
// times a plain and an aggressive VACUUM of the whole table, as autovacuum
// would run them.
func growthStep(ctx context.Context, cs *computeSystem, finished, queued int, o options) (growthResult, error) {
	g := growthResult{finished: finished, queued: queued}
	pool := cs.q.Pool()
	if finished+queued > 0 {
		start := time.Now()
		rebuild := o.growthRebuildN > 0 && finished >= o.growthRebuildN
		var defs []string
		if rebuild {
			var err error
			if defs, err = dropFinishedIndexes(ctx, pool); err != nil {
				return g, err
			}
		}
		if err := loadFiller(ctx, pool, finished, queued, o.growthBatch, o.growthLoaders); err != nil {
			return g, err
		}
		if rebuild {
			if err := buildIndexes(ctx, pool, defs); err != nil {
				return g, err
			}
		}
		progressf("compute growth: VACUUM ANALYZE and CHECKPOINT")
		if err := cs.vacuum(ctx); err != nil {
			return g, err
		}
		// Autovacuum of the table stays off until here: during the index
		// builds it would wait for them, or cancel them.
		if _, err := pool.Exec(ctx, `ALTER TABLE compute.jobs RESET (autovacuum_enabled)`); err != nil {
			return g, err
		}
		g.load = time.Since(start)
		progressf("compute growth: loaded and vacuumed in %s", g.load.Round(time.Second))
	}
	var err error
	if g.sizes, err = tableSizes(ctx, pool); err != nil {
		return g, err
	}
	progressf("compute growth: %s", g.sizes)
	for r := range o.growthRuns {
		if r > 0 {
			// Each repeat starts from the same rows: the bench queue's
			// jobs of the last burn-down go, the next load's VACUUM
			// ANALYZE removes them. At 100M rows that VACUUM leaves the
			// indexes alone (PostgreSQL skips index vacuuming while
			// fewer than 2% of the heap's pages hold dead tuples), so a
			// repeat costs seconds, not a pass over 14 GiB of indexes.
			if _, err := pool.Exec(ctx, `DELETE FROM compute.jobs WHERE queue = $1`, benchQueue); err != nil {
				return g, err
			}
		}
		b, err := loadAndBurn(ctx, cs, o.growthJobs, o.loadBatch)
		if err != nil {
			return g, err
		}
		g.jobsPerSec = append(g.jobsPerSec, float64(o.growthJobs)/b.elapsed.Seconds())
		g.reruns += b.handled - o.growthJobs
	}
	// Autovacuum never runs parallel index vacuuming; a manual VACUUM
	// would, with max_parallel_maintenance_workers.
	if g.vacuum, err = timedVacuum(ctx, cs.conn, `VACUUM (VERBOSE, PARALLEL 0) compute.jobs`); err != nil {
		return g, err
	}
	if g.freeze, err = timedVacuum(ctx, cs.conn, `VACUUM (VERBOSE, FREEZE, PARALLEL 0) compute.jobs`); err != nil {
		return g, err
	}
	return g, nil
}

// fillerSQL writes finished rows $1..$2 as a month of real jobs would leave
// them: random 16-byte ids, status complete, created from $3 on in order,
// $4 seconds apart (so the heap and jobs_finished grow in time order, as they
// do), grabbed up to 10 s and finished up to 2 min later, a config of about
// 200 bytes and one input and one output file.
const fillerSQL = `
INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed,
                          grabbed, finished, output_files, attempt, worker, run_at)
SELECT uuid_send(gen_random_uuid()), 'complete', 'archive',
       '{"num":' || i || ',"image":"registry.example/render:1.42","command":["render","--input","s3://inputs/' || h
           || '.parquet","--threads","4"],"env":{"STAGE":"prod","REGION":"eu-west-1"}}',
       ARRAY['s3://inputs/' || h || '.parquet'], created, created + grab + took,
       created + grab, created + grab + took, ARRAY['s3://outputs/' || h || '.parquet'], 1, 'host-' || (i % 8), created
FROM (SELECT i, md5(i::text) AS h, $3::timestamptz + make_interval(secs => i * $4::float8) AS created,
             make_interval(secs => random() * 10) AS grab, make_interval(secs => 1 + random() * 120) AS took
      FROM generate_series($1::bigint, $2::bigint) AS i) AS g`

// loadFiller adds finished rows (queue "archive") in statements of batch
// rows, run by loaders connections at once, with a progress line after
// each, and queued rows spread over ten
// other queues in one statement. Autovacuum of compute.jobs is off during
// the load (the VACUUM ANALYZE after it does that work once, instead of an
// autovacuum after every batch competing with the load for the CPUs).
func loadFiller(ctx context.Context, pool *pgxpool.Pool, finished, queued, batch, loaders int) error {
	if _, err := pool.Exec(ctx, `ALTER TABLE compute.jobs SET (autovacuum_enabled = off)`); err != nil {
		return err
	}
	start := time.Now()
	const span = 30 * 24 * time.Hour
	from := start.Add(-span)
	step := span.Seconds() / float64(max(finished, 1))
	var (
		mu     sync.Mutex
		next   = 1 // first row of the next batch
		loaded int
	)
	// one loads the next batch; errDone when none is left.
	one := func(ctx context.Context) error {
		mu.Lock()
		lo := next
		hi := min(lo+batch-1, finished)
		next = hi + 1
		mu.Unlock()
		if lo > finished {
			return errDone
		}
		if err := checkDisk(ctx, pool, lo-1, finished-lo+1); err != nil {
			return err
		}
		t := time.Now()
		if _, err := pool.Exec(ctx, fillerSQL, lo, hi, from, step); err != nil {
			return fmt.Errorf("load finished rows %d..%d: %w", lo, hi, err)
		}
		took := time.Since(t)
		var heap int64
		if err := pool.QueryRow(ctx, `SELECT pg_relation_size('compute.jobs')`).Scan(&heap); err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		loaded += hi - lo + 1
		progressf("compute growth: %s of %s finished rows, %s rows/s (this statement %s rows/s), %s, heap %s",
			thousands(int64(loaded)), thousands(int64(finished)), rate(float64(loaded)/time.Since(start).Seconds()),
			rate(float64(hi-lo+1)/took.Seconds()), time.Since(start).Round(time.Second), bytesIEC(heap))
		return nil
	}
	ctx2, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make([]error, loaders)
	var wg sync.WaitGroup
	for l := range loaders {
		wg.Go(func() {
			for ctx2.Err() == nil {
				if err := one(ctx2); err != nil {
					if !errors.Is(err, errDone) {
						errs[l] = err
						cancel()
					}
					return
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if queued > 0 {
		if _, err := pool.Exec(ctx, `
INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed)
SELECT uuid_send(gen_random_uuid()), 'queued', 'other-' || (i % 10), '{"num":' || i || '}', '{}', now(), now()
FROM generate_series(1, $1) AS i`, queued); err != nil {
			return fmt.Errorf("load %d queued rows: %w", queued, err)
		}
	}
	progressf("compute growth: loaded %s finished and %s queued rows in %s", thousands(int64(finished)), thousands(int64(queued)),
		time.Since(start).Round(time.Second))
	return nil
}

// minFreeAfterLoad is the free space a load must leave on the server's
// disk, for the index builds' sort files, WAL and every other server there.
const minFreeAfterLoad = 10 << 30

// ErrDiskFull stops a load that would leave less than minFreeAfterLoad free.
var ErrDiskFull = errors.New("load stopped: too little disk would remain")

// checkDisk stops the load when the server's data directory is on this
// machine and the left rows still to load would leave less than
// minFreeAfterLoad free. Their size is estimated from compute.jobs' bytes
// per row so far (at least 500, a filler row's heap bytes), times 1.3 for
// the indexes built after the load (jobs_pkey, jobs_done and jobs_finished
// came to 0.29 of the heap at 100M rows). The builds' sort files come on
// top. started counts the rows of every batch begun, whose inserts may be
// in the table's files already, and left those of the batches not yet
// begun, this one's included: counting only committed batches as loaded
// took the other loaders' rows in flight for this one's, which doubled the
// estimate of a 3-loader load and stopped it at 15M of 100M rows.
func checkDisk(ctx context.Context, pool *pgxpool.Pool, started, left int) error {
	var dir string
	var size int64
	if err := pool.QueryRow(ctx, `SELECT current_setting('data_directory'), pg_total_relation_size('compute.jobs')`).Scan(&dir, &size); err != nil {
		return nil // not a superuser: nothing to check
	}
	free, ok := diskFree(dir)
	if !ok {
		return nil
	}
	perRow := int64(500)
	if started > 0 {
		perRow = max(perRow, size/int64(started))
	}
	need := int64(float64(perRow) * float64(left) * 1.3)
	if free-need < minFreeAfterLoad {
		return fmt.Errorf("%w: %s free, about %s needed for %s more rows, at least %s must stay free",
			ErrDiskFull, bytesIEC(free), bytesIEC(need), thousands(int64(left)), bytesIEC(minFreeAfterLoad))
	}
	return nil
}

// errDone says that no batch of the load is left.
var errDone = errors.New("done")

// rebuiltIndexes are the indexes of compute.jobs that hold its complete
// rows, with the fillfactor that makes a build leave them as full as
// inserts leave them: random ids split leaves anywhere (about 70% full on
// average, as the 10M-row load with the indexes in place showed), finish
// times in time order split the rightmost leaf (the build's default, 90%).
var rebuiltIndexes = []struct {
	name       string
	fillfactor int // 0: the default
}{{"jobs_pkey", 70}, {"jobs_done", 70}, {"jobs_finished", 0}}

// dropFinishedIndexes drops rebuiltIndexes (the primary key as a
// constraint) and returns the statements that create them again.
func dropFinishedIndexes(ctx context.Context, pool *pgxpool.Pool) ([]string, error) {
	var defs []string
	for _, ix := range rebuiltIndexes {
		var def string
		var constraint bool
		err := pool.QueryRow(ctx, `
SELECT pg_get_indexdef(i.indexrelid), i.indisprimary
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = 'compute.jobs'::regclass AND c.relname = $1`, ix.name).Scan(&def, &constraint)
		if err != nil {
			return nil, fmt.Errorf("index %s: %w", ix.name, err)
		}
		with := ""
		if ix.fillfactor > 0 {
			with = fmt.Sprintf(" WITH (fillfactor = %d)", ix.fillfactor)
		}
		drop := `DROP INDEX compute.` + pgx.Identifier{ix.name}.Sanitize()
		if constraint {
			drop = `ALTER TABLE compute.jobs DROP CONSTRAINT ` + pgx.Identifier{ix.name}.Sanitize()
			cols := def[strings.Index(def, "("):] // "(job_id)"
			def = `ALTER TABLE compute.jobs ADD CONSTRAINT ` + pgx.Identifier{ix.name}.Sanitize() + ` PRIMARY KEY ` + cols + with
		} else if w := strings.Index(def, " WHERE "); w >= 0 {
			def = def[:w] + with + def[w:]
		} else {
			def += with
		}
		if _, err := pool.Exec(ctx, drop); err != nil {
			return nil, err
		}
		defs = append(defs, def)
		if ix.fillfactor > 0 {
			defs = append(defs, `ALTER INDEX compute.`+pgx.Identifier{ix.name}.Sanitize()+` RESET (fillfactor)`)
		}
	}
	return defs, nil
}

// buildIndexes runs the statements of dropFinishedIndexes, with a
// maintenance_work_mem of 1GB for the builds' sorts (a setting of this
// session only: the VACUUMs measured later use the server's).
func buildIndexes(ctx context.Context, pool *pgxpool.Pool, defs []string) error {
	c, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer c.Release()
	if _, err := c.Exec(ctx, `SET maintenance_work_mem = '1GB'`); err != nil {
		return err
	}
	for _, def := range defs {
		start := time.Now()
		if _, err := c.Exec(ctx, def); err != nil {
			return fmt.Errorf("%s: %w", def, err)
		}
		progressf("compute growth: %s: %s", def, time.Since(start).Round(time.Second))
	}
	_, err = c.Exec(ctx, `RESET maintenance_work_mem`)
	return err
}

// tableSizes reads the sizes of compute.jobs, its TOAST table and each of
// its indexes.
func tableSizes(ctx context.Context, pool *pgxpool.Pool) (relSizes, error) {
	var r relSizes
	err := pool.QueryRow(ctx, `
SELECT pg_relation_size(c.oid), coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0)
FROM pg_class c WHERE c.oid = 'compute.jobs'::regclass`).Scan(&r.heap, &r.toast)
	if err != nil {
		return r, fmt.Errorf("table size: %w", err)
	}
	rows, err := pool.Query(ctx, `
SELECT c.relname::text, pg_relation_size(c.oid)
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = 'compute.jobs'::regclass ORDER BY pg_relation_size(c.oid) DESC, c.relname`)
	if err != nil {
		return r, fmt.Errorf("index sizes: %w", err)
	}
	r.indexes, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (namedSize, error) {
		var n namedSize
		return n, row.Scan(&n.name, &n.bytes)
	})
	if err != nil {
		return r, fmt.Errorf("index sizes: %w", err)
	}
	return r, nil
}

func (r relSizes) String() string {
	parts := []string{"heap " + bytesIEC(r.heap), "TOAST " + bytesIEC(r.toast)}
	for _, ix := range r.indexes {
		parts = append(parts, ix.name+" "+bytesIEC(ix.bytes))
	}
	return strings.Join(parts, ", ") + ", total " + bytesIEC(r.total())
}

var (
	vacuumPages   = regexp.MustCompile(`pages: \d+ removed, (\d+) remain, (\d+) scanned`)
	vacuumBuffers = regexp.MustCompile(`buffer usage: (\d+) hits, (\d+) (?:misses|reads), (\d+) dirtied`)
)

// timedVacuum runs one VACUUM (VERBOSE ...) of compute.jobs on a connection
// of its own, prints its report on stderr and returns its time and the
// heap's pages scanned, from that report.
func timedVacuum(ctx context.Context, conn, sql string) (vacuumResult, error) {
	cfg, err := pgxpool.ParseConfig(conn)
	if err != nil {
		return vacuumResult{}, err
	}
	var reports []string
	cfg.ConnConfig.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { reports = append(reports, n.Message) }
	c, err := pgx.ConnectConfig(ctx, cfg.ConnConfig)
	if err != nil {
		return vacuumResult{}, err
	}
	defer c.Close(context.Background())
	progressf("compute growth: %s", sql)
	start := time.Now()
	if _, err := c.Exec(ctx, sql); err != nil {
		return vacuumResult{}, fmt.Errorf("%s: %w", sql, err)
	}
	v := vacuumResult{elapsed: time.Since(start), ran: true}
	for _, m := range reports {
		if !strings.HasPrefix(m, "finished vacuuming") {
			continue
		}
		progressf("compute growth: %s", m)
		if !strings.Contains(m, `.compute.jobs"`) {
			continue // the TOAST table's report
		}
		if p := vacuumPages.FindStringSubmatch(m); p != nil {
			v.pages, _ = strconv.ParseInt(p[1], 10, 64)
			v.scanned, _ = strconv.ParseInt(p[2], 10, 64)
		}
		if b := vacuumBuffers.FindStringSubmatch(m); b != nil {
			v.hits, _ = strconv.ParseInt(b[1], 10, 64)
			v.misses, _ = strconv.ParseInt(b[2], 10, 64)
			v.dirtied, _ = strconv.ParseInt(b[3], 10, 64)
		}
	}
	progressf("compute growth: took %s, %s of %s heap pages scanned", v.elapsed.Round(time.Millisecond),
		thousands(v.scanned), thousands(v.pages))
	return v, nil
}

// vacuumSettingsSQL reads the settings that decide how long a vacuum of a
// big table takes, and compute.jobs' own autovacuum options.
const vacuumSettingsSQL = `
SELECT string_agg(name || '=' || current_setting(name), ' ' ORDER BY name),
       coalesce((SELECT array_to_string(reloptions, ' ') FROM pg_class WHERE oid = 'compute.jobs'::regclass), '')
FROM pg_settings
WHERE name IN ('shared_buffers', 'maintenance_work_mem', 'autovacuum_work_mem', 'work_mem',
               'vacuum_cost_delay', 'vacuum_cost_limit', 'autovacuum_vacuum_cost_delay',
               'autovacuum_vacuum_cost_limit', 'max_parallel_maintenance_workers', 'max_wal_size')`

// printGrowth writes workload (d)'s table: one column per size.
func printGrowth(out io.Writer, o options, res *results) {
	if len(res.growth) == 0 {
		return
	}
	var base float64 // the empty table's median; 0 if that step failed
	for _, g := range res.growth {
		if g.finished == 0 && g.queued == 0 && len(g.jobsPerSec) > 0 {
			base = median(g.jobsPerSec)
		}
	}
	fmt.Fprintf(out, "\n(d) cost growth, compute only: burn-down of %s jobs with compute.jobs also holding N complete rows\n", human(o.growthJobs))
	fmt.Fprintf(out, "    and %s queued rows of other queues; burn-downs per size: %d (the median shown)\n",
		human(o.growthQueuedN), o.growthRuns)
	fmt.Fprintf(out, "    settings: %s\n", res.growthSettings)
	fmt.Fprintf(out, "    compute.jobs options: %s\n\n", res.growthRelOptions)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight|tabwriter.Debug)
	line := func(label string, f func(g growthResult) string) {
		cells := []string{label}
		for _, g := range res.growth {
			cells = append(cells, f(g))
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t")
	}
	line("complete rows", func(g growthResult) string { return human(g.finished) })
	line("load, index builds, VACUUM ANALYZE", func(g growthResult) string {
		if g.load == 0 {
			return "—"
		}
		return g.load.Round(time.Second).String()
	})
	line("burn-down jobs/s (median)", func(g growthResult) string { return cell(g.jobsPerSec, rate) })
	line("    each run", func(g growthResult) string { return list(g.jobsPerSec, rate) })
	line("ratio to empty (≥ 0.8 at 100M)", func(g growthResult) string {
		if len(g.jobsPerSec) == 0 {
			return "—"
		}
		return ratio(median(g.jobsPerSec), base)
	})
	line("jobs run twice", func(g growthResult) string { return strconv.Itoa(g.reruns) })
	line("heap", func(g growthResult) string { return bytesIEC(g.sizes.heap) })
	line("TOAST", func(g growthResult) string { return bytesIEC(g.sizes.toast) })
	var names []string
	for _, g := range res.growth {
		for _, ix := range g.sizes.indexes {
			if !slices.Contains(names, ix.name) {
				names = append(names, ix.name)
			}
		}
	}
	for _, name := range names {
		line("index "+name, func(g growthResult) string {
			for _, ix := range g.sizes.indexes {
				if ix.name == name {
					return bytesIEC(ix.bytes)
				}
			}
			return "—"
		})
	}
	line("total", func(g growthResult) string { return bytesIEC(g.sizes.total()) })
	vac := func(label string, pick func(g growthResult) vacuumResult) {
		line(label, func(g growthResult) string {
			if v := pick(g); v.ran {
				return v.elapsed.Round(time.Millisecond).String()
			}
			return "—"
		})
		line("    heap pages scanned / all", func(g growthResult) string {
			v := pick(g)
			return thousands(v.scanned) + " / " + thousands(v.pages)
		})
		line("    buffers hit / missed / dirtied", func(g growthResult) string {
			v := pick(g)
			return thousands(v.hits) + " / " + thousands(v.misses) + " / " + thousands(v.dirtied)
		})
	}
	vac("VACUUM after the burn-down", func(g growthResult) vacuumResult { return g.vacuum })
	vac("then VACUUM (FREEZE)", func(g growthResult) vacuumResult { return g.freeze })
	tw.Flush()
	fmt.Fprintln(out, "\nSizes are pg_relation_size after the load's VACUUM ANALYZE (TOAST with its index). Both VACUUMs run with")
	fmt.Fprintln(out, "PARALLEL 0 and VERBOSE, as autovacuum would (it never vacuums indexes in parallel); the plain one removes the")
	fmt.Fprintln(out, "burn-down's dead tuples, the FREEZE one reads every page not all-frozen, as an anti-wraparound autovacuum does.")
}

// bytesIEC formats a byte count in binary units.
func bytesIEC(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
