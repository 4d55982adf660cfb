package compute

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
)

// Horizon names what holds back the database's xmin horizon the longest: an
// open transaction (or snapshot) of some session, a replication slot, or a
// prepared transaction. While it is held, vacuum cannot remove the dead row
// versions every claim and completion leaves behind, so the claim's index
// scans step over more and more of them: claims slow down steadily (a
// three-minute-old idle transaction halved claim throughput in our
// measurements), and the job journal holds back every event newer than it.
type Horizon struct {
	// Kind is "session", "replication slot" or "prepared transaction".
	Kind string
	// Who is the session's pid, the slot's name or the transaction's gid.
	Who string
	// Detail says more: for a session, its user, application_name, state
	// and client address, as far as this role may see them.
	Detail string
	// Held is how long it has been held; zero when the role may not see
	// it (grant pg_read_all_stats to see other roles' sessions in full).
	Held time.Duration
	// XIDs is how many transaction ids it lags behind.
	XIDs int64
}

// oldestHorizonSQL finds the oldest holder of the xmin horizon that matters to
// this database. Autovacuum and other background processes (no usesysid)
// are skipped: a lazy vacuum's own snapshot does not hold back the horizon.
// A NULL datname is a walsender with hot_standby_feedback.
const oldestHorizonSQL = `
SELECT kind, who, coalesce(detail, ''), coalesce((extract(epoch FROM held) * 1e6)::bigint, 0), xids FROM (
    SELECT 'session' AS kind, pid::text AS who, age(backend_xmin)::bigint AS xids,
           now() - xact_start AS held,
           concat_ws(' / ', usename, application_name, state, client_addr) AS detail
    FROM pg_stat_activity
    WHERE backend_xmin IS NOT NULL AND usesysid IS NOT NULL
      AND (datname = current_database() OR datname IS NULL) AND pid <> pg_backend_pid()
  UNION ALL
    SELECT 'replication slot', slot_name::text, age(xmin)::bigint, NULL, slot_type
    FROM pg_replication_slots WHERE xmin IS NOT NULL
  UNION ALL
    SELECT 'prepared transaction', gid, age(transaction)::bigint, now() - prepared, owner::text
    FROM pg_prepared_xacts WHERE database = current_database()
) h
ORDER BY xids DESC, held DESC NULLS LAST
LIMIT 1`

// OldestHorizon returns what holds back vacuum the longest in this database
// (see Horizon), or nil when nothing does. A Worker checks it once a minute
// and logs a warning about a holder older than
// [WorkerConfig.LongTransactionWarning].
func (q *Queue) OldestHorizon(ctx context.Context) (*Horizon, error) {
	var h Horizon
	var heldUS int64
	err := q.do(ctx, "compute: oldest horizon", func(ctx context.Context) error {
		return q.pool.QueryRow(ctx, oldestHorizonSQL).Scan(&h.Kind, &h.Who, &h.Detail, &heldUS, &h.XIDs)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	h.Held = time.Duration(heldUS) * time.Microsecond
	return &h, nil
}
