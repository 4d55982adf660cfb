package otelcompute_test

import (
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/computetest"
	"github.com/computeplatform/compute/otelcompute"
)

// TestQueueGaugesStopAfterAFailedReading: while the queues cannot be read
// (here the Queue is closed), the gauges report nothing rather than the
// last reading, so a stuck compute.queue.oldest cannot hide an outage.
func TestQueueGaugesStopAfterAFailedReading(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	q := computetest.NewQueue(t)
	reg, err := otelcompute.ObserveQueues(q, provider, time.Nanosecond)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = reg.Unregister() }()
	if _, err := q.Enqueue(t.Context(), compute.Job{Queue: "q"}); err != nil {
		t.Fatal(err)
	}
	points := func() int {
		m, ok := collect(t, reader)["compute.jobs"]
		if !ok {
			return 0
		}
		return len(m.Data.(metricdata.Gauge[int64]).DataPoints)
	}
	if n := points(); n == 0 {
		t.Fatal("compute.jobs has no points while the database answers")
	}
	q.Close()
	if n := points(); n != 0 {
		t.Errorf("compute.jobs has %d points after a failed reading, want none", n)
	}
}
