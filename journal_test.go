package compute_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/internal/testdb"
)

// readAll reads every readable event after c. Events of a committed
// transaction become readable once every older transaction of the server
// has ended: tests on other databases of the same server can delay them by
// a moment, so callers that expect events wait with readUntil.
func readAll(t *testing.T, q *compute.Queue, c compute.Cursor) []compute.Event {
	t.Helper()
	var all []compute.Event
	for {
		events, err := q.Events(t.Context(), c, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(events) == 0 {
			return all
		}
		all = append(all, events...)
		c = events[len(events)-1].Cursor
	}
}

// readUntil reads from the journal's start until it holds n events.
func readUntil(t *testing.T, q *compute.Queue, n int) []compute.Event {
	t.Helper()
	var all []compute.Event
	waitUntil(t, liveness, fmt.Sprintf("%d journal events", n), func() bool {
		all = readAll(t, q, compute.Cursor{})
		return len(all) >= n
	})
	return all
}

func statuses(events []compute.Event, id compute.JobID) []compute.Status {
	var out []compute.Status
	for _, e := range events {
		if e.JobID == id {
			out = append(out, e.Status)
		}
	}
	return out
}

// TestJournalRecordsEveryStatusChange follows one job through the library
// and through plain SQL.
func TestJournalRecordsEveryStatusChange(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	ctx := t.Context()
	id := enqueue(t, q, compute.Job{Queue: "j"})
	job := claimOne(t, q, "j")
	if err := q.Fail(ctx, compute.Failure{Job: job, Err: errors.New("x"), RetryIn: time.Microsecond}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, liveness, "the retry to be due", func() bool { return len(claimN(t, q, "j", 1)) == 1 })
	mustExec(t, q.Pool(), `UPDATE compute.jobs SET status = 'complete', finished = now() WHERE job_id = $1`, id[:])
	mustExec(t, q.Pool(), `UPDATE compute.jobs SET last_accessed = now() WHERE job_id = $1`, id[:]) // no status change
	want := []compute.Status{"queued", "in-progress", "queued", "in-progress", "complete"}
	got := statuses(readUntil(t, q, len(want)), id)
	if !slices.Equal(got, want) {
		t.Fatalf("journal of the job: %v, want %v", got, want)
	}
}

// TestJournalRecordsEveryInsertedRowOnce covers the insert trigger's two
// ways: a statement whose rows share one queue and status (journaled
// without grouping), one that mixes queues and statuses (grouped), and one
// that inserts nothing. Each inserted job must have exactly one event, with
// its own queue, status and attempt.
func TestJournalRecordsEveryInsertedRowOnce(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	type row struct {
		queue   string
		status  compute.Status
		attempt int
	}
	want := map[compute.JobID]row{}
	for _, id := range enqueueAll(t, q, slices.Repeat([]compute.Job{{Queue: "one"}}, 7)) {
		want[id] = row{"one", compute.StatusQueued, 0}
	}
	insert := func(rows []row) {
		ids, queues, statuses, attempts := make([][]byte, len(rows)), make([]string, len(rows)), make([]string, len(rows)), make([]int32, len(rows))
		for i, r := range rows {
			id := compute.JobID(uuid.New())
			want[id] = r
			ids[i], queues[i], statuses[i], attempts[i] = id[:], r.queue, string(r.status), int32(r.attempt)
		}
		mustExec(t, q.Pool(), `
			INSERT INTO compute.jobs (job_id, status, queue, input_files, created, last_accessed, attempt)
			SELECT i, s, q, '{}', now(), now(), a FROM unnest($1::bytea[], $2::text[], $3::text[], $4::int[]) AS u(i, q, s, a)`,
			ids, queues, statuses, attempts)
	}
	// One queue and status with distinct attempts: each id must keep its own.
	insert([]row{{"same", "failed", 4}, {"same", "failed", 7}, {"same", "failed", 5}})
	insert([]row{{"a", "queued", 0}, {"b", "complete", 2}, {"a", "failed", 3}, {"b", "queued", 0}, {"a", "queued", 0}, {"b", "complete", 1}})
	mustExec(t, q.Pool(), `INSERT INTO compute.jobs (job_id, status, queue, input_files, created, last_accessed)
		SELECT job_id, status, queue, input_files, created, last_accessed FROM compute.jobs WHERE false`)
	events := readUntil(t, q, len(want))
	seen := map[compute.JobID]int{}
	for _, e := range events {
		seen[e.JobID]++
		w, ok := want[e.JobID]
		if got := (row{e.Queue, e.Status, e.Attempt}); !ok || got != w {
			t.Errorf("event for job %s: %+v, want %+v (known job: %v)", e.JobID, got, w, ok)
		}
	}
	for id := range want {
		if seen[id] != 1 {
			t.Errorf("job %s has %d events, want 1", id, seen[id])
		}
	}
	if len(events) != len(want) {
		t.Errorf("%d events for %d inserted jobs", len(events), len(want))
	}
}

// TestJournalLibraryStatementsMatchTheirMarkers walks a job through every
// library statement that updates jobs. Each says in a leading comment
// whether it changes the status of every row it touches (the journal then
// records its new rows without comparing them with the old ones) or of none
// (the journal skips it). A statement marked wrongly shows here as a
// missing or an extra event.
func TestJournalLibraryStatementsMatchTheirMarkers(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	ctx := t.Context()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	a := enqueue(t, q, compute.Job{Queue: "m"})
	job := claimOne(t, q, "m")
	must(q.Heartbeat(ctx, job))
	_, err := q.Get(ctx, a)
	must(err)
	must(q.Fail(ctx, compute.Failure{Job: job, Err: errors.New("x"), RetryIn: time.Microsecond}))
	waitUntil(t, liveness, "the retry to be due", func() bool {
		got := claimN(t, q, "m", 1)
		if len(got) == 1 {
			job = got[0]
		}
		return len(got) == 1
	})
	must(q.Complete(ctx, compute.Completion{Job: job}))
	_, err = q.Get(ctx, a)
	must(err)
	waitUntil(t, liveness, "the job to expire", func() bool {
		n, err := q.Expire(ctx, time.Microsecond)
		must(err)
		return n == 1
	})

	b := enqueue(t, q, compute.Job{Queue: "m"})
	must(q.Cancel(ctx, b, "test"))
	must(q.Retry(ctx, b))
	claimOne(t, q, "m")
	mustExec(t, q.Pool(), `UPDATE compute.jobs SET lease_expires = now() - interval '1 second' WHERE job_id = $1`, b[:])
	n, err := q.RequeueStale(ctx)
	must(err)
	if n != 1 {
		t.Fatalf("RequeueStale handed back %d jobs, want 1", n)
	}

	end := enqueue(t, q, compute.Job{Queue: "end"}) // every earlier event comes before its own
	var events []compute.Event
	waitUntil(t, liveness, "the last job's event", func() bool {
		events = readAll(t, q, compute.Cursor{})
		return len(events) > 0 && events[len(events)-1].JobID == end
	})
	for _, c := range []struct {
		id   compute.JobID
		want []compute.Status
	}{
		{a, []compute.Status{"queued", "in-progress", "queued", "in-progress", "complete", "expired"}},
		{b, []compute.Status{"queued", "failed", "queued", "in-progress", "queued"}},
	} {
		if got := statuses(events, c.id); !slices.Equal(got, c.want) {
			t.Errorf("journal of job %s: %v, want %v", c.id, got, c.want)
		}
	}
}

// TestJournalTrustsStatementMarkers pins the trigger's side of the markers:
// a statement that starts with the status-change comment is journaled
// without comparing rows (so even an unchanged status is recorded), one that
// starts with the no-status-change comment is not journaled at all, and a
// statement with the comment later in its text is compared row by row.
func TestJournalTrustsStatementMarkers(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	id := enqueue(t, q, compute.Job{Queue: "m"})
	mustExec(t, q.Pool(), "-- compute: status change\nUPDATE compute.jobs SET priority = 1 WHERE job_id = $1", id[:])
	mustExec(t, q.Pool(), "-- compute: no status change\nUPDATE compute.jobs SET status = 'failed' WHERE job_id = $1", id[:])
	mustExec(t, q.Pool(), "UPDATE compute.jobs SET priority = 2 WHERE job_id = $1 -- compute: status change", id[:])
	mustExec(t, q.Pool(), "UPDATE compute.jobs SET status = 'queued' WHERE job_id = $1 -- compute: no status change", id[:])
	end := enqueue(t, q, compute.Job{Queue: "end"})
	var events []compute.Event
	waitUntil(t, liveness, "the last job's event", func() bool {
		events = readAll(t, q, compute.Cursor{})
		return len(events) > 0 && events[len(events)-1].JobID == end
	})
	want := []compute.Status{"queued", "queued", "queued"}
	if got := statuses(events, id); !slices.Equal(got, want) {
		t.Fatalf("journal of the job: %v, want %v (enqueue, the marked update, the unmarked status change)", got, want)
	}
}

// TestJournalWaitsForLateCommittingTransaction: a transaction that took its
// id first but commits last must not be skipped by a reader that already
// read a later transaction's event.
func TestJournalWaitsForLateCommittingTransaction(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	ctx := t.Context()
	early, err := q.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer early.Rollback(ctx)
	earlyID, err := q.EnqueueTx(ctx, early, compute.Job{Queue: "late"}) // takes the lower xid
	if err != nil {
		t.Fatal(err)
	}
	laterID := enqueue(t, q, compute.Job{Queue: "late"}) // commits first
	if got := readAll(t, q, compute.Cursor{}); len(got) != 0 {
		t.Fatalf("a reader got %d events while an older transaction was open; a later commit of it would be missed", len(got))
	}
	if err := early.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	got := readUntil(t, q, 2)
	if len(got) != 2 || got[0].JobID != earlyID || got[1].JobID != laterID {
		t.Fatalf("after the commit: %v, want the early job then the later one", got)
	}
}

// TestJournalConcurrentWritersFollowerMissesNothing runs writers whose
// transactions overlap and commit out of order (each inserts, sleeps a
// random moment, then commits or rolls back) while a follower reads with
// its cursor. The follower must see every committed job's queued event
// exactly once and nothing of rolled-back ones.
func TestJournalConcurrentWritersFollowerMissesNothing(t *testing.T) {
	t.Parallel()
	conn := testdb.New(t)
	q := openQueue(t, conn, compute.WithMigrate())
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()

	var mu sync.Mutex
	seen := make(map[compute.JobID]int)
	var followErr error
	var follower sync.WaitGroup
	follower.Go(func() {
		followErr = q.Follow(ctx, compute.Cursor{}, func(events []compute.Event) error {
			mu.Lock()
			defer mu.Unlock()
			for _, e := range events {
				seen[e.JobID]++
			}
			return nil
		})
	})

	var committed sync.Map
	var rolledBack atomic.Int64
	var writers sync.WaitGroup
	for w := range 8 {
		wq := openQueue(t, conn)
		writers.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for range 40 {
				tx, err := wq.Pool().Begin(t.Context())
				if err != nil {
					t.Error(err)
					return
				}
				id, err := wq.EnqueueTx(t.Context(), tx, compute.Job{Queue: fmt.Sprint("w", w)})
				if err != nil {
					t.Error(err)
					return
				}
				time.Sleep(time.Duration(r.IntN(3000)) * time.Microsecond) // overlap with other writers
				if r.IntN(5) == 0 {
					tx.Rollback(t.Context())
					rolledBack.Add(1)
					continue
				}
				if err := tx.Commit(t.Context()); err != nil {
					t.Error(err)
					return
				}
				committed.Store(id, true)
			}
		})
	}
	writers.Wait()
	want := 0
	committed.Range(func(any, any) bool { want++; return true })
	waitUntil(t, liveness, "the follower to catch up", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) >= want
	})
	cancel()
	follower.Wait()
	if !errors.Is(followErr, context.Canceled) {
		t.Errorf("Follow returned %v, want context.Canceled", followErr)
	}
	mu.Lock()
	defer mu.Unlock()
	for id, n := range seen {
		if _, ok := committed.Load(id); !ok {
			t.Errorf("event for job %s, which was rolled back", id)
		}
		if n != 1 {
			t.Errorf("job %s delivered %d times", id, n)
		}
	}
	if len(seen) != want || rolledBack.Load() == 0 {
		t.Fatalf("follower saw %d jobs, %d committed, %d rolled back", len(seen), want, rolledBack.Load())
	}
}

// TestWaitReturnsWhenJobFinishes checks Wait against a worker: it returns
// the finished job, woken by the journal's notification.
func TestWaitReturnsWhenJobFinishes(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	release := make(chan struct{})
	r := startWorker(t, q, compute.WorkerConfig{Queues: map[string]compute.QueueConfig{
		"wait": {Handler: func(ctx context.Context, job *compute.Job) ([]string, error) {
			<-release
			return []string{"result.txt"}, nil
		}},
	}})
	defer r.stop(t)
	id := enqueue(t, q, compute.Job{Queue: "wait"})
	done := make(chan *compute.Job, 1)
	go func() {
		job, err := q.Wait(t.Context(), id)
		if err != nil {
			t.Error(err)
		}
		done <- job
	}()
	awaitStatus(t, q, id, compute.StatusInProgress)
	select {
	case j := <-done:
		t.Fatalf("Wait returned while the job ran: %+v", j)
	default:
	}
	close(release)
	// TestJournalNotifiesOnlyWhileSomeoneListens checks the notification
	// itself; the listener's second wake, a second after it connects,
	// could also return Wait in time here.
	job := receive(t, done, 4*time.Second, "Wait to return after the job finished")
	if job.Status != compute.StatusComplete || !slices.Equal(job.OutputFiles, []string{"result.txt"}) {
		t.Fatalf("Wait returned %+v", job)
	}
	if _, err := q.Wait(t.Context(), compute.JobID{9}); !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("Wait for an unknown id: %v", err)
	}
	short, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	other := enqueue(t, q, compute.Job{Queue: "nobody-serves-this"})
	if _, err := q.Wait(short, other); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait past its deadline: %v", err)
	}
}

// TestCursorRoundTrip checks ParseCursor.
func TestCursorRoundTrip(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	enqueue(t, q, compute.Job{Queue: "c"})
	readUntil(t, q, 1)
	head, err := q.Head(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	back, err := compute.ParseCursor(head.String())
	if err != nil || back != head {
		t.Fatalf("ParseCursor(%q) = %v, %v", head, back, err)
	}
	if len(readAll(t, q, head)) != 0 {
		t.Error("events after Head")
	}
	for _, bad := range []string{"x", "1", "1.2", "1.x.3", "-1.2.3", "1.-2.3", "1.2.-3", "1.2.3.4"} {
		if _, err := compute.ParseCursor(bad); !errors.Is(err, compute.ErrInvalidOption) {
			t.Errorf("ParseCursor(%q) = %v", bad, err)
		}
	}
}

// TestJournalNotifiesOnlyWhileSomeoneListens: status changes send a
// compute_events notification only while a Wait or Follow listens (its
// Queue keeps the meta key journal_listened_until in the future). An
// expired or malformed key sends nothing and breaks nothing.
func TestJournalNotifiesOnlyWhileSomeoneListens(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	ctx := t.Context()
	conn, err := q.Pool().Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	mustExec(t, conn, `LISTEN compute_events`)
	// eventsNotified finishes one job and reports whether a compute_events
	// notification came.
	eventsNotified := func(queue string) bool {
		t.Helper()
		enqueue(t, q, compute.Job{Queue: queue})
		complete(t, q, claimOne(t, q, queue))
		return len(notifiedBeforeProbe(t, q, conn)) > 0
	}
	if eventsNotified("nobody") {
		t.Error("compute_events notified with nobody listening")
	}
	for _, bad := range []string{"1", "soon", "99999999999999999999"} {
		if err := q.SetMeta(ctx, "journal_listened_until", bad); err != nil {
			t.Fatal(err)
		}
		if eventsNotified("bad") {
			t.Errorf("compute_events notified with journal_listened_until = %q", bad)
		}
	}

	// A Wait on a job nobody runs starts the Queue's listener, which
	// announces itself.
	waitCtx, stopWait := context.WithCancel(ctx)
	waited := make(chan error, 1)
	go func() {
		_, err := q.Wait(waitCtx, enqueue(t, q, compute.Job{Queue: "never"}))
		waited <- err
	}()
	waitUntil(t, liveness, "the listener's announcement", func() bool {
		v, err := q.GetMeta(ctx, "journal_listened_until")
		return err == nil && v != "1" && v != "soon" && v != "99999999999999999999"
	})
	if !eventsNotified("heard") {
		t.Error("no compute_events notification while a Wait listens")
	}
	stopWait()
	if err := receive(t, waited, liveness, "Wait to end"); !errors.Is(err, context.Canceled) {
		t.Errorf("Wait ended with %v", err)
	}
}

// copyEvents writes journal rows as a copy of another cluster's journal
// would hold them (pg_dump and pg_restore, or a logical replica promoted):
// with transaction ids far above this server's counter. ahead[i] is the
// distance above it of row i's xid; rows are written in the order given,
// so their seq numbers rise in that order. It returns each row's job id.
func copyEvents(t *testing.T, q *compute.Queue, ahead ...int64) []compute.JobID {
	t.Helper()
	ids := make([]compute.JobID, len(ahead))
	next := queryOne[int64](t, q.Pool(), `SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint`)
	for i, d := range ahead {
		ids[i] = compute.JobID(uuid.New())
		mustExec(t, q.Pool(), `
			INSERT INTO compute.events (xid, queue, status, job_ids, attempts, at)
			VALUES ($1::text::xid8, 'copied', 'complete', ARRAY[$2::bytea], '{1}', now() - interval '1 hour')`,
			strconv.FormatInt(next+d, 10), ids[i][:])
	}
	return ids
}

// TestJournalCopiedFromAnotherClusterIsReportedAndRebased: after a logical
// copy of the database, the journal holds events whose transaction ids this
// server has not reached. Head, Events and Follow must say so with
// ErrJournalFromAnotherCluster instead of reading on as if nothing was
// there, and so must Events for a cursor of the other cluster. After
// RebaseJournal the copied events are readable, after the events this
// server wrote before it and in their old order, and nothing is reported.
func TestJournalCopiedFromAnotherClusterIsReportedAndRebased(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	ctx := t.Context()
	mine := enqueue(t, q, compute.Job{Queue: "mine"})
	readUntil(t, q, 1)
	// Old order (xid, seq): copied[1], copied[2], copied[0]; seq order differs.
	copied := copyEvents(t, q, 3_000_000_002, 3_000_000_001, 3_000_000_001)

	if head, err := q.Head(ctx); !errors.Is(err, compute.ErrJournalFromAnotherCluster) {
		t.Errorf("Head = %v, %v; want ErrJournalFromAnotherCluster", head, err)
	}
	if events, err := q.Events(ctx, compute.Cursor{}, 100); !errors.Is(err, compute.ErrJournalFromAnotherCluster) {
		t.Errorf("Events = %d events, %v; want ErrJournalFromAnotherCluster", len(events), err)
	}
	followed := 0
	followCtx, stop := context.WithTimeout(ctx, liveness)
	defer stop()
	err := q.Follow(followCtx, compute.Cursor{}, func(events []compute.Event) error {
		followed += len(events)
		if followed > 1 {
			return errors.New("read on past the copied events")
		}
		return nil
	})
	if !errors.Is(err, compute.ErrJournalFromAnotherCluster) || followed != 0 {
		t.Errorf("Follow got %d events and returned %v; want none and ErrJournalFromAnotherCluster", followed, err)
	}

	n, err := q.RebaseJournal(ctx)
	if err != nil || n != 3 {
		t.Fatalf("RebaseJournal = %d, %v; want 3 events", n, err)
	}
	after := enqueue(t, q, compute.Job{Queue: "after"})
	events := readUntil(t, q, 5)
	var got []compute.JobID
	for _, e := range events {
		got = append(got, e.JobID)
	}
	if want := []compute.JobID{mine, copied[1], copied[2], copied[0], after}; !slices.Equal(got, want) {
		t.Errorf("journal after the rebase: %v, want %v (this server's event, the copied ones in their order, the next one)", got, want)
	}
	if _, err := q.Head(ctx); err != nil {
		t.Errorf("Head after the rebase: %v", err)
	}
	if n, err := q.RebaseJournal(ctx); err != nil || n != 0 {
		t.Errorf("a second RebaseJournal = %d, %v; want 0, nil", n, err)
	}

	// A cursor saved on the other cluster stays meaningless.
	old, err := compute.ParseCursor("9000000000000.12.1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.Events(ctx, old, 100); !errors.Is(err, compute.ErrJournalFromAnotherCluster) {
		t.Errorf("Events after a cursor of another cluster: %v, want ErrJournalFromAnotherCluster", err)
	}
}

// TestWorkerWarnsAboutCopiedJournal: the journal purge cannot reach events
// copied from another cluster (they sort after every event this server
// writes), so a worker's maintenance round says so, and what to do.
func TestWorkerWarnsAboutCopiedJournal(t *testing.T) {
	t.Parallel()
	logs := &syncBuffer{warned: make(chan struct{})}
	q := newQueue(t, compute.WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	copyEvents(t, q, 3_000_000_000)
	r := startWorker(t, q, compute.WorkerConfig{
		Queues:              map[string]compute.QueueConfig{"x": {Handler: idle}},
		MaintenanceInterval: 20 * time.Millisecond,
	})
	defer r.stop(t)
	waitUntil(t, liveness, "a warning that names RebaseJournal", func() bool {
		return strings.Contains(logs.String(), "level=WARN") && strings.Contains(logs.String(), "RebaseJournal")
	})
}

// TestWaitAndFollowEndWhenQueueCloses: both return ErrClosed promptly.
func TestWaitAndFollowEndWhenQueueCloses(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	id := enqueue(t, q, compute.Job{Queue: "nobody"})
	waitErr, followErr := make(chan error, 1), make(chan error, 1)
	go func() { _, err := q.Wait(t.Context(), id); waitErr <- err }()
	go func() {
		followErr <- q.Follow(t.Context(), compute.Cursor{}, func([]compute.Event) error { return nil })
	}()
	time.Sleep(200 * time.Millisecond) // let both start waiting
	q.Close()
	for _, ch := range []chan error{waitErr, followErr} {
		if err := receive(t, ch, 3*time.Second, "a return after Close"); !errors.Is(err, compute.ErrClosed) {
			t.Errorf("after Close: %v, want ErrClosed", err)
		}
	}
}

// TestNotifyOffSilencesJournalNotifications: with MetaNotify off, status
// changes send no compute_events notification, even while a listener is
// announced (migration 7), and new jobs no compute_jobs one.
func TestNotifyOffSilencesJournalNotifications(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	ctx := t.Context()
	for key, value := range map[string]string{compute.MetaNotify: "off", "journal_listened_until": farFuture} {
		if err := q.SetMeta(ctx, key, value); err != nil {
			t.Fatal(err)
		}
	}
	conn, err := q.Pool().Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	mustExec(t, conn, `LISTEN compute_events; LISTEN compute_jobs`)
	enqueue(t, q, compute.Job{Queue: "quiet"})
	complete(t, q, claimOne(t, q, "quiet"))
	if got := notifiedBeforeProbe(t, q, conn); len(got) > 0 {
		t.Fatalf("notifications on %v with notify off", got)
	}
}

// TestJournalOffWritesNoEvents: MetaJournal off stops the journal, and
// turning it on again resumes it.
func TestJournalOffWritesNoEvents(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	ctx := t.Context()
	if err := q.SetMeta(ctx, compute.MetaJournal, "off"); err != nil {
		t.Fatal(err)
	}
	enqueue(t, q, compute.Job{Queue: "off"})
	complete(t, q, claimOne(t, q, "off"))
	if n := queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.events`); n != 0 {
		t.Fatalf("%d journal rows with the journal off", n)
	}
	if err := q.DeleteMeta(ctx, compute.MetaJournal); err != nil {
		t.Fatal(err)
	}
	enqueue(t, q, compute.Job{Queue: "on"})
	if n := queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.events`); n != 1 {
		t.Fatalf("%d journal rows after turning it back on, want 1", n)
	}
}

// farFuture is a journal_listened_until value (Unix seconds) that keeps the
// journal's notifications on for the whole test.
const farFuture = "99999999999"
