// Command worker is a generic compute worker: it serves the named queues
// with a handler that does what each job's config asks, which makes it handy
// for trying the library out, for load tests and for fault tests.
//
// Run it with the database in DATABASE_URL (or the PG* variables when unset):
//
//	DATABASE_URL=postgres://user:pass@localhost/db go run ./examples/worker -queues a,b -concurrency 10
//
// Behind PgBouncer in transaction mode, set DIRECT_URL to the server itself
// as well: the worker then LISTENs and migrates on that connection.
//
// It migrates the schema at start, logs to stderr, and stops gracefully on
// SIGTERM or SIGINT: no new jobs, running ones get -stop-timeout to finish,
// then they are cancelled and handed back to the queue.
//
// A job's config is JSON, every field optional ("" counts as {}):
//
//	{"sleep_ms": 100, "fail": false, "panic": false, "outputs": ["out.txt"], "ignore_cancel": false}
//
// The handler sleeps sleep_ms (returning early if the job's context ends,
// unless ignore_cancel is set), then panics if panic is set, fails the
// attempt if fail is set, and otherwise completes the job with outputs as its
// output files. Any other config fails the job at once, without retries.
//
// With -periodic name=schedule (repeatable, or several comma-separated), the
// worker also runs a periodic schedule (compute.PeriodicJob) named name that
// enqueues the job {} into the queue of the same name at each tick: the
// schedule is a Go duration ("1s", "5m": Every) or else a cron expression
// ("*/5 * * * *", "@hourly": Cron). Every process given the same schedule
// shares it, so each tick is enqueued once in the cluster.
//
// With COMPUTE_LEDGER=<path> set, every attempt appends the line
// "<job id> <attempt> <pid> start <unix nanoseconds> <partition key>" to
// that file when it starts and the same with "done" when its handler
// succeeded, so tests can check which process ran what, and when. The time
// is the worker's wall clock; the partition key is Go-quoted ("" when the
// job has none). The worker id is "worker-<pid>" for the same reason.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/computeplatform/compute"
)

func main() {
	queues := flag.String("queues", "", "comma-separated queue names to serve (required)")
	concurrency := flag.Int("concurrency", 10, "jobs run at once per queue")
	pollInterval := flag.Duration("poll-interval", time.Second, "longest wait between polls when no notification comes")
	pollOnly := flag.Bool("poll-only", false, "do not LISTEN (for PgBouncer in transaction mode)")
	lease := flag.Duration("lease", 30*time.Second, "how long a claim holds a job without renewal")
	stopTimeout := flag.Duration("stop-timeout", 30*time.Second, "how long running jobs may finish after SIGTERM")
	rescueInterval := flag.Duration("rescue-interval", 10*time.Second, "how often to hand back expired jobs of dead workers")
	var periodic []compute.PeriodicJob
	flag.Func("periodic", "name=schedule: enqueue {} into queue name at each tick of schedule, a Go duration or a cron expression (repeatable; or comma-separated)", func(v string) error {
		jobs, err := parsePeriodic(v)
		periodic = append(periodic, jobs...)
		return err
	})
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(log, *queues, *concurrency, compute.WorkerConfig{
		PollInterval:        *pollInterval,
		PollOnly:            *pollOnly,
		StopTimeout:         *stopTimeout,
		MaintenanceInterval: *rescueInterval,
		Periodic:            periodic,
	}, *lease); err != nil {
		log.Error("worker failed", "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger, queues string, concurrency int, cfg compute.WorkerConfig, lease time.Duration) error {
	if queues == "" {
		return errors.New("-queues is required, e.g. -queues a,b")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	opts := []compute.Option{
		compute.WithMigrate(),
		compute.WithLogger(log),
		compute.WithLease(lease),
		compute.WithWorkerID(fmt.Sprintf("worker-%d", os.Getpid())),
	}
	// Behind PgBouncer in transaction mode, DIRECT_URL reaches the server
	// itself, for what needs a session: LISTEN and Migrate's lock.
	if direct := os.Getenv("DIRECT_URL"); direct != "" {
		opts = append(opts, compute.WithDirectURL(direct))
	}
	q, err := compute.Open(ctx, os.Getenv("DATABASE_URL"), opts...)
	if err != nil {
		return err
	}
	defer q.Close()

	cfg.Queues = make(map[string]compute.QueueConfig)
	for name := range strings.SplitSeq(queues, ",") {
		cfg.Queues[name] = compute.QueueConfig{Handler: handle, Concurrency: concurrency}
	}
	if path := os.Getenv("COMPUTE_LEDGER"); path != "" {
		ledger, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return err
		}
		defer ledger.Close()
		cfg.Middleware = append(cfg.Middleware, record(ledger, log))
	}
	w, err := compute.NewWorker(q, cfg)
	if err != nil {
		return err
	}
	// Run returns after a graceful stop, once ctx ends.
	return w.Run(ctx)
}

// parsePeriodic reads one -periodic value: name=schedule entries separated by
// commas. A piece without "=" continues the previous entry, so cron
// expressions with lists ("0,30 * * * *") need no quoting.
func parsePeriodic(v string) ([]compute.PeriodicJob, error) {
	var entries []string
	for piece := range strings.SplitSeq(v, ",") {
		if !strings.Contains(piece, "=") && len(entries) > 0 {
			entries[len(entries)-1] += "," + piece
			continue
		}
		entries = append(entries, piece)
	}
	var jobs []compute.PeriodicJob
	for _, e := range entries {
		name, schedule, ok := strings.Cut(e, "=")
		name, schedule = strings.TrimSpace(name), strings.TrimSpace(schedule)
		if !ok || name == "" || schedule == "" {
			return nil, fmt.Errorf("%q is not name=schedule, e.g. beat=1s or nightly=0 3 * * *", e)
		}
		p := compute.PeriodicJob{Name: name, Job: compute.Job{Queue: name, Config: "{}"}}
		if every, err := time.ParseDuration(schedule); err == nil {
			p.Every = every
		} else {
			p.Cron = schedule
		}
		jobs = append(jobs, p)
	}
	return jobs, nil
}

// jobConfig is what a job's config may ask of handle.
type jobConfig struct {
	SleepMS      int      `json:"sleep_ms"`
	Fail         bool     `json:"fail"`
	Panic        bool     `json:"panic"`
	Outputs      []string `json:"outputs"`
	IgnoreCancel bool     `json:"ignore_cancel"`
}

// handle does what the job's config asks.
func handle(ctx context.Context, job *compute.Job) ([]string, error) {
	cfg, err := parseConfig(job.Config)
	if err != nil {
		// Retrying cannot fix a bad config: fail the job now.
		return nil, compute.Permanent(err)
	}
	sleep := time.Duration(cfg.SleepMS) * time.Millisecond
	if cfg.IgnoreCancel {
		time.Sleep(sleep) // a badly behaved handler, for shutdown tests
	} else {
		t := time.NewTimer(sleep)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		case <-t.C:
		}
	}
	if cfg.Panic {
		panic("the job's config asked for a panic")
	}
	if cfg.Fail {
		return nil, errors.New("the job's config asked for a failure")
	}
	return cfg.Outputs, nil
}

// parseConfig reads a job config strictly: unknown fields, wrong types and
// trailing data are errors.
func parseConfig(config string) (jobConfig, error) {
	var cfg jobConfig
	if config == "" {
		return cfg, nil
	}
	dec := json.NewDecoder(strings.NewReader(config))
	dec.DisallowUnknownFields()
	err := dec.Decode(&cfg)
	if err == nil && dec.Decode(&struct{}{}) != io.EOF {
		err = errors.New("data after the JSON object")
	}
	if err != nil {
		return cfg, fmt.Errorf(`config must be JSON like {"sleep_ms": 10, "fail": false, "panic": false, "outputs": ["a"], "ignore_cancel": false}: %w`, err)
	}
	return cfg, nil
}

// record is a middleware that appends each attempt's start, and its success,
// to ledger, with the wall-clock time and the job's partition key. Each line
// is one write on an O_APPEND file, so lines from many processes never
// interleave.
func record(ledger *os.File, log *slog.Logger) compute.Middleware {
	return func(next compute.Handler) compute.Handler {
		return func(ctx context.Context, job *compute.Job) ([]string, error) {
			line := func(event string) {
				b := fmt.Appendf(nil, "%s %d %d %s %d %q\n", job.ID, job.Attempt, os.Getpid(), event,
					time.Now().UnixNano(), job.PartitionKey)
				if _, err := ledger.Write(b); err != nil {
					log.Error("ledger write failed", "job", job.ID, "err", err)
				}
			}
			line("start")
			outputs, err := next(ctx, job)
			if err == nil {
				line("done")
			}
			return outputs, err
		}
	}
}
