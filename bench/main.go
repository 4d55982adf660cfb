// Command bench compares the compute job queue with River
// (github.com/riverqueue/river), the fastest Go peer, on the same
// PostgreSQL server in one run, and prints one table.
//
// It lives in its own module so that River never becomes a dependency of
// the library. Run it from this directory:
//
//	go run . -help
//	go run .            # one run of every workload at the default sizes
//	go run . -runs 3    # medians of three runs of (a), (b), (c) and (f)
//	go run . -smoke     # every workload at tiny sizes, well under a minute
//
// Without DATABASE_URL it starts a throwaway server through the test
// harness (internal/testdb); each system gets a fresh database on it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"
)

// options are the command-line flags.
type options struct {
	jobs        int
	loadBatch   int
	insertJobs  int
	insertBatch int

	rate      int
	producers int
	steady    time.Duration
	warmup    time.Duration
	drain     time.Duration

	growth         string
	growthQueued   string
	growthJobs     int
	growthSizes    []int // parsed -growth
	growthQueuedN  int   // parsed -growth-queued
	growthBatch    int   // (d) finished rows per INSERT ... SELECT
	growthRuns     int   // (d) burn-downs per size
	growthLoaders  int   // (d) connections loading at once
	growthRebuild  string
	growthRebuildN int // parsed -growth-rebuild

	ceilingJobs       int
	ceilingGoroutines int
	ceilingBatch      int

	rssJobs int

	userJobs   string // (u) sizes, comma-separated
	userSizes  []int  // parsed -user-jobs
	userIDs    string // (u) compute's job ids: random or sequential
	steadyIDs  string // (c) compute's job ids: uuidv7 (the default) or hash (ContentID)
	userShapes string // (u) which of userVariants run: "1,2", "1" or "2"
	statements int    // (u) top statements of pg_stat_statements to print per phase; 0: none
	profileDir string // (u) where the worker processes write CPU, block and mutex profiles

	computeSQL     string          // run on every fresh compute database after its migration
	notifyCooldown time.Duration   // compute's WithNotifyCooldown for the (c) and (f) producers; 0 is the library's default
	floodProducers int             // (f) goroutines, each with a connection
	floodTime      time.Duration   // (f) how long they enqueue
	soak           soakConfig      // workload (s)
	retention      retentionConfig // workload (r)

	runs        int
	workers     int
	conns       int
	only        string
	systems     string
	smoke       bool
	timeout     time.Duration
	verbose     bool
	cpuProfile  string // -cpuprofile: where to write this process's CPU profile
	lockProfile string // -lockprofile: prefix of this process's block and mutex profiles

	// Set only when the program runs itself as a child for the RSS
	// measurement.
	system string
	db     string
}

const usageText = `Usage: go run . [flags]

Runs the same workloads on compute and on River against one PostgreSQL
server and prints one table with both figures and their ratio:

  (a) burn-down: insert -jobs no-op jobs, then work them; jobs/s worked
  (b) bulk insert: -insert jobs in batches of -insert-batch
      (compute EnqueueMany vs River InsertManyFast, which uses COPY); jobs/s
  (c) steady state: -producers goroutines enqueue -rate jobs/s, one job per
      transaction, for -warmup and then -steady while workers consume;
      pick-up latency (commit -> handler start) p50/p99 of the jobs
      committed after the warm-up, and the backlog when they stop
  (d) cost growth (compute only): burn-down of -growth-jobs jobs while
      compute.jobs also holds -growth finished rows (each size in turn) and
      -growth-queued queued rows of other queues; ratio to an empty table
  (e) ceiling (compute only): a bare loop of Queue.Claim/Queue.Complete from
      -ceiling-goroutines goroutines, no Worker
  (f) concurrent enqueue: -flood-producers goroutines, each with its own
      connection, enqueue one job per transaction as fast as they can for
      -flood-time, no worker; jobs/s and transaction p99, for compute, for
      compute with a notification per enqueue (WithNotifyCooldown(1ns)) and
      for River. A notifying commit waits for every other one of the server
      across its WAL flush, so run it against a server with fsync on
      (DATABASE_URL) to see what notifications cost a durable database
  (u) the user's shape: a worker process of its own (this program with
      -system), jobs written by plain SQL (compute's with random 16-byte
      ids), a durable server, both rates from the database's clock (first
      claim to last finish); -user-jobs sizes, each with pgxpool's default
      pool and concurrency 1,000, and with a pool of 10 and concurrency
      2,000; worker CPU and peak RSS per system. Without DATABASE_URL it
      starts a server of its own with fsync, full_page_writes and
      synchronous_commit on. -systems adds bare loops to it: ceiling
      (Queue.Claim, then Queue.Complete) and onewrite (lock queued jobs,
      then complete them in the same transaction: one write per job, not
      the library's two; running jobs stay queued and locked)
  rss: peak RSS (VmHWM) of a -rss-jobs burn-down, each system in a child
      process of this program, so neither sees the other's memory

Every phase runs on fresh databases (one per system, migrated by the
system's own migrator) on one server. Without DATABASE_URL that is a
throwaway server (the harness's settings: fsync=off), so compare the two
systems with each other, not with figures from other machines. Progress
goes to stderr, the table to stdout; a failed phase is listed under the
table and makes the exit status 1.

Flags:
`

func parseFlags() options {
	var o options
	flag.IntVar(&o.jobs, "jobs", 200_000, "(a) burn-down size")
	flag.IntVar(&o.loadBatch, "load-batch", 5_000, "batch size for loading the jobs a burn-down works (River's bench inserts 5,000 per batch)")
	flag.IntVar(&o.insertJobs, "insert", 200_000, "(b) bulk insert size")
	flag.IntVar(&o.insertBatch, "insert-batch", 1_000, "(b) jobs per bulk insert call")
	flag.IntVar(&o.rate, "rate", 2_000, "(c) jobs per second, all producers together")
	flag.IntVar(&o.producers, "producers", 8, "(c) producer goroutines; they share a pool of this many connections, separate from the worker's")
	flag.DurationVar(&o.steady, "steady", 20*time.Second, "(c) how long the producers run")
	flag.DurationVar(&o.warmup, "warmup", 2*time.Second, "(c) how long the producers run before -steady starts: connections open, statements are prepared and caches fill; those jobs' pick-ups are not counted")
	flag.DurationVar(&o.drain, "drain", 10*time.Second, "(c) how long to wait for the backlog after the producers stop")
	flag.StringVar(&o.growth, "growth", "10k,1m", "(d) finished-row counts to test, comma-separated; 10m and 100m are opt-in (-growth 10k,1m,10m; -growth 100m -timeout 60m) and take minutes, and 20-40 minutes, to load (see the README)")
	flag.StringVar(&o.growthQueued, "growth-queued", "1m", "(d) queued rows of other queues added at every growth size")
	flag.IntVar(&o.growthJobs, "growth-jobs", 200_000, "(d) burn-down size at each growth size")
	flag.IntVar(&o.growthBatch, "growth-batch", 5_000_000, "(d) finished rows per INSERT ... SELECT statement of the load (a progress line follows each)")
	flag.IntVar(&o.growthLoaders, "growth-loaders", 2, "(d) connections running the load's INSERT ... SELECT statements at once")
	flag.StringVar(&o.growthRebuild, "growth-rebuild", "100m", "(d) from this many finished rows on, load them without the indexes that hold them (jobs_pkey, jobs_done, jobs_finished) and build those after, at the fillfactor inserts leave them at (0: never)")
	flag.IntVar(&o.growthRuns, "growth-runs", 1, "(d) burn-downs per size, the table shows their median")
	flag.IntVar(&o.ceilingJobs, "ceiling-jobs", 200_000, "(e) jobs the bare claim/complete loop works")
	flag.IntVar(&o.ceilingGoroutines, "ceiling-goroutines", 4, "(e) goroutines of the bare loop")
	flag.IntVar(&o.ceilingBatch, "ceiling-batch", 1_000, "(e) jobs per Claim in the bare loop")
	flag.IntVar(&o.rssJobs, "rss-jobs", 1_000_000, "burn-down size of the RSS measurement (0 skips it)")
	flag.StringVar(&o.userJobs, "user-jobs", "100k,200k", "(u) burn-down sizes, comma-separated")
	flag.StringVar(&o.userShapes, "user-shapes", "1,2", "(u) shapes to run: 1 = pgxpool's default pool and concurrency 1,000, 2 = pool 10 and concurrency 2,000")
	flag.StringVar(&o.steadyIDs, "steady-ids", "uuidv7", "(c) compute's job ids: uuidv7 (the library's default, time-ordered) or hash (ContentID: a hash of the config, spread at random over the index, as seed 002's job hashes are)")
	flag.StringVar(&o.userIDs, "user-ids", "random", "(u) compute's job ids: random (uuid_send(gen_random_uuid())) or sequential (a big-endian counter)")
	flag.IntVar(&o.statements, "statements", 0, "(u) print the top N statements of pg_stat_statements of every phase on stderr (preloads it in (u)'s own server)")
	flag.StringVar(&o.profileDir, "profile-dir", "", "(u) directory where each worker process writes CPU, block, mutex and allocation profiles")
	flag.StringVar(&o.computeSQL, "compute-sql", "", "SQL run on every fresh compute database after migrating it (also in (u)), e.g. \"ALTER TABLE compute.jobs SET (fillfactor = 70)\"")
	flag.DurationVar(&o.notifyCooldown, "notify-cooldown", 0, "(c) and (f) compute producers' WithNotifyCooldown: at most one wake-up notification per queue and period (0: the library's default; 1ns: one per enqueue)")
	flag.DurationVar(&o.soak.duration, "soak", 3*time.Minute, "(s) how long the table-health soak runs (select it with -only s)")
	flag.DurationVar(&o.soak.sample, "soak-sample", 10*time.Second, "(s) sampling interval")
	flag.IntVar(&o.soak.goroutines, "soak-goroutines", 4, "(s) goroutines of the bare claim/heartbeat/complete loop")
	flag.IntVar(&o.soak.batch, "soak-batch", 100, "(s) jobs per Claim")
	flag.IntVar(&o.soak.heartbeats, "soak-heartbeats", 0, "(s) Heartbeat calls per claimed batch before its Complete")
	flag.IntVar(&o.soak.backlog, "soak-backlog", 50_000, "(s) queued jobs the producer keeps ahead of the claimers")
	flag.BoolVar(&o.soak.holdXmin, "soak-hold-xmin", false, "(s) hold a REPEATABLE READ snapshot open in another session for the whole soak")
	flag.IntVar(&o.retention.rate, "retention-rate", 3_000, "(r) jobs enqueued per second (select it with -only r)")
	flag.DurationVar(&o.retention.duration, "retention-time", 5*time.Minute, "(r) how long the producer runs")
	flag.DurationVar(&o.retention.after, "retention-after", 30*time.Second, "(r) Retention.DeleteCompleteAfter")
	flag.DurationVar(&o.retention.sample, "retention-sample", 30*time.Second, "(r) sampling interval")
	flag.IntVar(&o.runs, "runs", 1, "runs of (a), (b), (c) and (f), changing which system goes first; the table shows medians")
	flag.IntVar(&o.workers, "workers", riverBenchMaxWorkers, "jobs run at once: compute's Concurrency and River's MaxWorkers (River's bench uses 2,000)")
	flag.IntVar(&o.conns, "conns", 10, "pool_max_conns of each system's worker pool")
	flag.IntVar(&o.floodProducers, "flood-producers", 32, "(f) producer goroutines, each with its own connection")
	flag.DurationVar(&o.floodTime, "flood-time", 5*time.Second, "(f) how long the producers enqueue")
	flag.StringVar(&o.only, "only", "a,b,c,d,e,f,u,rss", "workloads to run, comma-separated")
	flag.StringVar(&o.systems, "systems", "compute,River,ceiling", "systems that run (a), (b), (c) and rss, comma-separated; one alone measures a change to it in half the time, without ratios; ceiling adds the bare Claim+Complete loop to (u), onewrite a bare loop that locks jobs and completes them in one transaction (a job life the library does not have: it prices one)")
	flag.BoolVar(&o.smoke, "smoke", false, "every workload at tiny sizes (overrides the size flags), for CI")
	flag.DurationVar(&o.timeout, "timeout", 15*time.Minute, "limit for any one phase")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a Go CPU profile of this process (both systems' client side; go tool pprof -focus compute) to this file")
	flag.StringVar(&o.lockProfile, "lockprofile", "", "write block, mutex and allocation profiles of this process to this prefix + .block.pprof, .mutex.pprof and .allocs.pprof")
	flag.BoolVar(&o.verbose, "v", false, "log the systems' warnings and info on stderr (default: errors only), and sample compute's rows in progress every second of a burn-down")
	flag.StringVar(&o.system, "system", "", "internal: run one burn-down of an already loaded database as a child process (compute or river)")
	flag.StringVar(&o.db, "db", "", "internal: the child's connection string")
	flag.Usage = func() {
		fmt.Fprint(flag.CommandLine.Output(), usageText)
		flag.PrintDefaults()
	}
	flag.Parse()
	if o.smoke {
		o.jobs, o.loadBatch, o.insertJobs, o.insertBatch = 2_000, 1_000, 2_000, 1_000
		o.rate, o.producers, o.steady, o.warmup, o.drain = 500, 4, 2*time.Second, time.Second, 5*time.Second
		o.growth, o.growthQueued, o.growthJobs, o.growthRebuild = "1k", "1k", 2_000, "1k"
		o.ceilingJobs, o.rssJobs, o.runs = 2_000, 2_000, 1
		o.userJobs = "2k"
		o.floodProducers, o.floodTime = 4, time.Second
		o.retention = retentionConfig{rate: 200, duration: 3 * time.Second, after: time.Second, sample: time.Second}
		o.timeout = 2 * time.Minute
	}
	return o
}

// check validates the flags and parses the row-count lists.
func (o *options) check() error {
	var err error
	if o.growthSizes, err = parseSizes(o.growth); err != nil {
		return fmt.Errorf("-growth: %w", err)
	}
	if o.growthQueuedN, err = parseCount(strings.ToLower(o.growthQueued)); err != nil {
		return fmt.Errorf("-growth-queued: %w", err)
	}
	if o.growthRebuildN, err = parseCount(strings.ToLower(o.growthRebuild)); err != nil {
		return fmt.Errorf("-growth-rebuild: %w", err)
	}
	if o.userSizes, err = parseSizes(o.userJobs); err != nil {
		return fmt.Errorf("-user-jobs: %w", err)
	}
	switch {
	case o.steadyIDs != "uuidv7" && o.steadyIDs != "hash":
		return fmt.Errorf("-steady-ids %q: want uuidv7 or hash", o.steadyIDs)
	case o.userIDs != "random" && o.userIDs != "sequential":
		return fmt.Errorf("-user-ids %q: want random or sequential", o.userIDs)
	case slices.Contains(o.userSizes, 0):
		return fmt.Errorf("-user-jobs sizes must be positive")
	case o.retention.rate < 1 || o.retention.duration <= 0 || o.retention.after <= 0 || o.retention.sample <= 0:
		return errors.New("-retention-rate, -retention-time, -retention-after and -retention-sample must be positive")
	case o.jobs < 1 || o.insertJobs < 1 || o.growthJobs < 1 || o.ceilingJobs < 1 || o.growthBatch < 1 || o.growthRuns < 1 || o.growthLoaders < 1:
		return fmt.Errorf("job counts, -growth-batch, -growth-runs and -growth-loaders must be positive")
	case o.loadBatch < 1 || o.insertBatch < 1 || o.ceilingBatch < 1 || o.ceilingBatch > 10_000:
		return fmt.Errorf("batch sizes must be 1..10000")
	case o.floodProducers < 1 || o.floodTime <= 0:
		return fmt.Errorf("-flood-producers and -flood-time must be positive")
	case o.rate < 1 || o.producers < 1 || o.steady <= 0 || o.warmup < 0:
		return fmt.Errorf("-rate, -producers and -steady must be positive, -warmup not negative")
	case o.workers < 1 || o.workers > 10_000:
		return fmt.Errorf("-workers must be 1..10000 (River's limit)")
	case o.conns < 2:
		return fmt.Errorf("-conns must be at least 2")
	case o.runs < 1 || o.ceilingGoroutines < 1 || o.rssJobs < 0:
		return fmt.Errorf("-runs and -ceiling-goroutines must be positive, -rss-jobs not negative")
	case !o.takesPart("compute") && !o.takesPart("River"):
		return fmt.Errorf("-systems %q names neither compute nor River", o.systems)
	}
	return nil
}

// logger returns the logger both systems get: errors only unless -v.
func (o options) logger() *slog.Logger {
	level := slog.LevelError
	if o.verbose {
		level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

func main() {
	o := parseFlags()
	if err := o.check(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: -cpuprofile:", err)
			os.Exit(2)
		}
		defer f.Close()
	}
	if o.lockProfile != "" {
		runtime.SetBlockProfileRate(int(10 * time.Microsecond))
		runtime.SetMutexProfileFraction(10)
	}
	var err error
	if o.system != "" {
		err = child(ctx, o)
	} else {
		err = run(ctx, o)
	}
	stop()
	pprof.StopCPUProfile() // a no-op without -cpuprofile
	if o.lockProfile != "" {
		err = errors.Join(err, writeProfile("block", o.lockProfile+".block.pprof"), writeProfile("mutex", o.lockProfile+".mutex.pprof"),
			writeProfile("allocs", o.lockProfile+".allocs.pprof"))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// writeProfile writes the named runtime profile to path.
func writeProfile(name, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	return errors.Join(pprof.Lookup(name).WriteTo(f, 0), f.Close())
}

// selected reports whether workload w is in -only.
func (o options) selected(w string) bool { return listed(o.only, w) }

// takesPart reports whether the system (compute or River) takes part.
func (o options) takesPart(system string) bool { return listed(o.systems, system) }

// listed reports whether w is in the comma-separated list.
func listed(list, w string) bool {
	for part := range strings.SplitSeq(list, ",") {
		if strings.TrimSpace(part) == w {
			return true
		}
	}
	return false
}
