package compute_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/internal/testdb"
)

func enqueueN(t *testing.T, q *compute.Queue, queue, key string, n int) []compute.JobID {
	t.Helper()
	jobs := make([]compute.Job, n)
	for i := range jobs {
		jobs[i] = compute.Job{Queue: queue, Config: fmt.Sprint(i), PartitionKey: key}
	}
	ids, err := q.EnqueueMany(context.Background(), jobs)
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// TestBulkCallsChangeEveryMatchInBatches cancels, retries and deletes more
// jobs than one batch holds, and checks that other jobs, running jobs and
// the journal come out right.
func TestBulkCallsChangeEveryMatchInBatches(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	enqueueN(t, q, "a", "", 2100)
	keyed := enqueueN(t, q, "a", "k", 5)
	other := enqueueN(t, q, "b", "", 3)
	perStatus := func(queue string, s compute.Status) int64 {
		return queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.jobs WHERE queue = $1 AND status = $2`, queue, s)
	}

	n, err := q.CancelMatching(ctx, compute.Filter{Queue: "a", PartitionKey: "k"}, "")
	if err != nil || n != 5 {
		t.Fatalf("cancel by partition key: %d, %v; want 5", n, err)
	}
	n, err = q.CancelMatching(ctx, compute.Filter{Queue: "a"}, "bulk")
	if err != nil || n != 2100 || perStatus("a", compute.StatusFailed) != 2105 || perStatus("b", compute.StatusQueued) != 3 {
		t.Fatalf("cancel queue a: %d, %v", n, err)
	}
	// The statements promise the journal that every row changes status.
	if got := queryOne[int64](t, q.Pool(), `SELECT coalesce(sum(cardinality(job_ids)), 0) FROM compute.events WHERE queue = 'a' AND status = 'failed'`); got != 2105 {
		t.Errorf("journal holds %d failed events of queue a, want 2105", got)
	}
	job, err := q.Get(ctx, keyed[0])
	if err != nil || len(job.Errors) != 1 || job.Errors[0].Error != "cancelled: cancelled by request" {
		t.Errorf("cancelled job's errors: %+v %v", job, err)
	}

	n, err = q.RetryMatching(ctx, compute.Filter{Queue: "a", Status: compute.StatusFailed})
	if err != nil || n != 2105 || perStatus("a", compute.StatusQueued) != 2105 {
		t.Fatalf("retry queue a: %d, %v", n, err)
	}
	// A job that failed after the call began (here: a finish time in the
	// future) is not retried, nor is a job created after it cancelled.
	late := enqueue(t, q, compute.Job{Queue: "late"})
	if err := q.Cancel(ctx, late, ""); err != nil {
		t.Fatal(err)
	}
	mustExec(t, q.Pool(), `UPDATE compute.jobs SET finished = now() + interval '1 hour' WHERE job_id = $1`, late[:])
	if n, err := q.RetryMatching(ctx, compute.Filter{Queue: "late"}); n != 0 || err != nil {
		t.Errorf("retry of a job that failed after the call began: %d, %v", n, err)
	}
	young := enqueue(t, q, compute.Job{Queue: "late"})
	mustExec(t, q.Pool(), `UPDATE compute.jobs SET created = now() + interval '1 hour' WHERE job_id = $1`, young[:])
	if n, err := q.CancelMatching(ctx, compute.Filter{Queue: "late"}, ""); n != 0 || err != nil {
		t.Errorf("cancel of a job created after the call began: %d, %v", n, err)
	}
	if n, err := q.DeleteMatching(ctx, compute.Filter{Queue: "late", Status: compute.StatusQueued}); n != 0 || err != nil {
		t.Errorf("delete of a job created after the call began: %d, %v", n, err)
	}

	running := claimOne(t, q, "a")
	n, err = q.DeleteMatching(ctx, compute.Filter{Queue: "a"})
	if err != nil || n != 2104 {
		t.Fatalf("delete queue a: %d, %v; want 2104 (all but the running job)", n, err)
	}
	if status(t, q, running.ID) != compute.StatusInProgress {
		t.Error("DeleteMatching touched a running job")
	}
	for _, id := range other {
		if status(t, q, id) != compute.StatusQueued {
			t.Errorf("job %s of queue b was touched", id)
		}
	}

	for name, call := range map[string]func() (int, error){
		"empty filter":   func() (int, error) { return q.DeleteMatching(ctx, compute.Filter{}) },
		"retry complete": func() (int, error) { return q.RetryMatching(ctx, compute.Filter{Status: compute.StatusComplete}) },
		"cancel failed":  func() (int, error) { return q.CancelMatching(ctx, compute.Filter{Status: compute.StatusFailed}, "") },
		"delete running": func() (int, error) { return q.DeleteMatching(ctx, compute.Filter{Status: compute.StatusInProgress}) },
		"bad queue":      func() (int, error) { return q.DeleteMatching(ctx, compute.Filter{Queue: "no spaces"}) },
		"bad status":     func() (int, error) { return q.DeleteMatching(ctx, compute.Filter{Status: "sleeping"}) },
		"find bad limit": func() (int, error) { _, err := q.Find(ctx, compute.Filter{}, compute.JobID{}, -1); return 0, err },
		"find bad key text": func() (int, error) {
			_, err := q.Find(ctx, compute.Filter{PartitionKey: "a\x00"}, compute.JobID{}, 1)
			return 0, err
		},
	} {
		if n, err := call(); n != 0 || !errors.Is(err, compute.ErrInvalid) {
			t.Errorf("%s: %d, %v; want ErrInvalid", name, n, err)
		}
	}
}

func TestDeleteRefusesRunningJobs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	ids := enqueueN(t, q, "d", "", 2)
	running := claimOne(t, q, "d")
	if err := q.Delete(ctx, running.ID); !errors.Is(err, compute.ErrWrongStatus) {
		t.Errorf("delete of a running job: %v, want ErrWrongStatus", err)
	}
	if status(t, q, running.ID) != compute.StatusInProgress {
		t.Error("the running job was changed")
	}
	queued := ids[1]
	if running.ID == queued {
		queued = ids[0]
	}
	if err := q.Delete(ctx, queued); err != nil {
		t.Fatal(err)
	}
	if err := q.Delete(ctx, queued); !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("second delete: %v, want ErrNotFound", err)
	}
}

func TestFindFiltersAndPages(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	a := enqueueN(t, q, "fa", "x", 3)
	b := enqueueN(t, q, "fb", "", 2)
	if err := q.Cancel(ctx, b[0], ""); err != nil {
		t.Fatal(err)
	}
	all, err := q.Find(ctx, compute.Filter{}, compute.JobID{}, 0)
	if err != nil || len(all) != 5 {
		t.Fatalf("find all: %d, %v", len(all), err)
	}
	failed, err := q.Find(ctx, compute.Filter{Status: compute.StatusFailed}, compute.JobID{}, 10)
	if err != nil || len(failed) != 1 || failed[0].ID != b[0] {
		t.Errorf("find failed: %v, %v", failed, err)
	}
	page, err := q.Find(ctx, compute.Filter{PartitionKey: "x"}, a[0], 1)
	if err != nil || len(page) != 1 || page[0].ID != a[1] {
		t.Errorf("second page by key: %v, %v", page, err)
	}
}

// TestFindNewestPagesBackwards: FindNewest lists the newest job first and
// pages towards the oldest, with the filter applied, and ends with an
// empty page.
func TestFindNewestPagesBackwards(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	a := enqueueN(t, q, "na", "", 5)
	enqueueN(t, q, "nb", "", 2)
	var got []compute.JobID
	var before compute.JobID
	for {
		page, err := q.FindNewest(ctx, compute.Filter{Queue: "na"}, before, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		for _, j := range page {
			got = append(got, j.ID)
		}
		before = page[len(page)-1].ID
	}
	want := slices.Clone(a)
	slices.Reverse(want)
	if !slices.Equal(got, want) {
		t.Errorf("FindNewest pages: %v, want %v", got, want)
	}
	if _, err := q.FindNewest(ctx, compute.Filter{Status: "bogus"}, compute.JobID{}, 1); !errors.Is(err, compute.ErrInvalid) {
		t.Errorf("FindNewest with a bad status: %v, want ErrInvalid", err)
	}
}

func TestQueuesSummarisesCountsRulesAndWorkers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	enqueueN(t, q, "s1", "", 3)
	enqueue(t, q, compute.Job{Queue: "s1", Delay: time.Hour})
	done := claimOne(t, q, "s1")
	if err := q.Complete(ctx, compute.Completion{Job: done}); err != nil {
		t.Fatal(err)
	}
	claimOne(t, q, "s1")
	if err := q.SetQueueSettings(ctx, "configured", compute.QueueSettings{MaxRunning: 2}); err != nil {
		t.Fatal(err)
	}
	mustExec(t, q.Pool(), `INSERT INTO compute.workers (worker, queues) VALUES ('w1', '{s1}'), ('old', '{s1}')`)
	mustExec(t, q.Pool(), `UPDATE compute.workers SET seen = now() - interval '10 minutes' WHERE worker = 'old'`)

	exact, err := q.Queues(ctx, true)
	if err != nil || len(exact) != 2 || exact[0].Name != "configured" || exact[1].Name != "s1" {
		t.Fatalf("Queues: %+v, %v", exact, err)
	}
	s1 := exact[1]
	if s1.Counts[compute.StatusQueued] != 2 || s1.Counts[compute.StatusInProgress] != 1 || s1.Counts[compute.StatusComplete] != 1 ||
		s1.Runnable != 1 || s1.OldestRunnable <= 0 || s1.Workers != 1 || s1.Estimated {
		t.Errorf("s1: %+v", s1)
	}
	if exact[0].Settings.MaxRunning != 2 || exact[0].Workers != 0 {
		t.Errorf("configured: %+v", exact[0])
	}

	// Without statistics (never analyzed: a young, small table) the
	// finished rows are counted even when estimates were asked for.
	young, err := q.Queues(ctx, false)
	if err != nil || len(young) != 2 || young[1].Estimated || young[1].Counts[compute.StatusComplete] != 1 {
		t.Fatalf("Queues estimated before ANALYZE: %+v, %v", young, err)
	}

	// Estimates come from the planner's statistics once ANALYZE ran.
	mustExec(t, q.Pool(), `ANALYZE compute.jobs`)
	est, err := q.Queues(ctx, false)
	if err != nil || len(est) != 2 {
		t.Fatalf("Queues estimated: %+v, %v", est, err)
	}
	s1 = est[1]
	if !s1.Estimated || s1.Counts[compute.StatusQueued] != 2 || s1.Counts[compute.StatusComplete] < 1 || s1.Counts[compute.StatusExpired] != 0 {
		t.Errorf("estimated s1: %+v", s1)
	}
}

func TestWorkersTicksHistoryAndSchemaVersion(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	bare := openQueue(t, testdb.New(t))
	current, latest, err := bare.SchemaVersion(ctx)
	if err != nil || current != 0 || latest < 12 {
		t.Fatalf("bare database: %d, %d, %v", current, latest, err)
	}
	if queryOne[bool](t, bare.Pool(), `SELECT to_regnamespace('compute') IS NULL`) != true {
		t.Error("SchemaVersion created the schema")
	}

	q := newQueue(t)
	if current, latest2, err := q.SchemaVersion(ctx); err != nil || current != latest || latest2 != latest {
		t.Fatalf("migrated database: %d, %d, %v", current, latest2, err)
	}
	mustExec(t, q.Pool(), `INSERT INTO compute.workers (worker, queues) VALUES ('w1', '{a,b}')`)
	mustExec(t, q.Pool(), `INSERT INTO compute.periodic (name, last_tick) VALUES ('nightly', '2030-01-01T00:00:00Z')`)
	workers, err := q.Workers(ctx)
	if err != nil || len(workers) != 1 || workers[0].ID != "w1" || len(workers[0].Queues) != 2 || !workers[0].Live {
		t.Errorf("Workers: %+v, %v", workers, err)
	}
	ticks, err := q.PeriodicTicks(ctx)
	if err != nil || !ticks["nightly"].Equal(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("PeriodicTicks: %v, %v", ticks, err)
	}

	id := enqueue(t, q, compute.Job{Queue: "h"})
	enqueue(t, q, compute.Job{Queue: "h"})
	job := claimOne(t, q, "h")
	if err := q.Complete(ctx, compute.Completion{Job: job}); err != nil {
		t.Fatal(err)
	}
	if job.ID != id {
		t.Fatalf("claimed %s, want the first job %s", job.ID, id)
	}
	events, err := q.History(ctx, id)
	if err != nil || len(events) != 3 {
		t.Fatalf("History: %+v, %v", events, err)
	}
	for i, want := range []compute.Status{compute.StatusQueued, compute.StatusInProgress, compute.StatusComplete} {
		if events[i].Status != want || events[i].JobID != id {
			t.Errorf("event %d: %+v, want %s of %s", i, events[i], want, id)
		}
	}
	if _, err := q.History(ctx, compute.JobID{1}); !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("History of an unknown job: %v", err)
	}
}

// TestCountMatchingCountsUpToItsLimit: the count of a filter and statuses,
// capped at the limit; no statuses means all; bad arguments are refused.
func TestCountMatchingCountsUpToItsLimit(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	q := newQueue(t)
	enqueueAll(t, q, slices.Repeat([]compute.Job{{Queue: "counted", PartitionKey: "k"}}, 7))
	enqueueAll(t, q, slices.Repeat([]compute.Job{{Queue: "other"}}, 3))
	claimed, err := q.Claim(ctx, "counted", 2)
	if err != nil || len(claimed) != 2 {
		t.Fatalf("claimed %d (%v), want 2", len(claimed), err)
	}
	for _, c := range []struct {
		f     compute.Filter
		in    []compute.Status
		limit int
		want  int
	}{
		{compute.Filter{Queue: "counted"}, nil, 100, 7},
		{compute.Filter{Queue: "counted"}, []compute.Status{compute.StatusQueued}, 100, 5},
		{compute.Filter{Queue: "counted"}, []compute.Status{compute.StatusQueued, compute.StatusInProgress}, 100, 7},
		{compute.Filter{Queue: "counted"}, []compute.Status{compute.StatusFailed}, 100, 0},
		{compute.Filter{Queue: "counted"}, nil, 4, 4},
		{compute.Filter{PartitionKey: "k", Status: compute.StatusInProgress}, nil, 100, 2},
		{compute.Filter{}, nil, 100, 10},
	} {
		if got, err := q.CountMatching(ctx, c.f, c.in, c.limit); err != nil || got != c.want {
			t.Errorf("CountMatching(%+v, %v, %d) = %d, %v; want %d", c.f, c.in, c.limit, got, err, c.want)
		}
	}
	for name, call := range map[string]func() error{
		"a bad status": func() error {
			_, err := q.CountMatching(ctx, compute.Filter{}, []compute.Status{"done"}, 10)
			return err
		},
		"a limit of 0": func() error { _, err := q.CountMatching(ctx, compute.Filter{}, nil, 0); return err },
		"a bad queue":  func() error { _, err := q.CountMatching(ctx, compute.Filter{Queue: "no spaces"}, nil, 10); return err },
	} {
		if err := call(); !errors.Is(err, compute.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
}
