package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// system is one job queue under test, on a database of its own made for
// one phase. The workloads call the same methods on both, in the same order.
type system interface {
	// name is "compute" or "River".
	name() string
	// insert adds n no-op jobs in batches through the system's fastest
	// bulk-insert call.
	insert(ctx context.Context, n, batch int) error
	// vacuum runs VACUUM ANALYZE on the jobs table, then a CHECKPOINT.
	vacuum(ctx context.Context) error
	// burnDown starts a worker, waits until n queued jobs are complete and
	// stops it.
	burnDown(ctx context.Context, n int) (burnResult, error)
	// steady runs the paced producers against a running worker.
	steady(ctx context.Context, s steadyConfig) (steadyResult, error)
	// close releases the system's connections.
	close()
}

// burnResult is what one burn-down measured.
type burnResult struct {
	elapsed time.Duration // from the worker's start to the last completion
	handled int           // handler calls: more than the jobs if some ran twice
}

// steadyConfig describes the steady-state workload (c).
type steadyConfig struct {
	rate      int           // jobs per second, all producers together
	producers int           // goroutines, each with its own connection
	warmup    time.Duration // how long they run before the measured part
	duration  time.Duration // how long they run after the warm-up
	drain     time.Duration // how long to wait afterwards for the rest
	hashIDs   bool          // compute's jobs get ContentID ids (-steady-ids hash)
}

// steadyResult is what one steady-state run measured.
type steadyResult struct {
	produced  int           // jobs committed by the producers after the warm-up
	rate      float64       // jobs committed per second after the warm-up
	backlog   int           // committed but not started when the producers stopped
	unstarted int           // still not started after the drain
	p50, p99  time.Duration // pick-up latency: commit → handler start
	max       time.Duration
	cpu       cpuTimes // used after the warm-up while the producers ran: machine and this process
}

// cpuPerThousand is CPU time (ms) per 1,000 jobs enqueued, from one of
// r.cpu's two figures; 0 when nothing was measured.
func (r steadyResult) cpuPerThousand(used time.Duration) float64 {
	if r.produced == 0 {
		return 0
	}
	return float64(used) / float64(time.Millisecond) * 1000 / float64(r.produced)
}

// keepsUp reports whether the consumers kept pace: the producers reached at
// least 95% of the asked rate (else the run measured the producers) and at
// most a quarter second of production was waiting when they stopped.
func (r steadyResult) keepsUp(rate int) bool {
	return r.rate >= 0.95*float64(rate) && r.backlog <= rate/4 && r.unstarted == 0
}

// produce runs s.producers goroutines that together enqueue s.rate jobs per
// second for s.warmup + s.duration, each on its own fixed schedule (an open loop: a
// goroutine that falls behind sends at once until it is back on time). send
// enqueues job number i in its own transaction. It returns the first error.
func produce(ctx context.Context, s steadyConfig, label string, send func(ctx context.Context, i int) error) error {
	interval := time.Duration(float64(time.Second) * float64(s.producers) / float64(s.rate))
	start := time.Now()
	end := start.Add(s.warmup + s.duration)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	for p := range s.producers {
		wg.Go(func() {
			next := start.Add(interval * time.Duration(p) / time.Duration(s.producers))
			for i := p; ; i += s.producers {
				if next.After(end) {
					return
				}
				if d := time.Until(next); d > 0 {
					t := time.NewTimer(d)
					select {
					case <-ctx.Done():
						t.Stop()
						return
					case <-t.C:
					}
				}
				if err := send(ctx, i); err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("%s producer: %w", label, err); cancel() })
					return
				}
				next = next.Add(interval)
			}
		})
	}
	wg.Wait()
	return firstErr
}

// steadyRun is the part of the steady-state workload both systems share:
// it runs the producers, measures the backlog when they stop, waits up to
// s.drain for the rest to start, and computes the latencies. Jobs committed
// during the warm-up are left out of every figure but the backlog.
func steadyRun[K comparable](ctx context.Context, s steadyConfig, label string, p *pickup[K], send func(ctx context.Context, i int) error) (steadyResult, error) {
	start := time.Now()
	stop := every(2*time.Second, func() {
		committed, waiting := p.counts()
		progressf("%s steady state: %d jobs committed (%.0f/s), %d waiting", label, committed, float64(committed)/time.Since(start).Seconds(), waiting)
	})
	var (
		mu       sync.Mutex
		cpuStart cpuTimes
	)
	warm := time.AfterFunc(s.warmup, func() {
		mu.Lock()
		defer mu.Unlock()
		p.measureFrom(time.Now())
		cpuStart = readCPU()
	})
	err := produce(ctx, s, label, send)
	end := readCPU()
	elapsed := time.Since(start) - s.warmup
	stop()
	if warm.Stop() {
		err = errors.Join(err, fmt.Errorf("%s producers stopped within the %s warm-up", label, s.warmup))
	}
	if err != nil {
		return steadyResult{}, err
	}
	mu.Lock()
	r := steadyResult{cpu: end.since(cpuStart)}
	mu.Unlock()
	r.produced = p.measured()
	_, r.backlog = p.counts()
	r.rate = float64(r.produced) / elapsed.Seconds()
	deadline := time.Now().Add(s.drain)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		_, r.unstarted = p.counts()
		if r.unstarted == 0 || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return r, ctx.Err()
		case <-tick.C:
		}
	}
	lat := p.latencies()
	r.p50, r.p99 = quantile(lat, 0.50), quantile(lat, 0.99)
	if len(lat) > 0 {
		r.max = lat[len(lat)-1]
	}
	return r, nil
}

// withPoolSize sets pool_max_conns in a postgres:// connection string; both
// pgxpool-based systems read it from there.
func withPoolSize(conn string, n int) (string, error) {
	return withParam(conn, "pool_max_conns", strconv.Itoa(n))
}

// withParam sets one parameter of a URL connection string.
func withParam(conn, key, value string) (string, error) {
	u, err := url.Parse(conn)
	if err != nil {
		return "", fmt.Errorf("parse connection string: %w", err)
	}
	q := u.Query()
	q.Set(key, value)
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// insertBatches calls insert for consecutive batches of n jobs, printing
// progress for long loads.
func insertBatches(ctx context.Context, label string, n, batch int, insert func(ctx context.Context, from, to int) error) error {
	var done atomic.Int64 // written by the loop, read by the progress printer
	start := time.Now()
	var stop func()
	if n >= 100_000 {
		stop = every(2*time.Second, func() {
			progressf("%s: %d/%d jobs inserted", label, done.Load(), n)
		})
	}
	var err error
	for from := 0; from < n && err == nil; from += batch {
		err = insert(ctx, from, min(from+batch, n))
		if err == nil {
			done.Store(int64(min(from+batch, n)))
		}
	}
	if stop != nil {
		stop()
	}
	if err != nil {
		return fmt.Errorf("%s: %w", label, err)
	}
	progressf("%s: %d jobs inserted in %s", label, n, time.Since(start).Round(time.Millisecond))
	return nil
}

// checkpoint flushes what loading wrote, so the timed phase does not pay for
// the load's checkpoint (10M rows write about 2 GB of WAL). It needs a
// superuser or pg_checkpoint; without either the phase runs without it.
func checkpoint(ctx context.Context, pool *pgxpool.Pool) error {
	var pgErr *pgconn.PgError
	if _, err := pool.Exec(ctx, `CHECKPOINT`); err != nil && !(errors.As(err, &pgErr) && pgErr.Code == "42501") {
		return err
	}
	return nil
}
