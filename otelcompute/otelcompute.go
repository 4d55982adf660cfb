// Package otelcompute records what a compute Queue and its Workers do as
// OpenTelemetry metrics and traces. It is a module of its own, so a program that
// imports only compute never downloads or links OpenTelemetry.
//
// Three lines give a Queue its metrics (and its traces, through the
// global TracerProvider unless [WithTracerProvider] says otherwise):
//
//	obs, err := otelcompute.NewObserver(provider) // nil: the global MeterProvider
//	q, err := compute.Open(ctx, "", compute.WithObserver(obs))
//	reg, err := otelcompute.ObserveQueues(q, provider, 0) // the per-queue gauges; reg.Unregister() to stop
//
// cmd/worker is a worker that serves them on /metrics through the
// Prometheus exporter, beside the Worker's /healthz and /readyz.
//
// # Instruments
//
// The names are stable, for dashboards and alerts. Durations are in
// seconds; the Prometheus exporter turns dots into underscores and adds
// _total, _seconds and _bucket.
//
//   - compute.jobs.processed (counter; queue, outcome): attempts whose
//     handler returned, by [compute.Outcome].
//   - compute.job.duration (histogram, s; queue, outcome): the handler's run.
//   - compute.job.wait (histogram, s; queue): from a job's run_at to its
//     claim, by the database clock.
//   - compute.claim.duration (histogram, s; queue) and compute.claim.jobs
//     (histogram; queue): each claim's time and batch size.
//   - compute.write.duration (histogram, s; kind) and compute.write.jobs
//     (histogram; kind): each outcome write (kind complete, fail or
//     hand_back).
//   - compute.lease.renewals and compute.lease.lost (counters): jobs
//     whose leases a heartbeat renewed, and found lost.
//   - compute.rescued (counter): expired jobs of other workers handed back.
//   - compute.listener.listening (gauge): 1 while the worker's listener
//     delivers notifications, 0 while it finds jobs by polling only.
//   - compute.enqueued (counter) and compute.enqueue.duration (histogram,
//     s): jobs submitted and the time of each Submit.
//   - compute.jobs (gauge; queue, status) and compute.queue.oldest (gauge,
//     s; queue): from [ObserveQueues].
//
// Claims, writes, renewals and enqueues that fail carry error.type
// (lease_lost, unavailable or other).
//
// # Traces
//
// The Observer makes two spans, with the attributes of OpenTelemetry's
// messaging conventions that fit (messaging.system "compute",
// messaging.destination.name the queue, messaging.operation.type,
// messaging.message.id the job id):
//
//   - compute.enqueue (kind producer), one per Submit (every Enqueue
//     variant), a child of the caller's span, with
//     messaging.batch.message_count, and the queue when the jobs share
//     one. Its context, injected by the propagator ([WithPropagator];
//     the global one by default: set W3C trace context with
//     otel.SetTextMapPropagator), is stored with each job
//     ([compute.Job.TraceContext]).
//   - compute.work (kind consumer), one per attempt, the span the
//     handler's context carries, with compute.job.attempt and
//     compute.job.outcome ([compute.Outcome]); a retry, a failure or a
//     lost lease sets an error status and error.type.
//
// Each attempt's span starts a trace of its own and links to the
// producer's compute.enqueue span; it is not its child. A job may run
// hours after the request that enqueued it, and several times: as
// children, its attempts would stretch the request's trace over all that
// time. The messaging conventions require the link and leave the parent
// optional; otelriver carries the trace context in a job's metadata and
// links to it too, and OpenTelemetry's Oban integration starts a new
// trace per job. The producer's baggage, if the propagator carries any,
// reaches the handler's context. A job enqueued without a trace context
// (by plain SQL, or before this version) gets a root span without links.
package otelcompute

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/computeplatform/compute"
)

// scope is the instrumentation scope of every instrument here.
const scope = "github.com/computeplatform/compute/otelcompute"

// Bucket boundaries: seconds from a millisecond to five minutes, and
// batch sizes up to a claim's largest.
var (
	secondBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300}
	batchBuckets  = []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000}
)

// instruments are an Observer's instruments and its cache of attribute
// sets (one per queue, kind or outcome pair; there are few).
type instruments struct {
	processed                metric.Int64Counter
	jobDuration, jobWait     metric.Float64Histogram
	claimDuration, claimJobs metric.Float64Histogram
	writeDuration, writeJobs metric.Float64Histogram
	renewals, lost, rescued  metric.Int64Counter
	listening                metric.Int64Gauge
	enqueued                 metric.Int64Counter
	enqueueDuration          metric.Float64Histogram
	sets                     sync.Map // attrKey -> metric.MeasurementOption
	err                      error    // instruments that could not be made
}

// note keeps the error of an instrument that could not be made.
func (in *instruments) note(err error) { in.err = errors.Join(in.err, err) }

// NewObserver returns a [compute.Observer] that records into meters of
// provider (nil: the global MeterProvider) and makes the spans of
// enqueues and attempts (see Traces in the package doc); pass it to
// [compute.WithObserver]. It fails only when an instrument cannot be
// made.
func NewObserver(provider metric.MeterProvider, opts ...Option) (*compute.Observer, error) {
	var c config
	for _, o := range opts {
		o(&c)
	}
	if provider == nil {
		provider = otel.GetMeterProvider()
	}
	m := provider.Meter(scope)
	in := &instruments{}
	seconds := func(name, desc string) metric.Float64Histogram {
		h, err := m.Float64Histogram(name, metric.WithUnit("s"), metric.WithDescription(desc), metric.WithExplicitBucketBoundaries(secondBuckets...))
		in.note(err)
		return h
	}
	batch := func(name, desc string) metric.Float64Histogram {
		h, err := m.Float64Histogram(name, metric.WithUnit("{job}"), metric.WithDescription(desc), metric.WithExplicitBucketBoundaries(batchBuckets...))
		in.note(err)
		return h
	}
	count := func(name, desc string) metric.Int64Counter {
		c, err := m.Int64Counter(name, metric.WithUnit("{job}"), metric.WithDescription(desc))
		in.note(err)
		return c
	}
	in.processed = count("compute.jobs.processed", "Attempts whose handler returned, by queue and outcome.")
	in.jobDuration = seconds("compute.job.duration", "How long handlers ran, by queue and outcome.")
	in.jobWait = seconds("compute.job.wait", "From a job's run_at to its claim, by the database clock.")
	in.claimDuration = seconds("compute.claim.duration", "How long each claim took.")
	in.claimJobs = batch("compute.claim.jobs", "Jobs per claim.")
	in.writeDuration = seconds("compute.write.duration", "How long each outcome write took, by kind (complete, fail, hand_back).")
	in.writeJobs = batch("compute.write.jobs", "Jobs per outcome write, by kind.")
	in.renewals = count("compute.lease.renewals", "Job leases renewed by heartbeats.")
	in.lost = count("compute.lease.lost", "Jobs a heartbeat found no longer this worker's (lost lease or cancel).")
	in.rescued = count("compute.rescued", "Expired jobs of other workers handed back to their queue.")
	var err error
	in.listening, err = m.Int64Gauge("compute.listener.listening",
		metric.WithDescription("1 while the worker's listener delivers notifications, 0 while it polls only."))
	in.note(err)
	in.enqueued = count("compute.enqueued", "Jobs submitted (duplicates included).")
	in.enqueueDuration = seconds("compute.enqueue.duration", "How long each Submit (Enqueue, EnqueueMany, ...) took.")
	if in.err != nil {
		return nil, in.err
	}
	return in.observer(newTracing(c)), nil
}

// observer returns the compute.Observer that records into in and makes
// spans with tr.
func (in *instruments) observer(tr *tracing) *compute.Observer {
	ctx := context.Background()
	return &compute.Observer{
		TraceEnqueue: tr.enqueue,
		TraceAttempt: tr.attempt,
		Enqueued: func(n int, d time.Duration, err error) {
			set := in.set("", "", err)
			in.enqueued.Add(ctx, int64(n), set)
			in.enqueueDuration.Record(ctx, d.Seconds(), set)
		},
		Claimed: func(queue string, n int, d time.Duration, err error) {
			set := in.set("queue", queue, err)
			in.claimDuration.Record(ctx, d.Seconds(), set)
			in.claimJobs.Record(ctx, float64(n), set)
		},
		JobStarted: func(queue string, wait time.Duration) {
			in.jobWait.Record(ctx, wait.Seconds(), in.set("queue", queue, nil))
		},
		JobFinished: func(queue string, outcome compute.Outcome, d time.Duration) {
			set := in.outcomeSet(queue, outcome)
			in.processed.Add(ctx, 1, set)
			in.jobDuration.Record(ctx, d.Seconds(), set)
		},
		Wrote: func(kind string, n int, d time.Duration, err error) {
			set := in.set("kind", kind, err)
			in.writeDuration.Record(ctx, d.Seconds(), set)
			in.writeJobs.Record(ctx, float64(n), set)
		},
		Renewed: func(n, lost int, _ time.Duration, err error) {
			if err == nil {
				in.renewals.Add(ctx, int64(n-lost))
			}
			if lost > 0 {
				in.lost.Add(ctx, int64(lost))
			}
		},
		Rescued: func(n int) { in.rescued.Add(ctx, int64(n)) },
		Listening: func(on bool) {
			v := int64(0)
			if on {
				v = 1
			}
			in.listening.Record(ctx, v)
		},
	}
}

// attrKey names a cached attribute set: set's use key "", "queue" or
// "kind" with the error type second; outcomeSet's key "outcome", with the
// queue and the outcome.
type attrKey struct{ key, value, second string }

// set returns the attribute set {key: value} (none when key is empty),
// with error.type when err is not nil.
func (in *instruments) set(key, value string, err error) metric.MeasurementOption {
	k := attrKey{key: key, value: value, second: errorType(err)}
	if s, ok := in.sets.Load(k); ok {
		return s.(metric.MeasurementOption)
	}
	var attrs []attribute.KeyValue
	if key != "" {
		attrs = append(attrs, attribute.String(key, value))
	}
	if k.second != "" {
		attrs = append(attrs, attribute.String("error.type", k.second))
	}
	s, _ := in.sets.LoadOrStore(k, metric.WithAttributeSet(attribute.NewSet(attrs...)))
	return s.(metric.MeasurementOption)
}

// outcomeSet returns the attribute set {queue, outcome}.
func (in *instruments) outcomeSet(queue string, outcome compute.Outcome) metric.MeasurementOption {
	k := attrKey{key: "outcome", value: queue, second: string(outcome)}
	if s, ok := in.sets.Load(k); ok {
		return s.(metric.MeasurementOption)
	}
	s, _ := in.sets.LoadOrStore(k, metric.WithAttributeSet(attribute.NewSet(
		attribute.String("queue", queue), attribute.String("outcome", string(outcome)))))
	return s.(metric.MeasurementOption)
}

// errorType classifies err for error.type: "" for none.
func errorType(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, compute.ErrLeaseLost):
		return "lease_lost"
	case errors.Is(err, compute.ErrUnavailable):
		return "unavailable"
	default:
		return "other"
	}
}
