// Package backoff holds the waits of the library's background loops: how
// long to wait before the next retry, and a sleep that a context ends.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Wait is the wait before retry number n (from 1) of a background loop:
// exponential from 100 ms up to limit, with jitter, so processes that lost
// the database together do not all come back in the same instant.
func Wait(n int, limit time.Duration) time.Duration {
	d := limit
	if n < 20 {
		d = min(100*time.Millisecond<<n, limit)
	}
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

// Sleep waits d or until ctx ends; it reports whether d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
