package testdb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ErrNoPgBouncer is returned (possibly wrapped) when no pgbouncer binary is
// installed.
var ErrNoPgBouncer = errors.New("testdb: pgbouncer not found on PATH or in /usr/sbin: install it (Debian: apt-get install pgbouncer)")

// bouncerPrefix names the temp dirs of the poolers we start. It begins with
// tempPrefix, so sweepStale removes those of killed test runs too.
const bouncerPrefix = tempPrefix + "bouncer-"

// Bouncer is a PgBouncer process in transaction pooling mode that the
// harness started in front of a server, on a free port of 127.0.0.1, with
// trust authentication for clients.
type Bouncer struct {
	logf    func(format string, args ...any)
	user    string
	port    int
	tempDir string // compute-pg-bouncer-*: pgbouncer.ini, userlist.txt, pgbouncer.log
	logPath string

	mu     sync.Mutex // guards proc and closed
	proc   *process
	closed bool
}

// NewBouncer starts a PgBouncer in transaction mode in front of the
// database of connString (a URL from New) and returns the URL of the same
// database through it; the pooler stops in t.Cleanup. Every test gets a
// pooler of its own, so no other test's traffic decides which server
// connection its statements land on.
//
// Without a pgbouncer binary it skips the test, unless the environment
// variable CI is "true": then it fails it.
func NewBouncer(t testing.TB, connString string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := StartBouncer(ctx, connString, verboseLogf)
	if errors.Is(err, ErrNoPgBouncer) {
		if os.Getenv("CI") != "true" {
			t.Skip(err.Error())
		}
		t.Fatal(err.Error() + " (CI=true: failing instead of skipping)")
	}
	if err != nil {
		t.Fatal(err.Error())
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Error(err.Error())
		}
	})
	u, _ := url.Parse(connString) // StartBouncer parsed it already
	return b.ConnString(strings.TrimPrefix(u.Path, "/"))
}

// StartBouncer starts pgbouncer in transaction pooling mode in front of the
// server of connString, a postgres:// URL (its database is only used to
// check that the pooler works; the pooler serves every database of the
// server). When we are root it runs as the same unprivileged user as the
// servers the harness starts. The caller must Close it.
func StartBouncer(ctx context.Context, connString string, logf func(format string, args ...any)) (*Bouncer, error) {
	logf = orNop(logf)
	bin, err := findPgBouncer()
	if err != nil {
		return nil, err
	}
	target, err := url.Parse(connString)
	if err != nil || (target.Scheme != "postgres" && target.Scheme != "postgresql") || target.User.Username() == "" {
		return nil, fmt.Errorf("testdb: StartBouncer needs a postgres:// URL with a user, got %s", redactConnString(connString))
	}
	cred, tempDir, err := newTempDir(bouncerPrefix, logf)
	if err != nil {
		return nil, err
	}
	b := &Bouncer{
		logf:    logf,
		user:    target.User.Username(),
		tempDir: tempDir,
		logPath: filepath.Join(tempDir, "pgbouncer.log"),
	}
	started := false
	defer func() {
		if !started {
			if err := b.Close(); err != nil {
				logf("testdb: cleaning up after a failed pgbouncer start: %v", err)
			}
		}
	}()
	if err := b.writeFiles(target, cred); err != nil {
		return nil, err
	}
	database := strings.TrimPrefix(target.Path, "/")
	for attempt := 1; ; attempt++ {
		if b.port, err = freePort(); err != nil {
			return nil, err
		}
		err = b.startAndWait(ctx, bin, target, cred, database)
		if err == nil {
			break
		}
		if attempt == 5 || !errors.Is(err, errPortInUse) {
			return nil, err
		}
		logf("testdb: port %d was taken; trying another for pgbouncer", b.port)
	}
	started = true
	logf("testdb: pgbouncer (transaction mode) ready on 127.0.0.1:%d in front of %s", b.port, redactConnString(connString))
	return b, nil
}

// writeFiles writes owner.pid (for sweepStale) and the user list: the
// server's password, if any, which pgbouncer uses to log in to the server.
func (b *Bouncer) writeFiles(target *url.URL, cred *credential) error {
	password, _ := target.User.Password()
	files := []struct{ name, text string }{
		{"owner.pid", strconv.Itoa(os.Getpid()) + "\n"},
		{"userlist.txt", quoteUserlist(b.user) + " " + quoteUserlist(password) + "\n"},
	}
	for _, f := range files {
		if err := b.writeFile(f.name, f.text, cred); err != nil {
			return err
		}
	}
	if cred != nil {
		if err := os.Chown(b.tempDir, int(cred.uid), int(cred.gid)); err != nil {
			return fmt.Errorf("testdb: giving %s to user %s: %w", b.tempDir, cred.name, err)
		}
	}
	return nil
}

// writeFile writes a file of the temp dir, readable only by the user
// pgbouncer runs as.
func (b *Bouncer) writeFile(name, text string, cred *credential) error {
	path := filepath.Join(b.tempDir, name)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		return fmt.Errorf("testdb: writing %s: %w", path, err)
	}
	if cred != nil {
		if err := os.Chown(path, int(cred.uid), int(cred.gid)); err != nil {
			return fmt.Errorf("testdb: giving %s to user %s: %w", path, cred.name, err)
		}
	}
	return nil
}

// quoteUserlist quotes a user list field the way pgbouncer reads it.
func quoteUserlist(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// settings is pgbouncer.ini: every database of the target server,
// transaction pooling, pgbouncer's default LIFO reuse of server
// connections, TCP on 127.0.0.1:b.port only.
func (b *Bouncer) settings(target *url.URL) string {
	host, port := target.Hostname(), target.Port()
	if host == "" {
		host = target.Query().Get("host")
	}
	if host == "" {
		host = "localhost"
	}
	if port == "" {
		port = "5432"
	}
	var ini strings.Builder
	fmt.Fprintf(&ini, "[databases]\n* = host=%s port=%s\n\n[pgbouncer]\n", host, port)
	for _, kv := range [][2]string{
		{"listen_addr", "127.0.0.1"},
		{"listen_port", strconv.Itoa(b.port)},
		{"unix_socket_dir", ""},
		{"auth_type", "trust"},
		{"auth_file", filepath.Join(b.tempDir, "userlist.txt")},
		{"pool_mode", "transaction"},
		{"default_pool_size", "20"},
		{"max_client_conn", "2000"},
		{"ignore_startup_parameters", "extra_float_digits"},
		{"server_tls_sslmode", target.Query().Get("sslmode")},
	} {
		if kv[1] != "" || kv[0] == "unix_socket_dir" {
			fmt.Fprintf(&ini, "%s = %s\n", kv[0], kv[1])
		}
	}
	return ini.String()
}

// startAndWait writes pgbouncer.ini for b.port, starts pgbouncer as a
// child of ours and waits until a connection through it to database works.
func (b *Bouncer) startAndWait(ctx context.Context, bin string, target *url.URL, cred *credential, database string) error {
	if err := b.writeFile("pgbouncer.ini", b.settings(target), cred); err != nil {
		return err
	}
	logFile, err := os.OpenFile(b.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("testdb: opening pgbouncer log: %w", err)
	}
	defer logFile.Close() // the child has its own copy of the descriptor
	offset, err := logFile.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("testdb: opening pgbouncer log: %w", err)
	}
	cmd := exec.Command(bin, filepath.Join(b.tempDir, "pgbouncer.ini"))
	cmd.Dir = b.tempDir
	cmd.Env = childEnv()
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// SIGTERM makes pgbouncer exit (at once before 1.23, once its clients
	// are gone after): sent if the test process dies without Close.
	cmd.SysProcAttr = sysProcAttr(cred, syscall.SIGTERM)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("testdb: starting pgbouncer: %w", err)
	}
	p := &process{pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	b.mu.Lock()
	b.proc = p
	b.mu.Unlock()

	err = waitReady(ctx, b.ConnString(database), time.Now().Add(readyTimeout), p.done)
	if err == nil {
		return nil
	}
	if !errors.Is(err, errExited) {
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
		<-p.done
		return fmt.Errorf("testdb: starting pgbouncer on port %d: %w\n%s", b.port, err, b.logSince(offset))
	}
	log := b.logSince(offset)
	if strings.Contains(log, "in use") {
		return fmt.Errorf("testdb: starting pgbouncer on port %d: %w\n%s", b.port, errPortInUse, log)
	}
	return fmt.Errorf("testdb: pgbouncer exited during startup (%v):\n%s", p.err, log)
}

// logSince returns the last lines pgbouncer logged after offset.
func (b *Bouncer) logSince(offset int64) string {
	f, err := os.Open(b.logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return ""
	}
	data, _ := io.ReadAll(io.LimitReader(f, 1<<20))
	return lastLines(string(data), 20)
}

// ConnString returns a postgres:// URL for the given database through the
// pooler (no password: clients are trusted).
func (b *Bouncer) ConnString(database string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(b.user),
		Host:     "127.0.0.1:" + strconv.Itoa(b.port),
		Path:     "/" + database,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Port returns the pooler's TCP port on 127.0.0.1.
func (b *Bouncer) Port() int { return b.port }

// Close stops pgbouncer (SIGTERM, then SIGKILL after 10 s) and removes its
// temp dir. It is safe to call more than once.
func (b *Bouncer) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	var errs []error
	if p := b.proc; p != nil && !p.exited() {
		_ = syscall.Kill(p.pid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-p.pid, syscall.SIGKILL)
			select {
			case <-p.done:
			case <-time.After(10 * time.Second):
				errs = append(errs, fmt.Errorf("testdb: pgbouncer (pid %d) survived SIGKILL", p.pid))
			}
		}
	}
	if err := removeAll(b.tempDir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// findPgBouncer returns the pgbouncer binary: from PATH, else Debian's
// /usr/sbin (not on PATH for every user).
func findPgBouncer() (string, error) {
	if path, err := exec.LookPath("pgbouncer"); err == nil {
		return path, nil
	}
	if isExecutable("/usr/sbin/pgbouncer") {
		return "/usr/sbin/pgbouncer", nil
	}
	return "", ErrNoPgBouncer
}

// PID returns the pgbouncer process id (0 before it started).
func (b *Bouncer) PID() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.proc == nil {
		return 0
	}
	return b.proc.pid
}

// TempDir returns the pooler's temp dir (settings, user list, log), which
// Close removes.
func (b *Bouncer) TempDir() string { return b.tempDir }
