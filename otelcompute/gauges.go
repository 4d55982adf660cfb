package otelcompute

import (
	"context"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/computeplatform/compute"
)

// DefaultRefresh is how long ObserveQueues reuses one reading of the
// queues when its every is 0.
const DefaultRefresh = 5 * time.Second

// ObserveQueues registers two observable gauges read from q with
// [compute.Queue.Queues] (not exact): compute.jobs (queue, status), the
// jobs per queue and status, and compute.queue.oldest (queue, seconds),
// how long the oldest runnable queued job has been runnable. Queued,
// in-progress and failed jobs are counted exactly from the partial
// indexes, so their cost follows the backlog and the running and failed
// jobs; complete and expired jobs are the planner's estimates (from the
// statistics ANALYZE keeps), never a count over the finished rows.
//
// A collection reads the database at most once per every (0:
// DefaultRefresh), within the collection's context and at most 5 s, and
// between readings reports the last one. After a failed reading it
// reports nothing until a reading succeeds: the series go stale (and an
// alert on their absence can fire) rather than repeat numbers the
// database no longer confirms, which would hide an outage from an alert
// on compute.queue.oldest. Register it in one
// place per process (not per Worker): each registration reads on its own.
// Unregister the returned registration before closing q. provider nil
// means the global MeterProvider.
func ObserveQueues(q *compute.Queue, provider metric.MeterProvider, every time.Duration) (metric.Registration, error) {
	if provider == nil {
		provider = otel.GetMeterProvider()
	}
	if every <= 0 {
		every = DefaultRefresh
	}
	m := provider.Meter(scope)
	jobs, err := m.Int64ObservableGauge("compute.jobs", metric.WithUnit("{job}"),
		metric.WithDescription("Jobs per queue and status: queued, in-progress and failed exact; complete and expired are planner estimates."))
	if err != nil {
		return nil, err
	}
	oldest, err := m.Float64ObservableGauge("compute.queue.oldest", metric.WithUnit("s"),
		metric.WithDescription("How long the oldest runnable queued job of each queue has been runnable."))
	if err != nil {
		return nil, err
	}
	r := &queueReader{q: q, every: every}
	return m.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		for _, qi := range r.read(ctx) {
			// Every status, 0 when the queue has none: a series that
			// vanished when a backlog drained would read as missing
			// data, not as an empty queue.
			for _, status := range statuses {
				o.ObserveInt64(jobs, qi.Counts[status], metric.WithAttributes(attribute.String("queue", qi.Name), attribute.String("status", string(status))))
			}
			o.ObserveFloat64(oldest, qi.OldestRunnable.Seconds(), metric.WithAttributes(attribute.String("queue", qi.Name)))
		}
		return nil
	}, jobs, oldest)
}

// statuses are the values of compute.jobs' status attribute.
var statuses = []compute.Status{compute.StatusQueued, compute.StatusInProgress, compute.StatusComplete,
	compute.StatusFailed, compute.StatusExpired}

// readTimeout bounds one reading of the queues.
const readTimeout = 5 * time.Second

// queueReader keeps the last reading of the queues for every.
type queueReader struct {
	q     *compute.Queue
	every time.Duration

	mu   sync.Mutex // held across a reading, so collections share it
	at   time.Time  // when last was read (or tried)
	last []compute.QueueInfo
}

// read returns the queues, read again when the last reading is older
// than every.
func (r *queueReader) read(ctx context.Context) []compute.QueueInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.at) < r.every {
		return r.last
	}
	r.at = time.Now()
	ctx, cancel := context.WithTimeout(ctx, readTimeout)
	defer cancel()
	r.last, _ = r.q.Queues(ctx, false) // nil after a failure: nothing to report
	return r.last
}
