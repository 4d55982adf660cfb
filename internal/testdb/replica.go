package testdb

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// StartStandby makes a streaming standby of the owned server s and starts
// it on a free port of 127.0.0.1: pg_basebackup -R (which writes
// standby.signal and primary_conninfo) into a temp dir of its own, then the
// same postmaster settings as s. With synchronous set, s then waits for the
// standby at every commit (synchronous_standby_names = '*'); it is set on s
// only after the copy, so the standby, once promoted, waits for nobody. It
// returns once the standby streams (and, if synchronous, is s's
// synchronous standby). The caller must Close the standby; it is an owned
// server like s (Stop, Restart, Promote).
func (s *Server) StartStandby(ctx context.Context, synchronous bool) (*Server, error) {
	if err := s.checkOwned("StartStandby"); err != nil {
		return nil, err
	}
	if !isExecutable(filepath.Join(s.binDir, "pg_basebackup")) {
		return nil, fmt.Errorf("testdb: StartStandby: no pg_basebackup in %s: %w", s.binDir, ErrNoPostgres)
	}
	tempDir, err := os.MkdirTemp(tempBase(s.cred), tempPrefix)
	if err != nil {
		return nil, fmt.Errorf("testdb: creating temp dir: %w", err)
	}
	sb := &Server{
		kind:    kindLocal,
		logf:    s.logf,
		binDir:  s.binDir,
		tempDir: tempDir,
		dataDir: filepath.Join(tempDir, "data"),
		logPath: filepath.Join(tempDir, "postgres.log"),
		cred:    s.cred,
	}
	started := false
	defer func() {
		if !started {
			if err := sb.Close(); err != nil {
				s.logf("testdb: cleaning up after a failed standby start: %v", err)
			}
		}
	}()
	if err := os.WriteFile(filepath.Join(tempDir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("testdb: writing owner.pid: %w", err)
	}
	if sb.cred != nil {
		if err := os.Chown(tempDir, int(sb.cred.uid), int(sb.cred.gid)); err != nil {
			return nil, fmt.Errorf("testdb: giving %s to user %s: %w", tempDir, sb.cred.name, err)
		}
	}
	// -c fast: a checkpoint at once, not spread over minutes.
	out, err := sb.runTool(ctx, "pg_basebackup", "-h", "127.0.0.1", "-p", strconv.Itoa(s.port), "-U", "postgres",
		"-D", sb.dataDir, "-R", "-X", "stream", "-c", "fast", "--no-sync")
	if err != nil {
		return nil, fmt.Errorf("testdb: pg_basebackup: %w\n%s", err, lastLines(string(out), 20))
	}
	if sb.port, err = freePort(); err != nil {
		return nil, err
	}
	sb.base = ownedURL(sb.port)
	sb.adminURL = sb.ConnString("postgres")
	if err := sb.startAndWait(ctx); err != nil {
		return nil, err
	}
	if synchronous {
		if err := s.adminExec(ctx, `ALTER SYSTEM SET synchronous_standby_names = '*'`); err != nil {
			return nil, fmt.Errorf("testdb: making the standby synchronous: %w", err)
		}
		if err := s.adminExec(ctx, `SELECT pg_reload_conf()`); err != nil {
			return nil, fmt.Errorf("testdb: making the standby synchronous: %w", err)
		}
	}
	if err := s.waitStreaming(ctx, synchronous); err != nil {
		return nil, err
	}
	started = true
	s.logf("testdb: standby of port %d ready on 127.0.0.1:%d (synchronous %v, data dir %s)", s.port, sb.port, synchronous, sb.dataDir)
	return sb, nil
}

// streamingSQL says whether a standby streams from this server and, if $1,
// is its synchronous standby.
const streamingSQL = `SELECT EXISTS (SELECT FROM pg_stat_replication WHERE state = 'streaming' AND (sync_state = 'sync' OR NOT $1))`

// waitStreaming waits until a standby streams from s (and is its
// synchronous standby, if synchronous).
func (s *Server) waitStreaming(ctx context.Context, synchronous bool) error {
	return s.waitFor(ctx, "a standby to stream", streamingSQL, synchronous)
}

// waitFor runs query, which returns one bool, on s every 50 ms until it
// returns true, for up to readyTimeout; what names the wait in its error.
func (s *Server) waitFor(ctx context.Context, what, query string, args ...any) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	for {
		var ok bool
		err := func() error {
			conn, err := pgx.Connect(ctx, s.adminURL)
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			return conn.QueryRow(ctx, query, args...).Scan(&ok)
		}()
		if err == nil && ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("testdb: waiting for %s: %w (last error: %v)", what, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ReplicateFrom points an owned standby's WAL receiver at 127.0.0.1:port
// (a proxy in front of its primary, say) and returns once it streams from
// there: primary_conninfo is reloaded, which restarts the receiver.
func (s *Server) ReplicateFrom(ctx context.Context, port int) error {
	if err := s.checkOwned("ReplicateFrom"); err != nil {
		return err
	}
	conninfo := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres", port)
	if err := s.adminExec(ctx, `ALTER SYSTEM SET primary_conninfo = `+quoteLiteral(conninfo)); err != nil {
		return fmt.Errorf("testdb: setting primary_conninfo: %w", err)
	}
	if err := s.adminExec(ctx, `SELECT pg_reload_conf()`); err != nil {
		return fmt.Errorf("testdb: reloading the standby: %w", err)
	}
	return s.waitFor(ctx, fmt.Sprintf("the standby to stream from port %d", port), receivingFromSQL, port)
}

// receivingFromSQL says whether the WAL receiver streams from port $1.
const receivingFromSQL = `SELECT EXISTS (SELECT FROM pg_stat_wal_receiver WHERE status = 'streaming' AND sender_port = $1)`

// quoteLiteral quotes s as an SQL string literal (ALTER SYSTEM takes no
// parameters).
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// Promote turns an owned standby into a primary (pg_ctl promote -w) and
// returns once it accepts writes.
func (s *Server) Promote(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkOwned("Promote"); err != nil {
		return err
	}
	out, err := s.runTool(ctx, "pg_ctl", "promote", "-D", s.dataDir, "-w", "-t", "30")
	if err != nil {
		return fmt.Errorf("testdb: pg_ctl promote: %w: %s", err, strings.TrimSpace(string(out)))
	}
	s.logf("testdb: PostgreSQL on port %d promoted", s.port)
	return nil
}

// MultiHostURL returns a connection URL for database that lists the
// servers' hosts in order, with target_session_attrs=read-write: the driver
// connects to the first of them that accepts writes. Every server must be
// one the harness started (user postgres, trust authentication).
func MultiHostURL(database string, servers ...*Server) (string, error) {
	if len(servers) == 0 {
		return "", errors.New("testdb: MultiHostURL: no servers")
	}
	hosts := make([]string, len(servers))
	for i, srv := range servers {
		if !srv.Owned() {
			return "", errors.New("testdb: MultiHostURL: every server must be one the harness started from local binaries")
		}
		hosts[i] = "127.0.0.1:" + strconv.Itoa(srv.port)
	}
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     strings.Join(hosts, ","),
		Path:     "/" + database,
		RawQuery: "sslmode=disable&target_session_attrs=read-write",
	}
	return u.String(), nil
}
