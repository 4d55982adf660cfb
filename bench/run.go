package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/computeplatform/compute/internal/testdb"
)

// results holds every figure the table prints. Per-system maps are keyed by
// system name; slices hold one entry per run.
type results struct {
	burn   map[string][]float64 // (a) jobs/s
	reruns map[string]int       // (a) handler calls beyond one per job, all runs
	bulk   map[string][]float64 // (b) jobs/s
	steady map[string][]steadyResult
	growth []growthResult // (d)

	growthSettings, growthRelOptions string  // (d): vacuum settings of the server, compute.jobs' options
	ceil                             float64 // (e) jobs/s
	rss                              map[string]childResult
	flood                            map[string][]floodResult // (f), keyed compute, River, and floodEvery
	user                             map[userKey][]userResult // (u)

	userHeader string // (u)'s server settings

	failures []string // phases that failed, with why
}

// childResult is what a child process reports on stdout, as JSON.
type childResult struct {
	Seconds    float64 `json:"seconds"`
	Jobs       int     `json:"jobs"`
	Handled    int     `json:"handled"`
	BaseRSSKiB int64   `json:"base_rss_kib"` // VmRSS before the burn-down
	HWMKiB     int64   `json:"hwm_kib"`      // VmHWM after it
	RSSKiB     int64   `json:"rss_kib"`      // VmRSS after it
	CPUSeconds float64 `json:"cpu_seconds"`  // user and system time of the burn-down
	MaxConns   int32   `json:"max_conns"`    // the worker pool's size
	// Acquires that found no idle connection and waited, and their
	// total wait: whether the pool starved the worker.
	EmptyAcquires  int64   `json:"empty_acquires"`
	EmptyWaitMilli float64 `json:"empty_wait_ms"`
}

// run starts (or finds) the server and runs the selected workloads, each
// phase on fresh databases.
func run(ctx context.Context, o options) error {
	srv, err := testdb.Start(ctx, progressf)
	if err != nil {
		return err
	}
	defer srv.Close()

	log := o.logger()
	// fresh creates a new database for one phase of the named system,
	// migrates it with that system's own migrator and opens the system on
	// it. Fresh databases keep the phases apart: no phase sees another's
	// rows, table statistics, dead tuples or cached statement plans (with
	// TRUNCATE between phases instead, a steady state after a burn-down
	// picked jobs up 5 to 20 times slower, for both systems). done closes
	// the system and drops the database.
	dbs := 0
	fresh := func(ctx context.Context, name string) (s system, conn string, done func(), err error) {
		dbs++
		dbname := fmt.Sprintf("bench_%d_%d_%s", os.Getpid(), dbs, strings.ToLower(name))
		if conn, err = srv.CreateDatabase(ctx, dbname); err == nil {
			conn, err = withPoolSize(conn, o.conns)
		}
		if err != nil {
			return nil, "", nil, err
		}
		drop := func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := srv.DropDatabase(ctx, dbname); err != nil {
				progressf("drop database %s: %v", dbname, err)
			}
		}
		if name == "compute" {
			var cs *computeSystem
			if cs, err = openCompute(ctx, conn, o.workers, o.producers, log, o.verbose); err == nil {
				cs.cooldown = o.notifyCooldown
				s, err = cs, cs.migrate(ctx)
				if err == nil && o.computeSQL != "" {
					_, err = cs.q.Pool().Exec(ctx, o.computeSQL)
				}
			}
		} else {
			var rs *riverSystem
			if rs, err = openRiver(ctx, conn, o.workers, o.producers, log); err == nil {
				s, err = rs, rs.migrate(ctx)
			}
		}
		if err != nil {
			if s != nil {
				s.close()
			}
			drop()
			return nil, "", nil, fmt.Errorf("set up %s: %w", name, err)
		}
		return s, conn, func() { s.close(); drop() }, nil
	}

	var hdr header
	s, _, done, err := fresh(ctx, "compute")
	if err != nil {
		return err
	}
	hdr, err = readHeader(ctx, s.(*computeSystem).q.Pool(), srv, o)
	done()
	if err != nil {
		return err
	}

	res := &results{
		burn: map[string][]float64{}, reruns: map[string]int{}, bulk: map[string][]float64{},
		steady: map[string][]steadyResult{}, rss: map[string]childResult{}, flood: map[string][]floodResult{},
		user: map[userKey][]userResult{},
	}
	// phase runs one workload on a fresh database of the named system
	// within -timeout. A failed phase is reported and the others still run,
	// so one system's failure does not hide every other figure.
	phase := func(what, name string, f func(ctx context.Context, s system, conn string) error) {
		if ctx.Err() != nil {
			return
		}
		ctx, cancel := context.WithTimeout(ctx, o.timeout)
		defer cancel()
		s, conn, done, err := fresh(ctx, name)
		if err == nil {
			err = f(ctx, s, conn)
			done()
		}
		if err != nil {
			res.failures = append(res.failures, fmt.Sprintf("%s, %s: %v", what, name, err))
			progressf("FAILED: %s, %s: %v", what, name, err)
		}
	}
	scfg := steadyConfig{rate: o.rate, producers: o.producers, warmup: o.warmup, duration: o.steady, drain: o.drain, hashIDs: o.steadyIDs == "hash"}
	for r := range o.runs {
		// Alternate which system goes first, so slow drift of the machine
		// (other load, the server's caches) does not favour one of them.
		order := []string{"compute", "River"}
		if r%2 == 1 {
			order = []string{"River", "compute"}
		}
		order = slices.DeleteFunc(order, func(name string) bool { return !o.takesPart(name) })
		if len(order) == 0 {
			break
		}
		progressf("run %d of %d: %s first", r+1, o.runs, order[0])
		for _, name := range order {
			if !o.selected("a") {
				break
			}
			phase("(a) burn-down", name, func(ctx context.Context, s system, _ string) error {
				b, err := loadAndBurn(ctx, s, o.jobs, o.loadBatch)
				if err == nil {
					res.burn[name] = append(res.burn[name], float64(o.jobs)/b.elapsed.Seconds())
					res.reruns[name] += b.handled - o.jobs
				}
				return err
			})
		}
		for _, name := range order {
			if !o.selected("b") {
				break
			}
			phase("(b) bulk insert", name, func(ctx context.Context, s system, _ string) error {
				start := time.Now()
				err := s.insert(ctx, o.insertJobs, o.insertBatch)
				if err == nil {
					res.bulk[name] = append(res.bulk[name], float64(o.insertJobs)/time.Since(start).Seconds())
				}
				return err
			})
		}
		for _, name := range order {
			if !o.selected("c") {
				break
			}
			phase("(c) steady state", name, func(ctx context.Context, s system, _ string) error {
				sr, err := s.steady(ctx, scfg)
				if err == nil {
					res.steady[name] = append(res.steady[name], sr)
				}
				return err
			})
		}
	}
	for r := range o.runs {
		if !o.selected("f") {
			break
		}
		// compute with its default cooldown, compute with a notification
		// per enqueue, River; the order turns each run.
		order := []string{"compute", floodEvery, "River"}
		for range r % 3 {
			order = append(order[1:], order[0])
		}
		for _, name := range order {
			sys := name
			if name == floodEvery {
				sys = "compute"
			}
			if !o.takesPart(sys) {
				continue
			}
			phase("(f) concurrent enqueue", sys, func(ctx context.Context, s system, _ string) error {
				var f floodResult
				var err error
				switch name {
				case "River":
					f, err = s.(*riverSystem).flood(ctx, o.floodProducers, o.floodTime)
				case floodEvery:
					f, err = s.(*computeSystem).flood(ctx, o.floodProducers, o.floodTime, time.Nanosecond)
				default:
					f, err = s.(*computeSystem).flood(ctx, o.floodProducers, o.floodTime, o.notifyCooldown)
				}
				if err == nil {
					res.flood[name] = append(res.flood[name], f)
				}
				return err
			})
		}
	}
	if o.selected("d") {
		// A burn-down on an empty table first, the base of the ratios;
		// then one per finished-row count.
		steps := [][2]int{{0, 0}}
		for _, n := range o.growthSizes {
			steps = append(steps, [2]int{n, o.growthQueuedN})
		}
		for _, st := range steps {
			what := fmt.Sprintf("(d) cost growth, %s complete + %s queued rows", human(st[0]), human(st[1]))
			phase(what, "compute", func(ctx context.Context, s system, _ string) error {
				cs := s.(*computeSystem)
				if res.growthSettings == "" {
					if err := cs.q.Pool().QueryRow(ctx, vacuumSettingsSQL).Scan(&res.growthSettings, &res.growthRelOptions); err != nil {
						return err
					}
				}
				g, err := growthStep(ctx, cs, st[0], st[1], o)
				if err == nil {
					res.growth = append(res.growth, g)
				}
				return err
			})
		}
	}
	if o.selected("e") {
		phase("(e) ceiling", "compute", func(ctx context.Context, s system, _ string) error {
			cs := s.(*computeSystem)
			if err := cs.insert(ctx, o.ceilingJobs, o.loadBatch); err != nil {
				return err
			}
			if err := cs.vacuum(ctx); err != nil {
				return err
			}
			d, err := cs.ceiling(ctx, o.ceilingJobs, o.ceilingGoroutines, o.ceilingBatch)
			if err == nil {
				res.ceil = float64(o.ceilingJobs) / d.Seconds()
				progressf("compute ceiling: %d jobs in %s, %.0f jobs/s", o.ceilingJobs, d.Round(time.Millisecond), res.ceil)
			}
			return err
		})
	}
	if o.selected("s") {
		phase("(s) table-health soak", "compute", func(ctx context.Context, s system, conn string) error {
			return s.(*computeSystem).soak(ctx, o.soak, conn, os.Stdout)
		})
	}
	if o.selected("u") {
		if err := runUser(ctx, o, res); err != nil {
			res.failures = append(res.failures, fmt.Sprintf("(u): %v", err))
			progressf("FAILED: (u): %v", err)
		}
	}
	if o.selected("r") {
		phase("(r) retention at load", "compute", func(ctx context.Context, s system, _ string) error {
			return s.(*computeSystem).retention(ctx, o.retention, os.Stdout)
		})
	}
	if o.selected("rss") && o.rssJobs > 0 {
		for _, name := range []string{"compute", "River"} {
			if !o.takesPart(name) {
				continue
			}
			phase("RSS burn-down", name, func(ctx context.Context, s system, conn string) error {
				cr, err := rssChild(ctx, s, conn, o)
				if err == nil {
					res.rss[name] = cr
				}
				return err
			})
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	printTable(os.Stdout, hdr, o, res)
	if len(res.failures) > 0 {
		return fmt.Errorf("%d phase(s) failed (see the end of the table)", len(res.failures))
	}
	return nil
}

// loadAndBurn inserts n jobs, vacuums, and times their burn-down. VACUUM
// ANALYZE gives both systems' planners the same fresh statistics, instead
// of whatever autovacuum happened to do during the load.
func loadAndBurn(ctx context.Context, s system, n, batch int) (burnResult, error) {
	if err := s.insert(ctx, n, batch); err != nil {
		return burnResult{}, err
	}
	if err := s.vacuum(ctx); err != nil {
		return burnResult{}, err
	}
	progressf("%s burn-down of %d jobs", s.name(), n)
	b, err := s.burnDown(ctx, n)
	if err == nil {
		progressf("%s burn-down: %d jobs in %s, %.0f jobs/s, %d handler calls", s.name(), n,
			b.elapsed.Round(time.Millisecond), float64(n)/b.elapsed.Seconds(), b.handled)
	}
	return b, err
}

// rssChild loads rssJobs jobs into s's database and has a child process of
// this program work them, so the peak RSS it reports belongs to that
// system's worker alone (VmHWM never goes down, so one process running both
// systems would report the larger of the two for the second).
func rssChild(ctx context.Context, s system, conn string, o options) (childResult, error) {
	if err := s.insert(ctx, o.rssJobs, o.loadBatch); err != nil {
		return childResult{}, err
	}
	if err := s.vacuum(ctx); err != nil {
		return childResult{}, err
	}
	sys := "compute"
	if s.name() == "River" {
		sys = "river"
	}
	progressf("%s RSS: burn-down of %d jobs in a child process", s.name(), o.rssJobs)
	return runChild(ctx, o, []string{"-system", sys, "-db", conn, "-jobs", strconv.Itoa(o.rssJobs),
		"-workers", strconv.Itoa(o.workers), "-timeout", o.timeout.String()})
}

// child is the child process of rssChild: it works the jobs already loaded
// in -db and prints a childResult.
func child(ctx context.Context, o options) error {
	if o.db == "" {
		return errors.New("-system needs -db")
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	var (
		s   system
		err error
	)
	switch o.system {
	case "compute", "ceiling", "onewrite":
		s, err = openCompute(ctx, o.db, o.workers, 1, o.logger(), o.verbose)
	case "river":
		s, err = openRiver(ctx, o.db, o.workers, 1, o.logger())
	default:
		return fmt.Errorf("-system %q: want compute, ceiling, onewrite or river", o.system)
	}
	if err != nil {
		return err
	}
	defer s.close()
	_, base := memStatus()
	cpu := selfCPU()
	var b burnResult
	cs, _ := s.(*computeSystem)
	switch o.system {
	case "ceiling":
		// (u)'s bare loop: a goroutine per pool connection, as many
		// claims in flight as the pool allows.
		b.handled = o.jobs
		b.elapsed, err = cs.ceiling(ctx, o.jobs, int(cs.q.Pool().Config().MaxConns), o.ceilingBatch)
	case "onewrite":
		// (u)'s one-write loop, in the bare loop's shape.
		b.handled = o.jobs
		b.elapsed, err = cs.oneWrite(ctx, o.jobs, int(cs.q.Pool().Config().MaxConns), o.ceilingBatch)
	default:
		b, err = s.burnDown(ctx, o.jobs)
	}
	if err != nil {
		return err
	}
	cpu = selfCPU() - cpu
	hwm, rss := memStatus()
	st := systemPool(s).Stat()
	return json.NewEncoder(os.Stdout).Encode(childResult{
		Seconds: b.elapsed.Seconds(), Jobs: o.jobs, Handled: b.handled, BaseRSSKiB: base, HWMKiB: hwm, RSSKiB: rss,
		CPUSeconds: cpu.Seconds(), MaxConns: st.MaxConns(), EmptyAcquires: st.EmptyAcquireCount(),
		EmptyWaitMilli: float64(st.EmptyAcquireWaitTime()) / float64(time.Millisecond),
	})
}

// header is what the table's header says about the setup.
type header struct {
	server, pgVersion                             string
	fsync, syncCommit, fullPageWrites, sharedBufs string
	maxConns                                      string
	riverVersion                                  string
}

func readHeader(ctx context.Context, pool *pgxpool.Pool, srv *testdb.Server, o options) (header, error) {
	var h header
	err := pool.QueryRow(ctx, `SELECT current_setting('server_version'), current_setting('fsync'),
	    current_setting('synchronous_commit'), current_setting('full_page_writes'),
	    current_setting('shared_buffers'), current_setting('max_connections')`).
		Scan(&h.pgVersion, &h.fsync, &h.syncCommit, &h.fullPageWrites, &h.sharedBufs, &h.maxConns)
	if err != nil {
		return h, fmt.Errorf("read server settings: %w", err)
	}
	switch {
	case os.Getenv("DATABASE_URL") != "":
		h.server = "the server in DATABASE_URL"
	case srv.Owned():
		h.server = "a throwaway server the harness started from local binaries"
	default:
		h.server = "a throwaway Docker container the harness started"
	}
	h.riverVersion = "(unknown)"
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, m := range bi.Deps {
			if m.Path == "github.com/riverqueue/river" {
				h.riverVersion = m.Version
			}
		}
	}
	return h, nil
}

// goInfo names the Go toolchain and scheduler width.
func goInfo() string {
	return fmt.Sprintf("%s, GOMAXPROCS=%d, %d CPUs", runtime.Version(), runtime.GOMAXPROCS(0), runtime.NumCPU())
}
