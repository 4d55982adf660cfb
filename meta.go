package compute

import (
	"context"
)

// Meta keys the library itself reads.
const (
	// MetaNotify set to "off" stops the triggers' notifications (new
	// jobs, journal events), for very high rates; workers then find jobs
	// by polling, and Wait and Follow check every 5 s.
	MetaNotify = "notify"
	// MetaJournal set to "off" stops the job journal: no events are
	// written (Events and Follow see nothing new, Wait falls back to its
	// 5 s check). For the highest claim rates, where the journal's one
	// insert per statement matters.
	MetaJournal = "journal"
)

// GetMeta returns the value stored under key in compute.meta, or
// [ErrNotFound]. A key must have 3 to 32 characters ([ErrInvalidMeta]).
func (q *Queue) GetMeta(ctx context.Context, key string) (string, error) {
	if err := validMeta(key, ""); err != nil {
		return "", err
	}
	var value string
	err := q.do(ctx, "compute: get meta", func(ctx context.Context) error {
		return q.pool.QueryRow(ctx, `SELECT value FROM compute.meta WHERE key = $1`, key).Scan(&value)
	})
	if err != nil {
		return "", notFound(err, "compute: get meta %q", key)
	}
	return value, nil
}

// setMetaSQL is an upsert, so concurrent writers of one key never fail.
const setMetaSQL = `INSERT INTO compute.meta (key, value) VALUES ($1, $2)
ON CONFLICT (key) DO UPDATE SET value = excluded.value`

// SetMeta stores value under key in compute.meta, replacing any value. Keys
// have 3 to 32 characters, values at most 256, both valid UTF-8 without NUL
// bytes; anything else fails with [ErrInvalidMeta] before the database.
func (q *Queue) SetMeta(ctx context.Context, key, value string) error {
	if err := validMeta(key, value); err != nil {
		return err
	}
	return q.do(ctx, "compute: set meta", func(ctx context.Context) error {
		_, err := q.pool.Exec(ctx, setMetaSQL, key, value)
		return err
	})
}

// DeleteMeta removes key from compute.meta; a missing key is not an error.
func (q *Queue) DeleteMeta(ctx context.Context, key string) error {
	if err := validMeta(key, ""); err != nil {
		return err
	}
	return q.do(ctx, "compute: delete meta", func(ctx context.Context) error {
		_, err := q.pool.Exec(ctx, `DELETE FROM compute.meta WHERE key = $1`, key)
		return err
	})
}
