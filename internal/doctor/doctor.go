// Package doctor holds the installation checks that the compute command's
// doctor and the dashboard's Health page both run: schema version,
// notifications delivered end to end, what holds back vacuum, dead rows of
// compute.jobs, running jobs past their lease, and queues with runnable
// jobs but no worker seen.
package doctor

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/computeplatform/compute"
)

// Check results, from best to worst.
const (
	OK   = "ok"
	Warn = "warn"
	Fail = "fail"
)

// Check is one finding: its name, OK, Warn or Fail, what was seen and,
// unless OK, what to do.
type Check struct {
	Name   string `json:"name"`
	Status string `json:"status"`
	Detail string `json:"detail"`
	Advice string `json:"advice,omitempty"`
}

// Thresholds of the doctor's checks.
const (
	// staleLeaseFail: an in-progress job whose lease expired this long ago
	// should have been handed back by any running worker's maintenance
	// round (every 10 s by default).
	staleLeaseFail = 2 * time.Minute
	// horizonWarn: a transaction or slot holding back vacuum this long
	// slows claims measurably.
	horizonWarn = time.Minute
	// notifyWait: how long a probe notification may take to arrive.
	notifyWait = 5 * time.Second
	// deadTuplesWarn: dead row versions in compute.jobs, past which (and
	// past a fifth of the live rows) vacuum is falling behind.
	deadTuplesWarn = 10000
)

// Run runs every check in order. A check that cannot run fails with its
// error; when the schema was never migrated only that check is returned.
func Run(ctx context.Context, q *compute.Queue) []Check {
	schema := checkSchema(ctx, q)
	out := []Check{schema}
	if schema.Status == Fail && strings.HasPrefix(schema.Detail, "not migrated") {
		return out // nothing else can be read
	}
	return append(out, checkNotify(ctx, q), checkHorizon(ctx, q), checkVacuum(ctx, q),
		checkLeases(ctx, q), checkBacklogs(ctx, q))
}

// errCheck is a check that could not run.
func errCheck(name string, err error) Check {
	detail := "could not check: " + err.Error()
	switch {
	case errors.Is(err, compute.ErrNotMigrated):
		detail += " (run 'compute migrate')"
	case errors.Is(err, compute.ErrUnavailable):
		detail += " (check the connection settings and that the server runs)"
	}
	return Check{Name: name, Status: Fail, Detail: detail}
}

// Duration formats a duration to the millisecond below a second, else to the
// second.
func Duration(d time.Duration) string {
	switch {
	case d <= 0:
		return "-"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

func checkSchema(ctx context.Context, q *compute.Queue) Check {
	const name = "schema version"
	current, latest, err := q.SchemaVersion(ctx)
	switch {
	case err != nil:
		return errCheck(name, err)
	case current == 0:
		return Check{name, Fail, fmt.Sprintf("not migrated (latest is %d)", latest), "run 'compute migrate'"}
	case current < latest:
		return Check{name, Fail, fmt.Sprintf("at %d, behind the latest %d", current, latest),
			"run 'compute migrate' (workers of this version need it)"}
	case current > latest:
		return Check{name, Warn, fmt.Sprintf("at %d, newer than this command's %d", current, latest),
			"use a compute command built from the library version that migrated it"}
	}
	return Check{Name: name, Status: OK, Detail: fmt.Sprintf("at %d, the latest", current)}
}

// checkNotify sends a notification through one pool connection and waits
// for it on another that listens: the path every worker's wake-up takes.
func checkNotify(ctx context.Context, q *compute.Queue) Check {
	const name = "notifications"
	switch v, err := q.GetMeta(ctx, compute.MetaNotify); {
	case err == nil && v == "off":
		return Check{name, Warn, "turned off (meta key notify = off): workers find jobs by polling",
			"fine for very high rates; otherwise delete the meta key"}
	case err != nil && !errors.Is(err, compute.ErrNotFound):
		return errCheck(name, err)
	}
	conn, err := q.Pool().Acquire(ctx)
	if err != nil {
		return errCheck(name, err)
	}
	defer conn.Release()
	var nonce [8]byte
	_, _ = rand.Read(nonce[:])
	channel := "compute_doctor_" + hex.EncodeToString(nonce[:])
	if _, err := conn.Exec(ctx, `LISTEN `+channel); err != nil { // channel: fixed prefix and hex only
		return errCheck(name, err)
	}
	if _, err := q.Pool().Exec(ctx, `SELECT pg_notify($1, 'probe')`, channel); err != nil {
		return errCheck(name, err)
	}
	began := time.Now()
	waitCtx, cancel := context.WithTimeout(ctx, notifyWait)
	defer cancel()
	n, err := conn.Conn().WaitForNotification(waitCtx)
	if err != nil {
		// The wait was cut off mid-read: the connection cannot be reused.
		_ = conn.Conn().Close(context.WithoutCancel(ctx))
		return Check{name, Fail, fmt.Sprintf("a notification sent on one connection did not arrive on another within %s", notifyWait),
			"behind PgBouncer in transaction mode LISTEN cannot work: give workers a direct connection string with compute.WithDirectURL (or let them poll)"}
	}
	_, _ = conn.Exec(ctx, `UNLISTEN *`)
	if n.Channel != channel {
		return Check{name, Fail, "a notification arrived on the wrong channel (" + n.Channel + ")", "check the connection path (pooler, proxy)"}
	}
	return Check{Name: name, Status: OK, Detail: fmt.Sprintf("delivered end to end in %s", time.Since(began).Round(10*time.Microsecond))}
}

func checkHorizon(ctx context.Context, q *compute.Queue) Check {
	const name = "vacuum horizon"
	h, err := q.OldestHorizon(ctx)
	switch {
	case err != nil:
		return errCheck(name, err)
	case h == nil:
		return Check{Name: name, Status: OK, Detail: "nothing holds back vacuum"}
	}
	detail := fmt.Sprintf("oldest holder: %s %s (%s), %d transactions behind, held %s", h.Kind, h.Who, h.Detail, h.XIDs, Duration(h.Held))
	if h.Held >= horizonWarn {
		return Check{name, Warn, detail,
			"end it (pg_terminate_backend, or drop the slot); set idle_in_transaction_session_timeout for application roles"}
	}
	return Check{Name: name, Status: OK, Detail: detail}
}

// tableHealth reads compute.jobs' row statistics; the cumulative
// statistics system keeps them, so this reads no table rows.
const tableHealth = `
SELECT n_live_tup, n_dead_tup, coalesce(greatest(last_autovacuum, last_vacuum)::text, 'never')
FROM pg_stat_user_tables WHERE schemaname = 'compute' AND relname = 'jobs'`

func checkVacuum(ctx context.Context, q *compute.Queue) Check {
	const name = "compute.jobs vacuum"
	var live, dead int64
	var last string
	if err := q.Pool().QueryRow(ctx, tableHealth).Scan(&live, &dead, &last); err != nil {
		return errCheck(name, err)
	}
	detail := fmt.Sprintf("%d live rows, %d dead, last vacuumed %s", live, dead, last)
	if dead > deadTuplesWarn && dead*5 > live {
		return Check{name, Warn, detail,
			"vacuum is behind: look at the vacuum horizon check and at autovacuum workers (pg_stat_progress_vacuum)"}
	}
	return Check{Name: name, Status: OK, Detail: detail}
}

// expiredLeases counts running jobs past their lease through the small
// jobs_running partial index; durations in microseconds.
const expiredLeases = `
SELECT count(*), coalesce((extract(epoch FROM now() - min(lease_expires)) * 1e6)::bigint, 0)
FROM compute.jobs WHERE status = 'in-progress' AND lease_expires < now()`

func checkLeases(ctx context.Context, q *compute.Queue) Check {
	const name = "expired leases"
	var n, oldestUS int64
	if err := q.Pool().QueryRow(ctx, expiredLeases).Scan(&n, &oldestUS); err != nil {
		return errCheck(name, err)
	}
	oldest := time.Duration(oldestUS) * time.Microsecond
	switch {
	case n == 0:
		return Check{Name: name, Status: OK, Detail: "no running job is past its lease"}
	case oldest >= staleLeaseFail:
		return Check{name, Fail, fmt.Sprintf("%d running job(s) past their lease, the oldest by %s: nobody hands them back", n, Duration(oldest)),
			"start a worker (any worker's maintenance round rescues every queue), or call Queue.RequeueStale"}
	}
	return Check{name, Warn, fmt.Sprintf("%d running job(s) past their lease by at most %s", n, Duration(oldest)),
		"a running worker hands them back within its MaintenanceInterval; run doctor again if this stays"}
}

func checkBacklogs(ctx context.Context, q *compute.Queue) Check {
	const name = "queues served"
	queues, err := q.Queues(ctx, false)
	if err != nil {
		return errCheck(name, err)
	}
	var orphaned, paused []string
	for _, qi := range queues {
		switch {
		case qi.Runnable == 0:
		case qi.Settings.Paused:
			paused = append(paused, qi.Name)
		case qi.Workers == 0:
			orphaned = append(orphaned, fmt.Sprintf("%s (%d runnable, oldest %s)", qi.Name, qi.Runnable, Duration(qi.OldestRunnable)))
		}
	}
	if len(orphaned) > 0 {
		return Check{name, Warn, "runnable jobs and no worker seen in the last minute: " + strings.Join(orphaned, ", "),
			"start workers for these queues (or delete their jobs)"}
	}
	detail := fmt.Sprintf("every queue with runnable jobs has a worker (%d queues)", len(queues))
	if len(paused) > 0 {
		detail += "; paused with runnable jobs: " + strings.Join(paused, ", ")
	}
	return Check{Name: name, Status: OK, Detail: detail}
}
