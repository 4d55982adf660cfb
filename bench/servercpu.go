package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/computeplatform/compute/internal/backoff"
)

// clockTick is the unit of the CPU times in /proc/<pid>/stat (USER_HZ,
// 100 on Linux whatever the kernel's own tick).
const clockTick = 10 * time.Millisecond

// serverCPU is the CPU time the server of pool has used so far, from
// /proc: its postmaster's own and that of the children it has reaped
// (backends and autovacuum workers that exited), plus that of its
// children still running (the other backends, the WAL writer, the
// checkpointer). It works only for a server on this machine that this
// process may read /proc of (not one in a container), and fails
// otherwise; it fails with errUnreaped when a child exited during the
// reading or awaits its reaping (its time could count twice or not at
// all: read again). A phase's figure is the difference of two readings
// taken while none of its connections' backends is alive, so that each
// counts once (phaseServerCPU).
func serverCPU(ctx context.Context, pool *pgxpool.Pool) (time.Duration, error) {
	postmaster, err := postmasterPID(ctx, pool)
	if err != nil {
		return 0, err
	}
	pm, err := readStat(postmaster)
	if err != nil {
		return 0, err
	}
	ticks := pm.utime + pm.stime + pm.cutime + pm.cstime
	dirs, err := filepath.Glob("/proc/[0-9]*")
	if err != nil {
		return 0, err
	}
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		if st, err := readStat(pid); err == nil && st.ppid == postmaster {
			if st.state == "Z" {
				return 0, errUnreaped
			}
			ticks += st.utime + st.stime
		}
	}
	// A child reaped since the postmaster was read counted nowhere.
	if again, err := readStat(postmaster); err != nil || again.cutime+again.cstime != pm.cutime+pm.cstime {
		return 0, errUnreaped
	}
	return time.Duration(ticks) * clockTick, nil
}

// errUnreaped: a child of the postmaster exited during the reading, or
// awaits its reaping.
var errUnreaped = errors.New("a server process awaits reaping")

// postmasterPID is the pid of the postmaster of pool's server: the parent
// of the backend serving one of pool's connections.
func postmasterPID(ctx context.Context, pool *pgxpool.Pool) (int, error) {
	var backend int
	if err := pool.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&backend); err != nil {
		return 0, err
	}
	st, err := readStat(backend)
	if err != nil {
		return 0, fmt.Errorf("the server's processes are not on this machine, or not readable: %w", err)
	}
	pm, err := readStat(st.ppid)
	if err != nil {
		return 0, err
	}
	if pm.comm != "postgres" {
		return 0, fmt.Errorf("the backend's parent is %q, not postgres", pm.comm)
	}
	return st.ppid, nil
}

// procStat is the part of /proc/<pid>/stat serverCPU reads.
type procStat struct {
	comm, state                  string
	ppid                         int
	utime, stime, cutime, cstime int64 // in clock ticks
}

// readStat reads /proc/<pid>/stat: the command name is in parentheses and
// may hold spaces, so the fields are counted from its closing one.
func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	s := string(b)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return procStat{}, errors.New("malformed stat")
	}
	// After the name: state (field 3), ppid (4), ... utime (14), stime
	// (15), cutime (16), cstime (17).
	f := strings.Fields(s[end+1:])
	if len(f) < 15 {
		return procStat{}, errors.New("short stat")
	}
	st := procStat{comm: s[open+1 : end], state: f[0]}
	var errs [5]error
	st.ppid, errs[0] = strconv.Atoi(f[1])
	st.utime, errs[1] = strconv.ParseInt(f[11], 10, 64)
	st.stime, errs[2] = strconv.ParseInt(f[12], 10, 64)
	st.cutime, errs[3] = strconv.ParseInt(f[13], 10, 64)
	st.cstime, errs[4] = strconv.ParseInt(f[14], 10, 64)
	return st, errors.Join(errs[:]...)
}

// phaseServerCPU is the server's CPU time while run ran. It reads
// serverCPU before run, and after it once every backend that served a
// connection named app has ended: a backend leaves pg_stat_activity before
// its process ends, and what it spends after a reading that counted it
// alive would be missed. While run runs, it notes those backends' pids
// every 100 ms. readErr says why the time could not be read; runErr is
// run's own.
func phaseServerCPU(ctx context.Context, pool *pgxpool.Pool, app string, run func() error) (cpu time.Duration, readErr, runErr error) {
	before, readErr := readServerCPU(ctx, pool)
	pids := map[int]bool{}
	watchCtx, stopWatching := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			_, _ = notePIDs(watchCtx, pool, app, pids) // the last look below catches what this misses
			if !backoff.Sleep(watchCtx, 100*time.Millisecond) {
				return
			}
		}
	}()
	runErr = run()
	stopWatching()
	<-watched
	if runErr != nil || readErr != nil {
		return 0, readErr, runErr
	}
	for {
		open, err := notePIDs(ctx, pool, app, pids)
		if err != nil {
			return 0, err, nil
		}
		if open == 0 {
			break
		}
		if !backoff.Sleep(ctx, 10*time.Millisecond) {
			return 0, ctx.Err(), nil
		}
	}
	postmaster, err := postmasterPID(ctx, pool)
	if err != nil {
		return 0, err, nil
	}
	deadline := time.Now().Add(10 * time.Second)
	for pid := range pids {
		for {
			st, err := readStat(pid)
			if err != nil || st.ppid != postmaster {
				break // gone (or the pid is another process's now)
			}
			if time.Now().After(deadline) {
				return 0, fmt.Errorf("backend %d still runs 10 s after the worker process ended", pid), nil
			}
			if !backoff.Sleep(ctx, 10*time.Millisecond) {
				return 0, ctx.Err(), nil
			}
		}
	}
	after, readErr := readServerCPU(ctx, pool)
	return after - before, readErr, nil
}

// notePIDs adds the pids of the backends serving connections named app to
// pids, and says how many there are.
func notePIDs(ctx context.Context, pool *pgxpool.Pool, app string, pids map[int]bool) (int, error) {
	rows, err := pool.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE application_name = $1`, app)
	if err != nil {
		return 0, err
	}
	open, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	for _, pid := range open {
		pids[int(pid)] = true
	}
	return len(open), err
}

// readServerCPU reads serverCPU, again while an exited child awaits its
// reaping (for up to a second).
func readServerCPU(ctx context.Context, pool *pgxpool.Pool) (time.Duration, error) {
	for range 100 {
		cpu, err := serverCPU(ctx, pool)
		if !errors.Is(err, errUnreaped) {
			return cpu, err
		}
		if !backoff.Sleep(ctx, 10*time.Millisecond) {
			return 0, ctx.Err()
		}
	}
	return 0, errUnreaped
}
