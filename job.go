package compute

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// JobID identifies a job: 16 bytes, stored in compute.jobs.job_id. By default
// it is a UUIDv7 (random, ordered by creation time); a job enqueued with
// ContentID set gets an id derived from its queue, config and input files.
type JobID [16]byte

// String formats the id as a UUID (8-4-4-4-12 hexadecimal digits).
func (id JobID) String() string { return uuid.UUID(id).String() }

// ParseJobID parses the output of [JobID.String] (or 32 hexadecimal digits).
// It returns an error matching [ErrInvalidJob] when s is neither.
func ParseJobID(s string) (JobID, error) {
	if len(s) == 32 {
		var id JobID
		if _, err := hex.Decode(id[:], []byte(s)); err == nil {
			return id, nil
		}
	}
	u, err := uuid.Parse(s)
	if err != nil || len(s) != 36 {
		return JobID{}, fmt.Errorf("%w: %q is not a job id; use the 36-character form JobID.String returns", ErrInvalidJob, s)
	}
	return JobID(u), nil
}

// newJobID returns a fresh UUIDv7.
func newJobID() (JobID, error) {
	u, err := uuid.NewV7()
	if err != nil {
		return JobID{}, fmt.Errorf("compute: generate job id: %w", err)
	}
	return JobID(u), nil
}

// contentJobID derives a job id from what the job is: the same queue, config
// and input files, in the same order, always give the same id. Files are
// not sorted: the order is part of the job its handler sees, and sorting
// now would change the id of every stored job with files out of order. It is the first 16 bytes of a
// SHA-256 over length-prefixed fields (so no two field splits collide), with
// the UUID version 8 and variant bits set so the id is still a valid UUID.
func contentJobID(queue, config string, inputFiles []string) JobID {
	h := sha256.New()
	field := func(s string) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	field("compute.job.v1")
	field(queue)
	field(config)
	for _, f := range inputFiles {
		field(f)
	}
	var id JobID
	copy(id[:], h.Sum(nil))
	id[6] = id[6]&0x0f | 0x80 // version 8: custom
	id[8] = id[8]&0x3f | 0x80 // RFC 9562 variant
	return id
}

// Status is a job's state, as stored in compute.jobs.status.
type Status string

// The five statuses of the schema contract. Queued and in-progress jobs are
// live; complete, failed and expired are terminal.
const (
	StatusQueued     Status = "queued"
	StatusInProgress Status = "in-progress"
	StatusComplete   Status = "complete"
	StatusFailed     Status = "failed"
	StatusExpired    Status = "expired"
)

// Job is a unit of work. On enqueue the caller sets Queue, Config, InputFiles
// and, optionally, Priority, RunAt or Delay, MaxAttempts, PartitionKey,
// TraceContext, and ContentID or Unique; every other field is set by the queue and ignored on
// enqueue.
type Job struct {
	// Queue names the queue: 1 to 32 characters from a-z, A-Z, 0-9, '_',
	// '-' and '.', starting with a letter or digit.
	Queue string
	// Config is the job's payload, usually JSON; at most the queue's
	// maximum config size (1 MiB by default), valid UTF-8, no NUL bytes.
	Config string
	// InputFiles names the files the job reads: each non-empty, valid
	// UTF-8 without NUL bytes, no name twice. May be empty.
	InputFiles []string
	// Priority orders the claim: smaller runs first; default 0; it must
	// fit in an int16.
	Priority int
	// RunAt, when set, is the earliest time the job may run.
	RunAt time.Time
	// Delay, when RunAt is zero, makes the job wait this long after it is
	// enqueued (the database's clock at the enqueue statement, also inside
	// a longer transaction) before it may run.
	Delay time.Duration
	// MaxAttempts caps the attempts the job may spend: every start counts,
	// rescues of a dead worker's attempt included, but a Snooze or a
	// stopping worker's hand-back does not (see Spent); 0 means
	// DefaultMaxAttempts.
	MaxAttempts int
	// ContentID asks for an id derived from Queue, Config and InputFiles:
	// enqueuing the same job again returns the existing job's id and
	// creates nothing, whatever that job's status. Config is hashed byte
	// for byte and InputFiles in the order given (the order a handler
	// sees them in), so the same files in another order, or JSON with
	// other spacing, make another job; sort the files first when their
	// order means nothing to the queue's handler.
	ContentID bool
	// Unique, when its Key is set, makes Enqueue skip the job if an
	// earlier job of the same queue has the same key within the scope, and
	// return that job's id instead (Submit also reports it). It cannot be
	// combined with ContentID.
	Unique Unique
	// PartitionKey names the tenant (customer, account) the job belongs
	// to. Queues with per-key limits or fair claims (SetQueueSettings)
	// count and rotate by it; elsewhere it is only stored. At most 256
	// bytes; empty means none.
	PartitionKey string
	// TraceContext is the trace context of the code that enqueued the job
	// (a propagator's carrier: W3C traceparent and tracestate), so that
	// the spans of its attempts can link to the producer's span. On
	// enqueue it is usually left nil and filled by the Observer's
	// TraceEnqueue; one set by the caller wins, and must be at most 1 KiB
	// as a JSON object, of storable text (no NUL, valid UTF-8), or the
	// enqueue fails with [ErrInvalidJob]. A read job has nil when it was
	// enqueued without one (by plain SQL, say) or the stored value is not
	// a JSON object of strings.
	TraceContext map[string]string

	// ID identifies the job.
	ID JobID
	// Status is the job's state when it was read.
	Status Status
	// Attempt counts the claims so far, including the current one. It
	// never goes down: with ID and Worker it identifies a claim.
	Attempt int
	// Snoozes counts the claims that spent no attempt: those that ended in
	// a Snooze, or were handed back by a stopping worker. Attempt minus
	// Snoozes is the attempts the job has spent, which is what MaxAttempts,
	// QueueConfig.MaxAttempts and the backoff count.
	Snoozes int
	// Worker names the worker that holds (or last held) the job.
	Worker string
	// LeaseExpires is when the holder's lease runs out; zero when nobody
	// holds the job.
	LeaseExpires time.Time
	// Created, LastAccessed, Grabbed and Finished are the contract's
	// timestamps, all from the database clock; Grabbed and Finished are
	// zero until set.
	Created, LastAccessed, Grabbed, Finished time.Time
	// OutputFiles are the files a complete job produced.
	OutputFiles []string
	// Errors holds one entry per failed attempt, oldest first.
	Errors []AttemptError

	// bad is set when the row holds a value the library cannot take (see
	// scanJob): such a job is failed at its claim and never run.
	bad *BadRowError
}

// Spent returns the attempts the job has spent, counting the current one
// while it runs: Attempt minus Snoozes.
func (j *Job) Spent() int { return j.Attempt - j.Snoozes }

// Unique asks Enqueue to skip a job that duplicates an earlier one: one with
// the same queue and Key within Scope. Concurrent submitters of the same key,
// in one process or many, create one job between them.
type Unique struct {
	// Key identifies the work, for example "invoice:42"; at most 256
	// bytes. Empty means the job is not unique.
	Key string
	// Scope says which earlier jobs count; the default is
	// UniqueWhileActive.
	Scope UniqueScope
	// Window is the time UniqueWithinWindow looks back from the enqueue
	// (the database's clock at the enqueue statement; a job's created is
	// the same clock at its own enqueue, not at its transaction's commit);
	// required for that scope, ignored by the others.
	Window time.Duration
}

// UniqueScope says which earlier jobs with the same unique key make a new
// one a duplicate.
type UniqueScope int

const (
	// UniqueWhileActive: a queued or in-progress job with the key.
	UniqueWhileActive UniqueScope = iota
	// UniqueWhileQueued: a queued job with the key; once it runs, the key
	// may be enqueued again.
	UniqueWhileQueued
	// UniqueWithinWindow: any job with the key created within Window,
	// whatever its status.
	UniqueWithinWindow
)

// DefaultMaxAttempts is the number of attempts a job gets when neither the
// job nor the inserting program says otherwise (the column's default).
const DefaultMaxAttempts = 25

// AttemptError records why one attempt of a job failed.
type AttemptError struct {
	Attempt int       `json:"attempt"`
	At      time.Time `json:"at"`
	Error   string    `json:"error"`
}
