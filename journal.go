package compute

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/computeplatform/compute/internal/backoff"
)

// Leading comments of the library's UPDATEs of compute.jobs. The journal
// trigger reads them (migration 6) to skip comparing each row's old and new
// status: statusChange promises that every row the statement updates
// changes status, noStatusChange that none does. A statement without either
// is compared row by row, as plain SQL is. Each must be the very first text
// of its statement.
const (
	statusChange   = "-- compute: status change"
	noStatusChange = "-- compute: no status change"
)

// Cursor is a position in the job journal: Events returns what comes after
// it. The zero Cursor is the start of the journal. Cursors are ordered by
// commit safety, not by time: an event is only returned once no running
// transaction can still add an event before it, so a reader that resumes
// from the last cursor it saw never misses one.
type Cursor struct {
	xid uint64 // the writing transaction
	seq int64  // the journal row, one per statement, queue and status
	pos int64  // the event's position in the row's arrays, from 1
}

// String encodes the cursor for storage, as "xid.seq.pos".
func (c Cursor) String() string { return fmt.Sprintf("%d.%d.%d", c.xid, c.seq, c.pos) }

// ParseCursor decodes [Cursor.String]; "" is the zero Cursor. Anything else
// fails with [ErrInvalidOption].
func ParseCursor(s string) (Cursor, error) {
	if s == "" {
		return Cursor{}, nil
	}
	parts := strings.Split(s, ".")
	if len(parts) == 3 {
		xid, err1 := strconv.ParseUint(parts[0], 10, 64)
		seq, err2 := strconv.ParseInt(parts[1], 10, 64)
		pos, err3 := strconv.ParseInt(parts[2], 10, 64)
		if err1 == nil && err2 == nil && err3 == nil && seq >= 0 && pos >= 0 {
			return Cursor{xid, seq, pos}, nil
		}
	}
	return Cursor{}, fmt.Errorf("%w: %q is not a journal cursor; pass what Cursor.String returned", ErrInvalidOption, s)
}

// Event is one status change of a job, as the journal recorded it.
type Event struct {
	// Cursor is this event's position; pass it to Events to read on.
	Cursor  Cursor
	JobID   JobID
	Queue   string
	Status  Status // the status the job entered
	Attempt int    // the job's attempt count at the change
	At      time.Time
}

// readEventsSQL returns up to $4 events after the cursor ($1, $2, $3) whose
// transactions are older than every running one (pg_snapshot_xmin), in
// cursor order: such a transaction has committed or aborted, so no event can
// appear before the last one returned. The primary key (xid, seq) serves the
// range; each row's arrays unnest into its events. xid8 has no binary
// transfer in pgx, so it travels as text.
const readEventsSQL = `
SELECT e.xid::text::bigint, e.seq, u.pos, u.job_id, e.queue, e.status, u.attempt, e.at
FROM compute.events e
CROSS JOIN LATERAL unnest(e.job_ids, e.attempts) WITH ORDINALITY AS u(job_id, attempt, pos)
WHERE (e.xid, e.seq) >= ($1::text::xid8, $2) AND e.xid < pg_snapshot_xmin(pg_current_snapshot())
  AND (e.xid, e.seq, u.pos) > ($1::text::xid8, $2, $3)
ORDER BY e.xid, e.seq, u.pos
LIMIT $4`

// heldBackSQL says whether committed events after the cursor's row wait
// behind an older running transaction.
const heldBackSQL = `
SELECT EXISTS (SELECT FROM compute.events
               WHERE (xid, seq) > ($1::text::xid8, $2) AND xid >= pg_snapshot_xmin(pg_current_snapshot()))`

// maxEvents caps one Events call.
const maxEvents = 10000

// journalOriginSQL compares the journal's newest transaction id, and the
// cursor's ($1), with the next id this server will assign (the snapshot's
// xmax): an id at or above it was written by another cluster, whose copy
// this database is. max(xid) reads the primary key's last entry.
const journalOriginSQL = `
SELECT n.next::text, coalesce(e.newest::text, ''), coalesce(e.newest >= n.next, false), $1::text::xid8 >= n.next
FROM (SELECT pg_snapshot_xmax(pg_current_snapshot()) AS next) n,
     (SELECT max(xid) AS newest FROM compute.events) e`

// origin is journalOriginSQL's answer.
type origin struct {
	next, newest          string
	copied, foreignCursor bool
}

// err says what comes from another cluster, if anything: the journal, or
// the cursor c.
func (o origin) err(c Cursor) error {
	switch {
	case o.copied:
		return fmt.Errorf("%w: it holds events of transaction %s, which this server (next transaction %s) has not reached; "+
			"the database was copied (pg_dump, or a logical replica): call Queue.RebaseJournal once, then start readers "+
			"again from the zero Cursor or from Head", ErrJournalFromAnotherCluster, o.newest, o.next)
	case o.foreignCursor:
		return fmt.Errorf("%w: cursor %s names transaction %d, which this server (next transaction %s) has not reached "+
			"(the database was copied, or an asynchronous standby was promoted without the transactions this cursor read); "+
			"start again from the zero Cursor or from Head", ErrJournalFromAnotherCluster, c, c.xid, o.next)
	}
	return nil
}

// readJournal runs journalOriginSQL for the cursor c and then sql, in one
// round trip, and hands sql's result to read. It returns an error matching
// [ErrJournalFromAnotherCluster] when the journal or c was written by
// another cluster.
func (q *Queue) readJournal(ctx context.Context, what string, c Cursor, read func(pgx.BatchResults) error, sql string, args ...any) error {
	var o origin
	err := q.do(ctx, what, func(ctx context.Context) error {
		b := &pgx.Batch{}
		b.Queue(journalOriginSQL, strconv.FormatUint(c.xid, 10))
		b.Queue(sql, args...)
		br := q.pool.SendBatch(ctx, b)
		defer br.Close()
		if err := br.QueryRow().Scan(&o.next, &o.newest, &o.copied, &o.foreignCursor); err != nil {
			return err
		}
		return read(br)
	})
	if err != nil {
		return err
	}
	return o.err(c)
}

// Events returns up to limit journal events after the cursor, in
// commit-safe order (see Cursor). Every status change of every job is
// journaled, including those made by plain SQL. An event of a transaction
// that is still open, or that an older open transaction holds back, comes
// in a later call: a long-running transaction anywhere in the database
// delays the journal. The order is that of the writing transactions' ids,
// i.e. of each transaction's first write. For the library's own changes (one
// statement per transaction) that is commit order; but a transaction that
// wrote something, then changed a job after another transaction had
// committed a change to it, is read first. When the order of one job's
// events matters, compare Attempt and Status, or read the job. It returns
// an error matching [ErrJournalFromAnotherCluster] when the journal or the
// cursor was written by another cluster (see [Queue.RebaseJournal]).
func (q *Queue) Events(ctx context.Context, after Cursor, limit int) ([]Event, error) {
	if limit < 1 || limit > maxEvents {
		return nil, fmt.Errorf("%w: events limit %d is outside 1..%d", ErrInvalidOption, limit, maxEvents)
	}
	var events []Event
	err := q.readJournal(ctx, "compute: read events", after, func(br pgx.BatchResults) error {
		rows, err := br.Query()
		if err != nil {
			return err
		}
		events, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (Event, error) {
			var e Event
			var id []byte
			err := row.Scan(&e.Cursor.xid, &e.Cursor.seq, &e.Cursor.pos, &id, &e.Queue, &e.Status, &e.Attempt, &e.At)
			copy(e.JobID[:], id)
			return e, err
		})
		return err
	}, readEventsSQL, strconv.FormatUint(after.xid, 10), after.seq, after.pos, limit)
	if err != nil {
		return nil, err
	}
	return events, nil
}

// journalHeadSQL is the newest readable event: the primary key read backwards
// from the horizon, and the last position of that row.
const journalHeadSQL = `
SELECT e.xid::text::bigint, e.seq, cardinality(e.job_ids) FROM compute.events e
WHERE e.xid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY e.xid DESC, e.seq DESC LIMIT 1`

// Head returns the cursor of the newest event readable now, so a new
// follower can start from the present instead of the journal's start. It
// returns an error matching [ErrJournalFromAnotherCluster] when the journal
// holds events written by another cluster (see [Queue.RebaseJournal]).
func (q *Queue) Head(ctx context.Context) (Cursor, error) {
	var c Cursor
	err := q.readJournal(ctx, "compute: journal head", Cursor{}, func(br pgx.BatchResults) error {
		err := br.QueryRow().Scan(&c.xid, &c.seq, &c.pos)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		return err
	}, journalHeadSQL)
	if err != nil {
		return Cursor{}, err
	}
	return c, nil
}

// rebaseEventsSQL moves the events of transactions this server has not
// reached (written by another cluster) to this statement's own
// transaction, keeping their (xid, seq) order: the identity numbers the
// re-inserted rows in the order of the ORDER BY. Like any new events they
// become readable once this transaction and every older one have ended.
const rebaseEventsSQL = `
WITH moved AS (
    DELETE FROM compute.events WHERE xid >= pg_snapshot_xmax(pg_current_snapshot())
    RETURNING xid, seq, queue, status, job_ids, attempts, at
), rebased AS (
    INSERT INTO compute.events (queue, status, job_ids, attempts, at)
    SELECT queue, status, job_ids, attempts, at FROM moved ORDER BY xid, seq
    RETURNING cardinality(job_ids) AS events
)
SELECT coalesce(sum(events), 0) FROM rebased`

// RebaseJournal makes a journal copied from another cluster readable, and
// returns how many events it moved. Journal cursors are transaction ids,
// which mean something only in the cluster that assigned them. pg_upgrade
// and physical replicas keep the cluster's counter, so the journal and
// saved cursors survive them; a copy made with pg_dump and pg_restore, or
// a switchover to a logical replica, starts a new counter, and when that
// counter is behind the copied events' ids, Events, Head and Follow fail
// with [ErrJournalFromAnotherCluster]. RebaseJournal moves those events, in
// one transaction and in their order, to its own transaction id: they then
// read after the events this server wrote before the call, so call it
// right after the copy, before workers start. Cursors saved on the other
// cluster cannot be mapped to the moved events: start readers again from
// the zero Cursor (and skip what they have seen) or from Head. It needs
// DELETE and INSERT on compute.events, and returns 0 when there is nothing
// to move. Safe for concurrent use; ctx covers the statement.
func (q *Queue) RebaseJournal(ctx context.Context) (int, error) {
	var n int64
	err := q.do(ctx, "compute: rebase journal", func(ctx context.Context) error {
		return q.pool.QueryRow(ctx, rebaseEventsSQL).Scan(&n)
	})
	return int(n), err
}

// Follow calls fn with every batch of journal events after the cursor, as
// they become readable, until ctx ends (it then returns ctx's error) or fn
// returns an error (which Follow returns), or the journal or the cursor
// turns out to be written by another cluster (an error matching
// [ErrJournalFromAnotherCluster]). It is woken by a notification
// when events are written, re-reads quickly while an open transaction holds
// events back, and otherwise checks every 5 s in case a notification was
// lost. A read that fails (the database is away) is retried with backoff,
// up to 5 s apart; the Queue's logger gets one warning per spell of
// failures. Store the last event's Cursor to resume after a restart.
func (q *Queue) Follow(ctx context.Context, after Cursor, fn func([]Event) error) error {
	hub, err := q.journalHub()
	if err != nil {
		return err
	}
	held := 0
	failures := 0 // reads failed in a row: the first is a warning, the rest debug lines
	for {
		changed := hub.changed()
		events, err := q.Events(ctx, after, 1000)
		if errors.Is(err, ErrClosed) || errors.Is(err, ErrJournalFromAnotherCluster) {
			return err
		}
		switch {
		case err == nil:
			if failures > 0 {
				q.opts.logger.Info("reading the journal works again", "failed_reads", failures)
			}
			failures = 0
		case ctx.Err() == nil:
			failures++
			level := slog.LevelDebug
			if failures == 1 {
				level = slog.LevelWarn
			}
			q.opts.logger.Log(ctx, level, "reading the journal failed; retrying", "err", err, "failed_reads", failures)
		}
		if len(events) > 0 {
			if err := fn(events); err != nil {
				return err
			}
			after, held = events[len(events)-1].Cursor, 0
			continue
		}
		wait := 5 * time.Second
		if err == nil {
			var pending bool
			if e := q.pool.QueryRow(ctx, heldBackSQL, strconv.FormatUint(after.xid, 10), after.seq).Scan(&pending); e == nil && pending {
				held++
				wait = min(wait, time.Duration(10<<min(held, 8))*time.Millisecond)
			}
		} else {
			wait = backoff.Wait(failures, wait)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-changed:
		case <-t.C:
		}
		t.Stop()
	}
}

// waitStatusSQL reads a job's status without touching last_accessed, and the
// snapshot's xmin: whatever changes the job after this read is written by
// a transaction whose xid is at least that (see finishedEventSQL).
const waitStatusSQL = `SELECT status, pg_snapshot_xmin(pg_current_snapshot())::text FROM compute.jobs WHERE job_id = $1`

// finishedEventSQL is the last complete, failed or expired event of job $1
// written by a transaction that had not ended at Wait's last read of it
// ($2, that read's xmin): the primary key read backwards down to $2, so it
// costs the events written since.
const finishedEventSQL = `
SELECT e.status FROM compute.events e
WHERE e.xid >= $2::text::xid8 AND e.status IN ('complete', 'failed', 'expired') AND $1 = ANY (e.job_ids)
ORDER BY e.xid DESC, e.seq DESC LIMIT 1`

// Wait blocks until the job is complete, failed or expired, and returns it
// (as Get does). It is woken by the journal's notifications, not by busy
// polling (a slow 5 s check covers lost notifications). It returns ctx's
// error when ctx ends first, and an error matching [ErrNotFound] when the job
// does not exist: an unknown id, or one already deleted, or a job deleted
// while Wait waited. In the last case the error says so, and how the job
// finished when the journal holds it (retention or Purge deleted it before
// Wait could read its outcome: keep finished jobs longer than callers
// wait). Finishing wakes Wait, so it sees such a deletion at once; a job
// deleted by plain SQL before it finished sends nothing, and Wait sees that
// at its 5 s check.
func (q *Queue) Wait(ctx context.Context, id JobID) (*Job, error) {
	hub, err := q.journalHub()
	if err != nil {
		return nil, err
	}
	seen := "" // the xmin of the last read that found the job unfinished
	for {
		changed := hub.changed()
		var status Status
		var xmin string
		err := q.do(ctx, "compute: wait", func(ctx context.Context) error {
			return q.pool.QueryRow(ctx, waitStatusSQL, id[:]).Scan(&status, &xmin)
		})
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return nil, q.waitedForDeleted(ctx, id, seen)
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case errors.Is(err, ErrClosed):
			return nil, err
		case err == nil && (status == StatusComplete || status == StatusFailed || status == StatusExpired):
			job, err := q.Get(ctx, id)
			if errors.Is(err, ErrNotFound) {
				return nil, deletedAfterFinish(id, status)
			}
			return job, err
		case err == nil:
			seen = xmin
		}
		t := time.NewTimer(5 * time.Second)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-changed:
		case <-t.C:
		}
		t.Stop()
	}
}

// deletedAfterFinish is Wait's error for a job that finished with status
// and was deleted before Wait could read it.
func deletedAfterFinish(id JobID, status Status) error {
	return fmt.Errorf("compute: wait for job %s: it finished (%s), then retention or Purge deleted it before Wait read it; keep finished jobs longer: %w",
		id, status, ErrNotFound)
}

// waitedForDeleted is Wait's error for a job it did not find. seen is the
// xmin of its last read that found the job unfinished ("" if none did):
// the journal since then tells whether the job finished before it went.
func (q *Queue) waitedForDeleted(ctx context.Context, id JobID, seen string) error {
	if seen == "" {
		return fmt.Errorf("compute: wait for job %s: there is no job with this id (never enqueued, or deleted): %w", id, ErrNotFound)
	}
	var status Status
	err := q.do(ctx, "compute: wait", func(ctx context.Context) error {
		return q.pool.QueryRow(ctx, finishedEventSQL, id[:], seen).Scan(&status)
	})
	switch {
	case err == nil:
		return deletedAfterFinish(id, status)
	case errors.Is(err, pgx.ErrNoRows):
		return fmt.Errorf("compute: wait for job %s: it was deleted while Wait waited, before it finished as far as the journal shows (a DELETE by plain SQL, or the journal is off): %w",
			id, ErrNotFound)
	}
	return fmt.Errorf("compute: wait for job %s: it was deleted while Wait waited (how it finished is unknown: %v): %w", id, err, ErrNotFound)
}

// eventHub is a Queue's one LISTEN connection for journal notifications,
// shared by every Wait and Follow of the queue. It starts with the first of
// them and stops when the Queue closes.
type eventHub struct {
	mu   sync.Mutex
	ch   chan struct{} // closed at the next notification
	stop context.CancelFunc
	done chan struct{}
}

// journalHub returns the queue's hub, starting it on first use.
func (q *Queue) journalHub() (*eventHub, error) {
	q.hubMu.Lock()
	defer q.hubMu.Unlock()
	if q.closed.Load() {
		return nil, fmt.Errorf("compute: journal: %w", ErrClosed)
	}
	if q.hub != nil {
		return q.hub, nil
	}
	ctx, stop := context.WithCancel(context.Background())
	h := &eventHub{ch: make(chan struct{}), stop: stop, done: make(chan struct{})}
	q.hub = h
	if !q.canListen() {
		close(h.done) // no listener: waiters wake at their 5 s checks
		return h, nil
	}
	// compute_jobs too: new jobs are journaled without a notification of
	// their own, since the insert trigger already sends this one.
	l := q.newListener(q.opts.logger, []string{channelEvents, channelJobs},
		func(string, string) { h.broadcast() }, h.broadcast)
	l.Announce, l.AnnounceEvery = announceJournalListener, 20*time.Second
	go func() {
		defer close(h.done)
		l.Run(ctx)
	}()
	return h, nil
}

// listenJournalSQL tells the journal trigger (migration 7) to send compute_events
// notifications for the next minute; the hub repeats it every 20 s, so the
// notifications stop within a minute of the last listener's end. The time
// is the database's, as the trigger compares it with now().
const listenJournalSQL = `INSERT INTO compute.meta (key, value)
VALUES ('journal_listened_until', (extract(epoch FROM now())::bigint + 60)::text)
ON CONFLICT (key) DO UPDATE SET value = excluded.value`

// announceJournalListener runs listenJournalSQL on the hub's connection.
func announceJournalListener(ctx context.Context, conn *pgx.Conn) error {
	_, err := conn.Exec(ctx, listenJournalSQL)
	return err
}

// changed returns a channel that closes at the next notification. Take it
// before reading, so a change between the read and the wait is not missed.
func (h *eventHub) changed() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ch
}

// broadcast wakes everyone waiting on changed.
func (h *eventHub) broadcast() {
	h.mu.Lock()
	defer h.mu.Unlock()
	close(h.ch)
	h.ch = make(chan struct{})
}

// close stops the hub's listener, waits for it, and wakes every waiter,
// which then finds the Queue closed.
func (h *eventHub) close() {
	h.stop()
	<-h.done
	h.broadcast()
}

// purgeEventsSQL walks the primary key from just after ($3, $4): up to $1 rows
// in (xid, seq) order, up to the first one written within the retention ($2
// microseconds), and deletes the older ones among them (see purgeJournal).
// The running count has a run condition, so the scan stops at that first
// recent row: the purge reads what it deletes and one row more, where an
// index on at matched every cutoff once freed pages were reused. It returns
// the rows deleted, the rows walked and the last of them.
const purgeEventsSQL = `
WITH walk AS MATERIALIZED (
    SELECT ctid, xid, seq, at FROM (
        SELECT ctid, xid, seq, at,
               count(*) FILTER (WHERE at BETWEEN now() - $2 * interval '1 microsecond' AND now())
                   OVER (ORDER BY xid, seq ROWS UNBOUNDED PRECEDING) AS recent
        FROM (SELECT ctid, xid, seq, at FROM compute.events
              WHERE (xid, seq) > ($3::text::xid8, $4) ORDER BY xid, seq LIMIT $1) front
    ) w
    WHERE recent = 0
), gone AS (
    DELETE FROM compute.events
    WHERE ctid = ANY (ARRAY(SELECT ctid FROM walk WHERE at < now() - $2 * interval '1 microsecond'))
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone), count(*) OVER (), xid::text, seq
FROM walk ORDER BY xid DESC, seq DESC LIMIT 1`

// purgeJournal deletes journal events older than age, in batches of
// staleBatch rows read from the front of the primary key, and returns how
// many. Each batch goes on where the last one stopped, so a round never
// reads its own deleted rows again. It stops at the first event written
// within age: xid8 grows with time, so what is older comes first, except
// that a transaction's at is its start and its xid its first write. An
// event can therefore wait behind a newer one of a lower xid, but never
// for longer than age after its own transaction's first write (every event
// before it has a lower xid, so an at before that write). Events of
// transactions still open are not seen and do not stop the walk; the next
// round finds them. Safe to run from many processes at once.
func (q *Queue) purgeJournal(ctx context.Context, age time.Duration) (int, error) {
	total, fromXid, fromSeq := 0, "0", int64(0)
	for {
		var deleted, walked int64
		err := q.do(ctx, "compute: purge journal", func(ctx context.Context) error {
			err := q.pool.QueryRow(ctx, purgeEventsSQL, staleBatch, age.Microseconds(), fromXid, fromSeq).
				Scan(&deleted, &walked, &fromXid, &fromSeq)
			if errors.Is(err, pgx.ErrNoRows) {
				return nil // nothing old at the front
			}
			return err
		})
		total += int(deleted)
		if err != nil || walked < staleBatch {
			return total, err
		}
	}
}
