package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/computeplatform/compute/internal/testdb"
)

// Workload (u) is the burn-down in the shape a deployment has (issue 19):
// jobs written by another program with plain SQL (compute's with random
// 16-byte ids, as seed 002's job hashes and ContentID ids are), the worker
// as a process of its own (this program run again with -system), a durable
// server, and the rate from the database's clock: first claim to last
// finish, from the rows themselves, for both systems.

// userVariant is one pool and concurrency setting of workload (u).
type userVariant struct {
	conns   int // pool_max_conns of the worker's pool; 0 leaves pgxpool's default, max(4, CPUs)
	workers int // compute's Concurrency, River's MaxWorkers
}

func (v userVariant) String() string {
	pool := "default pool"
	if v.conns > 0 {
		pool = "pool " + strconv.Itoa(v.conns)
	}
	return fmt.Sprintf("%s / concurrency %s", pool, thousands(int64(v.workers)))
}

// userVariants are the two shapes of issue 19: a worker as most programs
// open it (pgxpool's default size, Concurrency 1,000), and the bench's pool
// of 10 with River's bench concurrency of 2,000.
var userVariants = []userVariant{{conns: 0, workers: 1_000}, {conns: 10, workers: 2_000}}

// userKey names one cell of workload (u)'s table.
type userKey struct {
	system  string
	jobs    int
	variant userVariant
}

// userResult is one phase of workload (u).
type userResult struct {
	rate  float64     // jobs/s, first claim to last finish on the database's clock
	child childResult // the worker process's own figures
	// server is the server's CPU time while the worker process ran
	// (phaseServerCPU); serverOK is false when it could not be read.
	server   time.Duration
	serverOK bool
}

// workerApp is the application_name of (u)'s worker process's
// connections, by which the phase tells when they have all closed.
const workerApp = "bench-u-worker"

// userServer returns the server workload (u) runs on: without DATABASE_URL
// a throwaway server of its own with fsync, full_page_writes and
// synchronous_commit on (the harness's other servers run with fsync off);
// with DATABASE_URL that server, which must have fsync and
// synchronous_commit on. statements preloads pg_stat_statements.
func userServer(ctx context.Context, statements bool) (*testdb.Server, error) {
	if os.Getenv("DATABASE_URL") != "" {
		srv, err := testdb.Start(ctx, progressf)
		if err != nil {
			return nil, err
		}
		conn, err := srv.CreateDatabase(ctx, fmt.Sprintf("bench_%d_u_check", os.Getpid()))
		if err == nil {
			err = checkDurable(ctx, conn)
			err = errors.Join(err, srv.DropDatabase(ctx, fmt.Sprintf("bench_%d_u_check", os.Getpid())))
		}
		if err != nil {
			srv.Close()
			return nil, err
		}
		return srv, nil
	}
	settings := []string{"fsync=on", "full_page_writes=on", "synchronous_commit=on"}
	if statements {
		settings = append(settings, "shared_preload_libraries=pg_stat_statements", "pg_stat_statements.track=all", "track_wal_io_timing=on")
	}
	return testdb.StartLocalWith(ctx, progressf, settings...)
}

// checkDurable fails unless the server of conn has fsync and
// synchronous_commit on: workload (u) measures a durable server.
func checkDurable(ctx context.Context, conn string) error {
	pool, err := pgxpool.New(ctx, conn)
	if err != nil {
		return err
	}
	defer pool.Close()
	var fsync, sync string
	if err := pool.QueryRow(ctx, `SELECT current_setting('fsync'), current_setting('synchronous_commit')`).Scan(&fsync, &sync); err != nil {
		return err
	}
	if fsync != "on" || sync != "on" {
		return fmt.Errorf("(u) measures a durable server, but DATABASE_URL's has fsync=%s synchronous_commit=%s: point it at one with both on, or unset it", fsync, sync)
	}
	return nil
}

// userPhase is one phase of workload (u): on a fresh database of srv it
// migrates the system, writes n jobs with plain SQL, runs VACUUM ANALYZE and
// CHECKPOINT, has a child process work them with variant v, and reads the
// rate from the rows. label names the phase's profile files.
func userPhase(ctx context.Context, srv *testdb.Server, o options, name string, n int, v userVariant, label string) (userResult, error) {
	dbname := fmt.Sprintf("bench_%d_%s", os.Getpid(), label)
	conn, err := srv.CreateDatabase(ctx, dbname)
	if err != nil {
		return userResult{}, err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := srv.DropDatabase(ctx, dbname); err != nil {
			progressf("drop database %s: %v", dbname, err)
		}
	}()
	var s system
	if schemaOf(name) == "compute" {
		var cs *computeSystem
		if cs, err = openCompute(ctx, conn, v.workers, 1, o.logger(), false); err == nil {
			s, err = cs, cs.migrate(ctx)
		}
	} else {
		var rs *riverSystem
		if rs, err = openRiver(ctx, conn, v.workers, 1, o.logger()); err == nil {
			s, err = rs, rs.migrate(ctx)
		}
	}
	if s != nil {
		defer s.close()
	}
	if err == nil && name != "River" && o.computeSQL != "" {
		_, err = s.(*computeSystem).q.Pool().Exec(ctx, o.computeSQL)
	}
	if err != nil {
		return userResult{}, err
	}
	pool := systemPool(s)
	if err := insertBatches(ctx, name+" plain-SQL insert", n, o.loadBatch, func(ctx context.Context, from, to int) error {
		_, err := pool.Exec(ctx, plainInsertSQL(schemaOf(name), o.userIDs), from, to-1)
		return err
	}); err != nil {
		return userResult{}, err
	}
	if err := s.vacuum(ctx); err != nil {
		return userResult{}, err
	}
	if o.statements > 0 {
		if _, err := pool.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset(); SELECT pg_stat_reset_shared('wal')`); err != nil {
			return userResult{}, fmt.Errorf("pg_stat_statements: %w", err)
		}
	}
	workerConn, err := withParam(conn, "application_name", workerApp)
	if err != nil {
		return userResult{}, err
	}
	if v.conns > 0 {
		if workerConn, err = withPoolSize(workerConn, v.conns); err != nil {
			return userResult{}, err
		}
	}
	args := []string{"-system", strings.ToLower(name), "-db", workerConn, "-jobs", strconv.Itoa(n),
		"-workers", strconv.Itoa(v.workers), "-timeout", o.timeout.String()}
	if o.profileDir != "" {
		prefix := filepath.Join(o.profileDir, label)
		args = append(args, "-cpuprofile", prefix+".cpu.pprof", "-lockprofile", prefix)
	}
	progressf("(u) %s, %s jobs, %s: worker process", name, human(n), v)
	var cr childResult
	server, readErr, err := phaseServerCPU(ctx, pool, workerApp, func() (err error) {
		cr, err = runChild(ctx, o, args)
		return err
	})
	if err != nil {
		return userResult{}, err
	}
	if readErr != nil {
		progressf("(u) %s: the server's CPU time was not read: %v", name, readErr)
	}
	var seconds float64
	if err := pool.QueryRow(ctx, dbClockSQL(schemaOf(name))).Scan(&seconds); err != nil {
		return userResult{}, fmt.Errorf("read the database's clock: %w", err)
	}
	if seconds <= 0 {
		return userResult{}, fmt.Errorf("first claim to last finish took %.3f s", seconds)
	}
	r := userResult{rate: float64(n) / seconds, child: cr, server: server, serverOK: readErr == nil}
	progressf("(u) %s, %s jobs, %s: %.0f jobs/s (database clock), worker CPU %.0f ms per 1,000 jobs, server CPU %s, peak RSS %d MiB, pool of %d: %d acquires waited %.0f ms in all",
		name, human(n), v, r.rate, cr.cpuPerThousand(), r.serverPerThousand(), cr.HWMKiB/1024, cr.MaxConns, cr.EmptyAcquires, cr.EmptyWaitMilli)
	if o.statements > 0 {
		err = printStatements(ctx, pool, dbname, o.statements)
	}
	if o.statements > 0 && err == nil {
		err = printWAL(ctx, pool)
	}
	return r, err
}

// schemaOf is the schema a system of workload (u) works on: the bare
// loops (ceiling, onewrite) work compute's.
func schemaOf(name string) string {
	if name == "ceiling" || name == "onewrite" {
		return "compute"
	}
	return name
}

// systemPool is the pool of s, for the plain SQL of workload (u).
func systemPool(s system) *pgxpool.Pool {
	if cs, ok := s.(*computeSystem); ok {
		return cs.q.Pool()
	}
	return s.(*riverSystem).pool
}

// plainInsertSQL writes jobs $1..$2 as another program would, in one
// statement: compute's with the v1 columns only and a random 16-byte id
// (uuid_send(gen_random_uuid())), or with -user-ids sequential a
// big-endian counter; River's with the columns River's own insert sets,
// its id from its sequence. Both carry River's bench payload.
func plainInsertSQL(name, ids string) string {
	if name != "compute" {
		return `
INSERT INTO river_job (args, kind, max_attempts, priority, queue, state, scheduled_at)
SELECT jsonb_build_object('num', i), 'benchmark', 25, 1, 'default', 'available', now()
FROM generate_series($1::int, $2::int) AS i`
	}
	id := `uuid_send(gen_random_uuid())`
	if ids == "sequential" {
		id = `decode(lpad(to_hex(i), 32, '0'), 'hex')`
	}
	return `
INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed)
SELECT ` + id + `, 'queued', '` + benchQueue + `', '{"num":' || i || '}', '{}', now(), now()
FROM generate_series($1::int, $2::int) AS i`
}

// dbClockSQL is the seconds from the first claim to the last finish, from
// the rows: compute's grabbed and finished, River's attempted_at and
// finalized_at. Each is set by the statement that claims or finishes.
func dbClockSQL(name string) string {
	if name == "compute" {
		return `SELECT extract(epoch FROM max(finished) - min(grabbed))::float8 FROM compute.jobs`
	}
	return `SELECT extract(epoch FROM max(finalized_at) - min(attempted_at))::float8 FROM river_job`
}

// statementsSQL lists the statements of one database by total time.
const statementsSQL = `
SELECT calls, round(total_exec_time)::bigint, round((total_exec_time / greatest(calls, 1))::numeric, 3)::float8, rows,
       shared_blks_hit + shared_blks_read, shared_blks_dirtied, wal_records, wal_fpi, wal_bytes::bigint,
       left(regexp_replace(query, '\s+', ' ', 'g'), 110)
FROM pg_stat_statements JOIN pg_database d ON d.oid = dbid
WHERE d.datname = $1 ORDER BY total_exec_time DESC LIMIT $2`

// printStatements prints the top statements of the phase's database
// (pg_stat_statements, reset before the worker started) on stderr.
func printStatements(ctx context.Context, pool *pgxpool.Pool, dbname string, top int) error {
	rows, err := pool.Query(ctx, statementsSQL, dbname, top)
	if err != nil {
		return fmt.Errorf("pg_stat_statements: %w", err)
	}
	defer rows.Close()
	tw := tabwriter.NewWriter(os.Stderr, 0, 0, 1, ' ', 0)
	fmt.Fprintln(tw, "calls\ttotal ms\tms/call\trows\tblocks\tdirtied\tWAL recs\tFPI\tWAL bytes\tquery")
	for rows.Next() {
		var calls, total, nrows, blocks, dirtied, walRecs, fpi, walBytes int64
		var perCall float64
		var query string
		if err := rows.Scan(&calls, &total, &perCall, &nrows, &blocks, &dirtied, &walRecs, &fpi, &walBytes, &query); err != nil {
			return err
		}
		fmt.Fprintf(tw, "%d\t%d\t%.3f\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n", calls, total, perCall, nrows, blocks, dirtied, walRecs, fpi, walBytes, query)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return tw.Flush()
}

// walSQL reads the server's WAL counters since the phase reset them (the
// server runs one phase at a time): the WAL flushes commits waited for,
// and their time (track_wal_io_timing is on in (u)'s own server).
const walSQL = `
SELECT wal_records, wal_fpi, wal_bytes::bigint, wal_write, wal_sync, round(wal_write_time)::bigint, round(wal_sync_time)::bigint
FROM pg_stat_wal`

// printWAL prints walSQL's counters on stderr.
func printWAL(ctx context.Context, pool *pgxpool.Pool) error {
	var records, fpi, bytes, writes, syncs, writeMS, syncMS int64
	if err := pool.QueryRow(ctx, walSQL).Scan(&records, &fpi, &bytes, &writes, &syncs, &writeMS, &syncMS); err != nil {
		return fmt.Errorf("pg_stat_wal: %w", err)
	}
	progressf("WAL since the worker started: %d records, %d full-page images, %d bytes; %d writes (%d ms), %d flushes (%d ms)",
		records, fpi, bytes, writes, writeMS, syncs, syncMS)
	return nil
}

// runChild runs this program again with args and reads its childResult.
func runChild(ctx context.Context, o options, args []string) (childResult, error) {
	exe, err := os.Executable()
	if err != nil {
		return childResult{}, err
	}
	if o.verbose {
		args = append(args, "-v")
	}
	cmd := exec.CommandContext(ctx, exe, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, os.Stderr
	if err := cmd.Run(); err != nil {
		return childResult{}, fmt.Errorf("child process: %w", err)
	}
	var cr childResult
	if err := json.Unmarshal(out.Bytes(), &cr); err != nil {
		return childResult{}, fmt.Errorf("child output %q: %w", out.String(), err)
	}
	return cr, nil
}

// runUser runs workload (u): -runs rounds of every size and variant, the
// systems' order turning from one phase to the next.
func runUser(ctx context.Context, o options, res *results) error {
	srv, err := userServer(ctx, o.statements > 0)
	if err != nil {
		return fmt.Errorf("(u) server: %w", err)
	}
	defer srv.Close()
	if res.userHeader, err = userHeader(ctx, srv); err != nil {
		return err
	}
	for r := range o.runs {
		for si, n := range o.userSizes {
			for vi, v := range userVariants {
				if !listed(o.userShapes, strconv.Itoa(vi+1)) {
					continue
				}
				// Which system goes first turns from one run of the
				// same size and shape to the next (a counter over all
				// phases gave each shape the same order every run).
				order := []string{"compute", "River", "ceiling", "onewrite"}
				if (r+si+vi)%2 == 1 {
					order = []string{"River", "compute", "ceiling", "onewrite"}
				}
				for _, name := range order {
					if !o.takesPart(name) || ctx.Err() != nil {
						continue
					}
					label := fmt.Sprintf("u_%s_%s_v%d_r%d", strings.ToLower(name), human(n), vi+1, r+1)
					pctx, cancel := context.WithTimeout(ctx, o.timeout)
					ur, err := userPhase(pctx, srv, o, name, n, v, strings.ToLower(label))
					cancel()
					if err != nil {
						res.failures = append(res.failures, fmt.Sprintf("(u) %s jobs, %s, %s: %v", human(n), v, name, err))
						progressf("FAILED: (u) %s, %s: %v", name, v, err)
						continue
					}
					k := userKey{system: name, jobs: n, variant: v}
					res.user[k] = append(res.user[k], ur)
				}
			}
		}
	}
	return ctx.Err()
}

// userHeader describes workload (u)'s server for its table.
func userHeader(ctx context.Context, srv *testdb.Server) (string, error) {
	pool, err := pgxpool.New(ctx, srv.ConnString("postgres"))
	if err != nil {
		return "", err
	}
	defer pool.Close()
	var fsync, fpw, sync, buffers string
	err = pool.QueryRow(ctx, `SELECT current_setting('fsync'), current_setting('full_page_writes'),
	    current_setting('synchronous_commit'), current_setting('shared_buffers')`).Scan(&fsync, &fpw, &sync, &buffers)
	return fmt.Sprintf("fsync=%s full_page_writes=%s synchronous_commit=%s shared_buffers=%s", fsync, fpw, sync, buffers), err
}

// serverPerThousand says the server's CPU time per 1,000 jobs, or why
// there is none.
func (r userResult) serverPerThousand() string {
	if !r.serverOK {
		return "not read"
	}
	return fmt.Sprintf("%.0f ms per 1,000 jobs", r.serverPerThousandMS())
}

// serverPerThousandMS is the server's CPU time (ms) per 1,000 jobs.
func (r userResult) serverPerThousandMS() float64 {
	if r.child.Jobs == 0 {
		return 0
	}
	return r.server.Seconds() * 1000 * 1000 / float64(r.child.Jobs)
}

// cpuPerThousand is the worker process's CPU time (ms) per 1,000 jobs.
func (c childResult) cpuPerThousand() float64 {
	if c.Jobs == 0 {
		return 0
	}
	return c.CPUSeconds * 1000 * 1000 / float64(c.Jobs)
}

// printUser writes workload (u)'s table.
func printUser(out io.Writer, o options, res *results) {
	if len(res.user) == 0 {
		return
	}
	fmt.Fprintf(out, "\n(u) the user's shape (issue 19): worker in a child process, jobs written by plain SQL (compute: %s 16-byte ids),\n", o.userIDs)
	fmt.Fprintf(out, "    rate from the database clock (first claim to last finish), on a server of its own: %s\n", res.userHeader)
	fmt.Fprintln(out, "    River: its bench's FetchCooldown and FetchPollInterval; compute: library defaults; the default pool is pgxpool's, max(4, CPUs)")
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.Debug)
	row := func(cells ...string) { fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t") }
	row("(u) jobs, pool / concurrency", "compute", "River", "ratio", "target", "met")
	row("", "", "", "", "", "")
	field := func(k userKey, f func(userResult) float64) []float64 {
		var xs []float64
		for _, r := range res.user[k] {
			xs = append(xs, f(r))
		}
		return xs
	}
	// serverField is field over the phases whose server CPU was read.
	serverField := func(k userKey, f func(userResult) float64) []float64 {
		var xs []float64
		for _, r := range res.user[k] {
			if r.serverOK {
				xs = append(xs, f(r))
			}
		}
		return xs
	}
	server := func(r userResult) float64 { return r.serverPerThousandMS() }
	both := func(r userResult) float64 { return server(r) + r.child.cpuPerThousand() }
	perSec := func(r userResult) float64 { return r.rate }
	cpu := func(r userResult) float64 { return r.child.cpuPerThousand() }
	rss := func(r userResult) float64 { return float64(r.child.HWMKiB) / 1024 }
	waited := func(r userResult) float64 { return r.child.EmptyWaitMilli }
	for _, n := range o.userSizes {
		for _, v := range userVariants {
			if len(res.user[userKey{"compute", n, v}])+len(res.user[userKey{"River", n, v}]) == 0 {
				continue
			}
			c, r := field(userKey{"compute", n, v}, perSec), field(userKey{"River", n, v}, perSec)
			row(fmt.Sprintf("%s jobs, %s: jobs/s", human(n), v), cell(c, rate), cell(r, rate), ratioCell(c, r),
				"compute/River ≥ 2", met(c, r, func(c, r float64) bool { return c >= 2*r }))
			rb := serverField(userKey{"River", n, v}, both)
			if e := field(userKey{"ceiling", n, v}, perSec); len(e) > 0 {
				row("    bare Claim+Complete loop (e), a goroutine per connection: jobs/s", cell(e, rate), cell(r, rate), ratioCell(e, r),
					"", "")
				row("    the Worker ÷ the bare loop", ratioCell(c, e), "", "", "≥ 0.85", met(c, e, func(c, e float64) bool { return c >= 0.85*e }))
				if eb := serverField(userKey{"ceiling", n, v}, both); len(eb) > 0 {
					row("      its server + worker CPU ms per 1,000 jobs", cell(eb, count), cell(rb, count), ratioCell(eb, rb), "", "")
				}
			}
			if e := field(userKey{"onewrite", n, v}, perSec); len(e) > 0 {
				row("    one write per job (lock, then complete, in one transaction; not the library's): jobs/s", cell(e, rate), cell(r, rate), ratioCell(e, r),
					"", "")
				if eb := serverField(userKey{"onewrite", n, v}, both); len(eb) > 0 {
					row("      its server + worker CPU ms per 1,000 jobs", cell(eb, count), cell(rb, count), ratioCell(eb, rb), "", "")
				}
			}
			c, r = serverField(userKey{"compute", n, v}, server), serverField(userKey{"River", n, v}, server)
			if len(c)+len(r) > 0 {
				row("    server CPU ms per 1,000 jobs (the postmaster and its children)", cell(c, count), cell(r, count), ratioCell(c, r), "", "")
			}
			c, r = field(userKey{"compute", n, v}, cpu), field(userKey{"River", n, v}, cpu)
			row("    worker CPU ms per 1,000 jobs", cell(c, count), cell(r, count), ratioCell(c, r), "", "")
			c, r = serverField(userKey{"compute", n, v}, both), rb
			if len(c)+len(r) > 0 {
				row("    server + worker CPU ms per 1,000 jobs", cell(c, count), cell(r, count), ratioCell(c, r), "", "")
			}
			c, r = field(userKey{"compute", n, v}, rss), field(userKey{"River", n, v}, rss)
			row("    worker peak RSS MiB (VmHWM)", cell(c, count), cell(r, count), ratioCell(c, r), "", "")
			c, r = field(userKey{"compute", n, v}, waited), field(userKey{"River", n, v}, waited)
			row("    pool acquires that waited (connection opens included), ms in all", cell(c, count), cell(r, count), "", "", "")
		}
	}
	tw.Flush()
	fmt.Fprintln(out, "\nPer run (in run order), jobs/s:")
	for _, n := range o.userSizes {
		for _, v := range userVariants {
			for _, sys := range []string{"compute", "River", "ceiling", "onewrite"} {
				if xs := field(userKey{sys, n, v}, perSec); len(xs) > 0 {
					fmt.Fprintf(out, "  (u) %s jobs, %s, %-9s %s\n", human(n), v, sys+":", list(xs, rate))
				}
			}
		}
	}
}
