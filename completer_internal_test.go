package compute

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// TestGatherKeepsTheGapAloneWithAFullBatch: a full batch (the worker's
// total Concurrency) lets a completer loop start a round beside another
// loop's round without waiting for it, but a loop alone keeps the rest of
// writeGap. Before, a full batch skipped the gap alone too: with
// Concurrency 4, each few outcomes were a round of their own.
func TestGatherKeepsTheGapAloneWithAFullBatch(t *testing.T) {
	w := &Worker{
		outcomes:  outcomeQueue{added: make(chan struct{}, 1)},
		wroteOne:  make(chan struct{}, 1),
		fullWrite: 1,
		writeGap:  100 * time.Millisecond,
	}
	w.outcomes.push(outcome{})
	const gap = 100 * time.Millisecond
	w.markRound()
	start := time.Now()
	w.gather(context.Background())
	if waited := time.Since(start); waited < gap {
		t.Errorf("alone with a full batch, gather returned after %s, want the rest of the gap (%s)", waited, gap)
	}

	w.writesInFlight.Store(1) // beside another round: a full batch goes at once
	w.markRound()
	start = time.Now()
	w.gather(context.Background())
	if waited := time.Since(start); waited >= overlapWait {
		t.Errorf("beside another round with a full batch, gather returned after %s, want at once", waited)
	}
}

// TestGatherKeepsTheGapFromARoundThatStartedMeanwhile: a loop that waits
// out writeGap counts it from the latest round's start, also one that the
// other loop started while it waited. Before, it kept the deadline it
// came in with, and wrote what finished during the other's round right
// after that round: two rounds a millisecond or two apart, under the
// light load the gap is for.
func TestGatherKeepsTheGapFromARoundThatStartedMeanwhile(t *testing.T) {
	const gap = 45 * time.Millisecond // under overlapWait, as writeGap is
	w := &Worker{
		outcomes:  outcomeQueue{added: make(chan struct{}, 1)},
		wroteOne:  make(chan struct{}, 1),
		fullWrite: 1000,
		writeGap:  gap,
	}
	w.markRound()
	returned := make(chan time.Time, 1)
	go func() {
		w.gather(context.Background())
		returned <- time.Now()
	}()
	// The other loop: a round of 5 ms, starting 25 ms in.
	time.Sleep(25 * time.Millisecond)
	started := time.Now()
	w.markRound()
	w.writesInFlight.Add(1)
	w.outcomes.push(outcome{})
	time.Sleep(5 * time.Millisecond)
	w.writesInFlight.Add(-1)
	signal(w.wroteOne)
	if since := (<-returned).Sub(started); since < gap-10*time.Millisecond {
		t.Errorf("gather returned %s after the other loop's round started, want the gap (%s)", since, gap)
	}
}

// TestWroteOKKeepsAnotherLoopsFailingStreak: with two completer loops, a
// round written by one must not end the streak of failed writes (Health's
// WritesFailing) while the other loop's round still fails and retries.
func TestWroteOKKeepsAnotherLoopsFailingStreak(t *testing.T) {
	w := &Worker{}
	w.health.failed(&w.health.writesFailing) // loop A's round fails...
	w.failingRounds.Add(1)                   // ...and is retried
	w.wroteOK()                              // loop B writes a round
	if w.health.writesFailing.Load() == 0 {
		t.Fatal("a round written beside a failing one ended the streak of failed writes")
	}
	w.failingRounds.Add(-1) // A's round is written at last
	w.wroteOK()
	if got := w.health.writesFailing.Load(); got != 0 {
		t.Fatalf("writes failing since %d after every round was written, want 0", got)
	}
}

// TestWriteRetriesOnlyWhatFailed: when a round's Complete commits and its
// Fail does not, the retry sends the Fail alone. Before, it sent the whole
// round again, and the second Complete found its jobs no longer in
// progress and logged their leases lost.
func TestWriteRetriesOnlyWhatFailed(t *testing.T) {
	ctx := t.Context()
	q, w, claimed := claimedWorker(t, 2)
	qs := w.queues["q"]
	w.addUnwritten(qs, 2)
	execAll(t, q,
		`CREATE SEQUENCE public.fail_tries`,
		`CREATE TABLE public.completes (rows bigint)`,
		// The first Fail statement fails (a sequence, unlike a table,
		// keeps its count when the statement rolls back).
		`CREATE FUNCTION public.fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF position('d.snooze' in current_query()) > 0 AND nextval('public.fail_tries') = 1 THEN
        RAISE EXCEPTION 'injected failure of the Fail statement';
    END IF;
    RETURN NULL;
END $$`,
		`CREATE TRIGGER fail_once BEFORE UPDATE ON compute.jobs FOR EACH STATEMENT EXECUTE FUNCTION public.fail_once()`,
		// Each Complete statement records how many rows it updated.
		`CREATE FUNCTION public.count_completes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF position('SET status = ''complete''' in current_query()) > 0 THEN
        INSERT INTO public.completes SELECT count(*) FROM new_rows;
    END IF;
    RETURN NULL;
END $$`,
		`CREATE TRIGGER count_completes AFTER UPDATE ON compute.jobs REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION public.count_completes()`,
	)

	batch := []outcome{{job: claimed[0], qs: qs}, {job: claimed[1], qs: qs, err: Permanent(errors.New("boom"))}}
	rest, _, err := w.write(batch)
	if err == nil || len(rest) != 1 || rest[0].job != claimed[1] {
		t.Fatalf("first write: %v with %d outcomes left, want the injected failure and the failed job's outcome alone", err, len(rest))
	}
	if w.running.knows(claimed[0]) || !w.running.holds(claimed[1]) {
		t.Errorf("after the first write: completed job known %v, failed job held %v; want forgotten and held",
			w.running.knows(claimed[0]), w.running.holds(claimed[1]))
	}
	if rest, _, err = w.write(rest); err != nil || len(rest) != 0 {
		t.Fatalf("retry: %v with %d outcomes left, want all written", err, len(rest))
	}
	var counts []int64
	rows, err := q.pool.Query(ctx, `SELECT rows FROM public.completes`)
	if err == nil {
		counts, err = pgx.CollectRows(rows, pgx.RowTo[int64])
	}
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(counts, []int64{1}) {
		t.Errorf("Complete statements updated %v rows, want one statement updating 1", counts)
	}
	for i, want := range []Status{StatusComplete, StatusFailed} {
		if got, err := q.Get(ctx, claimed[i].ID); err != nil || got.Status != want {
			t.Errorf("job %d: %v (%v), want %s", i, got.Status, err, want)
		}
	}
	if n := qs.unwritten.Load(); n != 0 {
		t.Errorf("%d outcomes still counted unwritten, want 0", n)
	}
}

// TestRenewalDoesNotLoseAJobWrittenMeanwhile: a job that finishes while a
// lease renewal is on its way, and whose Complete commits before the
// renewal reaches its row, is no longer the worker's in the database when
// the renewal gets there. That is not a lost lease: the renewal must not
// mark it lost (it counted in the lost-lease metric for jobs that
// completed normally, found in review once the renewal stopped waiting
// for the completer). Advisory locks that the test holds stop the
// renewal and the round's Fail at chosen points.
func TestRenewalDoesNotLoseAJobWrittenMeanwhile(t *testing.T) {
	ctx := t.Context()
	q, w, claimed := claimedWorker(t, 3)
	a, c := claimed[0], claimed[2]
	qs := w.queues["q"]
	execAll(t, q,
		`CREATE FUNCTION public.gate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF position('SET lease_expires = now() +' in current_query()) > 0 THEN
        PERFORM pg_advisory_lock(42); PERFORM pg_advisory_unlock(42);
    ELSIF position('d.snooze' in current_query()) > 0 THEN
        PERFORM pg_advisory_lock(43); PERFORM pg_advisory_unlock(43);
    END IF;
    RETURN NULL;
END $$`,
		`CREATE TRIGGER gate BEFORE UPDATE ON compute.jobs FOR EACH STATEMENT EXECUTE FUNCTION public.gate()`,
	)
	gates := holdAdvisoryLocks(t, q, 42, 43)
	renewed := make(chan struct{})
	go func() { // the renewal takes its list of all three, then waits at gate 42
		defer close(renewed)
		w.renew(ctx, 30*time.Second)
	}()
	waitAtGate(t, q, "the renewal", "%SET lease_expires = now() +%")
	w.running.markFinished(a)
	w.running.markFinished(c)
	w.addUnwritten(qs, 2)
	wrote := make(chan error, 1)
	go func() { // a's Complete commits; c's Fail waits at gate 43
		_, _, err := w.write([]outcome{{job: a, qs: qs}, {job: c, qs: qs, err: Permanent(errors.New("boom"))}})
		wrote <- err
	}()
	waitAtGate(t, q, "the round's Fail", "%d.snooze%")
	if got, err := q.Get(ctx, a.ID); err != nil || got.Status != StatusComplete {
		t.Fatalf("job a: %v (%v), want complete before the renewal goes on", got.Status, err)
	}
	if _, err := gates.Exec(ctx, `SELECT pg_advisory_unlock(42)`); err != nil {
		t.Fatal(err)
	}
	<-renewed
	w.running.mu.Lock()
	lostA := w.running.jobs[a.ID] != nil && w.running.jobs[a.ID].lost
	w.running.mu.Unlock()
	if _, err := gates.Exec(ctx, `SELECT pg_advisory_unlock(43)`); err != nil {
		t.Fatal(err)
	}
	if err := <-wrote; err != nil {
		t.Fatalf("write: %v", err)
	}
	if lostA {
		t.Error("the renewal marked lost a job the completer wrote while it was on its way")
	}
}

// TestRoundWrittenInPartsClearsTheWriteFailure: a round whose Complete
// commits and whose Fail fails, and whose retry then has nothing left to
// send (the failed job was claimed again meanwhile), was written: Health
// must show the write and no failing writes. Before, only the last
// attempt's statements counted, so the failure stayed in Health until
// another round wrote (found in review). Advisory lock 43 stops the Fail
// until the job is replaced.
func TestRoundWrittenInPartsClearsTheWriteFailure(t *testing.T) {
	ctx := t.Context()
	q, w, claimed := claimedWorker(t, 2)
	a, c := claimed[0], claimed[1]
	qs := w.queues["q"]
	for _, j := range claimed {
		w.running.markFinished(j)
	}
	w.addUnwritten(qs, 2)
	execAll(t, q,
		`CREATE SEQUENCE public.fail_tries`,
		`CREATE FUNCTION public.gate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF position('d.snooze' in current_query()) > 0 THEN
        PERFORM pg_advisory_lock(43); PERFORM pg_advisory_unlock(43);
        IF nextval('public.fail_tries') = 1 THEN
            RAISE EXCEPTION 'injected failure of the Fail statement';
        END IF;
    END IF;
    RETURN NULL;
END $$`,
		`CREATE TRIGGER gate BEFORE UPDATE ON compute.jobs FOR EACH STATEMENT EXECUTE FUNCTION public.gate()`,
	)
	gate := holdAdvisoryLocks(t, q, 43)
	written := make(chan bool, 1)
	go func() {
		written <- w.writeRound([]outcome{{job: a, qs: qs}, {job: c, qs: qs, err: Permanent(errors.New("boom"))}})
	}()
	waitAtGate(t, q, "the round's Fail", "%d.snooze%")
	// c is claimed again by this worker (a newer attempt), so the retry
	// has nothing of c's to write.
	again := *c
	again.Attempt++
	w.running.add(&again, func(error) {}, time.Now())
	if _, err := gate.Exec(ctx, `SELECT pg_advisory_unlock(43)`); err != nil {
		t.Fatal(err)
	}
	if !<-written {
		t.Fatal("writeRound gave up")
	}
	if h := w.Health(); h.LastWrite.IsZero() || !h.WritesFailing.IsZero() {
		t.Errorf("after a round written in parts: last write %v, writes failing since %v; want a write and no failure", h.LastWrite, h.WritesFailing)
	}
}

// waitAtGate waits until a statement whose text is like like waits for a
// lock (a test's advisory lock in a trigger).
func waitAtGate(t *testing.T, q *Queue, what, like string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		if err := q.pool.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1`, like).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never waited at its gate", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// claimedWorker opens a fresh queue, claims n jobs of queue "q" and makes a
// Worker of that queue, not running, that holds them (its running set has
// them), for tests that drive its parts.
func claimedWorker(t *testing.T, n int) (*Queue, *Worker, []*Job) {
	t.Helper()
	q := openMigrated(t)
	if _, err := q.EnqueueMany(t.Context(), slices.Repeat([]Job{{Queue: "q"}}, n)); err != nil {
		t.Fatal(err)
	}
	claimed, err := q.Claim(t.Context(), "q", n)
	if err != nil || len(claimed) != n {
		t.Fatalf("claimed %d jobs (%v), want %d", len(claimed), err, n)
	}
	w, err := NewWorker(q, WorkerConfig{Queues: map[string]QueueConfig{
		"q": {Handler: func(context.Context, *Job) ([]string, error) { return nil, nil }},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, j := range claimed {
		w.running.add(j, func(error) {}, time.Now())
	}
	return q, w, claimed
}

// execAll runs each statement on q's pool.
func execAll(t *testing.T, q *Queue, sqls ...string) {
	t.Helper()
	for _, sql := range sqls {
		if _, err := q.pool.Exec(t.Context(), sql); err != nil {
			t.Fatal(err)
		}
	}
}

// holdAdvisoryLocks takes session advisory locks on keys on a connection
// of its own, released with it at the test's end, and returns it.
func holdAdvisoryLocks(t *testing.T, q *Queue, keys ...int64) *pgxpool.Conn {
	t.Helper()
	conn, err := q.pool.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Release)
	for _, k := range keys {
		if _, err := conn.Exec(t.Context(), `SELECT pg_advisory_lock($1)`, k); err != nil {
			t.Fatal(err)
		}
	}
	return conn
}
