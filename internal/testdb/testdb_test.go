package testdb_test

import (
	"context"
	"errors"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/computeplatform/compute/internal/testdb"
)

func TestMain(m *testing.M) { os.Exit(testdb.Run(m)) }

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func connect(t *testing.T, connString string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(testContext(t), connString)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func queryInt(t *testing.T, conn *pgx.Conn, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := conn.QueryRow(testContext(t), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// startLocal starts a private server with settings added to the harness's
// (StartLocalWith), skipping like New does when there are no binaries.
func startLocal(t *testing.T, settings ...string) *testdb.Server {
	t.Helper()
	srv, err := testdb.StartLocalWith(testContext(t), t.Logf, settings...)
	if errors.Is(err, testdb.ErrNoPostgres) && os.Getenv("CI") != "true" {
		t.Skip(err.Error())
	}
	if err != nil {
		t.Fatalf("StartLocal: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return srv
}

// The bench's durable server: settings given to StartLocalWith override the
// harness's fsync=off and full_page_writes=off.
func TestStartLocalWithOverridesSettings(t *testing.T) {
	t.Parallel()
	srv := startLocal(t, "fsync=on", "full_page_writes=on")
	conn := connect(t, srv.ConnString("postgres"))
	for _, name := range []string{"fsync", "full_page_writes", "synchronous_commit"} {
		var v string
		if err := conn.QueryRow(testContext(t), "SELECT current_setting($1)", name).Scan(&v); err != nil {
			t.Fatal(err)
		}
		if v != "on" {
			t.Errorf("%s = %s, want on", name, v)
		}
	}
}

func TestNewGivesWorkingEmptyDatabase(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	conn := connect(t, testdb.New(t))

	var name string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&name); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(name, "t_") {
		t.Errorf("database name = %q, want prefix t_", name)
	}
	userRelations := queryInt(t, conn, `SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'`)
	if userRelations != 0 {
		t.Errorf("fresh database has %d user relations, want 0", userRelations)
	}

	if _, err := conn.Exec(ctx, "CREATE TABLE jobs (id bigint PRIMARY KEY); INSERT INTO jobs VALUES (1), (2)"); err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, conn, "SELECT count(*) FROM jobs"); n != 2 {
		t.Errorf("count = %d, want 2", n)
	}
}

func TestNewGivesDistinctDatabases(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	a, b := testdb.New(t), testdb.New(t)
	if a == b {
		t.Fatalf("two New calls returned the same connection string %q", a)
	}
	connA, connB := connect(t, a), connect(t, b)
	if _, err := connA.Exec(ctx, "CREATE TABLE only_in_a (x int)"); err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, connB, "SELECT count(*) FROM pg_class WHERE relname = 'only_in_a'"); n != 0 {
		t.Errorf("table created in database A is visible in database B")
	}
}

func TestNewIsSafeInParallel(t *testing.T) {
	t.Parallel()
	for i := range 8 {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			t.Parallel()
			conn := connect(t, testdb.New(t))
			if n := queryInt(t, conn, "SELECT 1"); n != 1 {
				t.Errorf("SELECT 1 = %d", n)
			}
		})
	}
}

func TestNewDropsDatabaseAtCleanup(t *testing.T) {
	t.Parallel()
	var name string
	t.Run("user", func(t *testing.T) {
		conn := connect(t, testdb.New(t))
		if err := conn.QueryRow(testContext(t), "SELECT current_database()").Scan(&name); err != nil {
			t.Fatal(err)
		}
	})
	observer := connect(t, testdb.New(t))
	if n := queryInt(t, observer, "SELECT count(*) FROM pg_database WHERE datname = $1", name); n != 0 {
		t.Errorf("database %q still exists after its test's cleanup", name)
	}
}

func TestStartLocalCrashAndRestartKeepsCommittedData(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	srv := startLocal(t)
	if !srv.Owned() {
		t.Fatal("StartLocal server is not Owned")
	}
	port := srv.Port()

	connString, err := srv.CreateDatabase(ctx, "crash test") // a name that needs quoting
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 1000)"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)

	// Crash 1: immediate shutdown through pg_ctl.
	if err := srv.Stop(ctx, "immediate"); err != nil {
		t.Fatalf("Stop(immediate): %v", err)
	}
	if _, err := pgx.Connect(ctx, connString); err == nil {
		t.Fatal("server still accepts connections after Stop")
	}
	if err := srv.Restart(ctx); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	conn = connect(t, connString)
	if n := queryInt(t, conn, "SELECT count(*) FROM t"); n != 1000 {
		t.Fatalf("after immediate stop + restart: %d rows, want 1000", n)
	}

	// Crash 2: SIGKILL the postmaster while a session is open.
	if _, err := conn.Exec(ctx, "INSERT INTO t SELECT generate_series(1001, 2000)"); err != nil {
		t.Fatal(err)
	}
	pid, err := srv.PostmasterPID()
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill postmaster %d: %v", pid, err)
	}
	if err := srv.Restart(ctx); err != nil {
		t.Fatalf("Restart after SIGKILL: %v", err)
	}
	if srv.Port() != port {
		t.Errorf("port changed across restarts: %d -> %d", port, srv.Port())
	}
	conn2 := connect(t, connString)
	if n := queryInt(t, conn2, "SELECT count(*) FROM t"); n != 2000 {
		t.Fatalf("after SIGKILL + restart: %d rows, want 2000", n)
	}
	newPID, err := srv.PostmasterPID()
	if err != nil || newPID == pid {
		t.Errorf("PostmasterPID after restart = %d, %v; want a new pid (old %d)", newPID, err, pid)
	}
}

func TestCloseTwiceIsSafeAndCleansUp(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	srv := startLocal(t) // its cleanup closes a third time
	dataDir := srv.DataDir()
	pid, err := srv.PostmasterPID()
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil {
		t.Fatalf("first Close: %v", err)
	}
	if err := srv.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("postmaster %d still exists after Close (kill 0: %v)", pid, err)
	}
	if _, err := os.Stat(filepath.Dir(dataDir)); !os.IsNotExist(err) {
		t.Errorf("temp dir %s still exists after Close (stat: %v)", filepath.Dir(dataDir), err)
	}
	if err := srv.Restart(ctx); err == nil {
		t.Error("Restart after Close succeeded, want an error")
	}
}

func TestStopPausedServer(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	srv := startLocal(t)
	pid, err := srv.PostmasterPID()
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	if err := srv.Stop(ctx, "fast"); err != nil {
		t.Fatalf("Stop of a paused server: %v", err)
	}
	if err := srv.Stop(ctx, "fast"); err != nil {
		t.Fatalf("Stop of a stopped server: %v", err)
	}
	if err := srv.Stop(ctx, "bogus"); err == nil {
		t.Error("Stop with an unknown mode succeeded")
	}
}

// TestDatabaseURL runs Start against DATABASE_URL pointing at a private
// server. It uses t.Setenv, so it cannot be parallel.
func TestDatabaseURL(t *testing.T) {
	ctx := testContext(t)
	srv := startLocal(t)
	const password = "pw-Very$ecret/123"
	u, err := url.Parse(srv.ConnString("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword("postgres", password) // trust auth ignores it
	t.Setenv("DATABASE_URL", u.String())

	ext, err := testdb.Start(ctx, t.Logf)
	if err != nil {
		t.Fatalf("Start with DATABASE_URL: %v", err)
	}
	if ext.Owned() {
		t.Error("DATABASE_URL server reports Owned")
	}
	if ext.Port() != srv.Port() {
		t.Errorf("Port = %d, want %d", ext.Port(), srv.Port())
	}
	if err := ext.Stop(ctx, "fast"); err == nil {
		t.Error("Stop on a DATABASE_URL server succeeded, want an error")
	}
	if err := ext.Restart(ctx); err == nil {
		t.Error("Restart on a DATABASE_URL server succeeded, want an error")
	}
	if _, err := ext.PostmasterPID(); err == nil {
		t.Error("PostmasterPID on a DATABASE_URL server succeeded, want an error")
	}

	connString, err := ext.CreateDatabase(ctx, "ext_db")
	if err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, connect(t, connString), "SELECT 1"); n != 1 {
		t.Fatal("cannot query database created on DATABASE_URL server")
	}
	// An error from a DATABASE_URL server must not reveal the password.
	_, err = ext.CreateDatabase(ctx, "ext_db")
	if err == nil {
		t.Fatal("creating a database twice succeeded")
	}
	assertNoSecret(t, err.Error(), password)
	if err := ext.DropDatabase(ctx, "ext_db"); err != nil {
		t.Fatal(err)
	}

	if err := ext.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ext.Close(); err != nil {
		t.Fatal(err)
	}
	// Close must leave a DATABASE_URL server running.
	if n := queryInt(t, connect(t, srv.ConnString("postgres")), "SELECT 1"); n != 1 {
		t.Fatal("server not usable after closing its DATABASE_URL Server")
	}
}

// TestStartErrorsRedactPassword checks errors built from a DATABASE_URL
// that cannot be used.
func TestStartErrorsRedactPassword(t *testing.T) {
	ctx := testContext(t)
	closedPort := func() int {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}()
	tests := []struct {
		name, databaseURL, secret string
	}{
		{"nothing listening", "postgres://alice:Sup3rSecret@127.0.0.1:" + strconv.Itoa(closedPort) + "/db?sslmode=disable", "Sup3rSecret"},
		{"escaped password", "postgres://alice:" + url.QueryEscape("Sup3r@Secret/x") + "@127.0.0.1:" + strconv.Itoa(closedPort) + "/db", "Sup3r"},
		{"bad port", "postgres://alice:Sup3rSecret@localhost:notaport/db", "Sup3rSecret"},
		{"unescaped slash in password", "postgres://alice:12/Sup3rSecret@localhost/db", "Sup3rSecret"},
		{"password parameter", "postgres://alice@127.0.0.1:" + strconv.Itoa(closedPort) + "/db?password=Sup3rSecret", "Sup3rSecret"},
		{"wrong scheme", "mysql://alice:Sup3rSecret@localhost/db", "Sup3rSecret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("DATABASE_URL", tt.databaseURL)
			srv, err := testdb.Start(ctx, func(format string, args ...any) {
				t.Logf(format, args...)
			})
			if err == nil {
				srv.Close()
				t.Fatal("Start succeeded, want an error")
			}
			t.Logf("error: %v", err)
			assertNoSecret(t, err.Error(), tt.secret)
		})
	}
}

// fakeDocker puts a docker client stub with the given shell script body on a
// PATH that holds nothing else, and hides the local PostgreSQL binaries, so
// Start's Docker path runs. It returns the file the stub logs its arguments to.
func fakeDocker(t *testing.T, body string) (callLog string) {
	dir := t.TempDir()
	callLog = filepath.Join(dir, "calls.log")
	script := "#!/bin/sh\necho \"$*\" >> " + callLog + "\n" + body + "\n"
	if err := os.WriteFile(filepath.Join(dir, "docker"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	t.Setenv("DATABASE_URL", "")
	t.Cleanup(testdb.SetBinaryDirPatterns(nil))
	return callLog
}

func TestDockerNotAnsweringIsDetectedQuickly(t *testing.T) {
	fakeDocker(t, "exec sleep 60")
	began := time.Now()
	err := testdb.DockerAvailable(testContext(t))
	if err == nil {
		t.Fatal("a hanging docker client counted as available")
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Errorf("DockerAvailable took %v, want about 3s", took)
	}
}

func TestStartWithNothingAvailableReturnsErrNoPostgres(t *testing.T) {
	fakeDocker(t, `echo "Cannot connect to the Docker daemon" >&2; exit 1`)
	srv, err := testdb.Start(testContext(t), t.Logf)
	if !errors.Is(err, testdb.ErrNoPostgres) {
		if srv != nil {
			srv.Close()
		}
		t.Fatalf("Start = %v, want ErrNoPostgres", err)
	}
	if !strings.Contains(err.Error(), "install PostgreSQL") || !strings.Contains(err.Error(), "Cannot connect to the Docker daemon") {
		t.Errorf("error should say what to install and why Docker failed: %v", err)
	}
	if _, err := testdb.StartLocal(testContext(t), nil); !errors.Is(err, testdb.ErrNoPostgres) {
		t.Errorf("StartLocal without binaries = %v, want ErrNoPostgres", err)
	}
}

func TestLazyStartRefusesDockerWhoseContainerWouldOutliveTheProcess(t *testing.T) {
	callLog := fakeDocker(t, `case "$1" in
info) echo 28.2.2 ;;
*) exit 1 ;;
esac`)
	srv, err := testdb.StartLazy(testContext(t), t.Logf)
	if !errors.Is(err, testdb.ErrNeedsRun) {
		if srv != nil {
			srv.Close()
		}
		t.Fatalf("StartLazy with only Docker = %v, want ErrNeedsRun", err)
	}
	if !strings.Contains(err.Error(), "computetest.Run") {
		t.Errorf("the error should say which TestMain to write: %v", err)
	}
	calls, err := os.ReadFile(callLog)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(calls), "run") {
		t.Errorf("StartLazy started a container:\n%s", calls)
	}
}

func TestLazyStartWithoutAnyServerReturnsErrNoPostgres(t *testing.T) {
	fakeDocker(t, `echo "Cannot connect to the Docker daemon" >&2; exit 1`)
	srv, err := testdb.StartLazy(testContext(t), t.Logf)
	if !errors.Is(err, testdb.ErrNoPostgres) {
		if srv != nil {
			srv.Close()
		}
		t.Fatalf("StartLazy with nothing available = %v, want ErrNoPostgres, so tests skip", err)
	}
}

// TestStartDockerPath drives the Docker path with a docker client stub that
// "publishes" a real local server's port.
func TestStartDockerPath(t *testing.T) {
	ctx := testContext(t)
	local := startLocal(t)
	callLog := fakeDocker(t, `case "$1" in
info) echo 28.2.2 ;;
run) echo "Unable to find image 'postgres:15' locally" >&2; echo fakecontainer123 ;;
port) echo "127.0.0.1:`+strconv.Itoa(local.Port())+`"; echo "[::1]:`+strconv.Itoa(local.Port())+`" ;;
stop) ;;
*) exit 1 ;;
esac`)

	srv, err := testdb.Start(ctx, t.Logf)
	if err != nil {
		t.Fatalf("Start via docker: %v", err)
	}
	if srv.Owned() || srv.Port() != local.Port() {
		t.Errorf("Owned = %v, Port = %d; want false, %d", srv.Owned(), srv.Port(), local.Port())
	}
	if err := srv.Stop(ctx, "fast"); err == nil {
		t.Error("Stop on a Docker server succeeded, want an error")
	}
	connString, err := srv.CreateDatabase(ctx, "via_docker")
	if err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, connect(t, connString), "SELECT 1"); n != 1 {
		t.Fatal("cannot query database on Docker server")
	}
	if err := srv.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := srv.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	calls, err := os.ReadFile(callLog)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"info",
		"run -d --rm",
		"-e POSTGRES_HOST_AUTH_METHOD=trust",
		"-p 127.0.0.1::5432",
		"postgres:15 ",
		"-c synchronous_commit=on",
		"port fakecontainer123 5432/tcp",
		"stop -t 5 fakecontainer123",
	} {
		if !strings.Contains(string(calls), want) {
			t.Errorf("docker calls lack %q:\n%s", want, calls)
		}
	}
	if n := strings.Count(string(calls), "stop "); n != 1 {
		t.Errorf("docker stop called %d times, want 1", n)
	}
}

func TestRedactConnString(t *testing.T) {
	tests := []struct{ in, want string }{
		{"postgres://alice:secret@db.example.com:5432/app?sslmode=disable", "postgres://alice:xxxxx@db.example.com:5432/app?sslmode=disable"},
		{"postgresql://alice:p%40ss%2Fsecret@host/db", "postgresql://alice:xxxxx@host/db"},
		{"POSTGRES://alice:secret@host/db", "POSTGRES://alice:xxxxx@host/db"},
		{"postgres://alice:p@ss/w?rd:secret@host/db", "postgres://alice:xxxxx@host/db"},
		{"postgres://alice:@host/db", "postgres://alice:xxxxx@host/db"},
		{"postgres://alice@host/db", "postgres://alice@host/db"},
		{"postgres://host:5432/db", "postgres://host:5432/db"},
		{"postgres://host/db?user=alice&password=secret&sslmode=disable", "postgres://host/db?user=alice&password=xxxxx&sslmode=disable"},
		{"postgres://host/db?Password=secret", "postgres://host/db?Password=xxxxx"},
		{"host=h user=alice password=secret dbname=app", "host=h user=alice password=xxxxx dbname=app"},
		{"host=h password='se cret \\' secret' dbname=app", "host=h password=xxxxx dbname=app"},
		{"password = secret host=h", "password = xxxxx host=h"},
		{"host=h password='unterminated secret", "host=h password=xxxxx"},
		{"", ""},
	}
	for _, tt := range tests {
		got := testdb.RedactConnString(tt.in)
		if got != tt.want {
			t.Errorf("RedactConnString(%q)\n got  %q\n want %q", tt.in, got, tt.want)
		}
		assertNoSecret(t, got, "secret")
	}
}

func TestErrNoPostgresSaysWhatToInstall(t *testing.T) {
	msg := testdb.ErrNoPostgres.Error()
	for _, want := range []string{"install PostgreSQL (initdb/pg_ctl)", "start Docker", "set DATABASE_URL"} {
		if !strings.Contains(msg, want) {
			t.Errorf("ErrNoPostgres = %q, missing %q", msg, want)
		}
	}
}

func TestParseDockerPort(t *testing.T) {
	tests := []struct {
		out  string
		want int
	}{
		{"127.0.0.1:49153\n", 49153},
		{"0.0.0.0:32768\n[::]:32768\n", 32768},
		{"[::1]:5433", 5433},
	}
	for _, tt := range tests {
		got, err := testdb.ParseDockerPort(tt.out)
		if err != nil || got != tt.want {
			t.Errorf("ParseDockerPort(%q) = %d, %v; want %d", tt.out, got, err, tt.want)
		}
	}
	if _, err := testdb.ParseDockerPort("Error: no public port"); err == nil {
		t.Error("ParseDockerPort accepted garbage")
	}
}

func TestGlobNewestFirst(t *testing.T) {
	root := t.TempDir()
	for _, v := range []string{"9.6", "15", "10", "16"} {
		if err := os.MkdirAll(filepath.Join(root, v, "bin"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	got := testdb.GlobNewestFirst(filepath.Join(root, "*", "bin"))
	var versions []string
	for _, dir := range got {
		versions = append(versions, filepath.Base(filepath.Dir(dir)))
	}
	if want := []string{"16", "15", "10", "9.6"}; !slices.Equal(versions, want) {
		t.Errorf("order = %v, want %v", versions, want)
	}
}

func assertNoSecret(t *testing.T, text, secret string) {
	t.Helper()
	if strings.Contains(text, secret) {
		t.Errorf("text reveals the password %q: %s", secret, text)
	}
}
