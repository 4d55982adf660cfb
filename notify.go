package compute

import (
	"context"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Notification channels. The insert trigger and Retry/RequeueStale send the
// queue name on channelJobs; Cancel sends the job id (hex) on channelCancel;
// channelProbe carries the listener's own health probes.
const (
	channelJobs   = "compute_jobs"
	channelCancel = "compute_cancel"
	channelProbe  = "compute_probe"
	// channelEvents carries no payload: the journal has new events.
	channelEvents = "compute_events"
)

// listener holds a process's one LISTEN connection, outside the pool so pool
// rotation never closes it, and turns notifications into calls. A
// notification is only a hint: workers poll regardless, and after every
// (re)connect everyone is woken because notifications sent meanwhile are
// lost, and woken again rewakeAfter later (see rewakeAfter).
type listener struct {
	q           *Queue
	log         *slog.Logger
	onJobs      func(queue string) // a job became runnable in queue
	onReconnect func()             // notifications may have been missed
	onCancel    func(id JobID)     // Cancel was called on a running job
	// channels are the channels to LISTEN on besides channelProbe.
	channels []string
	// idle is how long the connection may be silent before a probe checks
	// that it still delivers; probeWait is how long the probe may take.
	idle, probeWait time.Duration
	// announce, when set, runs on the listening connection once LISTEN is
	// in place and again every announceEvery while the session lasts: the
	// journal hub uses it to tell the journal trigger that someone listens.
	// An error closes the session only when the connection failed with it.
	announce      func(ctx context.Context, conn *pgx.Conn) error
	announceEvery time.Duration
}

// run keeps a LISTEN connection up until ctx ends: it connects with
// backoff, checks with a self-addressed probe that notifications really
// arrive (they do not through PgBouncer in transaction mode), and re-probes
// after every quiet spell, which also finds half-open connections. When
// notifications do not arrive it warns and retries much later; polling
// carries the load meanwhile.
func (l *listener) run(ctx context.Context) {
	failures := 0
	for ctx.Err() == nil {
		delivered, err := l.session(ctx)
		if ctx.Err() != nil {
			return
		}
		if delivered {
			failures = 0 // a working session: the next loss is a fresh start
		}
		failures++
		wait := backoffWait(failures, 30*time.Second)
		if !delivered && err == errNoDelivery {
			wait = 5 * time.Minute
			l.log.Warn("LISTEN does not deliver notifications (a pooler in transaction mode?); polling only", "retry_in", wait)
		} else {
			l.log.Warn("listener connection lost; polling until it is back", "err", err, "retry_in", wait)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// rewakeAfter is when, after a (re)connect, everyone is woken a second time.
// A transaction that committed while LISTEN was being set up can be missed
// twice: its notification was queued before the listener's position, and
// its rows were not yet visible to the reads the first wake caused (CI saw
// a worker with a 10-minute poll leave such a job waiting). Likewise a
// status change whose statement began before the journal hub announced
// itself commits without notifying. Both take milliseconds; the second
// wake catches them.
const rewakeAfter = time.Second

// errNoDelivery means LISTEN was accepted but the probe never came back.
var errNoDelivery = fmt.Errorf("compute: notifications are not delivered")

// session runs one connection's life: connect, LISTEN, probe, then deliver
// notifications until the connection fails or ctx ends. delivered reports
// whether the first probe came back, i.e. the session worked.
func (l *listener) session(ctx context.Context) (delivered bool, err error) {
	connectCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	conn, err := pgx.ConnectConfig(connectCtx, l.q.pool.Config().ConnConfig.Copy())
	cancel()
	if err != nil {
		return false, redactError(err, l.q.password)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	// One round trip for every channel, bounded like the probe: a
	// connection cut right after it opened must not hang the listener.
	var listen []string
	for _, ch := range append(l.channels, channelProbe) {
		listen = append(listen, "LISTEN "+pgx.Identifier{ch}.Sanitize())
	}
	listenCtx, cancel := context.WithTimeout(ctx, l.probeWait)
	_, err = conn.Exec(listenCtx, strings.Join(listen, "; "))
	cancel()
	if err != nil {
		return false, err
	}
	if err := l.runAnnounce(ctx, conn); err != nil {
		return false, err
	}
	announced := time.Now()
	if err := l.probe(ctx, conn); err != nil {
		return false, err
	}
	l.log.Debug("listening for notifications")
	l.onReconnect()
	rewake := time.Now().Add(rewakeAfter) // zero once done
	for {
		wait := l.idle
		if !rewake.IsZero() {
			wait = min(wait, time.Until(rewake))
		}
		if l.announce != nil {
			wait = min(wait, time.Until(announced.Add(l.announceEvery)))
		}
		waitCtx, cancel := context.WithTimeout(ctx, wait)
		n, err := conn.WaitForNotification(waitCtx)
		timedOut := waitCtx.Err() != nil // read before cancel, which sets it too
		cancel()
		switch {
		case ctx.Err() != nil:
			return true, nil
		case err != nil && timedOut:
			if wait < l.idle {
				break // the second wake or the announcement is due
			}
			// Quiet for l.idle: make sure the connection still works.
			if err := l.probe(ctx, conn); err != nil {
				return true, err
			}
		case err != nil:
			return true, err
		default:
			l.deliver(n.Channel, n.Payload)
		}
		if !rewake.IsZero() && !time.Now().Before(rewake) {
			l.onReconnect()
			rewake = time.Time{}
		}
		if l.announce != nil && time.Since(announced) >= l.announceEvery {
			if err := l.runAnnounce(ctx, conn); err != nil {
				return true, err
			}
			announced = time.Now()
		}
	}
}

// runAnnounce runs l.announce, if any. A failure that leaves the connection
// working (say, a role that may not write compute.meta) is logged and
// returned as nil: listening still works, only less is sent.
func (l *listener) runAnnounce(ctx context.Context, conn *pgx.Conn) error {
	if l.announce == nil {
		return nil
	}
	callCtx, cancel := context.WithTimeout(ctx, l.probeWait)
	defer cancel()
	err := l.announce(callCtx, conn)
	if err != nil && !conn.IsClosed() {
		l.log.Warn("could not announce this listener; journal notifications may not come, and Wait and Follow fall back to their 5 s check", "err", redactError(err, l.q.password))
		return nil
	}
	return err
}

// probe sends a notification to this connection and waits for it, passing
// on whatever else arrives meanwhile. A dead or half-open connection fails
// the round trip within probeWait; a pooler that swallows notifications
// gives errNoDelivery.
func (l *listener) probe(ctx context.Context, conn *pgx.Conn) error {
	sendCtx, cancel := context.WithTimeout(ctx, l.probeWait)
	defer cancel()
	token := fmt.Sprintf("%016x", rand.Uint64())
	if _, err := conn.Exec(sendCtx, "SELECT pg_notify($1, $2)", channelProbe, token); err != nil {
		return err
	}
	// The wait gets its own budget: a slow round trip on a loaded server
	// must not pass for notifications that never come.
	ctx, cancel = context.WithTimeout(ctx, l.probeWait)
	defer cancel()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			if ctx.Err() != nil && !conn.IsClosed() {
				return errNoDelivery
			}
			return err
		}
		if n.Channel == channelProbe && n.Payload == token {
			return nil
		}
		l.deliver(n.Channel, n.Payload)
	}
}

// deliver passes one notification on. Payloads are never trusted: any role
// may notify any channel, so a bad payload is ignored.
func (l *listener) deliver(channel, payload string) {
	switch channel {
	case channelJobs:
		l.onJobs(payload)
	case channelEvents:
		l.onReconnect()
	case channelCancel:
		var id JobID
		if b, err := hex.DecodeString(payload); err == nil && len(b) == len(id) {
			copy(id[:], b)
			l.onCancel(id)
		}
	}
}
