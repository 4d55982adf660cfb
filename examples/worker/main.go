// Command worker is a generic compute worker: it serves the named queues
// with a handler that does what each job's config asks, which makes it handy
// for trying the library out, for load tests and for fault tests.
//
// Run it with the database in DATABASE_URL (or the PG* variables when unset):
//
//	DATABASE_URL=postgres://user:pass@localhost/db go run ./examples/worker -queues a,b -concurrency 10
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
// With COMPUTE_LEDGER=<path> set, every attempt appends the line
// "<job id> <attempt> <pid> start" to that file when it starts and
// "... done" when its handler succeeded, so tests can check which process
// ran what. The worker id is "worker-<pid>" for the same reason.
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
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(log, *queues, *concurrency, compute.WorkerConfig{
		PollInterval:   *pollInterval,
		PollOnly:       *pollOnly,
		StopTimeout:    *stopTimeout,
		RescueInterval: *rescueInterval,
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

	q, err := compute.Open(ctx, os.Getenv("DATABASE_URL"),
		compute.WithMigrate(),
		compute.WithLogger(log),
		compute.WithLease(lease),
		compute.WithWorkerID(fmt.Sprintf("worker-%d", os.Getpid())))
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
// to ledger. Each line is one write on an O_APPEND file, so lines from many
// processes never interleave.
func record(ledger *os.File, log *slog.Logger) compute.Middleware {
	return func(next compute.Handler) compute.Handler {
		return func(ctx context.Context, job *compute.Job) ([]string, error) {
			line := func(event string) {
				b := fmt.Appendf(nil, "%s %d %d %s\n", job.ID, job.Attempt, os.Getpid(), event)
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
