// Package listen keeps one PostgreSQL LISTEN connection up and turns its
// notifications into calls. A notification is only a hint: the library's
// readers poll regardless, and after every (re)connect the listener says so
// (Reconnected), because notifications sent meanwhile are lost.
package listen

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/computeplatform/compute/internal/backoff"
)

// ProbeChannel carries the listener's own health probes.
const ProbeChannel = "compute_probe"

// RewakeAfter is when, after a (re)connect, Reconnected is called a second
// time. A transaction that committed while LISTEN was being set up can be
// missed twice: its notification was queued before the listener's
// position, and its rows were not yet visible to the reads the first call
// caused (CI saw a worker with a 10-minute poll leave such a job waiting).
// Likewise a status change whose statement began before the journal hub
// announced itself commits without notifying. Both take milliseconds; the
// second call catches them.
const RewakeAfter = time.Second

// ErrNoDelivery means LISTEN was accepted but the probe never came back.
var ErrNoDelivery = errors.New("compute: notifications are not delivered")

// Listener holds one LISTEN connection, outside any pool so pool rotation
// never closes it. Set the fields, then call Run.
type Listener struct {
	// Connect opens the listening connection.
	Connect func(ctx context.Context) (*pgx.Conn, error)
	// Redact removes secrets from an error before it is logged.
	Redact func(error) error
	Log    *slog.Logger
	// Channels are the channels to LISTEN on besides ProbeChannel.
	Channels []string
	// Notify is called with every notification but the probes.
	Notify func(channel, payload string)
	// Reconnected is called after every (re)connect, and again
	// RewakeAfter later.
	Reconnected func()
	// Listening, when set, is called with true once a (re)connected
	// session delivers notifications, and with false when a session ends
	// before ctx does (notifications are lost until the next one).
	Listening func(bool)
	// Idle is how long the connection may be silent before a probe checks
	// that it still delivers; ProbeWait is how long the probe may take.
	Idle, ProbeWait time.Duration
	// SendProbe, when set, sends each session's first probe from another
	// connection (the pool's), so that its arrival proves notifications
	// of other sessions reach this one. Behind a pooler in transaction
	// mode they never do, whoever else uses the pooler: the LISTEN ran on
	// a server connection this client no longer holds. Without it, the
	// first probe goes out on the listening connection itself, which
	// through such a pooler comes back whenever the probe happens to land
	// on the server connection that ran LISTEN. Later probes, which only
	// check that the listening connection still works, are sent on it.
	SendProbe func(ctx context.Context, channel, payload string) error
	// Announce, when set, runs on the listening connection once LISTEN is
	// in place and again every AnnounceEvery while the session lasts: the
	// journal hub uses it to tell the journal trigger that someone
	// listens. An error closes the session only when the connection failed
	// with it.
	Announce      func(ctx context.Context, conn *pgx.Conn) error
	AnnounceEvery time.Duration
}

// Run keeps a LISTEN connection up until ctx ends: it connects with
// backoff, checks with a probe sent from another connection (SendProbe)
// that notifications really arrive (they do not through PgBouncer in
// transaction mode), and re-probes after every quiet spell, which also
// finds half-open connections. When notifications do not arrive it warns
// (once, until a session works again) and retries much later; polling
// carries the load meanwhile.
func (l *Listener) Run(ctx context.Context) {
	failures := 0
	warned := false // about undelivered notifications, since the last working session
	for ctx.Err() == nil {
		delivered, err := l.session(ctx)
		if ctx.Err() != nil {
			return
		}
		if l.Listening != nil {
			l.Listening(false)
		}
		if delivered {
			failures, warned = 0, false // a working session: the next loss is a fresh start
		}
		failures++
		wait := backoff.Wait(failures, 30*time.Second)
		if !delivered && errors.Is(err, ErrNoDelivery) {
			wait = 5 * time.Minute
			if !warned {
				l.Log.Warn("LISTEN does not deliver notifications from other sessions (a pooler in transaction mode? give the listener a direct connection with compute.WithDirectURL, or set PollOnly); polling only", "retry_in", wait)
			} else {
				l.Log.Debug("LISTEN still does not deliver notifications; polling only", "retry_in", wait)
			}
			warned = true
		} else {
			l.Log.Warn("listener connection lost; polling until it is back", "err", l.Redact(err), "retry_in", wait)
		}
		if !backoff.Sleep(ctx, wait) {
			return
		}
	}
}

// session runs one connection's life: connect, LISTEN, probe, then deliver
// notifications until the connection fails or ctx ends. delivered reports
// whether the first probe came back, i.e. the session worked.
func (l *Listener) session(ctx context.Context) (delivered bool, err error) {
	connectCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	conn, err := l.Connect(connectCtx)
	cancel()
	if err != nil {
		return false, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	// One round trip for every channel, bounded like the probe: a
	// connection cut right after it opened must not hang the listener.
	var listen []string
	for _, ch := range append(l.Channels, ProbeChannel) {
		listen = append(listen, "LISTEN "+pgx.Identifier{ch}.Sanitize())
	}
	listenCtx, cancel := context.WithTimeout(ctx, l.ProbeWait)
	_, err = conn.Exec(listenCtx, strings.Join(listen, "; "))
	cancel()
	if err != nil {
		return false, err
	}
	if err := l.runAnnounce(ctx, conn); err != nil {
		return false, err
	}
	announced := time.Now()
	if err := l.probe(ctx, conn, l.SendProbe); err != nil {
		return false, err
	}
	l.Log.Debug("listening for notifications")
	if l.Listening != nil {
		l.Listening(true)
	}
	l.Reconnected()
	rewake := time.Now().Add(RewakeAfter) // zero once done
	for {
		wait := l.Idle
		if !rewake.IsZero() {
			wait = min(wait, time.Until(rewake))
		}
		if l.Announce != nil {
			wait = min(wait, time.Until(announced.Add(l.AnnounceEvery)))
		}
		waitCtx, cancel := context.WithTimeout(ctx, wait)
		n, err := conn.WaitForNotification(waitCtx)
		timedOut := waitCtx.Err() != nil // read before cancel, which sets it too
		cancel()
		switch {
		case ctx.Err() != nil:
			return true, nil
		case err != nil && timedOut:
			if wait < l.Idle {
				break // the second call or the announcement is due
			}
			// Quiet for Idle: make sure the connection still works.
			if err := l.probe(ctx, conn, nil); err != nil {
				return true, err
			}
		case err != nil:
			return true, err
		default:
			l.deliver(n)
		}
		if !rewake.IsZero() && !time.Now().Before(rewake) {
			l.Reconnected()
			rewake = time.Time{}
		}
		if l.Announce != nil && time.Since(announced) >= l.AnnounceEvery {
			if err := l.runAnnounce(ctx, conn); err != nil {
				return true, err
			}
			announced = time.Now()
		}
	}
}

// runAnnounce runs l.Announce, if any. A failure that leaves the connection
// working (say, a role that may not write compute.meta) is logged and
// returned as nil: listening still works, only less is sent.
func (l *Listener) runAnnounce(ctx context.Context, conn *pgx.Conn) error {
	if l.Announce == nil {
		return nil
	}
	callCtx, cancel := context.WithTimeout(ctx, l.ProbeWait)
	defer cancel()
	err := l.Announce(callCtx, conn)
	if err != nil && !conn.IsClosed() {
		l.Log.Warn("could not announce this listener; journal notifications may not come, and Wait and Follow fall back to their 5 s check", "err", l.Redact(err))
		return nil
	}
	return err
}

// probeSQL sends a probe on the listening connection: to itself, which
// proves the connection works, not that others' notifications reach it.
const probeSQL = "SELECT pg_notify($1, $2)"

// probe sends a notification to this connection, with send (from another
// connection) or else on conn, and waits for it, passing on whatever else
// arrives meanwhile. A dead or half-open connection fails the round trip
// within ProbeWait; a pooler that swallows notifications gives
// ErrNoDelivery.
func (l *Listener) probe(ctx context.Context, conn *pgx.Conn, send func(ctx context.Context, channel, payload string) error) error {
	sendCtx, cancel := context.WithTimeout(ctx, l.ProbeWait)
	defer cancel()
	token := fmt.Sprintf("%016x", rand.Uint64())
	var err error
	if send != nil {
		err = send(sendCtx, ProbeChannel, token)
	} else {
		_, err = conn.Exec(sendCtx, probeSQL, ProbeChannel, token)
	}
	if err != nil {
		return err
	}
	// The wait gets its own budget: a slow round trip on a loaded server
	// must not pass for notifications that never come.
	waitCtx, cancel := context.WithTimeout(ctx, l.ProbeWait)
	defer cancel()
	for {
		n, err := conn.WaitForNotification(waitCtx)
		if err != nil {
			if waitCtx.Err() == nil || ctx.Err() != nil || conn.IsClosed() {
				return err
			}
			// Nothing came: notifications are not delivered, or the
			// connection is dead, which one round trip tells.
			pingCtx, cancel := context.WithTimeout(ctx, l.ProbeWait)
			defer cancel()
			if err := conn.Ping(pingCtx); err != nil {
				return err
			}
			return ErrNoDelivery
		}
		if n.Channel == ProbeChannel && n.Payload == token {
			return nil
		}
		l.deliver(n)
	}
}

// deliver passes a notification on to Notify, unless it is a probe: every
// listener of the database hears every other's probes (they share
// ProbeChannel), and passing them on would wake the journal's waiters
// every time any process's listener checks its connection.
func (l *Listener) deliver(n *pgconn.Notification) {
	if n.Channel != ProbeChannel {
		l.Notify(n.Channel, n.Payload)
	}
}
