package compute_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/internal/testdb"
)

// pickedUpPromptly enqueues jobs one at a time into queue, each after the
// previous one ran, and requires each to reach the handler (which sends its
// id on ran) promptly.
func pickedUpPromptly(t *testing.T, q *compute.Queue, queue string, ran <-chan compute.JobID, n int) {
	t.Helper()
	for i := range n {
		id := enqueue(t, q, compute.Job{Queue: queue, Config: fmt.Sprint(i)})
		if got := receive(t, ran, promptly, fmt.Sprintf("job %d to be picked up", i)); got != id {
			t.Fatalf("handler got job %s, want %s", got, id)
		}
	}
}

// reportRun is a handler that sends each job's id on ran.
func reportRun(ran chan<- compute.JobID) compute.Handler {
	return func(ctx context.Context, job *compute.Job) ([]string, error) {
		ran <- job.ID
		return nil, nil
	}
}

func TestWorkerWakesOnNotificationWithoutPolling(t *testing.T) {
	t.Parallel()
	q := newQueue(t, withTestLog(t))
	ran := make(chan compute.JobID, 10)
	startWorker(t, q, compute.WorkerConfig{
		PollInterval: time.Minute,
		Queues:       map[string]compute.QueueConfig{"n": {Handler: reportRun(ran)}},
	})
	waitListener(t, q, 0)
	pickedUpPromptly(t, q, "n", ran, 3)
}

func TestWorkerFindsJobsByPollingWhenPollOnly(t *testing.T) {
	t.Parallel()
	q := newQueue(t, withTestLog(t))
	ran := make(chan compute.JobID, 10)
	startWorker(t, q, compute.WorkerConfig{
		PollOnly:     true,
		PollInterval: 200 * time.Millisecond,
		Queues:       map[string]compute.QueueConfig{"p": {Handler: reportRun(ran)}},
	})
	pickedUpPromptly(t, q, "p", ran, 3)
	if n := queryOne[int64](t, q.Pool(), `
		SELECT count(*) FROM pg_stat_activity
		WHERE datname = current_database() AND (query LIKE 'LISTEN%' OR query LIKE 'SELECT pg_notify(%')`); n != 0 {
		t.Errorf("%d LISTEN connections with PollOnly, want none", n)
	}
}

func TestWorkerFindsJobsByPollingWhenNotifyIsOff(t *testing.T) {
	t.Parallel()
	q := newQueue(t, withTestLog(t))
	if err := q.SetMeta(context.Background(), compute.MetaNotify, "off"); err != nil {
		t.Fatal(err)
	}
	ran := make(chan compute.JobID, 10)
	startWorker(t, q, compute.WorkerConfig{
		PollInterval: 200 * time.Millisecond,
		Queues:       map[string]compute.QueueConfig{"o": {Handler: reportRun(ran)}},
	})
	waitListener(t, q, 0)
	pickedUpPromptly(t, q, "o", ran, 3)
}

// listenJobs opens a connection of its own (closed at the test's end) that
// listens on compute_jobs.
func listenJobs(t *testing.T, connString string) *pgx.Conn {
	t.Helper()
	listen, err := pgx.Connect(context.Background(), connString)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { listen.Close(context.Background()) })
	mustExec(t, listen, `LISTEN compute_jobs`)
	return listen
}

// notificationsBefore sends sentinel on compute_jobs and returns the
// payloads listen receives before it. Postgres delivers the notifications
// of different transactions in commit order, so every notification of a
// statement that committed before the sentinel arrives before it: an empty
// result proves there was none.
func notificationsBefore(t *testing.T, listen *pgx.Conn, q *compute.Queue, sentinel string) []string {
	t.Helper()
	mustExec(t, q.Pool(), `SELECT pg_notify('compute_jobs', $1)`, sentinel)
	ctx, cancel := context.WithTimeout(context.Background(), liveness)
	defer cancel()
	var got []string
	for {
		n, err := listen.WaitForNotification(ctx)
		if err != nil {
			t.Fatalf("waiting for sentinel %q (got %q so far): %v", sentinel, got, err)
		}
		if n.Payload == sentinel {
			return got
		}
		got = append(got, n.Payload)
	}
}

// TestNotifyTriggerObeysSwitchAndSendsOnePerQueuePerStatement checks the
// insert trigger itself, so the queue's cooldown is as short as it goes:
// every statement notifies as far as the library is concerned.
func TestNotifyTriggerObeysSwitchAndSendsOnePerQueuePerStatement(t *testing.T) {
	t.Parallel()
	connString := testdb.New(t)
	q := openQueue(t, connString, compute.WithMigrate(), compute.WithNotifyCooldown(time.Nanosecond))
	ctx := context.Background()
	listen := listenJobs(t, connString)

	if got := notificationsBefore(t, listen, q, "warm-up"); len(got) != 0 {
		t.Fatalf("notifications before any insert: %q", got)
	}

	if err := q.SetMeta(ctx, compute.MetaNotify, "off"); err != nil {
		t.Fatal(err)
	}
	enqueue(t, q, compute.Job{Queue: "silent"})
	enqueueAll(t, q, slices.Repeat([]compute.Job{{Queue: "silent"}}, 10))
	if got := notificationsBefore(t, listen, q, "after-off"); len(got) != 0 {
		t.Errorf("with notify=off, inserts notified %q; want nothing", got)
	}

	if err := q.SetMeta(ctx, compute.MetaNotify, "on"); err != nil {
		t.Fatal(err)
	}
	enqueue(t, q, compute.Job{Queue: "single"})
	if got := notificationsBefore(t, listen, q, "after-single"); !slices.Equal(got, []string{"single"}) {
		t.Errorf("one insert notified %q, want [single]", got)
	}

	enqueueAll(t, q, slices.Repeat([]compute.Job{{Queue: "bulk"}}, 1000))
	if got := notificationsBefore(t, listen, q, "after-bulk"); !slices.Equal(got, []string{"bulk"}) {
		t.Errorf("a 1,000-job EnqueueMany notified %q, want [bulk] once", got)
	}

	var mixed []compute.Job
	for i := range 30 {
		mixed = append(mixed, compute.Job{Queue: []string{"a", "b", "c"}[i%3]})
	}
	enqueueAll(t, q, mixed)
	got := notificationsBefore(t, listen, q, "after-mixed")
	slices.Sort(got)
	if !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Errorf("a batch across queues a, b, c notified %q, want each queue once", got)
	}

	// Deleting the key turns notifications back on as well.
	if err := q.SetMeta(ctx, compute.MetaNotify, "off"); err != nil {
		t.Fatal(err)
	}
	if err := q.DeleteMeta(ctx, compute.MetaNotify); err != nil {
		t.Fatal(err)
	}
	enqueue(t, q, compute.Job{Queue: "again"})
	if got := notificationsBefore(t, listen, q, "after-delete"); !slices.Equal(got, []string{"again"}) {
		t.Errorf("after deleting the notify key an insert notified %q, want [again]", got)
	}
}

func TestListenerRecoversAfterItsConnectionIsKilled(t *testing.T) {
	t.Parallel()
	q := newQueue(t, withTestLog(t))
	ran := make(chan compute.JobID, 10)
	startWorker(t, q, compute.WorkerConfig{
		PollInterval: time.Minute,
		Queues:       map[string]compute.QueueConfig{"l": {Handler: reportRun(ran)}},
	})
	old := waitListener(t, q, 0)
	pickedUpPromptly(t, q, "l", ran, 1)

	if !queryOne[bool](t, q.Pool(), `SELECT pg_terminate_backend($1)`, old) {
		t.Fatalf("could not terminate the listener's backend %d", old)
	}
	waitListener(t, q, old)
	pickedUpPromptly(t, q, "l", ran, 3)
}

func TestListenerReconnectsPromptlyAfterManyHealthySessions(t *testing.T) {
	t.Parallel()
	// The reconnect backoff is for consecutive failures: a listener whose
	// connection was healthy, then cut (a proxy's idle timeout, a
	// failover), must come back as fast the tenth time as the first.
	q := newQueue(t, withTestLog(t))
	ran := make(chan compute.JobID, 10)
	startWorker(t, q, compute.WorkerConfig{
		PollInterval: time.Minute,
		Queues:       map[string]compute.QueueConfig{"l": {Handler: reportRun(ran)}},
	})
	pid := waitListener(t, q, 0)
	for i := range 10 {
		pickedUpPromptly(t, q, "l", ran, 1) // the session works
		if !queryOne[bool](t, q.Pool(), `SELECT pg_terminate_backend($1)`, pid) {
			t.Fatalf("could not terminate the listener's backend %d", pid)
		}
		begin := time.Now()
		old := pid
		waitUntil(t, promptly, fmt.Sprintf("the listener to come back after kill %d (each session before was healthy)", i+1), func() bool {
			var ok bool
			pid, ok = listenerPID(t, q, old)
			return ok
		})
		t.Logf("kill %d: listener back after %s", i+1, time.Since(begin).Round(time.Millisecond))
	}
}

// testCancelReachesHandler runs a job whose handler waits for its context
// to end, cancels the job, and checks that the handler is told and its
// result is not written over the cancellation.
func testCancelReachesHandler(t *testing.T, pollOnly bool) {
	// With notifications, a one-minute lease puts the first heartbeat 20 s
	// out, so only the notification can reach the handler in time. Polling
	// only, a 3 s lease makes a heartbeat every second.
	lease := time.Minute
	if pollOnly {
		lease = 3 * time.Second
	}
	q := newQueue(t, withTestLog(t), compute.WithLease(lease))
	started := make(chan struct{}, 1)
	cancelled := make(chan error, 1)
	r := startWorker(t, q, compute.WorkerConfig{
		PollOnly:     pollOnly,
		PollInterval: 100 * time.Millisecond,
		Queues: map[string]compute.QueueConfig{"c": {Handler: func(ctx context.Context, job *compute.Job) ([]string, error) {
			started <- struct{}{}
			<-ctx.Done()
			cancelled <- ctx.Err()
			return []string{"must-not-be-written"}, nil
		}}},
	})
	if !pollOnly {
		waitListener(t, q, 0)
	}
	id := enqueue(t, q, compute.Job{Queue: "c"})
	receive(t, started, liveness, "the handler to start")
	if err := q.Cancel(context.Background(), id, "stop this one"); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	if err := receive(t, cancelled, promptly, "the handler's context to be cancelled"); !errors.Is(err, context.Canceled) {
		t.Errorf("handler's ctx.Err() = %v, want Canceled", err)
	}
	r.stop(t) // every outcome is written now

	job := getJob(t, q, id)
	if job.Status != compute.StatusFailed || len(job.OutputFiles) != 0 {
		t.Fatalf("cancelled job: %s with outputs %q, want failed without outputs", job.Status, job.OutputFiles)
	}
	if len(job.Errors) != 1 || !strings.Contains(job.Errors[0].Error, "stop this one") {
		t.Errorf("want only the cancel reason recorded:%s", errorsText(job))
	}
}

func TestWorkerCancelReachesRunningHandlerByNotification(t *testing.T) {
	t.Parallel()
	testCancelReachesHandler(t, false)
}

func TestWorkerCancelReachesRunningHandlerByHeartbeatWhenPollOnly(t *testing.T) {
	t.Parallel()
	testCancelReachesHandler(t, true)
}

func TestWorkerRescuesExpiredJobOfDeadWorker(t *testing.T) {
	t.Parallel()
	connString := testdb.New(t)
	q := openQueue(t, connString, compute.WithMigrate(), withTestLog(t))
	dead := openQueue(t, connString, compute.WithWorkerID("dead-worker"))
	id := enqueue(t, q, compute.Job{Queue: "rq"})
	held := claimOne(t, dead, "rq") // then never heard of again

	startWorker(t, q, compute.WorkerConfig{
		MaintenanceInterval: 100 * time.Millisecond,
		PollInterval:        100 * time.Millisecond,
		Queues: map[string]compute.QueueConfig{"rq": {Handler: func(ctx context.Context, job *compute.Job) ([]string, error) {
			return []string{"rescued"}, nil
		}}},
	})
	mustExec(t, q.Pool(), `UPDATE compute.jobs SET lease_expires = now() - interval '1 second' WHERE job_id = $1`, id[:])

	job := awaitStatus(t, q, id, compute.StatusComplete, compute.StatusFailed)
	if job.Status != compute.StatusComplete || job.Attempt != 2 || job.Worker != q.WorkerID() || !slices.Equal(job.OutputFiles, []string{"rescued"}) {
		t.Fatalf("rescued job: %s at attempt %d by %q with outputs %q; want complete at attempt 2 by %q with [rescued]",
			job.Status, job.Attempt, job.Worker, job.OutputFiles, q.WorkerID())
	}
	if len(job.Errors) != 1 || !strings.Contains(job.Errors[0].Error, "dead-worker") {
		t.Errorf("want the dead worker's lease expiry recorded:%s", errorsText(job))
	}
	if err := dead.Complete(context.Background(), compute.Completion{Job: held}); !errors.Is(err, compute.ErrLeaseLost) {
		t.Errorf("the dead worker's late Complete = %v, want ErrLeaseLost", err)
	}
}

// TestInsertSwitchesAreIndependent: one trigger function (migration 8)
// journals and notifies inserts, and each meta switch turns off only its
// own half.
func TestInsertSwitchesAreIndependent(t *testing.T) {
	t.Parallel()
	connString := testdb.New(t)
	q := openQueue(t, connString, compute.WithMigrate())
	ctx := context.Background()
	listen := listenJobs(t, connString)
	events := func(queue string) int64 {
		return queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.events WHERE queue = $1 AND status = 'queued'`, queue)
	}

	if err := q.SetMeta(ctx, compute.MetaJournal, "off"); err != nil {
		t.Fatal(err)
	}
	enqueue(t, q, compute.Job{Queue: "unjournaled"})
	if got := notificationsBefore(t, listen, q, "journal-off"); !slices.Equal(got, []string{"unjournaled"}) {
		t.Errorf("with journal=off, an insert notified %q, want [unjournaled]", got)
	}
	if n := events("unjournaled"); n != 0 {
		t.Errorf("with journal=off, an insert wrote %d journal rows, want 0", n)
	}

	if err := q.DeleteMeta(ctx, compute.MetaJournal); err != nil {
		t.Fatal(err)
	}
	if err := q.SetMeta(ctx, compute.MetaNotify, "off"); err != nil {
		t.Fatal(err)
	}
	enqueue(t, q, compute.Job{Queue: "unnotified"})
	if got := notificationsBefore(t, listen, q, "notify-off"); len(got) != 0 {
		t.Errorf("with notify=off, an insert notified %q, want nothing", got)
	}
	if n := events("unnotified"); n != 1 {
		t.Errorf("with notify=off, an insert wrote %d journal rows, want 1", n)
	}
}
