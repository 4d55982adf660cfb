package listen_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/computeplatform/compute/internal/listen"
	"github.com/computeplatform/compute/internal/testdb"
)

func TestMain(m *testing.M) { os.Exit(testdb.Run(m)) }

// logLines collects log output and signals the first line holding a text.
type logLines struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	text  string
	found chan struct{}
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.found != nil && bytes.Contains(p, []byte(l.text)) {
		close(l.found)
		l.found = nil
	}
	return l.buf.Write(p)
}

func (l *logLines) count(text string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.buf.String(), text)
}

// runListener runs a listener whose connection and probe sender use the
// given connection strings (the sender through a pool, as the library
// does), with the library's timings. It returns the log, a channel closed
// at the first line holding waitFor, a channel closed at the first
// Listening(true), and the time Run started; the listener stops at the
// test's end.
func runListener(t *testing.T, listenURL, sendURL, waitFor string) (*logLines, <-chan struct{}, <-chan struct{}, time.Time) {
	t.Helper()
	pool, err := pgxpool.New(t.Context(), sendURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	logs := &logLines{text: waitFor, found: make(chan struct{})}
	found := logs.found
	delivering := make(chan struct{})
	var once sync.Once
	l := &listen.Listener{
		Connect: func(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, listenURL) },
		SendProbe: func(ctx context.Context, channel, payload string) error {
			_, err := pool.Exec(ctx, `SELECT 1 FROM pg_notify($1, $2)`, channel, payload)
			return err
		},
		Redact:      func(err error) error { return err },
		Log:         slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Channels:    []string{"compute_jobs"},
		Notify:      func(string, string) {},
		Reconnected: func() {},
		Listening: func(on bool) {
			if on {
				once.Do(func() { close(delivering) })
			}
		},
		Idle:      10 * time.Second,
		ProbeWait: 5 * time.Second,
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	began := time.Now()
	go func() {
		defer close(done)
		l.Run(ctx)
	}()
	t.Cleanup(func() {
		stop()
		<-done
	})
	return logs, found, delivering, began
}

// TestProbeFindsAPoolerThatSwallowsNotifications: through PgBouncer in
// transaction mode, the probe sent from the pool never reaches the
// listener, whatever else goes through the pooler meanwhile (here a
// client that keeps it busy, and which the probe used to depend on), so
// the listener warns once, within its probe wait, and never reports that
// it delivers.
func TestProbeFindsAPoolerThatSwallowsNotifications(t *testing.T) {
	t.Parallel()
	pooled := testdb.NewBouncer(t, testdb.New(t)) + "&default_query_exec_mode=exec"

	busy, err := pgx.Connect(t.Context(), pooled)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close(context.Background())
	stopBusy := make(chan struct{})
	busyDone := make(chan struct{})
	go func() {
		defer close(busyDone)
		for {
			select {
			case <-stopBusy:
				return
			default:
			}
			if _, err := busy.Exec(context.Background(), `SELECT 1`); err != nil {
				return
			}
		}
	}()
	defer func() {
		close(stopBusy)
		<-busyDone
	}()

	logs, warned, delivering, began := runListener(t, pooled, pooled, "LISTEN does not deliver notifications")
	select {
	case <-warned:
	case <-delivering:
		t.Fatal("the listener reported that a pooler in transaction mode delivers notifications")
	case <-time.After(time.Minute):
		t.Fatal("no warning within a minute")
	}
	t.Logf("FIGURES listen: swallowed notifications detected after %s", time.Since(began).Round(time.Millisecond))
	select {
	case <-delivering:
		t.Fatal("the listener reported that a pooler in transaction mode delivers notifications")
	default:
	}
	if n := logs.count("LISTEN does not deliver"); n != 1 {
		t.Errorf("warned %d times, want once", n)
	}
}

// TestProbeFromThePoolPassesOnADirectListener: a listener connected
// directly gets the probe that a pool through PgBouncer sends.
func TestProbeFromThePoolPassesOnADirectListener(t *testing.T) {
	t.Parallel()
	direct := testdb.New(t)
	pooled := testdb.NewBouncer(t, direct) + "&default_query_exec_mode=exec"
	_, warned, delivering, _ := runListener(t, direct, pooled, "LISTEN does not deliver notifications")
	select {
	case <-delivering:
	case <-warned:
		t.Fatal("a direct listener warned that notifications are not delivered")
	case <-time.After(time.Minute):
		t.Fatal("the direct listener did not report delivering within a minute")
	}
}

// TestProbesOfOtherListenersAreNotPassedOn: every listener hears every
// other's probes, and anyone may NOTIFY compute_probe; Notify gets none
// of them, only the notifications of its channels, in order.
func TestProbesOfOtherListenersAreNotPassedOn(t *testing.T) {
	t.Parallel()
	db := testdb.New(t)
	type note struct{ channel, payload string }
	got := make(chan note, 100)
	delivering := make(chan struct{})
	var once sync.Once
	l := &listen.Listener{
		Connect:     func(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, db) },
		Redact:      func(err error) error { return err },
		Log:         slog.New(slog.NewTextHandler(io.Discard, nil)),
		Channels:    []string{"compute_jobs"},
		Notify:      func(channel, payload string) { got <- note{channel, payload} },
		Reconnected: func() {},
		Listening: func(on bool) {
			if on {
				once.Do(func() { close(delivering) })
			}
		},
		Idle:      10 * time.Second,
		ProbeWait: 5 * time.Second,
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.Run(ctx)
	}()
	defer func() {
		stop()
		<-done
	}()
	select {
	case <-delivering:
	case <-time.After(time.Minute):
		t.Fatal("the listener did not start delivering within a minute")
	}
	sender, err := pgx.Connect(t.Context(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close(context.Background())
	// One session's notifications arrive in the order sent: the probes
	// before the marker.
	for _, n := range []note{{listen.ProbeChannel, "0123456789abcdef"}, {listen.ProbeChannel, "forged"}, {"compute_jobs", "marker"}} {
		if _, err := sender.Exec(t.Context(), `SELECT pg_notify($1, $2)`, n.channel, n.payload); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case n := <-got:
		if n != (note{"compute_jobs", "marker"}) {
			t.Errorf("Notify got %+v first, want the marker: another listener's probe was passed on", n)
		}
	case <-time.After(time.Minute):
		t.Fatal("the marker did not arrive within a minute")
	}
}
