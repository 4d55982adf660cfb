package compute

import "math"

// A queue's rules (QueueSettings) are decided here, for the claim and for
// Explain alike: whether a queue has any (the fast claim's gate, hasRules),
// whether its claims step through partition keys (keyed), how many jobs the
// queue-wide rules let start (room), and which rules hold a job back
// (holding). What a rule counts comes from the database: running jobs by
// status, starts from compute.starts within the rate period. The per-key
// budget of a keyed claim is computed in claimKeyedSQL from the same
// settings. A new rule is added to QueueSettings and compute.queues (a
// migration), here, and, when it binds per key, to claimKeyedSQL.

// hasRules is the fast claim's gate on the row s of compute.queues: a
// queue with any of these settings takes the gated claim.
const hasRules = `(s.paused OR s.fair OR s.max_running IS NOT NULL OR s.key_max_running IS NOT NULL
     OR s.rate_limit IS NOT NULL OR s.key_rate_limit IS NOT NULL)`

// usage is what rules are measured against, for a queue or for one of its
// partition keys: jobs in progress, and starts within the rate period.
type usage struct{ running, started int }

// keyed reports whether claims must step through partition keys.
func (s QueueSettings) keyed() bool { return s.Fair || s.KeyMaxRunning > 0 || s.KeyRateLimit > 0 }

// room is how many more jobs the queue-wide rules let start now, given the
// queue's usage: MaxRunning less those running, RateLimit less the starts
// in the period; math.MaxInt when neither is set, and 0 when paused.
func (s QueueSettings) room(queue usage) int {
	n := math.MaxInt
	if s.Paused {
		return 0
	}
	if s.MaxRunning > 0 {
		n = min(n, s.MaxRunning-queue.running)
	}
	if s.RateLimit > 0 {
		n = min(n, s.RateLimit-queue.started)
	}
	return max(n, 0)
}

// holding lists the rules that keep a queued job of the queue from
// starting now, given the queue's usage and its partition key's: the
// ReasonKinds of Explain, in a fixed order.
func (s QueueSettings) holding(queue, key usage) []ReasonKind {
	var held []ReasonKind
	if s.Paused {
		held = append(held, ReasonPaused)
	}
	if s.MaxRunning > 0 && queue.running >= s.MaxRunning {
		held = append(held, ReasonQueueCap)
	}
	if s.KeyMaxRunning > 0 && key.running >= s.KeyMaxRunning {
		held = append(held, ReasonKeyCap)
	}
	if s.RateLimit > 0 && queue.started >= s.RateLimit {
		held = append(held, ReasonQueueRate)
	}
	if s.KeyRateLimit > 0 && key.started >= s.KeyRateLimit {
		held = append(held, ReasonKeyRate)
	}
	return held
}
