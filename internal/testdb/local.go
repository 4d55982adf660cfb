package testdb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// tempPrefix names the temp dirs of servers we start, so leftovers of killed
// test runs are recognisable (and swept, see sweepStale).
const tempPrefix = "compute-pg-"

// serverSettings are the settings of every server the harness starts. They
// trade durability against OS crashes for speed, but keep synchronous_commit
// on: fault tests crash the postmaster and must not lose acknowledged commits.
var serverSettings = []string{
	"fsync=off",
	"full_page_writes=off",
	"synchronous_commit=on",
	"max_connections=300",
	"shared_buffers=128MB",
	// Tests read the library's statements back from pg_stat_activity.
	"track_activity_query_size=8192",
}

// credential is the unprivileged user the server runs as when we are root.
type credential struct {
	name     string
	uid, gid uint32
}

// process is a running (or exited) postmaster that we started.
type process struct {
	pid  int           // also its process group id (Setpgid)
	done chan struct{} // closed once the process has exited and been reaped
	err  error         // result of Wait; read only after done is closed
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

var errPortInUse = errors.New("port already in use")

// startLocal creates a fresh cluster in a temp dir and starts it on a free port.
func startLocal(ctx context.Context, binDir string, logf func(string, ...any), settings ...string) (*Server, error) {
	began := time.Now()
	cred, tempDir, err := newTempDir(tempPrefix, logf)
	if err != nil {
		return nil, err
	}
	s := &Server{
		kind:     kindLocal,
		logf:     logf,
		binDir:   binDir,
		settings: settings,
		tempDir:  tempDir,
		dataDir:  filepath.Join(tempDir, "data"),
		logPath:  filepath.Join(tempDir, "postgres.log"),
		cred:     cred,
	}
	started := false
	defer func() {
		if !started {
			if err := s.Close(); err != nil {
				logf("testdb: cleaning up after failed start: %v", err)
			}
		}
	}()

	// owner.pid lets a later run tell whether this dir's owner is still alive.
	if err := os.WriteFile(filepath.Join(tempDir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("testdb: writing owner.pid: %w", err)
	}
	if cred != nil {
		if err := os.Chown(tempDir, int(cred.uid), int(cred.gid)); err != nil {
			return nil, fmt.Errorf("testdb: giving %s to user %s: %w", tempDir, cred.name, err)
		}
	}

	logf("testdb: initdb with %s in %s", binDir, s.dataDir)
	out, err := s.runTool(ctx, "initdb", "-D", s.dataDir, "-A", "trust", "-U", "postgres",
		"--no-sync", "-E", "UTF8", "--locale=C")
	if err != nil {
		return nil, fmt.Errorf("testdb: initdb: %w\n%s", err, lastLines(string(out), 20))
	}

	// The free port may be taken by someone else before postgres binds it;
	// then try another one.
	for attempt := 1; ; attempt++ {
		if s.port, err = freePort(); err != nil {
			return nil, err
		}
		s.base = ownedURL(s.port)
		s.adminURL = s.ConnString("postgres")
		err = s.startAndWait(ctx)
		if err == nil {
			break
		}
		if attempt == 5 || !errors.Is(err, errPortInUse) {
			return nil, err
		}
		logf("testdb: port %d was taken; trying another", s.port)
	}
	started = true
	logf("testdb: PostgreSQL ready on 127.0.0.1:%d after %v (data dir %s)", s.port, time.Since(began).Round(time.Millisecond), s.dataDir)
	return s, nil
}

// startAndWait starts the postmaster and waits until it accepts connections.
// After a crash the previous postmaster's backends may still hold the shared
// memory for a moment; postgres then refuses to start and we retry until the
// ready deadline. The caller holds s.mu (or owns s exclusively).
func (s *Server) startAndWait(ctx context.Context) error {
	deadline := time.Now().Add(readyTimeout)
	for {
		p, logOffset, err := s.spawn()
		if err != nil {
			return err
		}
		s.proc = p
		err = waitReady(ctx, s.adminURL, deadline, p.done)
		if err == nil {
			return nil
		}
		if !errors.Is(err, errExited) {
			s.killGroup(p)
			return fmt.Errorf("testdb: starting postgres on port %d: %w\n%s", s.port, err, s.logSince(logOffset))
		}

		log := s.logSince(logOffset)
		switch {
		case strings.Contains(log, "could not bind") || strings.Contains(log, "could not create any TCP/IP sockets"):
			return fmt.Errorf("testdb: starting postgres on port %d: %w (%v)\n%s", s.port, errPortInUse, p.err, log)
		case strings.Contains(log, "pre-existing shared memory block") && time.Now().Before(deadline):
			s.logf("testdb: processes of the previous postmaster still hold shared memory; retrying")
			select {
			case <-ctx.Done():
				return fmt.Errorf("testdb: starting postgres: %w", ctx.Err())
			case <-time.After(200 * time.Millisecond):
			}
		default:
			return fmt.Errorf("testdb: postgres exited during startup (%v):\n%s", p.err, log)
		}
	}
}

// spawn starts the postmaster as a direct child (so we can reap it, and a
// killed postmaster does not linger as a zombie that postgres would mistake
// for a running server). Its output is appended to postgres.log; spawn
// returns the log size before the start so errors can quote just this run.
// The goroutine it starts ends when the postmaster exits; every path of the
// Server (Stop, Close, failed starts) makes sure that happens.
func (s *Server) spawn() (*process, int64, error) {
	logFile, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, 0, fmt.Errorf("testdb: opening postgres log: %w", err)
	}
	defer logFile.Close() // the child has its own copy of the descriptor
	offset, err := logFile.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, 0, fmt.Errorf("testdb: opening postgres log: %w", err)
	}

	args := []string{"-D", s.dataDir, "-p", strconv.Itoa(s.port), "-k", s.tempDir, "-c", "listen_addresses=127.0.0.1"}
	for _, setting := range append(slices.Clone(serverSettings), s.settings...) {
		args = append(args, "-c", setting)
	}
	cmd := exec.Command(filepath.Join(s.binDir, "postgres"), args...)
	cmd.Dir = s.tempDir
	cmd.Env = childEnv()
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// SIGQUIT is postgres's immediate shutdown: sent if the test process dies.
	cmd.SysProcAttr = sysProcAttr(s.cred, syscall.SIGQUIT)
	if err := cmd.Start(); err != nil {
		return nil, 0, fmt.Errorf("testdb: starting postgres: %w", err)
	}
	p := &process{pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, offset, nil
}

// stopLocked runs pg_ctl stop -m mode and waits for the postmaster to exit.
// A server that is not running counts as stopped. The caller holds s.mu.
func (s *Server) stopLocked(ctx context.Context, mode string) error {
	p := s.proc
	if p == nil || p.exited() {
		return nil
	}
	// A test may have paused the server with SIGSTOP; it must run to stop.
	_ = syscall.Kill(-p.pid, syscall.SIGCONT)
	out, err := s.runTool(ctx, "pg_ctl", "stop", "-D", s.dataDir, "-m", mode, "-w", "-t", "30")
	if err != nil {
		select {
		case <-p.done: // it died on its own meanwhile
			return nil
		case <-time.After(100 * time.Millisecond):
		}
		return fmt.Errorf("testdb: pg_ctl stop -m %s: %w: %s", mode, err, strings.TrimSpace(string(out)))
	}
	// pg_ctl returns once postmaster.pid is gone, just before the process exits.
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("testdb: waiting for postgres (pid %d) to exit: %w", p.pid, ctx.Err())
	case <-time.After(10 * time.Second):
		return fmt.Errorf("testdb: postgres (pid %d) still running 10s after pg_ctl stop", p.pid)
	}
}

// killGroup SIGKILLs the postmaster and its process group, then waits up to
// 10s for it to be reaped. It reports whether the postmaster has exited.
func (s *Server) killGroup(p *process) bool {
	_ = syscall.Kill(-p.pid, syscall.SIGKILL)
	select {
	case <-p.done:
		return true
	case <-time.After(10 * time.Second):
		return false
	}
}

// killLeftovers SIGKILLs backends that outlived a killed postmaster; they
// are in its process group (the group id is the dead postmaster's pid, which
// the kernel does not reuse while the group has members).
func (s *Server) killLeftovers() {
	if s.proc != nil && s.proc.exited() {
		_ = syscall.Kill(-s.proc.pid, syscall.SIGKILL)
	}
}

// closeLocal stops the server, escalating fast → immediate → SIGKILL, and
// removes the temp dir. The caller holds s.mu.
func (s *Server) closeLocal() error {
	var errs []error
	if p := s.proc; p != nil && !p.exited() {
		err := s.stopWithTimeout("fast", 15*time.Second)
		if err != nil {
			s.logf("testdb: %v; trying immediate shutdown", err)
			err = s.stopWithTimeout("immediate", 15*time.Second)
		}
		if err != nil {
			s.logf("testdb: %v; killing postgres", err)
			if !s.killGroup(p) {
				errs = append(errs, fmt.Errorf("testdb: postgres (pid %d) survived SIGKILL", p.pid))
			}
		}
	}
	s.killLeftovers()
	if err := removeAll(s.tempDir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (s *Server) stopWithTimeout(mode string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return s.stopLocked(ctx, mode)
}

// runTool runs initdb or pg_ctl from binDir as the server's user and returns
// its combined output.
func (s *Server) runTool(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(s.binDir, name), args...)
	cmd.Dir = s.tempDir
	cmd.Env = childEnv()
	cmd.SysProcAttr = sysProcAttr(s.cred, syscall.SIGKILL)
	cmd.WaitDelay = 5 * time.Second
	return cmd.CombinedOutput()
}

// logSince returns the last lines postgres logged after offset.
func (s *Server) logSince(offset int64) string {
	f, err := os.Open(s.logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return ""
	}
	b, _ := io.ReadAll(io.LimitReader(f, 1<<20))
	return lastLines(string(b), 20)
}

// binaryDirPatterns are searched for binaries after PATH, in this order;
// the matches of each pattern newest version first.
var binaryDirPatterns = []string{
	"/usr/lib/postgresql/*/bin",
	"/usr/local/pgsql/bin",
	"/opt/homebrew/opt/postgresql*/bin",
	"/usr/local/opt/postgresql*/bin",
}

// findBinaries returns a directory holding initdb, pg_ctl and postgres:
// first from PATH, then binaryDirPatterns. It returns ErrNoPostgres if none does.
func findBinaries() (string, error) {
	var candidates []string
	for _, name := range []string{"initdb", "pg_ctl"} {
		if path, err := exec.LookPath(name); err == nil {
			if real, err := filepath.EvalSymlinks(path); err == nil {
				candidates = append(candidates, filepath.Dir(real))
			}
			candidates = append(candidates, filepath.Dir(path))
		}
	}
	for _, pattern := range binaryDirPatterns {
		candidates = append(candidates, globNewestFirst(pattern)...)
	}
	for _, dir := range candidates {
		if isExecutable(filepath.Join(dir, "initdb")) &&
			isExecutable(filepath.Join(dir, "pg_ctl")) &&
			isExecutable(filepath.Join(dir, "postgres")) {
			return dir, nil
		}
	}
	return "", ErrNoPostgres
}

var versionRE = regexp.MustCompile(`\d+(\.\d+)*`)

// globNewestFirst expands pattern and sorts the matches by the version number
// in the path (e.g. .../postgresql/16/bin before .../postgresql/9.6/bin).
func globNewestFirst(pattern string) []string {
	matches, _ := filepath.Glob(pattern)
	version := func(dir string) []int {
		var v []int
		for _, part := range strings.Split(versionRE.FindString(filepath.Base(filepath.Dir(dir))), ".") {
			n, _ := strconv.Atoi(part)
			v = append(v, n)
		}
		return v
	}
	slices.SortStableFunc(matches, func(a, b string) int {
		return slices.Compare(version(b), version(a))
	})
	return matches
}

func isExecutable(path string) bool {
	info, err := os.Stat(path)
	return err == nil && info.Mode().IsRegular() && info.Mode().Perm()&0o111 != 0
}

// serverCredential returns the user to run postgres as: nil when we are not
// root, else postgres or, failing that, nobody. (Postgres refuses to run as root.)
func serverCredential() (*credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		return &credential{name: name, uid: uint32(uid), gid: uint32(gid)}, nil
	}
	return nil, errors.New("testdb: running as root, but neither user postgres nor nobody exists to run PostgreSQL as")
}

// newTempDir makes a temp dir named with prefix for a process that runs as
// the server's user (cred, nil when we are not root), after sweeping the
// stale dirs of dead owners.
func newTempDir(prefix string, logf func(string, ...any)) (*credential, string, error) {
	cred, err := serverCredential()
	if err != nil {
		return nil, "", err
	}
	base := tempBase(cred)
	sweepStale(base, logf)
	dir, err := os.MkdirTemp(base, prefix)
	if err != nil {
		return nil, "", fmt.Errorf("testdb: creating temp dir: %w", err)
	}
	return cred, dir, nil
}

// tempBase returns the directory for our temp dirs: os.TempDir(), unless its
// path is too long for the unix socket path limit (107 bytes) or the server's
// user could not reach it; then /tmp.
func tempBase(cred *credential) string {
	base := os.TempDir()
	if len(base) > 60 {
		return "/tmp"
	}
	if cred != nil {
		for dir := base; ; dir = filepath.Dir(dir) {
			info, err := os.Stat(dir)
			if err != nil || info.Mode().Perm()&0o001 == 0 {
				return "/tmp"
			}
			if dir == filepath.Dir(dir) {
				break
			}
		}
	}
	return base
}

// sweepStale removes compute-pg-* dirs left by killed test runs: older than
// two minutes, whose owner process and postmaster are both gone. It never
// touches a dir whose postmaster is still running.
func sweepStale(base string, logf func(string, ...any)) {
	entries, err := os.ReadDir(base)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), tempPrefix) {
			continue
		}
		dir := filepath.Join(base, e.Name())
		info, err := e.Info()
		if err != nil || time.Since(info.ModTime()) < 2*time.Minute {
			continue
		}
		if pid, err := readPID(filepath.Join(dir, "owner.pid")); err == nil && pidAlive(pid) {
			continue
		}
		if pid, err := readPID(filepath.Join(dir, "data", "postmaster.pid")); err == nil && pidAlive(pid) {
			continue
		}
		if err := os.RemoveAll(dir); err == nil {
			logf("testdb: removed stale %s", dir)
		}
	}
}

func readPID(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	first, _, _ := strings.Cut(string(b), "\n")
	return strconv.Atoi(strings.TrimSpace(first))
}

func pidAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// removeAll removes dir, retrying briefly in case exiting postgres processes
// are still writing into it.
func removeAll(dir string) error {
	var err error
	for range 5 {
		if err = os.RemoveAll(dir); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("testdb: removing %s: %w", dir, err)
}

// childEnv is our environment minus PG* variables (which could point initdb
// or pg_ctl elsewhere), with the C locale so server messages are predictable.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_ALL=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C")
}

// freePort asks the kernel for a free TCP port on 127.0.0.1.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("testdb: finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
