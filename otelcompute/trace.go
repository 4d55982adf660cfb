package otelcompute

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/computeplatform/compute"
)

// Option configures [NewObserver].
type Option func(*config)

type config struct {
	tracers    trace.TracerProvider
	propagator propagation.TextMapPropagator
}

// WithTracerProvider sets the TracerProvider of the spans; nil (the
// default) means the global one, otel.GetTracerProvider, whose spans go
// nowhere until the program sets one.
func WithTracerProvider(p trace.TracerProvider) Option {
	return func(c *config) { c.tracers = p }
}

// WithPropagator sets how a job carries its producer's trace context;
// nil (the default) means the global one, otel.GetTextMapPropagator. The
// stored carrier is capped at 1 KiB (see compute.Job.TraceContext): a
// propagator that adds much baggage gets its jobs stored without one.
func WithPropagator(p propagation.TextMapPropagator) Option {
	return func(c *config) { c.propagator = p }
}

// Span names and the attributes of OpenTelemetry's messaging conventions
// that fit a job queue, plus compute's own.
const (
	enqueueSpan = "compute.enqueue"
	workSpan    = "compute.work"

	keySystem      = attribute.Key("messaging.system")
	keyDestination = attribute.Key("messaging.destination.name")
	keyOpType      = attribute.Key("messaging.operation.type")
	keyOpName      = attribute.Key("messaging.operation.name")
	keyBatchCount  = attribute.Key("messaging.batch.message_count")
	keyMessageID   = attribute.Key("messaging.message.id")
	keyErrorType   = attribute.Key("error.type")
	keyAttempt     = attribute.Key("compute.job.attempt")
	keyOutcome     = attribute.Key("compute.job.outcome")
)

var systemCompute = keySystem.String("compute")

// tracing makes the spans of an Observer.
type tracing struct {
	tracer     trace.Tracer
	propagator propagation.TextMapPropagator
}

func newTracing(c config) *tracing {
	if c.tracers == nil {
		c.tracers = otel.GetTracerProvider()
	}
	if c.propagator == nil {
		c.propagator = otel.GetTextMapPropagator()
	}
	return &tracing{tracer: c.tracers.Tracer(scope), propagator: c.propagator}
}

// enqueue starts a compute.enqueue span (kind producer) for one Submit of
// jobs, a child of the caller's span, and returns its context as the
// jobs' carrier. The span holds the batch's size, and its queue when the
// jobs share one.
func (tr *tracing) enqueue(ctx context.Context, jobs []compute.Job) (map[string]string, func(error)) {
	attrs := []attribute.KeyValue{systemCompute, keyOpType.String("send"), keyOpName.String("enqueue"),
		keyBatchCount.Int(len(jobs))}
	if queue, ok := oneQueue(jobs); ok {
		attrs = append(attrs, keyDestination.String(queue))
	}
	ctx, span := tr.tracer.Start(ctx, enqueueSpan, trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(attrs...))
	carrier := propagation.MapCarrier{}
	tr.propagator.Inject(ctx, carrier)
	end := func(err error) {
		if err != nil {
			span.SetAttributes(keyErrorType.String(errorType(err)))
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}
	if len(carrier) == 0 {
		return nil, end
	}
	return carrier, end
}

// oneQueue returns the queue of jobs when they all share one.
func oneQueue(jobs []compute.Job) (string, bool) {
	for _, j := range jobs[1:] {
		if j.Queue != jobs[0].Queue {
			return "", false
		}
	}
	return jobs[0].Queue, true
}

// attempt starts a compute.work span (kind consumer) for one attempt of
// job, at the root of a new trace (even if the context given to the
// Worker's Run holds a span, which would otherwise parent every attempt),
// linked to the producer's span that job.TraceContext names;
// the producer's baggage, if any, reaches the handler. See the package
// doc for why a link and not a parent.
func (tr *tracing) attempt(ctx context.Context, job *compute.Job) (context.Context, func(compute.Outcome, error)) {
	opts := []trace.SpanStartOption{
		trace.WithNewRoot(),
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(systemCompute, keyOpType.String("process"), keyOpName.String("work"),
			keyDestination.String(job.Queue), keyMessageID.String(job.ID.String()), keyAttempt.Int(job.Attempt)),
	}
	if job.TraceContext != nil {
		producer := tr.propagator.Extract(context.Background(), propagation.MapCarrier(job.TraceContext))
		if sc := trace.SpanContextFromContext(producer); sc.IsValid() {
			opts = append(opts, trace.WithLinks(trace.Link{SpanContext: sc}))
		}
		if b := baggage.FromContext(producer); b.Len() > 0 {
			ctx = baggage.ContextWithBaggage(ctx, b)
		}
	}
	ctx, span := tr.tracer.Start(ctx, workSpan, opts...)
	return ctx, func(outcome compute.Outcome, err error) {
		span.SetAttributes(keyOutcome.String(string(outcome)))
		switch outcome {
		case compute.OutcomeRetry, compute.OutcomeFailed:
			if err == nil { // the only such case: the worker refused the output names
				err = errors.New("the handler returned output file names the worker refused")
			}
			span.SetAttributes(keyErrorType.String(string(outcome)))
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		case compute.OutcomeLost:
			span.SetAttributes(keyErrorType.String(string(outcome)))
			span.SetStatus(codes.Error, "the job's lease was lost; its result was discarded")
		}
		span.End()
	}
}
