package compute

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
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
	q := openMigrated(t)
	if _, err := q.EnqueueMany(ctx, []Job{{Queue: "q"}, {Queue: "q"}}); err != nil {
		t.Fatal(err)
	}
	claimed, err := q.Claim(ctx, "q", 2)
	if err != nil || len(claimed) != 2 {
		t.Fatalf("claimed %d jobs (%v), want 2", len(claimed), err)
	}
	w, err := NewWorker(q, WorkerConfig{Queues: map[string]QueueConfig{
		"q": {Handler: func(context.Context, *Job) ([]string, error) { return nil, nil }},
	}})
	if err != nil {
		t.Fatal(err)
	}
	qs := w.queues["q"]
	for _, j := range claimed {
		w.running.add(j, func(error) {}, time.Now())
	}
	w.addUnwritten(qs, 2)
	for _, sql := range []string{
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
	} {
		if _, err := q.pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}

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
