package compute_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	"github.com/computeplatform/compute"
)

// Open connects, and with WithMigrate creates or upgrades the compute
// schema before it returns. An empty connection string would use the PG*
// environment variables instead of DATABASE_URL.
func ExampleOpen() {
	ctx := context.Background()
	q, err := compute.Open(ctx, os.Getenv("DATABASE_URL"), compute.WithMigrate())
	if err != nil {
		log.Fatal(err)
	}
	defer q.Close()

	var ready bool
	err = q.Pool().QueryRow(ctx, `SELECT to_regclass('compute.jobs') IS NOT NULL`).Scan(&ready)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("compute.jobs exists:", ready)
	// Output: compute.jobs exists: true
}

func ExampleQueue_Enqueue() {
	ctx := context.Background()
	q, err := compute.Open(ctx, os.Getenv("DATABASE_URL"), compute.WithMigrate())
	if err != nil {
		log.Fatal(err)
	}
	defer q.Close()

	id, err := q.Enqueue(ctx, compute.Job{
		Queue:      "example-enqueue",
		Config:     `{"width": 256}`,
		InputFiles: []string{"cat.png"},
	})
	if err != nil {
		log.Fatal(err)
	}
	job, err := q.Get(ctx, id)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(job.Queue, job.Status, job.Config, job.InputFiles)

	// With ContentID the id is derived from the job itself, so submitting
	// the same job twice creates it once.
	report := compute.Job{Queue: "example-enqueue", Config: `{"report": "2026-01"}`, ContentID: true}
	first, err := q.Enqueue(ctx, report)
	if err != nil {
		log.Fatal(err)
	}
	second, err := q.Enqueue(ctx, report)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("same job:", first == second)
	// Output:
	// example-enqueue queued {"width": 256} [cat.png]
	// same job: true
}

// A job enqueued inside the caller's transaction exists only once the
// transaction commits, together with the caller's own writes.
func ExampleQueue_EnqueueTx() {
	ctx := context.Background()
	q, err := compute.Open(ctx, os.Getenv("DATABASE_URL"), compute.WithMigrate())
	if err != nil {
		log.Fatal(err)
	}
	defer q.Close()

	tx, err := q.Pool().Begin(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer tx.Rollback(ctx) // a no-op after Commit
	// ... the application's own writes go here, in tx ...
	id, err := q.EnqueueTx(ctx, tx, compute.Job{Queue: "example-tx", Config: `{"order": 42}`})
	if err != nil {
		log.Fatal(err)
	}

	_, err = q.Get(ctx, id) // another connection: the job is not visible yet
	fmt.Println("before commit, not found:", errors.Is(err, compute.ErrNotFound))

	if err := tx.Commit(ctx); err != nil {
		log.Fatal(err)
	}
	job, err := q.Get(ctx, id)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("after commit:", job.Status)
	// Output:
	// before commit, not found: true
	// after commit: queued
}

// Claim, Complete and Fail are the primitives a Worker is built on; a
// program that wants its own loop can use them directly.
func ExampleQueue_Claim() {
	ctx := context.Background()
	q, err := compute.Open(ctx, os.Getenv("DATABASE_URL"), compute.WithMigrate())
	if err != nil {
		log.Fatal(err)
	}
	defer q.Close()

	ids, err := q.EnqueueMany(ctx, []compute.Job{
		{Queue: "example-claim", Config: "b.txt", Priority: 2},
		{Queue: "example-claim", Config: "a.txt", Priority: 1},
		{Queue: "example-claim", Config: "broken", Priority: 3},
	})
	if err != nil {
		log.Fatal(err)
	}

	for {
		// Up to two jobs at a time, smaller priority first. Each is
		// leased to this process until it is completed or failed.
		jobs, err := q.Claim(ctx, "example-claim", 2)
		if err != nil {
			log.Fatal(err)
		}
		if len(jobs) == 0 {
			break // nothing runnable now
		}
		for _, job := range jobs {
			fmt.Printf("claimed %q, attempt %d\n", job.Config, job.Attempt)
			if job.Config == "broken" {
				// Permanent: retrying cannot help, so fail the job now.
				err = q.Fail(ctx, compute.Failure{Job: job, Err: compute.Permanent(errors.New("cannot parse"))})
			} else {
				err = q.Complete(ctx, compute.Completion{Job: job, OutputFiles: []string{strings.ToUpper(job.Config)}})
			}
			if err != nil {
				log.Fatal(err) // errors.Is(err, compute.ErrLeaseLost): someone else holds it now
			}
		}
	}

	for _, id := range ids {
		job, err := q.Get(ctx, id)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(job.Status, job.OutputFiles)
	}
	// Output:
	// claimed "a.txt", attempt 1
	// claimed "b.txt", attempt 1
	// claimed "broken", attempt 1
	// complete [B.TXT]
	// complete [A.TXT]
	// failed []
}

// A Worker runs handlers for its queues until it is shut down. Here it
// runs until the jobs it was given are done.
func ExampleWorker() {
	ctx := context.Background()
	q, err := compute.Open(ctx, os.Getenv("DATABASE_URL"), compute.WithMigrate())
	if err != nil {
		log.Fatal(err)
	}
	defer q.Close()

	ids, err := q.EnqueueMany(ctx, []compute.Job{
		{Queue: "example-worker", Config: "hello"},
		{Queue: "example-worker", Config: "world"},
		{Queue: "example-worker", Config: "again"},
	})
	if err != nil {
		log.Fatal(err)
	}

	handled := make(chan compute.JobID, len(ids))
	w, err := compute.NewWorker(q, compute.WorkerConfig{
		Queues: map[string]compute.QueueConfig{
			"example-worker": {
				Concurrency: 2,
				Handler: func(ctx context.Context, job *compute.Job) ([]string, error) {
					defer func() { handled <- job.ID }()
					return []string{job.Config + ".out"}, nil
				},
			},
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- w.Run(ctx) }()

	for range ids {
		<-handled
	}
	// Shutdown lets running jobs finish, writes every outcome, and
	// returns once Run has returned.
	shutdownCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := w.Shutdown(shutdownCtx); err != nil {
		log.Fatal(err)
	}
	if err := <-runErr; err != nil {
		log.Fatal(err)
	}

	for _, id := range ids {
		job, err := q.Get(ctx, id)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(job.Status, job.OutputFiles)
	}
	// Output:
	// complete [hello.out]
	// complete [world.out]
	// complete [again.out]
}
