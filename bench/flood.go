package main

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/computeplatform/compute"
)

// floodResult is what one run of workload (f) measured: concurrent
// producers enqueueing one job per transaction as fast as they can, no
// worker running. It shows what the wake-up notifications cost the
// producers: a notifying commit waits for every other one of the server.
type floodResult struct {
	jobs     int
	elapsed  time.Duration
	p50, p99 time.Duration // one transaction: BEGIN, enqueue, COMMIT
}

// floodEvery names compute with a notification per enqueue (a cooldown of
// 1 ns) in the results of (f).
const floodEvery = "compute, notify each"

func (f floodResult) perSec() float64 { return float64(f.jobs) / f.elapsed.Seconds() }

// floodRun runs goroutines producers for d, each calling send in a loop.
func floodRun(ctx context.Context, goroutines int, d time.Duration, send func(ctx context.Context) error) (floodResult, error) {
	var (
		mu   sync.Mutex
		lats []time.Duration
		errs []error
		wg   sync.WaitGroup
	)
	start := time.Now()
	stop := start.Add(d)
	for range goroutines {
		wg.Go(func() {
			var mine []time.Duration
			var err error
			for err == nil && ctx.Err() == nil && time.Now().Before(stop) {
				t := time.Now()
				if err = send(ctx); err == nil {
					mine = append(mine, time.Since(t))
				}
			}
			mu.Lock()
			defer mu.Unlock()
			lats = append(lats, mine...)
			errs = append(errs, err)
		})
	}
	wg.Wait()
	r := floodResult{jobs: len(lats), elapsed: time.Since(start)}
	if err := errors.Join(append(errs, ctx.Err())...); err != nil {
		return r, err
	}
	slices.Sort(lats)
	r.p50, r.p99 = quantile(lats, 0.50), quantile(lats, 0.99)
	return r, nil
}

// flood enqueues through a Queue of its own with the given notification
// cooldown (0: the library's default), each job in its own transaction:
// BEGIN, EnqueueTx, COMMIT.
func (s *computeSystem) flood(ctx context.Context, goroutines int, d, cooldown time.Duration) (floodResult, error) {
	producer, err := s.producer(ctx, goroutines, cooldown)
	if err != nil {
		return floodResult{}, err
	}
	defer producer.Close()
	return floodRun(ctx, goroutines, d, func(ctx context.Context) error {
		return pgx.BeginFunc(ctx, producer.Pool(), func(tx pgx.Tx) error {
			_, err := producer.EnqueueTx(ctx, tx, compute.Job{Queue: benchQueue})
			return err
		})
	})
}

// flood enqueues through an insert-only client of its own, each job in its
// own transaction: BEGIN, InsertTx, COMMIT.
func (s *riverSystem) flood(ctx context.Context, goroutines int, d time.Duration) (floodResult, error) {
	ppool, producer, err := s.producer(ctx, goroutines)
	if err != nil {
		return floodResult{}, err
	}
	defer ppool.Close()
	return floodRun(ctx, goroutines, d, func(ctx context.Context) error {
		return pgx.BeginFunc(ctx, ppool, func(tx pgx.Tx) error {
			_, err := producer.InsertTx(ctx, tx, benchArgs{}, nil)
			return err
		})
	})
}
