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

	"github.com/jackc/pgx/v5/pgxpool"
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
// otherwise; it fails with errUnreaped when a child had exited and was not
// yet reaped (its time could count twice or not at all: read again). A
// phase's figure is the difference of two readings taken while none of
// its connections is open, so that each backend counts once.
func serverCPU(ctx context.Context, pool *pgxpool.Pool) (time.Duration, error) {
	var backend int
	if err := pool.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&backend); err != nil {
		return 0, err
	}
	st, err := readStat(backend)
	if err != nil {
		return 0, err
	}
	postmaster := st.ppid
	pm, err := readStat(postmaster)
	if err != nil {
		return 0, err
	}
	if pm.comm != "postgres" {
		return 0, fmt.Errorf("the backend's parent is %q, not postgres", pm.comm)
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
	return time.Duration(ticks) * clockTick, nil
}

// errUnreaped: a child of the postmaster has exited and awaits reaping.
var errUnreaped = errors.New("a server process awaits reaping")

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

// phaseServerCPU is the server's CPU time while run ran: it reads
// serverCPU before run, and after it once no connection named app is open
// (run's process has exited; its backends exit a moment later). ok is
// false when the server's processes cannot be read.
func phaseServerCPU(ctx context.Context, pool *pgxpool.Pool, app string, run func() error) (cpu time.Duration, ok bool, err error) {
	before, ok := readServerCPU(ctx, pool)
	if err := run(); err != nil {
		return 0, false, err
	}
	if !ok {
		return 0, false, nil
	}
	for {
		var open int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name = $1`, app).Scan(&open); err != nil {
			return 0, false, err
		}
		if open == 0 {
			break
		}
		if !sleepCtx(ctx, 10*time.Millisecond) {
			return 0, false, ctx.Err()
		}
	}
	after, ok := readServerCPU(ctx, pool)
	return after - before, ok, nil
}

// readServerCPU reads serverCPU, again while an exited child awaits its
// reaping (up to a second); ok is false when it cannot be read.
func readServerCPU(ctx context.Context, pool *pgxpool.Pool) (cpu time.Duration, ok bool) {
	for range 100 {
		cpu, err := serverCPU(ctx, pool)
		if !errors.Is(err, errUnreaped) {
			return cpu, err == nil
		}
		if !sleepCtx(ctx, 10*time.Millisecond) {
			break
		}
	}
	return 0, false
}

// sleepCtx waits d, or until ctx ends (then it reports false).
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
