package compute

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/computeplatform/compute/internal/testdb"
)

// openHourlyWakeups opens a Queue on a new database whose notification
// cooldown and late-commit wait last an hour, so a test ends them by hand.
func openHourlyWakeups(t *testing.T) (*Queue, string) {
	t.Helper()
	connString := testdb.New(t)
	q, err := Open(t.Context(), connString, WithMigrate())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(q.Close)
	q.wakeups.mu.Lock()
	q.wakeups.cooldown, q.wakeups.lateAfter = time.Hour, time.Hour
	q.wakeups.mu.Unlock()
	return q, connString
}

// notifiedSince checks what a LISTEN session on compute_jobs received since
// the last check: it notifies itself mark and, since notifications arrive
// in commit order, what comes before mark is what step sent; it must be
// want, in any order.
func notifiedSince(t *testing.T, listen *pgx.Conn, step, mark string, want ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if _, err := listen.Exec(ctx, `SELECT pg_notify('compute_jobs', $1)`, mark); err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		n, err := listen.WaitForNotification(ctx)
		if err != nil {
			t.Fatalf("%s: waiting for %s (got %q): %v", step, mark, got, err)
		}
		if n.Payload == mark {
			break
		}
		got = append(got, n.Payload)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("%s notified %q, want %q", step, got, want)
	}
}

// TestSilentEnqueuesGetOneTrailingNotification walks the notification
// cooldown through its states with a period of an hour, so nothing depends
// on timing: the test ends a period by moving the queue's last
// notification back, and likewise the wait for a late commit. A separate LISTEN session counts the notifications;
// it notifies itself a sentinel after each step, and since notifications
// arrive in commit order, what came before the sentinel is exactly what
// the step sent. Not parallel: see TestCompleterDoesNotMakeAHeldBackFetcherWait.
func TestSilentEnqueuesGetOneTrailingNotification(t *testing.T) {
	ctx := t.Context()
	q, connString := openHourlyWakeups(t)
	w := q.wakeups
	listen, err := pgx.Connect(ctx, connString)
	if err != nil {
		t.Fatal(err)
	}
	defer listen.Close(context.Background())
	if _, err := listen.Exec(ctx, `LISTEN compute_jobs`); err != nil {
		t.Fatal(err)
	}
	sentinels := 0
	sent := func(step string, want ...string) {
		t.Helper()
		sentinels++
		notifiedSince(t, listen, step, "sentinel-"+string(rune('a'+sentinels)), want...)
	}
	owed := func() (owed, running bool) {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.owed["burst"], w.running
	}
	late := func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		_, ok := w.lateAt["burst"]
		return ok
	}
	// endPeriod ends the period, and with lateToo the wait for a late
	// commit too, so one notification answers both.
	endPeriod := func(lateToo bool) {
		w.mu.Lock()
		w.last["burst"] = time.Now().Add(-2 * time.Hour)
		if _, ok := w.lateAt["burst"]; ok && lateToo {
			w.lateAt["burst"] = time.Now().Add(-time.Hour)
		}
		kick := w.kick
		w.mu.Unlock()
		if kick != nil {
			select {
			case kick <- struct{}{}:
			default:
			}
		}
	}
	flushReturns := func() {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for _, running := owed(); running; _, running = owed() {
			if time.Now().After(deadline) {
				t.Fatal("the trailing notification's goroutine still runs with nothing owed")
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	if _, err := q.Enqueue(ctx, Job{Queue: "burst"}); err != nil {
		t.Fatal(err)
	}
	sent("the first enqueue", "burst")
	if o, r := owed(); o || r {
		t.Fatalf("after a notifying enqueue: owed %v, flush running %v; want neither", o, r)
	}
	// A statement is silent only if all its queues are: this one notifies
	// both.
	if _, err := q.EnqueueMany(ctx, []Job{{Queue: "burst"}, {Queue: "other"}}); err != nil {
		t.Fatal(err)
	}
	sent("an enqueue into burst and a new queue", "burst", "other")

	for range 9 {
		if _, err := q.Enqueue(ctx, Job{Queue: "burst"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := q.EnqueueMany(ctx, slices.Repeat([]Job{{Queue: "burst"}}, 5)); err != nil {
		t.Fatal(err)
	}
	// A unique job takes the transaction of three statements.
	if _, err := q.Enqueue(ctx, Job{Queue: "burst", Unique: Unique{Key: "once"}}); err != nil {
		t.Fatal(err)
	}
	// In the caller's transaction: the library's statement is silent, and
	// the caller's own INSERT after it notifies, as the trigger cleared the
	// setting.
	err = pgx.BeginFunc(ctx, q.Pool(), func(tx pgx.Tx) error {
		if _, err := q.EnqueueTx(ctx, tx, Job{Queue: "burst"}); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO compute.jobs (job_id, status, queue, input_files, created, last_accessed)
			VALUES (decode(md5(random()::text), 'hex'), 'queued', 'plain', '{}', now(), now())`)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	sent("16 enqueues within the period and a plain INSERT", "plain")
	if o, r := owed(); !o || !r || !late() {
		t.Fatalf("after silent enqueues: owed %v, flush running %v, late notification %v; want all", o, r, late())
	}

	endPeriod(true)
	flushReturns() // it returns once the notification is committed
	sent("the end of the period", "burst")
	if late() {
		t.Error("the late notification is still owed after one went out past its time")
	}

	// A caller's transaction that commits after the period's notification
	// gets the late one.
	tx, err := q.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := q.EnqueueTx(ctx, tx, Job{Queue: "burst"}); err != nil {
		t.Fatal(err)
	}
	endPeriod(false)
	waitCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	n, err := listen.WaitForNotification(waitCtx)
	cancel()
	if err != nil || n.Payload != "burst" {
		t.Fatalf("the period's notification: %v %v", n, err)
	}
	if !late() {
		t.Fatal("no late notification owed while the transaction is open")
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	endPeriod(true)
	flushReturns()
	sent("the late notification", "burst")

	// The period's end by the timer: a 50 ms period that has just begun.
	if _, err := q.Enqueue(ctx, Job{Queue: "burst"}); err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	w.cooldown = 50 * time.Millisecond
	w.last["burst"] = time.Now()
	kick := w.kick
	w.mu.Unlock()
	select {
	case kick <- struct{}{}:
	default:
	}
	flushReturns()
	sent("a period's end by the timer", "burst")
	w.mu.Lock()
	w.cooldown = time.Hour
	w.mu.Unlock()

	// The trailing notification opened a new period: silent again. With
	// notify=off the trailing one is not sent either.
	if err := q.SetMeta(ctx, MetaNotify, "off"); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Enqueue(ctx, Job{Queue: "burst"}); err != nil {
		t.Fatal(err)
	}
	endPeriod(true)
	flushReturns()
	sent("a period's end with notify=off")
	if err := q.SetMeta(ctx, MetaNotify, "on"); err != nil {
		t.Fatal(err)
	}

	// Close sends what is owed at once.
	w.mu.Lock()
	w.last["burst"] = time.Now()
	w.mu.Unlock()
	if _, err := q.Enqueue(ctx, Job{Queue: "burst"}); err != nil {
		t.Fatal(err)
	}
	if o, _ := owed(); !o {
		t.Fatal("an enqueue within the period owes no notification")
	}
	q.Close()
	sent("Close", "burst")
	if o, r := owed(); o || r || late() {
		t.Fatalf("after Close: owed %v, flush running %v, late notification %v; want none", o, r, late())
	}

	var jobs int
	if err := listen.QueryRow(ctx, `SELECT count(*) FROM compute.jobs WHERE queue = 'burst'`).Scan(&jobs); err != nil {
		t.Fatal(err)
	}
	if jobs != 22 {
		t.Errorf("%d jobs in queue burst, want the 22 enqueued", jobs)
	}
}

// TestCloseWaitsForASilentEnqueueInFlight holds a silent enqueue inside its
// INSERT (another session locks compute.jobs) while Close runs: Close must
// wait for it and then send its trailing notification. A Close that did not
// wait would return at once, with nothing owed yet, close the pool, and the
// enqueue's notification would be lost. Not parallel: see
// TestCompleterDoesNotMakeAHeldBackFetcherWait.
func TestCloseWaitsForASilentEnqueueInFlight(t *testing.T) {
	ctx := t.Context()
	q, connString := openHourlyWakeups(t)
	w := q.wakeups
	connect := func() *pgx.Conn {
		conn, err := pgx.Connect(ctx, connString)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		return conn
	}
	listen, blocker := connect(), connect()
	if _, err := listen.Exec(ctx, `LISTEN compute_jobs`); err != nil {
		t.Fatal(err)
	}
	// The first enqueue notifies and opens an hour-long period.
	if _, err := q.Enqueue(ctx, Job{Queue: "held"}); err != nil {
		t.Fatal(err)
	}
	if n, err := listen.WaitForNotification(ctx); err != nil || n.Payload != "held" {
		t.Fatalf("first enqueue: notification %v, %v; want one for queue held", n, err)
	}

	tx, err := blocker.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, `LOCK TABLE compute.jobs IN SHARE ROW EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	enqueued := make(chan error, 1)
	go func() {
		_, err := q.Enqueue(ctx, Job{Queue: "held"})
		enqueued <- err
	}()
	// Wait until the enqueue is silent and waits for the lock.
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor("the silent enqueue to wait for the table lock", func() bool {
		w.mu.Lock()
		pending := w.pending
		w.mu.Unlock()
		var waiting int
		err := listen.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO compute.jobs%'`).Scan(&waiting)
		return err == nil && pending == 1 && waiting == 1
	})

	closed := make(chan struct{})
	go func() {
		defer close(closed)
		q.Close()
	}()
	waitFor("Close to begin", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.closed
	})
	select {
	case <-closed:
		t.Fatal("Close returned while a silent enqueue was still in its statement")
	default:
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-enqueued; err != nil {
		t.Fatalf("the held enqueue: %v", err)
	}
	<-closed

	// The held enqueue's trailing notification came, after Close's start.
	notifiedSince(t, listen, "Close with a silent enqueue in flight", "sentinel", "held")
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.running || w.pending != 0 || len(w.owed) != 0 {
		t.Errorf("after Close: flush running %v, pending %d, owed %v; want none", w.running, w.pending, w.owed)
	}
}
