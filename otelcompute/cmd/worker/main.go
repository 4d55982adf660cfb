// Command worker is a compute worker that serves its metrics and health
// over HTTP: /metrics (OpenTelemetry through its Prometheus exporter),
// /healthz and /readyz (compute.Worker.HealthHandler). It lives in the
// otelcompute module so that the library's own examples never pull in
// OpenTelemetry.
//
//	go run ./cmd/worker -db "postgres://localhost/app" -metrics-addr 127.0.0.1:9464 -enqueue 100
//
// Its handler waits for the job config's "sleep_ms" and fails the attempt
// when "fail" is true, so a trial can produce every outcome.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	promclient "github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/otelcompute"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
}

func run() error {
	db := flag.String("db", "", `connection string; "" uses the PG* environment variables`)
	addr := flag.String("metrics-addr", "127.0.0.1:9464", "HOST:PORT for /metrics, /healthz and /readyz")
	queue := flag.String("queue", "demo", "the queue to serve")
	concurrency := flag.Int("concurrency", 10, "jobs run at once")
	enqueue := flag.Int("enqueue", 0, "jobs to enqueue at start, for a trial (every fifth fails once)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	// The three lines a program needs: an exporter as the provider's
	// reader, the Observer on the Queue, and the queue gauges.
	registry := promclient.NewRegistry()
	exporter, err := prometheus.New(prometheus.WithRegisterer(registry))
	if err != nil {
		return err
	}
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
	defer func() { _ = provider.Shutdown(context.Background()) }()
	obs, err := otelcompute.NewObserver(provider)
	if err != nil {
		return err
	}
	q, err := compute.Open(ctx, *db, compute.WithMigrate(), compute.WithLogger(log), compute.WithObserver(obs))
	if err != nil {
		return err
	}
	defer q.Close()
	reg, err := otelcompute.ObserveQueues(q, provider, 0)
	if err != nil {
		return err
	}
	defer func() { _ = reg.Unregister() }()

	w, err := compute.NewWorker(q, compute.WorkerConfig{Queues: map[string]compute.QueueConfig{
		*queue: {Handler: handle, Concurrency: *concurrency, Timeout: time.Minute,
			Backoff: func(int) time.Duration { return 100 * time.Millisecond }},
	}})
	if err != nil {
		return err
	}
	for i := range *enqueue {
		cfg := fmt.Sprintf(`{"sleep_ms": %d, "fail": %t}`, 5+i%20, i%5 == 0)
		if _, err := q.Enqueue(ctx, compute.Job{Queue: *queue, Config: cfg}); err != nil {
			return err
		}
	}

	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{}))
	mux.Handle("/healthz", w.HealthHandler())
	mux.Handle("/readyz", w.HealthHandler())
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("serving", "addr", ln.Addr().String())

	runErr := w.Run(ctx) // returns after ctx ends and the worker stopped
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = srv.Shutdown(shutCtx)
	if e := <-served; !errors.Is(e, http.ErrServerClosed) {
		err = errors.Join(err, e)
	}
	return errors.Join(runErr, err)
}

// handle sleeps for the config's sleep_ms and fails the first attempt
// when fail is set.
func handle(ctx context.Context, job *compute.Job) ([]string, error) {
	var cfg struct {
		SleepMS int  `json:"sleep_ms"`
		Fail    bool `json:"fail"`
	}
	if err := json.Unmarshal([]byte(job.Config), &cfg); err != nil {
		return nil, compute.Permanent(err)
	}
	select {
	case <-time.After(time.Duration(cfg.SleepMS) * time.Millisecond):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if cfg.Fail && job.Spent() == 1 {
		return nil, errors.New("asked to fail once")
	}
	return nil, nil
}
