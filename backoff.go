package compute

import (
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
