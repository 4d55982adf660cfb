package main

// Retention workload (r), compute only: a Worker with
// Retention.DeleteCompleteAfter set works a steady stream of jobs, and
// every sample interval the program prints the table's live and dead rows,
// its size and its indexes' size, and the rates of enqueues, completions
// and deletions. Delete-based retention keeps up when live rows, sizes and
// dead rows level off while completions match the enqueue rate.

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/computeplatform/compute"
)

// retentionConfig is the retention workload's part of the flags.
type retentionConfig struct {
	rate     int           // jobs enqueued per second
	duration time.Duration // how long the producer runs
	after    time.Duration // Retention.DeleteCompleteAfter
	sample   time.Duration
}

// retentionSampleSQL reads what the workload reports: rows by the planner's
// counters (cheap, and what autovacuum acts on) and exact counts of the
// unfinished rows (through the partial indexes), plus sizes in bytes.
const retentionSampleSQL = `
SELECT s.n_live_tup, s.n_dead_tup, s.autovacuum_count,
       (SELECT count(*) FROM compute.jobs WHERE status = 'queued'),
       (SELECT count(*) FROM compute.jobs WHERE status = 'complete'),
       pg_table_size('compute.jobs'), pg_indexes_size('compute.jobs'), s.n_tup_del
FROM pg_stat_user_tables s WHERE s.relid = 'compute.jobs'::regclass`

// retention runs the workload and prints one line per sample to out.
func (s *computeSystem) retention(ctx context.Context, cfg retentionConfig, out io.Writer) error {
	producer, err := s.producer(ctx, 2, s.cooldown)
	if err != nil {
		return err
	}
	defer producer.Close()
	var done atomic.Int64
	w, err := compute.NewWorker(s.q, compute.WorkerConfig{
		Queues: map[string]compute.QueueConfig{benchQueue: {Concurrency: s.workers,
			Handler: func(context.Context, *compute.Job) ([]string, error) { done.Add(1); return nil, nil }}},
		Retention: compute.Retention{DeleteCompleteAfter: cfg.after},
	})
	if err != nil {
		return err
	}
	runCtx, stopWorker := context.WithCancel(context.WithoutCancel(ctx))
	ran := make(chan error, 1)
	go func() { ran <- w.Run(runCtx) }()
	stop := sync.OnceValue(func() error { stopWorker(); return <-ran })
	defer stop() //nolint:errcheck // an early return has its own error

	// The producer enqueues a tenth of the rate every 100 ms, in one
	// EnqueueMany, and counts the ticks it fell behind.
	var enqueued, behind atomic.Int64
	prodCtx, stopProducer := context.WithTimeout(ctx, cfg.duration)
	defer stopProducer()
	prodDone := make(chan error, 1)
	go func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		per := max(1, cfg.rate/10)
		batch := make([]compute.Job, per)
		for i := range batch {
			batch[i] = compute.Job{Queue: benchQueue, Config: "{}"}
		}
		for {
			select {
			case <-prodCtx.Done():
				prodDone <- nil
				return
			case <-tick.C:
			}
			start := time.Now()
			if _, err := producer.EnqueueMany(prodCtx, batch); err != nil {
				if prodCtx.Err() != nil {
					prodDone <- nil
				} else {
					prodDone <- err
				}
				return
			}
			enqueued.Add(int64(per))
			if time.Since(start) > 100*time.Millisecond {
				behind.Add(1)
			}
		}
	}()

	fmt.Fprintf(out, "\n(r) retention: %d jobs/s for %s, DeleteCompleteAfter %s, a sample every %s\n", cfg.rate, cfg.duration, cfg.after, cfg.sample)
	fmt.Fprintf(out, "%8s %9s %9s %9s %9s %9s %9s %10s %9s %9s %6s\n",
		"at", "enq/s", "done/s", "del/s", "live", "dead", "queued", "complete", "table MB", "index MB", "autovac")
	start := time.Now()
	var lastEnq, lastDone, lastDel int64
	lastAt := start
	tick := time.NewTicker(cfg.sample)
	defer tick.Stop()
	for {
		var finished bool
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-prodDone:
			if err != nil {
				return fmt.Errorf("producer: %w", err)
			}
			finished = true
		case <-tick.C:
		}
		var live, dead, autovac, queued, complete, table, index, deleted int64
		if err := s.q.Pool().QueryRow(ctx, retentionSampleSQL).Scan(&live, &dead, &autovac, &queued, &complete, &table, &index, &deleted); err != nil {
			return err
		}
		now := time.Now()
		secs := now.Sub(lastAt).Seconds()
		e, d := enqueued.Load(), done.Load()
		fmt.Fprintf(out, "%8s %9.0f %9.0f %9.0f %9d %9d %9d %10d %9.1f %9.1f %6d\n",
			now.Sub(start).Round(time.Second), float64(e-lastEnq)/secs, float64(d-lastDone)/secs, float64(deleted-lastDel)/secs,
			live, dead, queued, complete, float64(table)/(1<<20), float64(index)/(1<<20), autovac)
		lastEnq, lastDone, lastDel, lastAt = e, d, deleted, now
		if finished {
			fmt.Fprintf(out, "enqueued %d, worked %d, producer ticks over 100 ms: %d\n", e, d, behind.Load())
			return stop()
		}
	}
}
