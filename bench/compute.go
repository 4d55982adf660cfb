package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/computeplatform/compute"
)

// benchQueue is the queue every compute workload uses.
const benchQueue = "bench"

// computeSystem runs the workloads on the library. Its worker uses the
// library's defaults (LISTEN plus a 1 s poll) except Concurrency.
type computeSystem struct {
	conn      string        // connection string with pool_max_conns
	workers   int           // QueueConfig.Concurrency
	producers int           // pool size of the steady-state producers' own Queue
	cooldown  time.Duration // the producers' WithNotifyCooldown (0: default)
	log       *slog.Logger
	trace     bool // sample the rows in progress during burn-downs
	q         *compute.Queue
}

func openCompute(ctx context.Context, conn string, workers, producers int, log *slog.Logger, trace bool) (*computeSystem, error) {
	q, err := compute.Open(ctx, conn, compute.WithLogger(log))
	if err != nil {
		return nil, err
	}
	return &computeSystem{conn: conn, workers: workers, producers: producers, log: log, trace: trace, q: q}, nil
}

func (s *computeSystem) name() string { return "compute" }
func (s *computeSystem) close()       { s.q.Close() }

func (s *computeSystem) migrate(ctx context.Context) error { return s.q.Migrate(ctx) }

func (s *computeSystem) vacuum(ctx context.Context) error {
	if _, err := s.q.Pool().Exec(ctx, `VACUUM ANALYZE compute.jobs`); err != nil {
		return err
	}
	return checkpoint(ctx, s.q.Pool())
}

// insert uses EnqueueMany, the library's one bulk path (one unnest INSERT
// per call).
func (s *computeSystem) insert(ctx context.Context, n, batch int) error {
	jobs := make([]compute.Job, 0, batch)
	return insertBatches(ctx, "compute insert", n, batch, func(ctx context.Context, from, to int) error {
		jobs = jobs[:0]
		for i := from; i < to; i++ {
			jobs = append(jobs, compute.Job{Queue: benchQueue, Config: numConfig(i)})
		}
		_, err := s.q.EnqueueMany(ctx, jobs)
		return err
	})
}

// numConfig is the job payload: the same JSON River's bench puts in its job
// args, so both systems store and read the same bytes.
func numConfig(i int) string { return `{"num":` + strconv.Itoa(i) + `}` }

// unfinished counts the bench queue's jobs that are not complete yet. One
// count per status, so each is answered from its partial index (jobs_claim,
// jobs_running): "status IN ('queued', 'in-progress')" implies neither
// index's predicate, and was a parallel seq scan of the whole table, 1.7 to
// 2 s per poll with 11M rows, timed as part of the growth burn-down.
func (s *computeSystem) unfinished(ctx context.Context) (int, error) {
	var n int
	err := s.q.Pool().QueryRow(ctx,
		`SELECT (SELECT count(*) FROM compute.jobs WHERE queue = $1 AND status = 'queued')
		      + (SELECT count(*) FROM compute.jobs WHERE queue = $1 AND status = 'in-progress')`, benchQueue).Scan(&n)
	return n, err
}

// runWorker starts a Worker on the bench queue with handler and returns a
// function that shuts it down and waits for Run to return.
func (s *computeSystem) runWorker(handler compute.Handler) (stop func() error, err error) {
	w, err := compute.NewWorker(s.q, compute.WorkerConfig{
		Queues: map[string]compute.QueueConfig{benchQueue: {Handler: handler, Concurrency: s.workers}},
	})
	if err != nil {
		return nil, err
	}
	ran := make(chan error, 1)
	go func() { ran <- w.Run(context.Background()) }()
	return func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		errShutdown := w.Shutdown(ctx)
		return errors.Join(<-ran, errShutdown)
	}, nil
}

func (s *computeSystem) burnDown(ctx context.Context, n int) (burnResult, error) {
	c := newCounter(n)
	start := time.Now()
	stop, err := s.runWorker(func(context.Context, *compute.Job) ([]string, error) {
		c.add()
		return nil, nil
	})
	if err != nil {
		return burnResult{}, err
	}
	var stopTrace func()
	if s.trace {
		// The Worker bounds running handlers, not claimed rows: show how
		// many rows are in progress in the database meanwhile.
		stopTrace = every(time.Second, func() {
			var inProgress, queued int
			err := s.q.Pool().QueryRow(ctx, `SELECT count(*) FILTER (WHERE status = 'in-progress'),
			    count(*) FILTER (WHERE status = 'queued') FROM compute.jobs WHERE queue = $1`, benchQueue).Scan(&inProgress, &queued)
			if err == nil {
				progressf("compute burn-down trace: %d handler calls, %d rows in progress, %d queued", c.n.Load(), inProgress, queued)
			}
		})
	}
	err = waitDone(ctx, c, "compute burn-down", s.unfinished)
	elapsed := time.Since(start)
	if stopTrace != nil {
		stopTrace()
	}
	err = errors.Join(err, stop())
	return burnResult{elapsed: elapsed, handled: int(c.n.Load())}, err
}

// steady runs the producers on a Queue of their own (its own pool, as a web
// application's would be), each job in its own transaction: BEGIN,
// EnqueueTx, COMMIT.
func (s *computeSystem) steady(ctx context.Context, cfg steadyConfig) (steadyResult, error) {
	producer, err := s.producer(ctx, cfg.producers, s.cooldown)
	if err != nil {
		return steadyResult{}, err
	}
	defer producer.Close()
	p := newPickup[compute.JobID]()
	stop, err := s.runWorker(func(_ context.Context, job *compute.Job) ([]string, error) {
		p.started(job.ID)
		return nil, nil
	})
	if err != nil {
		return steadyResult{}, err
	}
	r, err := steadyRun(ctx, cfg, "compute", p, func(ctx context.Context, i int) error {
		var id compute.JobID
		err := pgx.BeginFunc(ctx, producer.Pool(), func(tx pgx.Tx) error {
			var err error
			id, err = producer.EnqueueTx(ctx, tx, compute.Job{Queue: benchQueue, Config: numConfig(i), ContentID: cfg.hashIDs})
			return err
		})
		if err == nil {
			p.committed(id)
		}
		return err
	})
	return r, errors.Join(err, stop())
}

// producer opens a Queue for producers on a pool of n connections of its
// own, as a web application's would be, with the given notification
// cooldown (0: the library's default).
func (s *computeSystem) producer(ctx context.Context, n int, cooldown time.Duration) (*compute.Queue, error) {
	pconn, err := withPoolSize(s.conn, n)
	if err != nil {
		return nil, err
	}
	return compute.Open(ctx, pconn, compute.WithLogger(s.log), compute.WithNotifyCooldown(cooldown))
}

// ceiling works n queued jobs with a bare loop of Queue.Claim and
// Queue.Complete from goroutines goroutines, batch jobs per claim and one
// Complete per claimed batch: no Worker, no handlers, no heartbeats. It
// shows what the library's two statements allow on this database.
func (s *computeSystem) ceiling(ctx context.Context, n, goroutines, batch int) (time.Duration, error) {
	return bareLoop(ctx, "compute ceiling", n, goroutines, func(ctx context.Context) (int, error) {
		jobs, err := s.q.Claim(ctx, benchQueue, batch)
		if err != nil || len(jobs) == 0 {
			return 0, err
		}
		completions := make([]compute.Completion, len(jobs))
		for i, j := range jobs {
			completions[i] = compute.Completion{Job: j}
		}
		return len(jobs), s.q.Complete(ctx, completions...)
	})
}

// bareLoop runs round from goroutines goroutines until a round finds no
// job, and fails unless they completed n jobs in all. round returns how
// many jobs it completed; the first error stops every goroutine.
func bareLoop(ctx context.Context, name string, n, goroutines int, round func(context.Context) (int, error)) (time.Duration, error) {
	var (
		done     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	stop := every(2*time.Second, func() {
		progressf("%s: %d/%d jobs complete", name, done.Load(), n)
	})
	for range goroutines {
		wg.Go(func() {
			for ctx.Err() == nil {
				k, err := round(ctx)
				if err != nil {
					errOnce.Do(func() { firstErr = err; cancel() })
					return
				}
				if k == 0 {
					return // every job is taken; the others complete theirs
				}
				done.Add(int64(k))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	stop()
	if firstErr != nil {
		return 0, fmt.Errorf("%s: %w", name, firstErr)
	}
	if got := done.Load(); got != int64(n) {
		return 0, fmt.Errorf("%s: completed %d jobs, want %d", name, got, n)
	}
	return elapsed, nil
}

// lockQueuedSQL is the first statement of the one-write loop: it locks up
// to $2 runnable jobs of queue $1 in claim order and returns their rows
// (job_id first), writing nothing to them. The lock keeps them from every
// other claimer (a claim skips locked rows, a plain UPDATE waits) until
// the transaction ends.
const lockQueuedSQL = `
SELECT j.* FROM compute.jobs j
WHERE j.status = 'queued' AND j.queue = $1 AND j.run_at <= statement_timestamp()
ORDER BY j.priority, j.run_at
LIMIT $2
FOR UPDATE SKIP LOCKED`

// completeLockedSQL is the one write of the one-write loop: the jobs go
// from queued to complete in the transaction that locked them, with the
// attempt and the claim's time (grabbed: the transaction's start, before
// the lock) written at the same time.
const completeLockedSQL = `-- compute: status change
UPDATE compute.jobs j
SET status = 'complete', attempt = j.attempt + 1, grabbed = transaction_timestamp(), worker = $2,
    finished = statement_timestamp(), last_accessed = statement_timestamp()
WHERE j.job_id = ANY ($1::bytea[])`

// oneWrite is (u)'s measure of a job life that the library does not have:
// a bare loop that locks queued jobs and completes them in one transaction,
// so each job costs one write (its completion) instead of two (the claim's
// and the completion's). No Worker and no handlers, like ceiling; the
// worker's crash rolls its jobs back to queued with no attempt spent, and
// they show as queued while they run. It prices a product decision (issue
// 19), not a feature.
func (s *computeSystem) oneWrite(ctx context.Context, n, goroutines, batch int) (time.Duration, error) {
	pool := s.q.Pool()
	return bareLoop(ctx, "compute one-write loop", n, goroutines, func(ctx context.Context) (int, error) {
		tx, err := pool.Begin(ctx)
		if err != nil {
			return 0, err
		}
		defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // after Commit it does nothing
		rows, err := tx.Query(ctx, lockQueuedSQL, benchQueue, batch)
		if err != nil {
			return 0, err
		}
		var ids [][]byte
		for rows.Next() {
			vals, err := rows.Values() // every column decoded, as a claim's are
			if err != nil {
				rows.Close()
				return 0, err
			}
			id, ok := vals[0].([]byte)
			if !ok {
				rows.Close()
				return 0, fmt.Errorf("job_id decoded as %T", vals[0])
			}
			ids = append(ids, id)
		}
		if err := rows.Err(); err != nil || len(ids) == 0 {
			return 0, err
		}
		if _, err := tx.Exec(ctx, completeLockedSQL, ids, "bench-one-write"); err != nil {
			return 0, err
		}
		return len(ids), tx.Commit(ctx)
	})
}
