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
	}
	w.outcomes.push(outcome{})
	const gap = 100 * time.Millisecond
	start := time.Now()
	w.gather(context.Background(), gap)
	if waited := time.Since(start); waited < gap {
		t.Errorf("alone with a full batch, gather returned after %s, want the rest of the gap (%s)", waited, gap)
	}

	w.writesInFlight.Store(1) // beside another round: a full batch goes at once
	start = time.Now()
	w.gather(context.Background(), gap)
	if waited := time.Since(start); waited >= overlapWait {
		t.Errorf("beside another round with a full batch, gather returned after %s, want at once", waited)
	}
}
