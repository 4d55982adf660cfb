package compute

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff is the default wait before attempt+1 after a failed attempt:
// exponential from 1 s (1, 2, 4, ... s), capped at 1 hour, with up to 25%
// random jitter so failures of many jobs at once do not retry in lockstep.
func Backoff(attempt int) time.Duration {
	if attempt < 1 {
		attempt = 1
	}
	d := time.Hour
	if attempt <= 12 {
		d = min(time.Duration(1<<(attempt-1))*time.Second, time.Hour)
	}
	return d + time.Duration(rand.Int64N(int64(d/4)+1))
}

// backoffWait is the wait before retry number n (from 1) of a background
// loop: exponential from 100 ms up to limit, with jitter, so processes that
// lost the database together do not all come back in the same instant.
func backoffWait(n int, limit time.Duration) time.Duration {
	d := limit
	if n < 20 {
		d = min(100*time.Millisecond<<n, limit)
	}
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
