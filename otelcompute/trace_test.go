package otelcompute_test

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/computetest"
	"github.com/computeplatform/compute/otelcompute"
)

// traced is a Queue whose Observer records spans in memory.
type traced struct {
	q        *compute.Queue
	spans    *tracetest.SpanRecorder
	provider *sdktrace.TracerProvider
	mu       sync.Mutex
	seen     map[compute.JobID][]trace.SpanContext // what each attempt's handler saw
}

func newTraced(t *testing.T) *traced {
	tr := &traced{spans: tracetest.NewSpanRecorder(), seen: map[compute.JobID][]trace.SpanContext{}}
	tr.provider = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(tr.spans))
	t.Cleanup(func() { _ = tr.provider.Shutdown(context.Background()) })
	obs, err := otelcompute.NewObserver(nil, otelcompute.WithTracerProvider(tr.provider),
		otelcompute.WithPropagator(propagation.TraceContext{}))
	if err != nil {
		t.Fatal(err)
	}
	tr.q = computetest.NewQueue(t, compute.WithObserver(obs))
	return tr
}

// handler fails the first attempt of fail and records the span context
// each attempt's handler saw.
func (tr *traced) handler(fail compute.JobID) compute.Handler {
	return func(ctx context.Context, job *compute.Job) ([]string, error) {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		tr.seen[job.ID] = append(tr.seen[job.ID], trace.SpanContextFromContext(ctx))
		if job.ID == fail && len(tr.seen[job.ID]) == 1 {
			return nil, errors.New("first attempt fails")
		}
		return nil, nil
	}
}

// TestTraceOfAJob enqueues a job inside a request's span and works it
// twice (the first attempt fails), with a Worker and with computetest's
// WorkOne, and a job of a v1 producer (plain SQL, no trace context) once.
// It checks the spans: compute.enqueue is a producer child of the
// request's span and its context is what the job carries; each attempt's
// compute.work is a consumer span that starts a trace of its own, links
// to compute.enqueue, carries the queue, job id, attempt and outcome (an
// error status for the failed one), and is the span the handler's context
// holds. The plain job's attempt is a root span without links.
func TestTraceOfAJob(t *testing.T) {
	for _, how := range []string{"Worker", "WorkOne"} {
		t.Run(how, func(t *testing.T) {
			tr := newTraced(t)
			ctx, request := tr.provider.Tracer("test").Start(context.Background(), "request")
			id, err := tr.q.Enqueue(ctx, compute.Job{Queue: "q"})
			if err != nil {
				t.Fatal(err)
			}
			request.End()
			if _, err := tr.q.Pool().Exec(context.Background(), `INSERT INTO compute.jobs
				(job_id, status, queue, config, input_files, created, last_accessed)
				VALUES (decode(md5('plain'), 'hex'), 'queued', 'plain', '{}', '{}', now(), now())`); err != nil {
				t.Fatal(err)
			}

			h := tr.handler(id)
			switch how {
			case "Worker":
				counts := computetest.Drain(t, tr.q, map[string]compute.Handler{"q": h, "plain": h},
					computetest.WithBackoff(func(int) time.Duration { return time.Microsecond }))
				if counts.Complete != 2 || counts.Retried != 1 {
					t.Fatalf("Drain: %+v, want 2 complete and 1 retried", counts)
				}
			case "WorkOne":
				for _, queue := range []string{"q", "q", "plain"} {
					computetest.WorkOne(t, tr.q, queue, h, computetest.WithBackoff(func(int) time.Duration { return time.Microsecond }))
				}
			}
			checkTrace(t, tr, request, id)
		})
	}
}

// checkTrace checks the spans of TestTraceOfAJob.
func checkTrace(t *testing.T, tr *traced, request trace.Span, id compute.JobID) {
	t.Helper()
	var enqueue sdktrace.ReadOnlySpan
	var work, plain []sdktrace.ReadOnlySpan
	for _, s := range tr.spans.Ended() {
		logSpan(t, s)
		attrs := attrMap(s.Attributes())
		switch {
		case s.Name() == "compute.enqueue":
			enqueue = s
		case s.Name() == "compute.work" && attrs["messaging.destination.name"] == "plain":
			plain = append(plain, s)
		case s.Name() == "compute.work":
			work = append(work, s)
		}
	}
	if enqueue == nil || len(work) != 2 || len(plain) != 1 {
		t.Fatalf("spans: enqueue %v, %d work spans of the job and %d of the plain job; want 1, 2 and 1", enqueue != nil, len(work), len(plain))
	}
	req := request.SpanContext()
	if enqueue.SpanKind() != trace.SpanKindProducer || enqueue.Parent().SpanID() != req.SpanID() || enqueue.SpanContext().TraceID() != req.TraceID() {
		t.Errorf("compute.enqueue: kind %s, parent %s in trace %s; want producer, child of the request's span %s",
			enqueue.SpanKind(), enqueue.Parent().SpanID(), enqueue.SpanContext().TraceID(), req.SpanID())
	}
	wantAttrs(t, enqueue, map[string]string{"messaging.system": "compute", "messaging.operation.type": "send",
		"messaging.operation.name": "enqueue", "messaging.destination.name": "q", "messaging.batch.message_count": "1"})

	job, err := tr.q.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	carried := propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier(job.TraceContext))
	if sc := trace.SpanContextFromContext(carried); !sameSpan(sc, enqueue.SpanContext()) {
		t.Errorf("the job carries %v, want the compute.enqueue span's context %v", sc, enqueue.SpanContext())
	}

	sort.Slice(work, func(i, j int) bool { return work[i].StartTime().Before(work[j].StartTime()) })
	for i, s := range work {
		outcome, status := "retry", codes.Error
		if i == 1 {
			outcome, status = "complete", codes.Unset
		}
		if s.SpanKind() != trace.SpanKindConsumer || s.Parent().IsValid() || s.SpanContext().TraceID() == req.TraceID() {
			t.Errorf("attempt %d: kind %s, parent %v; want a consumer span at the root of a trace of its own", i+1, s.SpanKind(), s.Parent())
		}
		if links := s.Links(); len(links) != 1 || !sameSpan(links[0].SpanContext, enqueue.SpanContext()) {
			t.Errorf("attempt %d: links %v, want one to compute.enqueue", i+1, links)
		}
		wantAttrs(t, s, map[string]string{"messaging.system": "compute", "messaging.operation.type": "process",
			"messaging.destination.name": "q", "messaging.message.id": id.String(),
			"compute.job.attempt": fmt.Sprint(i + 1), "compute.job.outcome": outcome})
		if s.Status().Code != status {
			t.Errorf("attempt %d: status %v, want %v", i+1, s.Status(), status)
		}
		tr.mu.Lock()
		if seen := tr.seen[id]; len(seen) != 2 || !seen[i].Equal(s.SpanContext()) {
			t.Errorf("attempt %d: the handler saw span %v, want its compute.work span", i+1, seen)
		}
		tr.mu.Unlock()
	}
	if work[0].Status().Description != "first attempt fails" {
		t.Errorf("the failed attempt's status says %q, want the handler's error", work[0].Status().Description)
	}
	p := plain[0]
	if p.Parent().IsValid() || len(p.Links()) != 0 {
		t.Errorf("the plain SQL job's attempt: parent %v, links %v; want a root span without links", p.Parent(), p.Links())
	}
	wantAttrs(t, p, map[string]string{"compute.job.outcome": "complete", "compute.job.attempt": "1"})
}

// sameSpan reports whether a and b name the same span (one may be remote).
func sameSpan(a, b trace.SpanContext) bool {
	return a.IsValid() && a.TraceID() == b.TraceID() && a.SpanID() == b.SpanID()
}

func attrMap(kvs []attribute.KeyValue) map[string]string {
	out := map[string]string{}
	for _, kv := range kvs {
		out[string(kv.Key)] = kv.Value.String()
	}
	return out
}

func wantAttrs(t *testing.T, s sdktrace.ReadOnlySpan, want map[string]string) {
	t.Helper()
	got := attrMap(s.Attributes())
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s = %q, want %q (all: %v)", s.Name(), k, got[k], v, got)
		}
	}
}

// logSpan prints a span for -v: its name, kind, ids, parent, links,
// status and attributes (the closing note's trace of one job).
func logSpan(t *testing.T, s sdktrace.ReadOnlySpan) {
	var links []string
	for _, l := range s.Links() {
		links = append(links, l.SpanContext.TraceID().String()+"/"+l.SpanContext.SpanID().String())
	}
	var attrs []string
	for _, kv := range s.Attributes() {
		attrs = append(attrs, string(kv.Key)+"="+kv.Value.String())
	}
	t.Logf("%s (%s) trace=%s span=%s parent=%s links=[%s] status=%s %q\n\t%s", s.Name(), s.SpanKind(),
		s.SpanContext().TraceID(), s.SpanContext().SpanID(), s.Parent().SpanID(), strings.Join(links, " "),
		s.Status().Code, s.Status().Description, strings.Join(attrs, " "))
}

// TestAttemptSpanIsARootUnderASpan: a Worker run under a span (its Run's
// context holds one) still starts each attempt's trace afresh, rather than
// hanging every attempt under that long-lived span.
func TestAttemptSpanIsARootUnderASpan(t *testing.T) {
	spans := tracetest.NewSpanRecorder()
	provider := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	obs, err := otelcompute.NewObserver(nil, otelcompute.WithTracerProvider(provider))
	if err != nil {
		t.Fatal(err)
	}
	ctx, startup := provider.Tracer("test").Start(context.Background(), "startup")
	defer startup.End()
	handlerCtx, end := obs.TraceAttempt(ctx, &compute.Job{Queue: "q", Attempt: 1})
	end(compute.OutcomeComplete, nil)
	ended := spans.Ended()
	if len(ended) != 1 || ended[0].Parent().IsValid() || !sameSpan(trace.SpanContextFromContext(handlerCtx), ended[0].SpanContext()) {
		t.Fatalf("attempt spans %v, want one root span, the handler's", ended)
	}
}
