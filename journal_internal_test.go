package compute

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/computeplatform/compute/internal/testdb"
)

// hoursAgo dates test events: an event of hour h is dated 100-h hours ago,
// so later hours are newer and each purge cutoff falls between two hours.
func hoursAgo(h int) time.Duration { return time.Duration(100-h) * time.Hour }

// insertEventHour writes 20,000 events dated hour h with plain SQL, in 20
// statements (20 transactions, so 20 xids).
func insertEventHour(t *testing.T, q *Queue, h int) {
	t.Helper()
	for range 20 {
		if _, err := q.pool.Exec(t.Context(), `
			INSERT INTO compute.events (queue, status, job_ids, attempts, at)
			SELECT 'q', 'complete', ARRAY[uuid_send(gen_random_uuid())], ARRAY[1], now() - $1 * interval '1 microsecond'
			FROM generate_series(1, 1000)`, hoursAgo(h).Microseconds()); err != nil {
			t.Fatal(err)
		}
	}
}

// eventBlocks is the number of blocks of compute.events and its indexes
// that the one backend of conn's pool has read, from the cumulative
// statistics, after making that backend flush its own.
func eventBlocks(t *testing.T, pool *pgxpool.Pool) (heap, index int64) {
	t.Helper()
	ctx := t.Context()
	if _, err := pool.Exec(ctx, `SELECT pg_stat_force_next_flush()`); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `
		SELECT coalesce(heap_blks_hit + heap_blks_read, 0), coalesce(idx_blks_hit + idx_blks_read, 0)
		FROM pg_statio_user_tables WHERE schemaname = 'compute' AND relname = 'events'`).Scan(&heap, &index); err != nil {
		t.Fatal(err)
	}
	return heap, index
}

// TestJournalPurgeStaysSmallOverRetentionCycles runs retention cycles over
// the journal: each cycle writes a new hour of events into the space that
// the purge and VACUUM of an older hour freed, then purges with nothing to
// delete, then deletes the hour before and vacuums. The empty purge must
// read a few blocks, the same in every cycle, while the table holds
// hundreds of pages: with the BRIN index on at, the freed ranges kept their
// old minimum and every range matched any cutoff, so it read the table.
func TestJournalPurgeStaysSmallOverRetentionCycles(t *testing.T) {
	ctx := t.Context()
	cfg, err := pgxpool.ParseConfig(testdb.New(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1 // one backend, whose statistics are the purge's
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	one, err := New(ctx, pool, WithMigrate())
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	// Autovacuum's reads would count in the statistics; the test vacuums.
	if _, err := pool.Exec(ctx, `ALTER TABLE compute.events SET (autovacuum_enabled = false)`); err != nil {
		t.Fatal(err)
	}
	purge := func(keepFromHour int) (deleted int, heap, index int64) {
		t.Helper()
		h0, i0 := eventBlocks(t, pool)
		n, err := one.purgeJournal(ctx, hoursAgo(keepFromHour)+30*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		h1, i1 := eventBlocks(t, pool)
		return n, h1 - h0, i1 - i0
	}
	vacuum := func() {
		t.Helper()
		if _, err := pool.Exec(ctx, `VACUUM ANALYZE compute.events`); err != nil {
			t.Fatal(err)
		}
	}
	insertEventHour(t, one, 0)
	vacuum()
	for c := 1; c <= 5; c++ {
		insertEventHour(t, one, c)
		n, heap, index := purge(c - 1) // hour c-2 is gone already
		pages := queryInt(t, pool, `SELECT pg_relation_size('compute.events') / 8192`)
		t.Logf("cycle %d: the empty purge read %d heap and %d index blocks of a %d-page table", c, heap, index, pages)
		if n != 0 || heap > 8 || heap+index > 16 || pages < 400 {
			t.Errorf("cycle %d: the purge with nothing to delete deleted %d events and read %d heap and %d index blocks of a %d-page table; want 0, at most 8 heap and 16 in all",
				c, n, heap, index, pages)
		}
		n, heap, index = purge(c)
		t.Logf("cycle %d: the purge of hour %d deleted %d events, reading %d heap and %d index blocks", c, c-1, n, heap, index)
		if n != 20000 {
			t.Fatalf("cycle %d: the purge of hour %d deleted %d events, want 20000", c, c-1, n)
		}
		vacuum()
	}
}

// queryInt runs a query that returns one integer.
func queryInt(t *testing.T, pool *pgxpool.Pool, sql string) int64 {
	t.Helper()
	var n int64
	if err := pool.QueryRow(context.Background(), sql).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// purgeLeaves purges events older than 50 hours and checks how many went
// and which are left, by their queue names in primary-key order.
func purgeLeaves(t *testing.T, q *Queue, purged int, want ...string) {
	t.Helper()
	n, err := q.purgeJournal(t.Context(), 50*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	if err := q.pool.QueryRow(t.Context(), `SELECT coalesce(array_agg(queue ORDER BY xid, seq), '{}') FROM compute.events`).Scan(&got); err != nil {
		t.Fatal(err)
	}
	if n != purged || !slices.Equal(got, want) {
		t.Fatalf("the purge deleted %d events and left %v; want %d deleted and %v left", n, got, purged, want)
	}
}

// TestJournalPurgeStopsAtTheFirstRecentEvent pins what the purge deletes:
// the old events at the front of the primary key, up to the first one
// written within the retention. An old event behind that one waits until
// it is old too; an event dated in the future neither stops the walk nor
// goes; an event of a transaction still open is passed over, and deleted
// by a later purge once it has committed.
func TestJournalPurgeStopsAtTheFirstRecentEvent(t *testing.T) {
	ctx := t.Context()
	q := openMigrated(t)
	const insert = `INSERT INTO compute.events (queue, status, job_ids, attempts, at)
		VALUES ($1, 'queued', '{}', '{}', now() - $2 * interval '1 hour')`
	open, err := q.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Rollback(context.Background())
	if _, err := open.Exec(ctx, insert, "open", 100); err != nil { // the lowest xid
		t.Fatal(err)
	}
	for _, e := range []struct {
		label string
		hours float64
	}{{"a", 100}, {"future", -24}, {"b", 100}, {"recent", 1}, {"behind", 100}} {
		if _, err := q.pool.Exec(ctx, insert, e.label, e.hours); err != nil {
			t.Fatal(err)
		}
	}
	purgeLeaves(t, q, 2, "future", "recent", "behind")
	if err := open.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	purgeLeaves(t, q, 1, "future", "recent", "behind")
	if _, err := q.pool.Exec(ctx, `UPDATE compute.events SET at = at - interval '60 hours' WHERE queue = 'recent'`); err != nil {
		t.Fatal(err)
	}
	purgeLeaves(t, q, 2, "future")
}

// TestJournalPurgeIsNotFooledByCopiedEvents: events copied from another
// cluster (transaction ids this server has not reached) sort after every
// event it writes. The purge must go on deleting this server's old events
// and keep its recent ones; the copied ones wait for RebaseJournal, after
// which they are purged by age like the others.
func TestJournalPurgeIsNotFooledByCopiedEvents(t *testing.T) {
	ctx := t.Context()
	q := openMigrated(t)
	const insert = `INSERT INTO compute.events (queue, status, job_ids, attempts, at)
		VALUES ($1, 'queued', '{}', '{}', now() - $2 * interval '1 hour')`
	for _, e := range []struct {
		label string
		hours int
	}{{"old", 100}, {"recent", 1}} {
		if _, err := q.pool.Exec(ctx, insert, e.label, e.hours); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := q.pool.Exec(ctx, `
		INSERT INTO compute.events (xid, queue, status, job_ids, attempts, at)
		VALUES ((pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 3000000000)::text::xid8, 'copied', 'complete', '{}', '{}',
		        now() - interval '100 hours')`); err != nil {
		t.Fatal(err)
	}
	purgeLeaves(t, q, 1, "recent", "copied")
	if n, err := q.RebaseJournal(ctx); err != nil || n != 0 { // the row holds no job ids
		t.Fatalf("RebaseJournal = %d, %v", n, err)
	}
	purgeLeaves(t, q, 0, "recent", "copied")
	if _, err := q.pool.Exec(ctx, `UPDATE compute.events SET at = at - interval '60 hours' WHERE queue = 'recent'`); err != nil {
		t.Fatal(err)
	}
	purgeLeaves(t, q, 2)
}

// TestWaitSaysWhenItsJobWasDeleted: a job deleted while Wait waits is not
// an unknown id. Deleted after it finished (retention, Purge, or here one
// plain-SQL transaction), Wait must say how it finished, from the journal;
// deleted before it finished, it must say that. Both still match
// ErrNotFound. The deletion comes only after Wait's first read (seen in
// pg_stat_activity from another pool), and a plain DELETE sends no
// notification, so the test sends one to wake Wait.
func TestWaitSaysWhenItsJobWasDeleted(t *testing.T) {
	ctx := t.Context()
	conn := testdb.New(t)
	q, err := Open(ctx, conn, WithMigrate())
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	other, err := pgxpool.New(ctx, conn) // the test's own statements
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	waitFor := func(del ...string) error {
		t.Helper()
		id, err := q.Enqueue(ctx, Job{Queue: "w"})
		if err != nil {
			t.Fatal(err)
		}
		// A connection left idle after the previous case's read must not
		// pass for this Wait's: only reads that end after this instant count.
		var began time.Time
		if err := other.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&began); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			_, err := q.Wait(ctx, id)
			done <- err
		}()
		deadline := time.Now().Add(20 * time.Second)
		for {
			var read bool
			if err := other.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_stat_activity
				WHERE datname = current_database() AND query = $1 AND state = 'idle' AND state_change > $2)`, waitStatusSQL, began).Scan(&read); err != nil {
				t.Fatal(err)
			}
			if read {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("Wait did not read the job within 20 s")
			}
			time.Sleep(5 * time.Millisecond)
		}
		if err := pgx.BeginFunc(ctx, other, func(tx pgx.Tx) error {
			for _, sql := range del {
				if _, err := tx.Exec(ctx, sql, id[:]); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			return err
		case <-time.After(20 * time.Second):
			t.Fatal("Wait did not return within 20 s of the deletion")
			return nil
		}
	}
	err = waitFor(`UPDATE compute.jobs SET status = 'complete', finished = now() WHERE job_id = $1`,
		`DELETE FROM compute.jobs WHERE job_id = $1`)
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "finished (complete)") {
		t.Errorf("Wait for a job completed and deleted: %v; want ErrNotFound saying it finished (complete)", err)
	}
	err = waitFor(`DELETE FROM compute.jobs WHERE job_id = $1`, `SELECT pg_notify('compute_events', encode($1, 'hex'))`)
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "before it finished") {
		t.Errorf("Wait for a job deleted while queued: %v; want ErrNotFound saying it was deleted before it finished", err)
	}
	if _, err := q.Wait(ctx, JobID{9}); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "no job") {
		t.Errorf("Wait for an unknown id: %v; want ErrNotFound saying there is no job", err)
	}
}
