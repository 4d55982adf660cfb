package compute_test

import (
	"context"
	"errors"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/computeplatform/compute"
)

// producerTrace is the carrier the tracer below hands out at enqueue.
var producerTrace = map[string]string{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}

// tracer is an Observer's trace hooks that record what they are told.
type tracer struct {
	mu       sync.Mutex
	carrier  map[string]string // what TraceEnqueue returns
	enqueues []int             // batch sizes
	ends     []error           // TraceEnqueue's end calls
	attempts []tracedAttempt
}

type tracedAttempt struct {
	job      compute.JobID
	attempt  int
	carrier  map[string]string
	outcome  compute.Outcome
	err      error
	ended    bool
	ctxValue any // what the handler's context carried
}

type spanKey struct{}

func (tr *tracer) observer() *compute.Observer {
	return &compute.Observer{
		TraceEnqueue: func(_ context.Context, jobs []compute.Job) (map[string]string, func(error)) {
			tr.mu.Lock()
			defer tr.mu.Unlock()
			tr.enqueues = append(tr.enqueues, len(jobs))
			return tr.carrier, func(err error) {
				tr.mu.Lock()
				defer tr.mu.Unlock()
				tr.ends = append(tr.ends, err)
			}
		},
		TraceAttempt: func(ctx context.Context, job *compute.Job) (context.Context, func(compute.Outcome, error)) {
			tr.mu.Lock()
			defer tr.mu.Unlock()
			i := len(tr.attempts)
			tr.attempts = append(tr.attempts, tracedAttempt{job: job.ID, attempt: job.Attempt, carrier: job.TraceContext})
			return context.WithValue(ctx, spanKey{}, i), func(o compute.Outcome, err error) {
				tr.mu.Lock()
				defer tr.mu.Unlock()
				tr.attempts[i].outcome, tr.attempts[i].err, tr.attempts[i].ended = o, err, true
			}
		},
	}
}

// seen records, from a handler, the span value its context carried.
func (tr *tracer) seen(ctx context.Context) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if i, ok := ctx.Value(spanKey{}).(int); ok {
		tr.attempts[i].ctxValue = i
	}
}

// TestTraceContextTravelsWithJob enqueues a job under a traced Observer and
// works it twice (the first attempt fails): the carrier TraceEnqueue gave is
// stored with the job, read back by Get and by each claim, handed to
// TraceAttempt, whose context reaches the handler, and each attempt ends with
// its outcome and the handler's error. A job inserted with plain SQL, as a
// v1 producer does, has no trace context and is traced and worked all the same.
func TestTraceContextTravelsWithJob(t *testing.T) {
	t.Parallel()
	tr := &tracer{carrier: producerTrace}
	q := newQueue(t, compute.WithObserver(tr.observer()))
	id := enqueue(t, q, compute.Job{Queue: "q"})
	if got := getJob(t, q, id).TraceContext; !maps.Equal(got, producerTrace) {
		t.Fatalf("stored trace context %v, want %v", got, producerTrace)
	}
	stored := queryOne[string](t, q.Pool(), `SELECT trace_context::text FROM compute.jobs WHERE job_id = $1`, id[:])
	if !strings.Contains(stored, producerTrace["traceparent"]) {
		t.Errorf("trace_context column holds %s", stored)
	}
	mustExec(t, q.Pool(), `INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed)
		VALUES (decode(md5('plain'), 'hex'), 'queued', 'q', '{}', '{}', now(), now())`)

	failed := errors.New("first attempt fails")
	var mu sync.Mutex
	runs := map[compute.JobID]int{}
	w := startWorker(t, q, compute.WorkerConfig{PollInterval: 50 * time.Millisecond, Queues: map[string]compute.QueueConfig{
		"q": {Backoff: quickBackoff, Handler: func(ctx context.Context, job *compute.Job) ([]string, error) {
			tr.seen(ctx)
			mu.Lock()
			defer mu.Unlock()
			runs[job.ID]++
			if job.ID == id && runs[job.ID] == 1 {
				return nil, failed
			}
			return nil, nil
		}},
	}})
	awaitStatus(t, q, id, compute.StatusComplete)
	var plain compute.JobID
	copy(plain[:], queryOne[[]byte](t, q.Pool(), `SELECT decode(md5('plain'), 'hex')`))
	awaitStatus(t, q, plain, compute.StatusComplete)
	w.stop(t)

	tr.mu.Lock()
	defer tr.mu.Unlock()
	if len(tr.enqueues) != 1 || tr.enqueues[0] != 1 || len(tr.ends) != 1 || tr.ends[0] != nil {
		t.Errorf("TraceEnqueue calls %v, ends %v; want one of 1 job, ended without error", tr.enqueues, tr.ends)
	}
	var ofJob []tracedAttempt
	for _, a := range tr.attempts {
		if !a.ended || a.ctxValue == nil {
			t.Errorf("attempt %d of %s: ended %t, handler saw the traced context %t", a.attempt, a.job, a.ended, a.ctxValue != nil)
		}
		switch a.job {
		case id:
			ofJob = append(ofJob, a)
		case plain:
			if a.carrier != nil || a.outcome != compute.OutcomeComplete {
				t.Errorf("plain SQL job: carrier %v outcome %s, want none and complete", a.carrier, a.outcome)
			}
		}
	}
	if len(ofJob) != 2 {
		t.Fatalf("traced attempts of the job: %+v, want 2", ofJob)
	}
	for i, want := range []struct {
		outcome compute.Outcome
		err     error
	}{{compute.OutcomeRetry, failed}, {compute.OutcomeComplete, nil}} {
		a := ofJob[i]
		if a.attempt != i+1 || a.outcome != want.outcome || !errors.Is(a.err, want.err) || (want.err == nil) != (a.err == nil) || !maps.Equal(a.carrier, producerTrace) {
			t.Errorf("attempt %d: %+v, want attempt %d, outcome %s, error %v, carrier %v", i+1, a, i+1, want.outcome, want.err, producerTrace)
		}
	}
}

// TestTraceContextRules checks which carrier a job gets: the Observer's for
// each job of a batch (one TraceEnqueue call), the job's own when the caller
// set one, none when the Observer's is too large (dropped: the job is still
// enqueued), and an error when the caller's is too large or not storable.
// A value plain SQL wrote that is not an object of strings reads as none and
// does not keep the job from being claimed.
func TestTraceContextRules(t *testing.T) {
	t.Parallel()
	tr := &tracer{carrier: producerTrace}
	q := newQueue(t, compute.WithObserver(tr.observer()))
	own := map[string]string{"traceparent": "00-11111111111111111111111111111111-2222222222222222-01", "tracestate": "a=b"}
	ids := enqueueAll(t, q, []compute.Job{{Queue: "q"}, {Queue: "q", TraceContext: own}, {Queue: "q"}})
	for i, want := range []map[string]string{producerTrace, own, producerTrace} {
		if got := getJob(t, q, ids[i]).TraceContext; !maps.Equal(got, want) {
			t.Errorf("job %d of the batch: trace context %v, want %v", i, got, want)
		}
	}
	if len(tr.enqueues) != 1 || tr.enqueues[0] != 3 {
		t.Errorf("TraceEnqueue calls %v, want one for 3 jobs", tr.enqueues)
	}

	big := map[string]string{"traceparent": producerTrace["traceparent"], "baggage": strings.Repeat("k=v,", 300)}
	for name, carrier := range map[string]map[string]string{"too large": big, "NUL": {"traceparent": "a\x00b"}, "bad UTF-8": {"x": "\xff"}} {
		_, err := q.Enqueue(context.Background(), compute.Job{Queue: "q", TraceContext: carrier})
		if !errors.Is(err, compute.ErrInvalidJob) || !strings.Contains(err.Error(), "trace context") {
			t.Errorf("%s carrier set by the caller: %v, want ErrInvalidJob naming the trace context", name, err)
		}
	}
	tr.mu.Lock()
	tr.carrier = big
	tr.mu.Unlock()
	id := enqueue(t, q, compute.Job{Queue: "q"})
	if got := getJob(t, q, id).TraceContext; got != nil {
		t.Errorf("an Observer's carrier over 1 KiB was stored: %d entries", len(got))
	}
	if n := queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.jobs WHERE job_id = $1 AND trace_context IS NULL`, id[:]); n != 1 {
		t.Errorf("the job with a dropped carrier has a trace_context")
	}

	mustExec(t, q.Pool(), `DELETE FROM compute.jobs`)
	mustExec(t, q.Pool(), `INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed, trace_context)
		VALUES (decode(md5('odd-trace'), 'hex'), 'queued', 'q', '{}', '{}', now(), now(), '[1, {"a": 2}]')`)
	job := claimOne(t, q, "q")
	if job.TraceContext != nil {
		t.Errorf("a trace_context that is not an object of strings read as %v, want nil", job.TraceContext)
	}
}
