package main

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
	checkOK   = "ok"
	checkWarn = "warn"
	checkFail = "fail"
)

// check is one doctor finding.
type check struct {
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

func runDoctor(e *env, path string, args []string) error {
	l := newLeaf(e, path, "", "Checks the installation and prints each check with ok, warn or fail and what to do:\n"+
		"schema version, notifications delivered end to end, what holds back vacuum, dead rows and\n"+
		"autovacuum of compute.jobs, running jobs past their lease, and queues with runnable jobs but\n"+
		"no worker seen. Exits 1 when a check fails; warnings leave the exit status 0.", true)
	if _, err := l.parse(args, 0, 0); err != nil {
		return err
	}
	q, err := l.open()
	if err != nil {
		return err
	}
	checks := diagnose(e.ctx, q)
	if e.ctx.Err() != nil {
		return e.ctx.Err()
	}
	failed := false
	for i := range checks {
		checks[i].Detail = e.redact(checks[i].Detail)
		failed = failed || checks[i].Status == checkFail
	}
	if l.json() {
		if err := writeJSON(e.stdout, struct {
			OK     bool    `json:"ok"`
			Checks []check `json:"checks"`
		}{!failed, checks}); err != nil {
			return err
		}
	} else {
		rows := make([][]string, 0, len(checks))
		for _, c := range checks {
			rows = append(rows, []string{c.Status, c.Name, c.Detail})
			if c.Advice != "" {
				rows = append(rows, []string{"", "", "-> " + c.Advice})
			}
		}
		if err := table(e.stdout, []string{"STATUS", "CHECK", "DETAIL"}, rows); err != nil {
			return err
		}
	}
	if failed {
		return &exitError{exitFailure}
	}
	return nil
}

// diagnose runs every check. A check that cannot run fails with its error.
func diagnose(ctx context.Context, q *compute.Queue) []check {
	schema := checkSchema(ctx, q)
	out := []check{schema}
	if schema.Status == checkFail && strings.HasPrefix(schema.Detail, "not migrated") {
		return out // nothing else can be read
	}
	return append(out, checkNotify(ctx, q), checkHorizon(ctx, q), checkVacuum(ctx, q),
		checkLeases(ctx, q), checkBacklogs(ctx, q))
}

func errCheck(name string, err error) check {
	return check{Name: name, Status: checkFail, Detail: "could not check: " + explainError(err)}
}

func checkSchema(ctx context.Context, q *compute.Queue) check {
	const name = "schema version"
	current, latest, err := q.SchemaVersion(ctx)
	switch {
	case err != nil:
		return errCheck(name, err)
	case current == 0:
		return check{name, checkFail, fmt.Sprintf("not migrated (latest is %d)", latest), "run 'compute migrate'"}
	case current < latest:
		return check{name, checkFail, fmt.Sprintf("at %d, behind the latest %d", current, latest),
			"run 'compute migrate' (workers of this version need it)"}
	case current > latest:
		return check{name, checkWarn, fmt.Sprintf("at %d, newer than this command's %d", current, latest),
			"use a compute command built from the library version that migrated it"}
	}
	return check{Name: name, Status: checkOK, Detail: fmt.Sprintf("at %d, the latest", current)}
}

// checkNotify sends a notification through one pool connection and waits
// for it on another that listens: the path every worker's wake-up takes.
func checkNotify(ctx context.Context, q *compute.Queue) check {
	const name = "notifications"
	switch v, err := q.GetMeta(ctx, compute.MetaNotify); {
	case err == nil && v == "off":
		return check{name, checkWarn, "turned off (meta key notify = off): workers find jobs by polling",
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
		return check{name, checkFail, fmt.Sprintf("a notification sent on one connection did not arrive on another within %s", notifyWait),
			"behind PgBouncer in transaction mode LISTEN cannot work: give workers a direct connection string with compute.WithDirectURL (or let them poll)"}
	}
	_, _ = conn.Exec(ctx, `UNLISTEN *`)
	if n.Channel != channel {
		return check{name, checkFail, "a notification arrived on the wrong channel (" + n.Channel + ")", "check the connection path (pooler, proxy)"}
	}
	return check{Name: name, Status: checkOK, Detail: fmt.Sprintf("delivered end to end in %s", time.Since(began).Round(10*time.Microsecond))}
}

func checkHorizon(ctx context.Context, q *compute.Queue) check {
	const name = "vacuum horizon"
	h, err := q.OldestHorizon(ctx)
	switch {
	case err != nil:
		return errCheck(name, err)
	case h == nil:
		return check{Name: name, Status: checkOK, Detail: "nothing holds back vacuum"}
	}
	detail := fmt.Sprintf("oldest holder: %s %s (%s), %d transactions behind, held %s", h.Kind, h.Who, h.Detail, h.XIDs, dur(h.Held))
	if h.Held >= horizonWarn {
		return check{name, checkWarn, detail,
			"end it (pg_terminate_backend, or drop the slot); set idle_in_transaction_session_timeout for application roles"}
	}
	return check{Name: name, Status: checkOK, Detail: detail}
}

// tableHealth reads compute.jobs' row statistics; the cumulative
// statistics system keeps them, so this reads no table rows.
const tableHealth = `
SELECT n_live_tup, n_dead_tup, coalesce(greatest(last_autovacuum, last_vacuum)::text, 'never')
FROM pg_stat_user_tables WHERE schemaname = 'compute' AND relname = 'jobs'`

func checkVacuum(ctx context.Context, q *compute.Queue) check {
	const name = "compute.jobs vacuum"
	var live, dead int64
	var last string
	if err := q.Pool().QueryRow(ctx, tableHealth).Scan(&live, &dead, &last); err != nil {
		return errCheck(name, err)
	}
	detail := fmt.Sprintf("%d live rows, %d dead, last vacuumed %s", live, dead, last)
	if dead > deadTuplesWarn && dead*5 > live {
		return check{name, checkWarn, detail,
			"vacuum is behind: look at the vacuum horizon check and at autovacuum workers (pg_stat_progress_vacuum)"}
	}
	return check{Name: name, Status: checkOK, Detail: detail}
}

// expiredLeases counts running jobs past their lease through the small
// jobs_running partial index; durations in microseconds.
const expiredLeases = `
SELECT count(*), coalesce((extract(epoch FROM now() - min(lease_expires)) * 1e6)::bigint, 0)
FROM compute.jobs WHERE status = 'in-progress' AND lease_expires < now()`

func checkLeases(ctx context.Context, q *compute.Queue) check {
	const name = "expired leases"
	var n, oldestUS int64
	if err := q.Pool().QueryRow(ctx, expiredLeases).Scan(&n, &oldestUS); err != nil {
		return errCheck(name, err)
	}
	oldest := time.Duration(oldestUS) * time.Microsecond
	switch {
	case n == 0:
		return check{Name: name, Status: checkOK, Detail: "no running job is past its lease"}
	case oldest >= staleLeaseFail:
		return check{name, checkFail, fmt.Sprintf("%d running job(s) past their lease, the oldest by %s: nobody hands them back", n, dur(oldest)),
			"start a worker (any worker's maintenance round rescues every queue), or call Queue.RequeueStale"}
	}
	return check{name, checkWarn, fmt.Sprintf("%d running job(s) past their lease by at most %s", n, dur(oldest)),
		"a running worker hands them back within its MaintenanceInterval; run doctor again if this stays"}
}

func checkBacklogs(ctx context.Context, q *compute.Queue) check {
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
			orphaned = append(orphaned, fmt.Sprintf("%s (%d runnable, oldest %s)", qi.Name, qi.Runnable, dur(qi.OldestRunnable)))
		}
	}
	if len(orphaned) > 0 {
		return check{name, checkWarn, "runnable jobs and no worker seen in the last minute: " + strings.Join(orphaned, ", "),
			"start workers for these queues (or delete their jobs)"}
	}
	detail := fmt.Sprintf("every queue with runnable jobs has a worker (%d queues)", len(queues))
	if len(paused) > 0 {
		detail += "; paused with runnable jobs: " + strings.Join(paused, ", ")
	}
	return check{Name: name, Status: checkOK, Detail: detail}
}
