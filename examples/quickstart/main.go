// Quickstart runs a few thousand jobs through compute from end to end and
// prints what happened: it enqueues jobs on two queues in one call, works
// them with a Worker while a progress line counts them down, and reports
// counts per status, throughput and pick-up latency.
//
// It needs no setup. With DATABASE_URL unset it starts a throwaway
// PostgreSQL server (from local binaries, else in Docker) and removes it
// when it exits, Ctrl-C included; with DATABASE_URL set it uses that
// database and leaves its jobs there.
//
//	go run ./examples/quickstart
//	go run ./examples/quickstart -jobs 20000 -concurrency 32
//	go run ./examples/quickstart -ui
//
// With -ui it then keeps the database (and the worker) and serves the
// dashboard on -addr, printing its URL, until Ctrl-C.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/dashboard"
	"github.com/computeplatform/compute/internal/testdb"
)

// The two queues of the demo.
const (
	thumbnails = "thumbnails"
	emails     = "emails"
)

func main() {
	total := flag.Int("jobs", 5000, "how many jobs to enqueue, split between the two queues")
	concurrency := flag.Int("concurrency", 10, "how many jobs of each queue run at once")
	ui := flag.Bool("ui", false, "after the demo, serve the dashboard until Ctrl-C")
	addr := flag.String("addr", "127.0.0.1:8080", "with -ui, the HOST:PORT of the dashboard (port 0 picks a free one)")
	flag.Parse()
	if *total < 1 || *total > 1_000_000 || *concurrency < 1 || *concurrency > 1000 {
		fmt.Fprintln(os.Stderr, "quickstart: -jobs must be in 1..1000000 and -concurrency in 1..1000")
		os.Exit(2)
	}
	// run returns before os.Exit so that its deferred cleanup (stopping
	// the worker, removing the throwaway server) always runs; a panic in
	// run unwinds through the same defers.
	if err := run(*total, *concurrency, *ui, *addr); err != nil {
		if errors.Is(err, context.Canceled) {
			err = errors.New("interrupted")
		}
		fmt.Fprintln(os.Stderr, "\nquickstart:", err)
		os.Exit(1)
	}
}

func run(total, concurrency int, ui bool, addr string) error {
	// The first Ctrl-C (or SIGTERM) cancels ctx. Until stop runs, which
	// is the last deferred call, later signals are caught too, so a
	// second Ctrl-C cannot kill the process before the server is removed.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	setupBegan := time.Now()

	logf := func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
	startCtx, cancel := context.WithTimeout(ctx, 5*time.Minute) // Docker may pull an image
	server, err := testdb.Start(startCtx, logf)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return errors.New("interrupted") // Start removed what it began
		}
		return err // says what to install when there is no PostgreSQL at all
	}
	defer func() {
		if server.Owned() {
			logf("quickstart: removing the throwaway PostgreSQL server")
		}
		if err := server.Close(); err != nil {
			logf("quickstart: %v", err)
		}
	}()
	connString := os.Getenv("DATABASE_URL")
	if connString == "" {
		// The server is ours and goes away at exit: no need to drop this.
		if connString, err = server.CreateDatabase(ctx, "quickstart"); err != nil {
			return err
		}
	}

	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	q, err := compute.Open(ctx, connString, compute.WithMigrate(), compute.WithLogger(logger))
	if err != nil {
		return err
	}
	defer q.Close()

	w, err := compute.NewWorker(q, compute.WorkerConfig{
		Queues: map[string]compute.QueueConfig{
			thumbnails: {Handler: makeThumbnail, Concurrency: concurrency},
			emails: {
				Handler:     sendEmail,
				Concurrency: concurrency,
				// Retry a turned-away email soon instead of after the
				// default backoff of a second and more. Nothing announces
				// that a retry became runnable, so the worker's next poll
				// (within PollInterval, 1 s by default) finds it: that is
				// the short pause before the progress line reaches the end.
				Backoff: func(int) time.Duration { return 50 * time.Millisecond },
			},
		},
		StopTimeout: 5 * time.Second,
	})
	if err != nil {
		return err
	}
	runDone := make(chan error, 1)
	go func() { runDone <- w.Run(ctx) }()
	// Runs before q.Close: the worker stops (finishing or handing back its
	// running jobs) before the queue's connections go.
	defer func() {
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := w.Shutdown(shutdownCtx); err != nil {
			logf("quickstart: stopping the worker: %v", err)
		}
		<-runDone
	}()
	setup := time.Since(setupBegan)

	jobs := make([]compute.Job, total)
	for i := range jobs {
		if i%2 == 0 {
			image := fmt.Sprintf("img-%06d.png", i)
			jobs[i] = compute.Job{Queue: thumbnails, Config: fmt.Sprintf(`{"image":%q,"width":256}`, image), InputFiles: []string{image}}
		} else {
			jobs[i] = compute.Job{Queue: emails, Config: fmt.Sprintf(`{"n":%d,"to":"user%06d@example.com"}`, i, i)}
		}
	}
	began := time.Now()
	ids, err := q.EnqueueMany(ctx, jobs)
	if err != nil {
		return err
	}
	enqueueTime := time.Since(began)
	idBytes := make([][]byte, len(ids))
	for i := range ids {
		idBytes[i] = ids[i][:]
	}

	if err := waitForJobs(ctx, q, idBytes, began); err != nil {
		return err
	}
	elapsed := time.Since(began)

	if err := report(ctx, q, idBytes, summary{
		total: total, concurrency: concurrency, setup: setup,
		enqueue: enqueueTime, elapsed: elapsed,
	}); err != nil || !ui {
		return err
	}
	return serveDashboard(ctx, q, addr)
}

// serveDashboard serves the dashboard until ctx ends (Ctrl-C); the worker
// keeps running meanwhile, and the deferred cleanup of run removes the
// throwaway server afterwards.
func serveDashboard(ctx context.Context, q *compute.Queue, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("-addr %s: %w (choose another with -addr, or 127.0.0.1:0)", addr, err)
	}
	srv := &http.Server{
		Handler:           dashboard.New(q, dashboard.Config{}),
		ReadHeaderTimeout: 10 * time.Second,
		// The dashboard's live feeds end with ctx, so Ctrl-C does not
		// wait for open browser tabs.
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	fmt.Printf("\ndashboard   http://%s/  (Ctrl-C to stop and remove the database)\n", ln.Addr())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return err
	}
	<-served
	return nil
}

// makeThumbnail stands in for real work: it reads the job's config and
// takes a few milliseconds.
func makeThumbnail(ctx context.Context, job *compute.Job) ([]string, error) {
	var cfg struct {
		Image string `json:"image"`
		Width int    `json:"width"`
	}
	if err := json.Unmarshal([]byte(job.Config), &cfg); err != nil {
		return nil, compute.Permanent(fmt.Errorf("bad config: %w", err))
	}
	if err := work(ctx, time.Duration(1+job.ID[15]%3)*time.Millisecond); err != nil {
		return nil, err
	}
	return []string{strings.TrimSuffix(cfg.Image, ".png") + fmt.Sprintf(".%d.png", cfg.Width)}, nil
}

// sendEmail pretends to send an email. One in 50 is turned away on its
// first attempt and succeeds when retried; one in 997 bounces for good.
func sendEmail(ctx context.Context, job *compute.Job) ([]string, error) {
	var cfg struct {
		N  int    `json:"n"`
		To string `json:"to"`
	}
	if err := json.Unmarshal([]byte(job.Config), &cfg); err != nil {
		return nil, compute.Permanent(fmt.Errorf("bad config: %w", err))
	}
	switch {
	case cfg.N%997 == 0:
		return nil, compute.Permanent(fmt.Errorf("550 %s: mailbox unavailable", cfg.To))
	case cfg.N%50 == 1 && job.Attempt == 1:
		return nil, errors.New("421 try again later")
	}
	return nil, work(ctx, time.Millisecond)
}

// work takes d, or returns early when the job's context ends (the worker
// is shutting down, or the job was cancelled).
func work(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

// countFinished counts the given jobs that reached a terminal status. It
// reads by id, so other jobs in a shared DATABASE_URL database do not count.
const countFinished = `
SELECT count(*) FROM compute.jobs
WHERE job_id = ANY($1::bytea[]) AND status IN ('complete', 'failed')`

// waitForJobs redraws a progress line on stderr five times a second until
// every job is finished, as the database sees it.
func waitForJobs(ctx context.Context, q *compute.Queue, ids [][]byte, began time.Time) error {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		queryCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		var finished int
		err := q.Pool().QueryRow(queryCtx, countFinished, ids).Scan(&finished)
		cancel()
		if err != nil && ctx.Err() == nil {
			return fmt.Errorf("counting finished jobs: %w", err)
		}
		if err == nil {
			rate := float64(finished) / time.Since(began).Seconds()
			fmt.Fprintf(os.Stderr, "\r%d/%d jobs done, %.0f jobs/s   ", finished, len(ids), rate)
			if finished == len(ids) {
				fmt.Fprintln(os.Stderr)
				return nil
			}
		}
		select {
		case <-ctx.Done():
			fmt.Fprintln(os.Stderr, "\ninterrupted: stopping the worker and cleaning up")
			return errors.New("interrupted")
		case <-tick.C:
		}
	}
}

// summary holds what run measured.
type summary struct {
	total, concurrency      int
	setup, enqueue, elapsed time.Duration
}

// medianPickup is the median time jobs waited between enqueue and claim,
// by the database clock. grabbed is set by each claim, so a retried job
// counts its wait before the retry too.
const medianPickup = `
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM grabbed - created))
FROM compute.jobs WHERE job_id = ANY($1::bytea[])`

// report prints the summary: timings, then the count of jobs per status
// and queue.
func report(ctx context.Context, q *compute.Queue, ids [][]byte, s summary) error {
	var pickup float64
	if err := q.Pool().QueryRow(ctx, medianPickup, ids).Scan(&pickup); err != nil {
		return fmt.Errorf("measuring pick-up latency: %w", err)
	}
	counts, err := q.Counts(ctx)
	if err != nil {
		return err
	}

	fmt.Printf("setup       %v (PostgreSQL ready, schema migrated, worker started)\n", s.setup.Round(time.Millisecond))
	fmt.Printf("enqueue     %d jobs in one EnqueueMany call: %v\n", s.total, s.enqueue.Round(time.Millisecond))
	fmt.Printf("total       %v from enqueue to the last job finished, %d jobs of each queue at once\n", s.elapsed.Round(time.Millisecond), s.concurrency)
	fmt.Printf("throughput  %.0f jobs/s\n", float64(s.total)/s.elapsed.Seconds())
	fmt.Printf("pick-up     median %v from created to grabbed (most of it is waiting behind the backlog)\n", time.Duration(pickup*float64(time.Second)).Round(time.Millisecond))
	fmt.Println()

	statuses := []compute.Status{compute.StatusQueued, compute.StatusInProgress, compute.StatusComplete, compute.StatusFailed, compute.StatusExpired}
	fmt.Printf("%-12s", "queue")
	for _, st := range statuses {
		fmt.Printf("%12s", st)
	}
	fmt.Println()
	for _, name := range []string{thumbnails, emails} {
		fmt.Printf("%-12s", name)
		for _, st := range statuses {
			fmt.Printf("%12d", counts[name][st])
		}
		fmt.Println()
	}
	if os.Getenv("DATABASE_URL") != "" {
		fmt.Println("(the counts include jobs of earlier runs in this database)")
	}
	return nil
}
