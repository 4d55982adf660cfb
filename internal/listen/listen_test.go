package listen_test

import (
	"bytes"
	"context"
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
