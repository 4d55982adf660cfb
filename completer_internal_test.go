package compute

import (
	"context"
	"testing"
	"time"
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
