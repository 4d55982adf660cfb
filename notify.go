package compute

import (
	"context"
	"encoding/hex"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/computeplatform/compute/internal/listen"
)

// Notification channels. The insert trigger and Retry/RequeueStale send the
// queue name on channelJobs; Cancel sends the job id (hex) on channelCancel.
// The listener's own probes go on listen.ProbeChannel.
const (
	channelJobs   = "compute_jobs"
	channelCancel = "compute_cancel"
	// channelEvents carries no payload: the journal has new events.
	channelEvents = "compute_events"
)

// newListener returns a listener (internal/listen) on the Queue's
// connection settings, outside its pool, for the given channels; notify
// gets every notification, reconnected every (re)connect.
func (q *Queue) newListener(log *slog.Logger, channels []string, notify func(channel, payload string), reconnected func()) *listen.Listener {
	return &listen.Listener{
		Connect: func(ctx context.Context) (*pgx.Conn, error) {
			conn, err := pgx.ConnectConfig(ctx, q.pool.Config().ConnConfig.Copy())
			return conn, redactError(err, q.password)
		},
		Redact:      func(err error) error { return redactError(err, q.password) },
		Log:         log,
		Channels:    channels,
		Notify:      notify,
		Reconnected: reconnected,
		Idle:        10 * time.Second,
		ProbeWait:   5 * time.Second,
	}
}

// listening is the Worker's hook for its listener's state.
func (w *Worker) listening(on bool) {
	w.health.listening.Store(on)
	w.obs.listening(on)
}

// notified is the Worker's listener hook. Payloads are never trusted: any
// role may notify any channel, so a bad payload is ignored, and a cancel
// only makes the worker ask the database (cancelRunning).
func (w *Worker) notified(channel, payload string) {
	switch channel {
	case channelJobs:
		w.wakeQueue(payload)
	case channelCancel:
		var id JobID
		if b, err := hex.DecodeString(payload); err == nil && len(b) == len(id) {
			copy(id[:], b)
			w.cancelRunning(id)
		}
	}
}
