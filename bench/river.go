package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
)

// River's client settings for throughput, copied from River's own
// benchmark, cmd/river/riverbench/river_bench.go in
// github.com/riverqueue/river (Benchmarker.Run): FetchCooldown 2 ms and
// FetchPollInterval 20 ms ("much better than the client's default values"
// of 100 ms and 1 s), and MaxWorkers 2,000 on the default queue. The River
// CLI gives that benchmark a pgxpool with its default size
// (cmd/river/rivercli/command.go, openPgxV5DBPool); here both systems get
// the same pool_max_conns instead.
const (
	riverFetchCooldown     = 2 * time.Millisecond
	riverFetchPollInterval = 20 * time.Millisecond
	riverBenchMaxWorkers   = 2_000
)

// benchArgs are the job args of River's bench (BenchmarkArgs): one number.
type benchArgs struct {
	Num int `json:"num"`
}

func (benchArgs) Kind() string { return "benchmark" }

// insertOnlyConfig is the config of a client that only inserts. Its
// FetchCooldown matters all the same: an inserting client sends at most one
// insert notification per queue per FetchCooldown (client.go,
// insertNotifyLimiter), so with the default of 100 ms the workers would
// learn of new jobs mostly by polling. River's bench inserts through its
// working client, with the settings above; so do these clients.
func insertOnlyConfig(log *slog.Logger) *river.Config {
	return &river.Config{
		FetchCooldown:     riverFetchCooldown,
		FetchPollInterval: riverFetchPollInterval,
		Logger:            log,
	}
}

// riverSystem runs the workloads on River through its riverpgxv5 driver.
type riverSystem struct {
	conn      string // connection string with pool_max_conns
	workers   int    // MaxWorkers of the default queue
	producers int    // pool size of the steady-state producers
	log       *slog.Logger
	pool      *pgxpool.Pool
	inserter  *river.Client[pgx.Tx] // insert-only client (no queues)
}

func openRiver(ctx context.Context, conn string, workers, producers int, log *slog.Logger) (*riverSystem, error) {
	pool, err := pgxpool.New(ctx, conn)
	if err != nil {
		return nil, err
	}
	inserter, err := river.NewClient(riverpgxv5.New(pool), insertOnlyConfig(log))
	if err != nil {
		pool.Close()
		return nil, err
	}
	return &riverSystem{conn: conn, workers: workers, producers: producers, log: log, pool: pool, inserter: inserter}, nil
}

func (s *riverSystem) name() string { return "River" }
func (s *riverSystem) close()       { s.pool.Close() }

// migrate installs River's schema with its own migrator.
func (s *riverSystem) migrate(ctx context.Context) error {
	m, err := rivermigrate.New(riverpgxv5.New(s.pool), &rivermigrate.Config{Logger: s.log})
	if err != nil {
		return err
	}
	_, err = m.Migrate(ctx, rivermigrate.DirectionUp, nil)
	return err
}

func (s *riverSystem) vacuum(ctx context.Context) error {
	if _, err := s.pool.Exec(ctx, `VACUUM ANALYZE river_job`); err != nil {
		return err
	}
	return checkpoint(ctx, s.pool)
}

// insert uses InsertManyFast, River's fastest bulk path (COPY FROM).
func (s *riverSystem) insert(ctx context.Context, n, batch int) error {
	params := make([]river.InsertManyParams, 0, batch)
	return insertBatches(ctx, "River insert", n, batch, func(ctx context.Context, from, to int) error {
		params = params[:0]
		for i := from; i < to; i++ {
			params = append(params, river.InsertManyParams{Args: benchArgs{Num: i}})
		}
		got, err := s.inserter.InsertManyFast(ctx, params)
		if err == nil && got != len(params) {
			err = fmt.Errorf("InsertManyFast inserted %d jobs, want %d", got, len(params))
		}
		return err
	})
}

func (s *riverSystem) unfinished(ctx context.Context) (int, error) {
	var n int
	err := s.pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE state <> 'completed'`).Scan(&n)
	return n, err
}

// runClient starts a River client with the bench settings and work as the
// worker of benchArgs, and returns a function that stops it.
func (s *riverSystem) runClient(work func(ctx context.Context, job *river.Job[benchArgs]) error) (stop func() error, err error) {
	workers := river.NewWorkers()
	river.AddWorker(workers, river.WorkFunc(work))
	client, err := river.NewClient(riverpgxv5.New(s.pool), &river.Config{
		FetchCooldown:     riverFetchCooldown,
		FetchPollInterval: riverFetchPollInterval,
		Logger:            s.log,
		Queues:            map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: s.workers}},
		Workers:           workers,
	})
	if err != nil {
		return nil, err
	}
	// Start's context bounds the client's whole life; cancelling it after
	// Stop releases whatever River still holds.
	runCtx, cancel := context.WithCancel(context.Background())
	if err := client.Start(runCtx); err != nil {
		cancel()
		return nil, err
	}
	return func() error {
		defer cancel()
		ctx, cancelStop := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancelStop()
		return client.Stop(ctx)
	}, nil
}

func (s *riverSystem) burnDown(ctx context.Context, n int) (burnResult, error) {
	c := newCounter(n)
	start := time.Now()
	stop, err := s.runClient(func(context.Context, *river.Job[benchArgs]) error {
		c.add()
		return nil
	})
	if err != nil {
		return burnResult{}, err
	}
	err = waitDone(ctx, c, "River burn-down", s.unfinished)
	elapsed := time.Since(start)
	err = errors.Join(err, stop())
	return burnResult{elapsed: elapsed, handled: int(c.n.Load())}, err
}

// steady runs the producers on a pool and insert-only client of their own,
// each job in its own transaction: BEGIN, InsertTx, COMMIT.
func (s *riverSystem) steady(ctx context.Context, cfg steadyConfig) (steadyResult, error) {
	ppool, producer, err := s.producer(ctx, cfg.producers)
	if err != nil {
		return steadyResult{}, err
	}
	defer ppool.Close()
	p := newPickup[int64]()
	stop, err := s.runClient(func(_ context.Context, job *river.Job[benchArgs]) error {
		p.started(job.ID)
		return nil
	})
	if err != nil {
		return steadyResult{}, err
	}
	r, err := steadyRun(ctx, cfg, "River", p, func(ctx context.Context, i int) error {
		var id int64
		err := pgx.BeginFunc(ctx, ppool, func(tx pgx.Tx) error {
			res, err := producer.InsertTx(ctx, tx, benchArgs{Num: i}, nil)
			if err == nil {
				id = res.Job.ID
			}
			return err
		})
		if err == nil {
			p.committed(id)
		}
		return err
	})
	return r, errors.Join(err, stop())
}

// producer opens a pool of n connections and an insert-only client on it,
// separate from the worker's; the caller closes the pool.
func (s *riverSystem) producer(ctx context.Context, n int) (*pgxpool.Pool, *river.Client[pgx.Tx], error) {
	pconn, err := withPoolSize(s.conn, n)
	if err != nil {
		return nil, nil, err
	}
	ppool, err := pgxpool.New(ctx, pconn)
	if err != nil {
		return nil, nil, err
	}
	producer, err := river.NewClient(riverpgxv5.New(ppool), insertOnlyConfig(s.log))
	if err != nil {
		ppool.Close()
		return nil, nil, err
	}
	return ppool, producer, nil
}
