package otelcompute_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/computetest"
	"github.com/computeplatform/compute/otelcompute"
)

// burnDownJobs is how many no-op jobs each iteration of BenchmarkBurnDown
// works.
const burnDownJobs = 20000

// BenchmarkBurnDown measures what the Observer costs a Worker's hot path:
// each iteration enqueues burnDownJobs no-op jobs (untimed), then times a
// Worker (Concurrency 100) from its start until every job's handler ran
// and its outcome is written. "none" has no Observer; "otel" has
// otelcompute's, recording metrics (a manual reader, never collected
// here) and spans (sampled, batched to an exporter that drops them), and
// every job carries a trace context, which each claim reads and decodes;
// "metrics" is otelcompute's without its trace hooks.
// Run it with -benchtime=1x -count=3: the sub-benchmarks alternate.
func BenchmarkBurnDown(b *testing.B) {
	for _, name := range []string{"none", "otel", "metrics"} {
		b.Run(name, func(b *testing.B) {
			var opts []compute.Option
			if name != "none" {
				traces := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()))
				b.Cleanup(func() { _ = traces.Shutdown(context.Background()) })
				obs, err := otelcompute.NewObserver(sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader())),
					otelcompute.WithTracerProvider(traces), otelcompute.WithPropagator(propagation.TraceContext{}))
				if err != nil {
					b.Fatal(err)
				}
				if name == "metrics" {
					obs.TraceEnqueue, obs.TraceAttempt = nil, nil
				}
				opts = append(opts, compute.WithObserver(obs))
			}
			q := computetest.NewQueue(b, opts...)
			jobs := make([]compute.Job, burnDownJobs)
			for i := range jobs {
				jobs[i] = compute.Job{Queue: "bench"}
			}
			var elapsed time.Duration
			for range b.N {
				if _, err := q.EnqueueMany(context.Background(), jobs); err != nil {
					b.Fatal(err)
				}
				if _, err := q.Pool().Exec(context.Background(), `VACUUM ANALYZE compute.jobs`); err != nil {
					b.Fatal(err)
				}
				elapsed += burnDown(b, q)
				if _, err := q.Pool().Exec(context.Background(), `DELETE FROM compute.jobs`); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*burnDownJobs)/elapsed.Seconds(), "jobs/s")
		})
	}
}

// burnDown works q's queue "bench" until burnDownJobs handlers ran, stops
// the Worker (which writes the last outcomes) and returns the time taken.
func burnDown(b *testing.B, q *compute.Queue) time.Duration {
	var ran atomic.Int64
	done := make(chan struct{})
	w, err := compute.NewWorker(q, compute.WorkerConfig{Queues: map[string]compute.QueueConfig{
		"bench": {Concurrency: 100, Handler: func(context.Context, *compute.Job) ([]string, error) {
			if ran.Add(1) == burnDownJobs {
				close(done)
			}
			return nil, nil
		}},
	}})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	stopped := make(chan error, 1)
	go func() { stopped <- w.Run(ctx) }()
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		b.Fatal("the burn-down did not finish in 5 minutes")
	}
	if err := w.Shutdown(context.Background()); err != nil {
		b.Fatal(err)
	}
	if err := <-stopped; err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

// BenchmarkObserverPerJob is the Observer's CPU cost per job, without a
// database: what a Worker calls for one attempt (JobStarted,
// TraceAttempt and its end, JobFinished) with otelcompute's metrics only,
// and with its spans too (sampled, batched to an exporter that drops
// them; the job carries a producer's trace context, so the span links).
func BenchmarkObserverPerJob(b *testing.B) {
	traces := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()))
	b.Cleanup(func() { _ = traces.Shutdown(context.Background()) })
	job := &compute.Job{Queue: "bench", Attempt: 1, TraceContext: map[string]string{
		"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}
	for _, name := range []string{"metrics", "metrics+traces"} {
		b.Run(name, func(b *testing.B) {
			obs, err := otelcompute.NewObserver(sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader())),
				otelcompute.WithTracerProvider(traces), otelcompute.WithPropagator(propagation.TraceContext{}))
			if err != nil {
				b.Fatal(err)
			}
			if name == "metrics" {
				obs.TraceAttempt = nil
			}
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				obs.JobStarted(job.Queue, time.Millisecond)
				var end func(compute.Outcome, error)
				if obs.TraceAttempt != nil {
					_, end = obs.TraceAttempt(ctx, job)
				}
				if end != nil {
					end(compute.OutcomeComplete, nil)
				}
				obs.JobFinished(job.Queue, compute.OutcomeComplete, time.Millisecond)
			}
		})
	}
}
