package otelcompute_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/computetest"
	"github.com/computeplatform/compute/otelcompute"
)

// collect reads every metric the reader has, by name.
func collect(t *testing.T, r *sdkmetric.ManualReader) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			out[m.Name] = m
		}
	}
	return out
}

// key renders an attribute set as "k=v,k=v" in the set's (sorted) order.
func key(s attribute.Set) string {
	out := ""
	for _, kv := range s.ToSlice() {
		if out != "" {
			out += ","
		}
		out += string(kv.Key) + "=" + kv.Value.String()
	}
	return out
}

// sums returns an Int64 sum's values by attribute set.
func sums(t *testing.T, m metricdata.Metrics) map[string]int64 {
	t.Helper()
	s, ok := m.Data.(metricdata.Sum[int64])
	if !ok {
		t.Fatalf("%s is a %T, want a Sum[int64]", m.Name, m.Data)
	}
	out := map[string]int64{}
	for _, p := range s.DataPoints {
		out[key(p.Attributes)] = p.Value
	}
	return out
}

// histograms returns a histogram's counts and minimums by attribute set.
func histograms(t *testing.T, m metricdata.Metrics) (counts map[string]uint64, mins map[string]float64) {
	t.Helper()
	h, ok := m.Data.(metricdata.Histogram[float64])
	if !ok {
		t.Fatalf("%s is a %T, want a Histogram[float64]", m.Name, m.Data)
	}
	counts, mins = map[string]uint64{}, map[string]float64{}
	for _, p := range h.DataPoints {
		counts[key(p.Attributes)] = p.Count
		if v, ok := p.Min.Value(); ok {
			mins[key(p.Attributes)] = v
		}
	}
	return counts, mins
}

// gauges returns a gauge's values by attribute set.
func gauges[N int64 | float64](t *testing.T, m metricdata.Metrics) map[string]N {
	t.Helper()
	g, ok := m.Data.(metricdata.Gauge[N])
	if !ok {
		t.Fatalf("%s is a %T, want a Gauge", m.Name, m.Data)
	}
	out := map[string]N{}
	for _, p := range g.DataPoints {
		out[key(p.Attributes)] = p.Value
	}
	return out
}

// TestMetricsOfAWorkerRun runs a Worker with the observer over a real
// database: a job that completes (due an hour before its claim), one that
// fails once and then completes, one that fails for good, and one that
// snoozes once. It checks the processed counts and durations per queue
// and outcome, the waits, the claim and write batches, the enqueue count,
// the listener gauge, and the queue gauges (left: one queued job of
// another queue, due a minute ago).
func TestMetricsOfAWorkerRun(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	obs, err := otelcompute.NewObserver(provider)
	if err != nil {
		t.Fatal(err)
	}
	q := computetest.NewQueue(t, compute.WithObserver(obs))
	reg, err := otelcompute.ObserveQueues(q, provider, time.Nanosecond)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = reg.Unregister() }()

	var mu sync.Mutex
	ran := map[string]int{}
	runs := func(queue string) int {
		mu.Lock()
		defer mu.Unlock()
		ran[queue]++
		return ran[queue]
	}
	finished := make(chan struct{}, 10)
	handler := func(_ context.Context, job *compute.Job) ([]string, error) {
		defer func() { finished <- struct{}{} }()
		n := runs(job.Queue)
		switch {
		case job.Queue == "retry" && n == 1:
			return nil, errors.New("not yet")
		case job.Queue == "permanent":
			return nil, compute.Permanent(errors.New("never"))
		case job.Queue == "snooze" && n == 1:
			return nil, compute.Snooze(time.Millisecond)
		}
		return nil, nil
	}
	cfg := compute.WorkerConfig{PollInterval: 50 * time.Millisecond, Queues: map[string]compute.QueueConfig{}}
	for _, name := range []string{"ok", "retry", "permanent", "snooze"} {
		cfg.Queues[name] = compute.QueueConfig{Handler: handler, Backoff: func(int) time.Duration { return time.Millisecond }}
	}
	w, err := compute.NewWorker(q, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := q.EnqueueMany(ctx, []compute.Job{
		{Queue: "ok", RunAt: time.Now().Add(-time.Hour)}, {Queue: "retry"}, {Queue: "permanent"}, {Queue: "snooze"},
		{Queue: "idle", RunAt: time.Now().Add(-time.Minute)},
	}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	for range 6 { // ok, retry twice, permanent, snooze twice
		select {
		case <-finished:
		case <-time.After(20 * time.Second):
			t.Fatal("the jobs did not run")
		}
	}
	for deadline := time.Now().Add(20 * time.Second); !w.Health().Listening; {
		if time.Now().After(deadline) {
			t.Fatal("the listener did not connect")
		}
		time.Sleep(10 * time.Millisecond) // polls a condition
	}
	if err := w.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	got := collect(t, reader)
	wantProcessed := map[string]int64{
		"outcome=complete,queue=ok":      1,
		"outcome=retry,queue=retry":      1,
		"outcome=complete,queue=retry":   1,
		"outcome=failed,queue=permanent": 1,
		"outcome=snoozed,queue=snooze":   1,
		"outcome=complete,queue=snooze":  1,
	}
	processed := sums(t, got["compute.jobs.processed"])
	if len(processed) != len(wantProcessed) {
		t.Errorf("compute.jobs.processed: %v, want %v", processed, wantProcessed)
	}
	for k, v := range wantProcessed {
		if processed[k] != v {
			t.Errorf("compute.jobs.processed{%s} = %d, want %d", k, processed[k], v)
		}
	}
	if counts, _ := histograms(t, got["compute.job.duration"]); counts["outcome=complete,queue=retry"] != 1 || len(counts) != 6 {
		t.Errorf("compute.job.duration counts: %v, want one per processed series", counts)
	}
	if got["compute.job.duration"].Unit != "s" {
		t.Errorf("compute.job.duration unit %q, want s", got["compute.job.duration"].Unit)
	}
	waits, minWait := histograms(t, got["compute.job.wait"])
	if waits["queue=ok"] != 1 || minWait["queue=ok"] < 3600 || waits["queue=retry"] != 2 {
		t.Errorf("compute.job.wait: counts %v, minimums %v; want ok once at 1h or more, retry twice", waits, minWait)
	}
	if n := sums(t, got["compute.enqueued"])[""]; n != 5 {
		t.Errorf("compute.enqueued = %d, want 5", n)
	}
	if counts, _ := histograms(t, got["compute.claim.duration"]); counts["queue=ok"] == 0 {
		t.Errorf("compute.claim.duration: %v, want claims of queue ok", counts)
	}
	// Written jobs: complete ok, retry, snooze; fail retry, permanent, snooze.
	writeCounts, _ := histograms(t, got["compute.write.jobs"])
	if writeCounts["kind=complete"] == 0 || writeCounts["kind=fail"] == 0 {
		t.Errorf("compute.write.jobs: %v, want complete and fail writes", writeCounts)
	}
	wrote := got["compute.write.jobs"].Data.(metricdata.Histogram[float64])
	sum := map[string]float64{}
	for _, p := range wrote.DataPoints {
		sum[key(p.Attributes)] = p.Sum
	}
	if sum["kind=complete"] != 3 || sum["kind=fail"] != 3 {
		t.Errorf("jobs written: %v, want 3 complete and 3 fail", sum)
	}
	// Read after Run returned: its listener stopped (that it reported 1
	// while it ran is TestWorkerNotListeningAfterRun's).
	if l := gauges[int64](t, got["compute.listener.listening"]); len(l) != 1 || l[""] != 0 {
		t.Errorf("compute.listener.listening after Run: %v, want 0", l)
	}
	jobs := gauges[int64](t, got["compute.jobs"])
	if jobs["queue=idle,status=queued"] != 1 || jobs["queue=permanent,status=failed"] != 1 {
		t.Errorf("compute.jobs: %v, want 1 queued in idle and 1 failed in permanent", jobs)
	}
	// A drained queue reports 0 queued, not no series.
	if n, ok := jobs["queue=ok,status=queued"]; !ok || n != 0 {
		t.Errorf("compute.jobs{queue=ok,status=queued}: %d (reported %t), want 0", n, ok)
	}
	if oldest := gauges[float64](t, got["compute.queue.oldest"]); oldest["queue=idle"] < 60 {
		t.Errorf("compute.queue.oldest: %v, want idle at a minute or more", oldest)
	}
}
