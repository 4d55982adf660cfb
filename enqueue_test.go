package compute_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/internal/testdb"
)

// TestEnqueueTxRolledBackLeavesNothing checks that a job enqueued in a
// transaction is invisible to claims while the transaction is open and gone
// after a rollback.
func TestEnqueueTxRolledBackLeavesNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	tx, err := q.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	id, err := q.EnqueueTx(ctx, tx, compute.Job{Queue: "tx"})
	if err != nil {
		t.Fatalf("enqueue in tx: %v", err)
	}
	if n := queryOne[int64](t, tx, `SELECT count(*) FROM compute.jobs WHERE job_id = $1`, id[:]); n != 1 {
		t.Fatalf("the transaction itself sees %d rows of its job, want 1", n)
	}
	if jobs, err := q.Claim(ctx, "tx", 10); err != nil || len(jobs) != 0 {
		t.Errorf("claim while the enqueue is uncommitted: %d jobs, err %v; want none", len(jobs), err)
	}
	if _, err := q.Get(ctx, id); !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("get while uncommitted: %v, want ErrNotFound", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if n := countJobs(t, q); n != 0 {
		t.Errorf("%d jobs after rollback, want 0", n)
	}
	if jobs, err := q.Claim(ctx, "tx", 10); err != nil || len(jobs) != 0 {
		t.Errorf("claim after rollback: %d jobs, err %v; want none", len(jobs), err)
	}
}

// TestEnqueueTxCommittedIsClaimable checks that a job enqueued in a
// transaction that commits exists and can be claimed.
func TestEnqueueTxCommittedIsClaimable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	var id compute.JobID
	err := pgx.BeginFunc(ctx, q.Pool(), func(tx pgx.Tx) error {
		var err error
		id, err = q.EnqueueTx(ctx, tx, compute.Job{Queue: "tx", Config: "c"})
		return err
	})
	if err != nil {
		t.Fatalf("enqueue in committed tx: %v", err)
	}
	if job := claimOne(t, q, "tx"); job.ID != id || job.Config != "c" {
		t.Errorf("claimed %s %q, want %s", job.ID, job.Config, id)
	}
}

// TestContentIDConcurrentSubmittersCreateOneRow has 8 submitters, each with
// its own pool, enqueue the same content-id job at once, alone and inside
// batches (twice in one batch, even): one row, one id for all.
func TestContentIDConcurrentSubmittersCreateOneRow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	connString := testdb.New(t)
	q := openQueue(t, connString, compute.WithMigrate())
	same := compute.Job{Queue: "dedup", Config: `{"render": "page 1"}`, InputFiles: []string{"a.pdf", "b.pdf"}, ContentID: true}

	const submitters = 8
	got := make([][]compute.JobID, submitters)
	errs := make([]error, submitters)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for s := range submitters {
		sq := openQueue(t, connString)
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			id, err := sq.Enqueue(ctx, same)
			if err != nil {
				errs[s] = err
				return
			}
			ids, err := sq.EnqueueMany(ctx, []compute.Job{{Queue: "dedup"}, same, {Queue: "dedup"}, same})
			if err != nil {
				errs[s] = err
				return
			}
			got[s] = []compute.JobID{id, ids[1], ids[3]}
		}()
	}
	close(start)
	wg.Wait()

	for s, err := range errs {
		if err != nil {
			t.Errorf("submitter %d: %v", s, err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	want := got[0][0]
	for s := range submitters {
		for _, id := range got[s] {
			if id != want {
				t.Errorf("submitter %d got id %s, want %s for all", s, id, want)
			}
		}
	}
	if n := queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.jobs WHERE job_id = $1`, want[:]); n != 1 {
		t.Errorf("%d rows for the content-id job, want 1", n)
	}
	if n := countJobs(t, q); n != 1+2*submitters {
		t.Errorf("%d jobs, want %d (one shared plus two plain per submitter)", n, 1+2*submitters)
	}

	// Submitting again after the job finished creates nothing either.
	job := claimOne(t, q, "dedup")
	for job.ID != want {
		if err := q.Complete(ctx, compute.Completion{Job: job}); err != nil {
			t.Fatal(err)
		}
		job = claimOne(t, q, "dedup")
	}
	if err := q.Complete(ctx, compute.Completion{Job: job}); err != nil {
		t.Fatal(err)
	}
	if id := enqueue(t, q, same); id != want || status(t, q, want) != compute.StatusComplete {
		t.Errorf("resubmitting a complete content-id job gave %s (status %s), want %s still complete", id, status(t, q, want), want)
	}

	// Any difference in what the job is gives another id.
	variants := []compute.Job{
		{Queue: "dedup", Config: `{"render": "page 2"}`, InputFiles: same.InputFiles, ContentID: true},
		{Queue: "dedup2", Config: same.Config, InputFiles: same.InputFiles, ContentID: true},
		{Queue: "dedup", Config: same.Config, InputFiles: []string{"a.pdf"}, ContentID: true},
		{Queue: "dedup", Config: same.Config, ContentID: true},
	}
	seen := map[compute.JobID]bool{want: true}
	for _, v := range variants {
		id := enqueue(t, q, v)
		if seen[id] {
			t.Errorf("job %+v got id %s, which another content shares", v, id)
		}
		seen[id] = true
	}
}

// TestEnqueueManyTenThousandKeepsFiles submits 10,000 jobs in one call and
// checks that every one landed with its config and input files intact.
func TestEnqueueManyTenThousandKeepsFiles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	const total = 10000
	jobs := make([]compute.Job, total)
	for i := range jobs {
		files := append([]string{fmt.Sprintf("input-%d.dat", i)}, trickyNames[i%len(trickyNames):]...)
		jobs[i] = compute.Job{Queue: "bulk", Config: fmt.Sprintf(`{"n": %d, "s": "\"'\\"}`, i), InputFiles: files}
	}
	ids, err := q.EnqueueMany(ctx, jobs)
	if err != nil {
		t.Fatal(err)
	}
	if n := countJobs(t, q); n != total {
		t.Fatalf("%d jobs after enqueueing %d", n, total)
	}
	want := make(map[compute.JobID]*compute.Job, total)
	for i, id := range ids {
		want[id] = &jobs[i]
	}
	if len(want) != total {
		t.Fatalf("%d distinct ids for %d jobs", len(want), total)
	}
	rows, err := q.Pool().Query(ctx, `SELECT job_id, config, input_files FROM compute.jobs`)
	if err != nil {
		t.Fatal(err)
	}
	var (
		id     []byte
		config string
		files  []string
		bad    int
	)
	_, err = pgx.ForEachRow(rows, []any{&id, &config, &files}, func() error {
		w := want[compute.JobID(id)]
		if w == nil || w.Config != config || !slices.Equal(w.InputFiles, files) {
			if bad++; bad <= 5 {
				t.Errorf("job %x: config %q files %q; want %+v", id, config, files, w)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if bad > 0 {
		t.Errorf("%d of %d jobs differ from what was enqueued", bad, total)
	}
}

// TestOneJobAndBatchInsertsStoreTheSame enqueues jobs with every field set
// alone (the one-row insert) and in a batch (the unnest insert) and
// requires the same rows, apart from ids and times. A content-id job goes
// through the returning form of each, and a second submit of it is a
// duplicate either way. Last, a fresh connection's prepared statements show
// that one job took the one-row statement and two the array one.
func TestOneJobAndBatchInsertsStoreTheSame(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	runAt := time.Now().Add(time.Hour).Truncate(time.Microsecond)
	files := []string{`a b.png`, `c,d`, `{e}`, `"f"`, `g\h`, `ünï`}
	jobs := []compute.Job{
		{Queue: "same", Config: `{"x": [1, "two"]}`, InputFiles: files, Priority: 7, RunAt: runAt,
			MaxAttempts: 3, Unique: compute.Unique{Key: "k1"}, PartitionKey: "tenant"},
		{Queue: "same", Config: "plain text", Delay: 90 * time.Minute},
		{Queue: "same", Config: "by content", ContentID: true, InputFiles: files},
	}
	// row is what a job stored: every column but id and times, and the
	// run time relative to the insert.
	row := func(id compute.JobID) string {
		return queryOne[string](t, q.Pool(), `
SELECT concat_ws(' | ', status, queue, config, input_files::text, priority, max_attempts, attempt,
       coalesce(unique_key, '<null>'), coalesce(partition_key, '<null>'),
       CASE WHEN run_at = created THEN 'now' WHEN run_at - created = interval '90 minutes' THEN 'delayed 90m'
            ELSE (extract(epoch FROM run_at) * 1e6)::bigint::text END)
FROM compute.jobs WHERE job_id = $1`, id[:])
	}
	var alone []string
	for i, j := range jobs {
		id, err := q.Enqueue(ctx, j)
		if err != nil {
			t.Fatalf("job %d alone: %v", i, err)
		}
		alone = append(alone, row(id))
	}
	if r, err := q.Submit(ctx, jobs[2]); err != nil || len(r) != 1 || !r[0].Duplicate {
		t.Errorf("second submit of the content-id job alone: %+v, %v; want a duplicate", r, err)
	}
	if _, err := q.Pool().Exec(ctx, `DELETE FROM compute.jobs`); err != nil {
		t.Fatal(err)
	}
	ids, err := q.EnqueueMany(ctx, jobs)
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		if got := row(id); got != alone[i] {
			t.Errorf("job %d stored\n  alone:    %s\n  in batch: %s", i, alone[i], got)
		}
	}
	if alone[0] != fmt.Sprintf(`queued | same | {"x": [1, "two"]} | {"a b.png","c,d","{e}","\"f\"","g\\h",ünï} | 7 | 3 | 0 | k1 | tenant | %d`, runAt.UnixMicro()) {
		t.Errorf("job 0 stored %s", alone[0])
	}
	r, err := q.Submit(ctx, jobs[1:]...)
	if err != nil || len(r) != 2 || r[0].Duplicate || !r[1].Duplicate {
		t.Errorf("second submit of the content-id job in a batch: %+v, %v; want it alone a duplicate", r, err)
	}

	// Which statement ran: a new connection's statement cache holds only
	// what this test prepares on it.
	conn, err := pgx.ConnectConfig(ctx, q.Pool().Config().ConnConfig.Copy())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	prepared := func(step string, wantArrays int) {
		t.Helper()
		var arrays, rows int
		if err := tx.QueryRow(ctx, `SELECT count(*) FILTER (WHERE statement LIKE '%unnest($1::bytea[]%'),
			count(*) FILTER (WHERE statement LIKE '%FROM (SELECT $1::bytea, $2::text%')
			FROM pg_prepared_statements WHERE statement NOT LIKE '%pg_prepared_statements%'`).Scan(&arrays, &rows); err != nil {
			t.Fatal(err)
		}
		if arrays != wantArrays || rows != 1 {
			t.Errorf("after %s: %d array and %d one-row insert statements prepared; want %d and 1", step, arrays, rows, wantArrays)
		}
	}
	if _, err := q.EnqueueTx(ctx, tx, compute.Job{Queue: "same"}); err != nil {
		t.Fatal(err)
	}
	prepared("one job", 0)
	if _, err := q.EnqueueManyTx(ctx, tx, []compute.Job{{Queue: "same"}, {Queue: "same"}}); err != nil {
		t.Fatal(err)
	}
	prepared("two jobs", 1)
}

// trickyNames are file names that need quoting or escaping in an array
// literal or in SQL.
var trickyNames = []string{
	`quote"d.txt`, `back\slash`, `ends with \`, `\"`, "com,ma", "{braces}", "}", "{", "sp ace",
	" leading", "trailing ", "NULL", "null", "'single'", "tab\there", "new\nline",
	"ünïcødé 日本語 🎉", "a;b", "$1", "--", `""`,
}
