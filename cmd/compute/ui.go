package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/computeplatform/compute/dashboard"
)

// uiShutdown bounds how long the server waits for requests in flight when
// the command is interrupted.
const uiShutdown = 5 * time.Second

func runUI(e *env, path string, args []string) error {
	l := newLeaf(e, path, "", "Serves the dashboard (overview, jobs, queues, workers, periodic schedules and health)\n"+
		"until interrupted. It has no login: bind it to 127.0.0.1 (the default) or put it behind\n"+
		"your own authentication, and use --read-only where operators should only look.", false)
	l.sessions()
	addr := l.fs.String("addr", "127.0.0.1:8080", "HOST:PORT to listen on (port 0 picks a free one)")
	readOnly := l.fs.Bool("read-only", false, "refuse every change (cancel, retry, delete, pause, settings)")
	if _, err := l.parse(args, 0, 0); err != nil {
		return err
	}
	q, err := l.open()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return l.usageErr("--addr %q: %v", *addr, err)
	}
	logger := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv := &http.Server{
		Handler:           dashboard.New(q, dashboard.Config{ReadOnly: *readOnly, Logger: logger}),
		ReadHeaderTimeout: 10 * time.Second,
		// The live feeds follow the command's context, so they end on
		// Ctrl-C instead of holding Shutdown.
		BaseContext: func(net.Listener) context.Context { return e.ctx },
		ErrorLog:    slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	mode := ""
	if *readOnly {
		mode = " (read-only)"
	}
	fmt.Fprintf(e.stdout, "compute dashboard%s on http://%s/ (Ctrl-C to stop)\n", mode, ln.Addr())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return err
	case <-e.ctx.Done():
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(e.ctx), uiShutdown)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		return err
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
