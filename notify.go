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

// probeFromPoolSQL sends a listener's first probe from a pooled
// connection. It is shaped unlike the listener's own probe (listen's
// "SELECT pg_notify($1, $2)"), so that pg_stat_activity tells the
// listening connection from the pooled ones.
const probeFromPoolSQL = `SELECT 1 FROM pg_notify($1, $2)`

// newListener returns a listener (internal/listen) outside the Queue's
// pool, on the direct URL's settings or else the pool's, for the given
// channels; notify gets every notification, reconnected every (re)connect.
// Its first probe of each session comes from the pool, so that it proves
// notifications reach the listener from the connections that send them.
func (q *Queue) newListener(log *slog.Logger, channels []string, notify func(channel, payload string), reconnected func()) *listen.Listener {
	return &listen.Listener{
		Connect: func(ctx context.Context) (*pgx.Conn, error) {
			conn, err := pgx.ConnectConfig(ctx, q.sessionConfig())
			return conn, q.redactSession(err)
		},
		SendProbe: func(ctx context.Context, channel, payload string) error {
			_, err := q.pool.Exec(ctx, probeFromPoolSQL, channel, payload)
			return err
		},
		Redact:      q.redactSession,
		Log:         log,
		Channels:    channels,
		Notify:      notify,
		Reconnected: reconnected,
		Idle:        10 * time.Second,
		ProbeWait:   5 * time.Second,
	}
}

// canListen reports whether a listener may LISTEN: not through a pooler in
// transaction mode (found when the Queue connected) without a direct URL.
// There LISTEN would run on a server connection the pooler then hands to
// other clients, which would get the notifications. The first caller
// that cannot logs why, once per Queue.
func (q *Queue) canListen() bool {
	if !q.behindPooler || q.opts.direct != nil {
		return true
	}
	q.warnPooler.Do(func() {
		q.opts.logger.Warn("the connection goes through a pooler in transaction mode, where LISTEN cannot work: workers find jobs by polling only, and Wait and Follow check every 5 s; give a direct connection string with compute.WithDirectURL for notifications")
	})
	return false
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
