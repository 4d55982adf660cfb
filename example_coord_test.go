package compute_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/computeplatform/compute"
)

// openExample opens the examples' database.
func openExample() *compute.Queue {
	q, err := compute.Open(context.Background(), os.Getenv("DATABASE_URL"), compute.WithMigrate())
	if err != nil {
		log.Fatal(err)
	}
	return q
}

// A unique key makes a second submit of the same work a no-op while the
// first job is queued or running; Submit says so and returns the first id.
func ExampleQueue_Submit() {
	ctx := context.Background()
	q := openExample()
	defer q.Close()

	job := compute.Job{Queue: "example-unique", Unique: compute.Unique{Key: "invoice:42"}}
	first, err := q.Submit(ctx, job)
	if err != nil {
		log.Fatal(err)
	}
	again, err := q.Submit(ctx, job)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("first is a duplicate:", first[0].Duplicate)
	fmt.Println("again is a duplicate:", again[0].Duplicate, "same id:", again[0].ID == first[0].ID)
	// Output:
	// first is a duplicate: false
	// again is a duplicate: true same id: true
}

// Pause holds a queue's jobs for the whole cluster; Resume releases them.
func ExampleQueue_Pause() {
	ctx := context.Background()
	q := openExample()
	defer q.Close()

	if _, err := q.Enqueue(ctx, compute.Job{Queue: "example-pause"}); err != nil {
		log.Fatal(err)
	}
	if err := q.Pause(ctx, "example-pause"); err != nil {
		log.Fatal(err)
	}
	paused, _ := q.Claim(ctx, "example-pause", 10)
	if err := q.Resume(ctx, "example-pause"); err != nil {
		log.Fatal(err)
	}
	resumed, _ := q.Claim(ctx, "example-pause", 10)
	fmt.Println("claimed while paused:", len(paused), "after resume:", len(resumed))
	// Output: claimed while paused: 0 after resume: 1
}

// Per-key caps and fair claims: at most 2 running jobs per customer across
// all workers, and customers take turns.
func ExampleQueue_SetQueueSettings() {
	ctx := context.Background()
	q := openExample()
	defer q.Close()

	err := q.SetQueueSettings(ctx, "example-fair", compute.QueueSettings{KeyMaxRunning: 2, Fair: true})
	if err != nil {
		log.Fatal(err)
	}
	var jobs []compute.Job
	for range 100 {
		jobs = append(jobs, compute.Job{Queue: "example-fair", PartitionKey: "big-customer"})
	}
	jobs = append(jobs, compute.Job{Queue: "example-fair", PartitionKey: "small-customer"})
	if _, err := q.EnqueueMany(ctx, jobs); err != nil {
		log.Fatal(err)
	}
	claimed, err := q.Claim(ctx, "example-fair", 10)
	if err != nil {
		log.Fatal(err)
	}
	perKey := map[string]int{}
	for _, j := range claimed {
		perKey[j.PartitionKey]++
	}
	fmt.Println(perKey)
	// Output: map[big-customer:2 small-customer:1]
}

// A periodic job: every worker process may list the same schedule; each
// tick becomes one job, whose RunAt is the tick.
func ExamplePeriodicJob() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q := openExample()
	defer q.Close()

	ticks := make(chan time.Time, 1)
	w, err := compute.NewWorker(q, compute.WorkerConfig{
		Queues: map[string]compute.QueueConfig{
			"example-cleanup": {Handler: func(ctx context.Context, job *compute.Job) ([]string, error) {
				select {
				case ticks <- job.RunAt:
				default:
				}
				return nil, nil
			}},
		},
		Periodic: []compute.PeriodicJob{
			// Or Cron: "0 3 * * *" for 03:00 UTC every day.
			{Name: "cleanup", Every: time.Second, Job: compute.Job{Queue: "example-cleanup"}},
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		tick := <-ticks
		fmt.Println("ran the tick of a whole second:", tick.Nanosecond() == 0)
		cancel()
	}()
	if err := w.Run(ctx); err != nil {
		log.Fatal(err)
	}
	// Output: ran the tick of a whole second: true
}

// Wait blocks until a job is finished; a worker in another process could
// be running it.
func ExampleQueue_Wait() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q := openExample()
	defer q.Close()

	w, err := compute.NewWorker(q, compute.WorkerConfig{Queues: map[string]compute.QueueConfig{
		"example-wait": {Handler: func(ctx context.Context, job *compute.Job) ([]string, error) {
			return []string{"report.pdf"}, nil
		}},
	}})
	if err != nil {
		log.Fatal(err)
	}
	go w.Run(ctx)
	defer w.Shutdown(context.Background())

	id, err := q.Enqueue(ctx, compute.Job{Queue: "example-wait"})
	if err != nil {
		log.Fatal(err)
	}
	job, err := q.Wait(ctx, id)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(job.Status, job.OutputFiles)
	// Output: complete [report.pdf]
}

// Follow delivers every status change as it happens, for a dashboard or a
// pipeline; keep the last Cursor to resume after a restart.
func ExampleQueue_Follow() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q := openExample()
	defer q.Close()

	from, err := q.Head(ctx) // only what happens from now on
	if err != nil {
		log.Fatal(err)
	}
	id, err := q.Enqueue(ctx, compute.Job{Queue: "example-follow"})
	if err != nil {
		log.Fatal(err)
	}
	if err := q.Cancel(ctx, id, "changed my mind"); err != nil {
		log.Fatal(err)
	}
	var seen []compute.Status
	err = q.Follow(ctx, from, func(events []compute.Event) error {
		for _, e := range events {
			if e.JobID == id {
				seen = append(seen, e.Status)
			}
		}
		if len(seen) == 2 {
			return errDone
		}
		return nil
	})
	fmt.Println(seen, err == errDone)
	// Output: [queued failed] true
}

var errDone = fmt.Errorf("done")

// Explain says why a job is not running.
func ExampleQueue_Explain() {
	ctx := context.Background()
	q := openExample()
	defer q.Close()

	id, err := q.Enqueue(ctx, compute.Job{Queue: "example-explain", Delay: time.Hour})
	if err != nil {
		log.Fatal(err)
	}
	if err := q.Pause(ctx, "example-explain"); err != nil {
		log.Fatal(err)
	}
	e, err := q.Explain(ctx, id)
	if err != nil {
		log.Fatal(err)
	}
	for _, r := range e.Reasons {
		fmt.Println(r.Kind)
	}
	// Output:
	// scheduled
	// paused
	// no-workers
}
