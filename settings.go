package compute

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
)

// QueueSettings are a queue's cluster-wide rules, stored in compute.queues
// and obeyed by every worker's claim. The zero value means no rules: the
// queue takes the fast claim. Limits count across all worker processes.
type QueueSettings struct {
	// Paused is read-only here: Pause and Resume set it, and
	// SetQueueSettings leaves it as it is.
	Paused bool
	// MaxRunning caps the queue's running jobs across the cluster; 0
	// means no cap.
	MaxRunning int
	// KeyMaxRunning caps running jobs per partition key (Job.PartitionKey)
	// across the cluster, for example 3 per customer; 0 means no cap.
	KeyMaxRunning int
	// RateLimit caps job starts per RatePeriod for the whole queue, and
	// KeyRateLimit per partition key; 0 means no cap. Either needs
	// RatePeriod. The window slides: at any moment, at most that many
	// starts happened in the last RatePeriod.
	RateLimit, KeyRateLimit int
	RatePeriod              time.Duration
	// Fair claims jobs round-robin across partition keys, so one key's
	// large backlog cannot starve another key's few jobs. Within a key,
	// jobs go in priority order. Per-key caps imply it.
	Fair bool
	// AgeAfter, when set, moves a queued job that has been waiting longer
	// than this one priority step up (towards 0) per AgeAfter, so old
	// low-priority jobs run eventually under a steady stream of urgent
	// ones. Workers' maintenance applies it.
	AgeAfter time.Duration
}

func (s QueueSettings) check() error {
	if s.MaxRunning < 0 || s.KeyMaxRunning < 0 || s.RateLimit < 0 || s.KeyRateLimit < 0 || s.RatePeriod < 0 || s.AgeAfter < 0 {
		return fmt.Errorf("%w: queue settings must not be negative", ErrInvalidOption)
	}
	if max(s.MaxRunning, s.KeyMaxRunning, s.RateLimit, s.KeyRateLimit) > math.MaxInt32 {
		return fmt.Errorf("%w: queue settings' counts must be at most %d", ErrInvalidOption, math.MaxInt32)
	}
	if (s.RateLimit > 0 || s.KeyRateLimit > 0) != (s.RatePeriod > 0) {
		return fmt.Errorf("%w: RateLimit and KeyRateLimit need RatePeriod, and RatePeriod needs one of them", ErrInvalidOption)
	}
	if s.RatePeriod > 0 && s.RatePeriod < time.Millisecond || s.AgeAfter > 0 && s.AgeAfter < time.Second {
		return fmt.Errorf("%w: RatePeriod must be at least 1ms and AgeAfter at least 1s", ErrInvalidOption)
	}
	return nil
}

// setQueueSettingsSQL stores every setting but paused. The notification wakes
// workers so a loosened limit takes effect at once.
const setQueueSettingsSQL = `
WITH s AS (
    INSERT INTO compute.queues AS q (name, max_running, key_max_running, rate_limit, key_rate_limit,
                                     rate_period, fair, age_after)
    VALUES ($1, $2, $3, $4, $5, $6 * interval '1 microsecond', $7, $8 * interval '1 microsecond')
    ON CONFLICT (name) DO UPDATE
    SET max_running = excluded.max_running, key_max_running = excluded.key_max_running,
        rate_limit = excluded.rate_limit, key_rate_limit = excluded.key_rate_limit,
        rate_period = excluded.rate_period, fair = excluded.fair, age_after = excluded.age_after,
        updated = now()
    RETURNING name
)
SELECT pg_notify('compute_jobs', name) FROM s`

// SetQueueSettings replaces the queue's cluster-wide rules (all but Paused).
// Every worker's next claim obeys them; claims already running finish under
// the old ones. Bad settings (negative, a count above 2,147,483,647, a
// rate without a period) match [ErrInvalidOption].
func (q *Queue) SetQueueSettings(ctx context.Context, queue string, s QueueSettings) error {
	if err := validQueue(queue); err != nil {
		return err
	}
	if err := s.check(); err != nil {
		return err
	}
	return q.do(ctx, "compute: set queue settings", func(ctx context.Context) error {
		_, err := q.pool.Exec(ctx, setQueueSettingsSQL, queue, nullInt(s.MaxRunning), nullInt(s.KeyMaxRunning),
			nullInt(s.RateLimit), nullInt(s.KeyRateLimit), nullInt64(s.RatePeriod.Microseconds()), s.Fair,
			nullInt64(s.AgeAfter.Microseconds()))
		return err
	})
}

// getQueueSettingsSQL reads a queue's row, and the round-robin cursor last;
// durations come back in microseconds.
const getQueueSettingsSQL = `
SELECT paused, coalesce(max_running, 0), coalesce(key_max_running, 0), coalesce(rate_limit, 0),
       coalesce(key_rate_limit, 0), coalesce(extract(epoch FROM rate_period) * 1e6, 0)::bigint, fair,
       coalesce(extract(epoch FROM age_after) * 1e6, 0)::bigint, coalesce(fair_cursor, '')
FROM compute.queues WHERE name = $1`

// GetQueueSettings returns the queue's rules; a queue nobody configured has
// the zero value.
func (q *Queue) GetQueueSettings(ctx context.Context, queue string) (QueueSettings, error) {
	if err := validQueue(queue); err != nil {
		return QueueSettings{}, err
	}
	var s QueueSettings
	err := q.do(ctx, "compute: get queue settings", func(ctx context.Context) error {
		var err error
		s, err = readSettings(q.pool.QueryRow(ctx, getQueueSettingsSQL, queue), new(string))
		return err
	})
	return s, err
}

// readSettings scans one row of getQueueSettingsSQL into the settings and
// cursor; no row is the zero value.
func readSettings(row pgx.Row, cursor *string) (QueueSettings, error) {
	var s QueueSettings
	var period, age int64
	err := row.Scan(&s.Paused, &s.MaxRunning, &s.KeyMaxRunning, &s.RateLimit, &s.KeyRateLimit,
		&period, &s.Fair, &age, cursor)
	if errors.Is(err, pgx.ErrNoRows) {
		return QueueSettings{}, nil
	}
	s.RatePeriod, s.AgeAfter = time.Duration(period)*time.Microsecond, time.Duration(age)*time.Microsecond
	return s, err
}

// setPausedSQL pauses or resumes a queue for the whole cluster. The
// notification wakes workers at once on resume.
const setPausedSQL = `
WITH s AS (
    INSERT INTO compute.queues AS q (name, paused) VALUES ($1, $2)
    ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated = now()
    RETURNING name
)
SELECT pg_notify('compute_jobs', name) FROM s`

// Pause stops every worker in the cluster from starting the queue's jobs:
// running jobs finish, queued ones wait, Enqueue still accepts new ones.
func (q *Queue) Pause(ctx context.Context, queue string) error {
	return q.setPaused(ctx, queue, true)
}

// Resume undoes Pause; workers serving the queue are woken at once.
func (q *Queue) Resume(ctx context.Context, queue string) error {
	return q.setPaused(ctx, queue, false)
}

func (q *Queue) setPaused(ctx context.Context, queue string, paused bool) error {
	if err := validQueue(queue); err != nil {
		return err
	}
	return q.do(ctx, "compute: pause", func(ctx context.Context) error {
		_, err := q.pool.Exec(ctx, setPausedSQL, queue, paused)
		return err
	})
}

func nullInt(n int) *int {
	if n == 0 {
		return nil
	}
	return &n
}

func nullInt64(n int64) *int64 {
	if n == 0 {
		return nil
	}
	return &n
}
