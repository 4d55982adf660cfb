package compute_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/computeplatform/compute"
)

// TestRetryAndCancelFollowStatus checks which statuses Retry and Cancel
// accept and what they do.
func TestRetryAndCancelFollowStatus(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)

	retried := enqueue(t, q, compute.Job{Queue: "manage", MaxAttempts: 1})
	failedJob(t, q, "manage", compute.Failure{Err: errors.New("boom")})
	if got := status(t, q, retried); got != compute.StatusFailed {
		t.Fatalf("job with its one attempt failed is %s, want failed", got)
	}
	if err := q.Retry(ctx, retried); err != nil {
		t.Fatalf("retry of a failed job: %v", err)
	}
	again := claimOne(t, q, "manage")
	if again.ID != retried || again.Attempt != 2 || again.MaxAttempts < 2 {
		t.Errorf("retried job claimed as %s attempt %d of %d; want %s, attempt 2 with room for it", again.ID, again.Attempt, again.MaxAttempts, retried)
	}
	if err := q.Complete(ctx, compute.Completion{Job: again}); err != nil {
		t.Fatal(err)
	}

	queued := enqueue(t, q, compute.Job{Queue: "manage"})
	if err := q.Retry(ctx, queued); !errors.Is(err, compute.ErrWrongStatus) {
		t.Errorf("retry of a queued job: %v, want ErrWrongStatus", err)
	}
	if err := q.Cancel(ctx, queued, "not needed"); err != nil {
		t.Fatalf("cancel of a queued job: %v", err)
	}
	job, err := q.Get(ctx, queued)
	if err != nil {
		t.Fatal(err)
	}
	if job.Status != compute.StatusFailed || job.Finished.IsZero() || len(job.Errors) != 1 || !strings.Contains(job.Errors[0].Error, "not needed") {
		t.Errorf("cancelled job: status %s finished %v errors %+v; want failed with the reason", job.Status, job.Finished, job.Errors)
	}
	if jobs, err := q.Claim(ctx, "manage", 10); err != nil || len(jobs) != 0 {
		t.Errorf("claim after cancel: %d jobs, %v; want none", len(jobs), err)
	}

	if err := q.Cancel(ctx, retried, "too late"); !errors.Is(err, compute.ErrWrongStatus) {
		t.Errorf("cancel of a complete job: %v, want ErrWrongStatus", err)
	}
	if err := q.Retry(ctx, retried); !errors.Is(err, compute.ErrWrongStatus) {
		t.Errorf("retry of a complete job: %v, want ErrWrongStatus", err)
	}
	if got := status(t, q, retried); got != compute.StatusComplete {
		t.Errorf("complete job became %s after refused cancel and retry", got)
	}
}

// lastAccessed reads a job's last_accessed from the table.
func lastAccessed(t *testing.T, q *compute.Queue, id compute.JobID) time.Time {
	t.Helper()
	return queryOne[time.Time](t, q.Pool(), `SELECT last_accessed FROM compute.jobs WHERE job_id = $1`, id[:])
}

// TestGetTouchesLastAccessed checks that Get records the read of a finished
// job, that it writes nothing to a queued or running job (a write would
// lock the row, and claims skip locked rows), and that List never writes.
func TestGetTouchesLastAccessed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	id := enqueue(t, q, compute.Job{Queue: "read"})
	// version is the row's creating transaction: any write changes it.
	version := func() string {
		return queryOne[string](t, q.Pool(), `SELECT xmin::text FROM compute.jobs WHERE job_id = $1`, id[:])
	}
	for _, want := range []compute.Status{compute.StatusQueued, compute.StatusInProgress} {
		if want == compute.StatusInProgress {
			claimOne(t, q, "read")
		}
		before, old := version(), lastAccessed(t, q, id)
		job, err := q.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if job.Status != want || job.ID != id {
			t.Fatalf("Get returned job %s in status %s; want %s in %s", job.ID, job.Status, id, want)
		}
		if after := version(); after != before || !lastAccessed(t, q, id).Equal(old) {
			t.Errorf("Get wrote the row of a job in status %s (xmin %s, then %s)", want, before, after)
		}
	}

	job, err := q.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Complete(ctx, compute.Completion{Job: job}); err != nil {
		t.Fatal(err)
	}
	mustExec(t, q.Pool(), `UPDATE compute.jobs SET last_accessed = now() - interval '1 day' WHERE job_id = $1`, id[:])
	old := lastAccessed(t, q, id)
	job, err = q.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	touched := lastAccessed(t, q, id)
	if job.Status != compute.StatusComplete || touched.Sub(old) < 23*time.Hour || !job.LastAccessed.Equal(touched) {
		t.Errorf("complete job: last_accessed %v before Get, %v after (job says %v, status %s); want it moved to now",
			old, touched, job.LastAccessed, job.Status)
	}
	if _, err := q.List(ctx, compute.ListOptions{Queue: "read"}); err != nil {
		t.Fatal(err)
	}
	if after := lastAccessed(t, q, id); !after.Equal(touched) {
		t.Errorf("List changed last_accessed from %v to %v", touched, after)
	}
	if _, err := q.Get(ctx, compute.JobID{1}); !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("Get of an unknown id: %v; want ErrNotFound", err)
	}
}

// TestListPagesThroughEachJobOnce walks a queue with keyset pagination,
// with and without a status filter, and checks that every job appears
// exactly once, in id order, and that Counts agrees.
func TestListPagesThroughEachJobOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	idsA, err := q.EnqueueMany(ctx, slices.Repeat([]compute.Job{{Queue: "a"}}, 250))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.EnqueueMany(ctx, slices.Repeat([]compute.Job{{Queue: "b"}}, 30)); err != nil {
		t.Fatal(err)
	}
	running, err := q.Claim(ctx, "a", 40)
	if err != nil || len(running) != 40 {
		t.Fatalf("claim 40: %d, %v", len(running), err)
	}
	isRunning := make(map[compute.JobID]bool)
	for _, j := range running {
		isRunning[j.ID] = true
	}

	walk := func(opts compute.ListOptions) []compute.JobID {
		var ids []compute.JobID
		for pages := 0; ; pages++ {
			if pages > 1000 {
				t.Fatalf("list %+v does not end", opts)
			}
			page, err := q.List(ctx, opts)
			if err != nil {
				t.Fatalf("list %+v: %v", opts, err)
			}
			if len(page) > opts.Limit {
				t.Fatalf("page of %d jobs, limit %d", len(page), opts.Limit)
			}
			if len(page) == 0 {
				return ids
			}
			for _, j := range page {
				if j.Queue != opts.Queue || opts.Status != "" && j.Status != opts.Status {
					t.Errorf("list %+v returned a job of %s in %s", opts, j.Queue, j.Status)
				}
				ids = append(ids, j.ID)
			}
			opts.After = page[len(page)-1].ID
		}
	}
	byID := func(a, b compute.JobID) int { return strings.Compare(string(a[:]), string(b[:])) }

	var wantQueued []compute.JobID
	for _, id := range idsA {
		if !isRunning[id] {
			wantQueued = append(wantQueued, id)
		}
	}
	slices.SortFunc(wantQueued, byID)
	if got := walk(compute.ListOptions{Queue: "a", Status: compute.StatusQueued, Limit: 7}); !slices.Equal(got, wantQueued) {
		t.Errorf("walking queued jobs of a gave %d ids, want the %d queued ones once each in id order", len(got), len(wantQueued))
	}
	wantAll := slices.SortedFunc(slices.Values(idsA), byID)
	if got := walk(compute.ListOptions{Queue: "a", Limit: 13}); !slices.Equal(got, wantAll) {
		t.Errorf("walking all jobs of a gave %d ids, want the %d once each in id order", len(got), len(wantAll))
	}
	if got := walk(compute.ListOptions{Queue: "a", Status: compute.StatusInProgress, Limit: 100}); len(got) != 40 {
		t.Errorf("walking in-progress jobs of a gave %d ids, want 40", len(got))
	}

	counts, err := q.Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]map[compute.Status]int64{
		"a": {compute.StatusQueued: 210, compute.StatusInProgress: 40},
		"b": {compute.StatusQueued: 30},
	}
	if fmt.Sprint(counts) != fmt.Sprint(want) {
		t.Errorf("counts %v, want %v", counts, want)
	}
}

// TestListIncludesAllZeroJobID lists a queue holding a job whose id is
// sixteen zero bytes, which a v1 program may insert: the first page (After
// is the zero id, "start at the beginning") must include it.
func TestListIncludesAllZeroJobID(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	var zero compute.JobID
	mustExec(t, q.Pool(), `
		INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed)
		VALUES ($1, 'queued', 'zero', NULL, '{}', now(), now())`, zero[:])
	other := enqueue(t, q, compute.Job{Queue: "zero"})
	page, err := q.List(ctx, compute.ListOptions{Queue: "zero"})
	if err != nil {
		t.Fatal(err)
	}
	var got []compute.JobID
	for _, j := range page {
		got = append(got, j.ID)
	}
	if !slices.Equal(got, []compute.JobID{zero, other}) {
		t.Errorf("list gave %v, want [%s %s]", got, zero, other)
	}
}
