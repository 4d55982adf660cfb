package compute

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/computeplatform/compute/internal/testdb"
)

// TestTranslateClassifiesErrors gives translate the errors pgx really
// returns for each kind of failure and checks which sentinel each matches:
// only connection failures read as ErrUnavailable; a scan, JSON or no-row
// error, or an unrelated server error, keeps its identity and matches none.
func TestTranslateClassifiesErrors(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	connString := testdb.New(t)
	connect := func() *pgx.Conn {
		t.Helper()
		c, err := pgx.Connect(ctx, connString)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(context.Background()) })
		return c
	}
	conn := connect()
	exec := func(c *pgx.Conn, ctx context.Context, sql string) error {
		_, err := c.Exec(ctx, sql)
		return err
	}
	raise := func(code string) error {
		return exec(conn, ctx, fmt.Sprintf(`DO $$ BEGIN RAISE EXCEPTION 'raised' USING ERRCODE = '%s'; END $$`, code))
	}

	// A port nothing listens on: connecting is refused.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := l.Addr().String()
	l.Close()
	_, refused := pgx.Connect(ctx, "postgres://postgres@"+closedAddr+"/x?sslmode=disable")
	_, dialRefused := net.Dial("tcp", closedAddr)

	// A backend terminated by the server: the statement that meets the
	// termination, then the next one on the dead connection.
	victim := connect()
	if err := exec(conn, ctx, fmt.Sprintf(`SELECT pg_terminate_backend(%d, 10000)`, victim.PgConn().PID())); err != nil {
		t.Fatal(err)
	}
	terminated := exec(victim, ctx, `SELECT 1`)
	afterTermination := exec(victim, ctx, `SELECT 1`)

	pool, err := pgxpool.New(ctx, connString)
	if err != nil {
		t.Fatal(err)
	}
	pool.Close()
	closedPool := pool.Ping(ctx)

	busyConn := connect()
	rows, err := busyConn.Query(ctx, `SELECT 1`)
	if err != nil {
		t.Fatal(err)
	}
	busy := exec(busyConn, ctx, `SELECT 1`)
	rows.Close()

	var n int
	scanErr := conn.QueryRow(ctx, `SELECT 'x'`).Scan(&n)
	noRows := conn.QueryRow(ctx, `SELECT 1 WHERE false`).Scan(&n)
	jsonErr := json.Unmarshal([]byte(`{"a":`), new(map[string]any))

	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	txClosed := tx.Commit(ctx)

	deadlineCtx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	deadline := exec(connect(), deadlineCtx, `SELECT pg_sleep(60)`)
	cancelledCtx, cancel := context.WithCancel(ctx)
	cancel()
	cancelled := exec(conn, cancelledCtx, `SELECT 1`)

	for _, tc := range []struct {
		name string
		raw  error // what pgx (or the standard library) returned
		want error // the one sentinel translate's result must match; nil for none
	}{
		{"refused connection", refused, ErrUnavailable},
		{"refused dial", dialRefused, ErrUnavailable},
		{"terminated backend", terminated, ErrUnavailable},
		{"statement after termination", afterTermination, ErrUnavailable},
		{"closed pool", closedPool, ErrUnavailable},
		{"conn busy", busy, ErrUnavailable},
		// pgproto3 and the net package return these when a connection is
		// cut mid-message; the server is not needed to make them.
		{"cut mid-message", fmt.Errorf("receive message: %w", io.ErrUnexpectedEOF), ErrUnavailable},
		{"EOF", io.EOF, ErrUnavailable},
		{"reset", &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, ErrUnavailable},
		{"broken pipe", os.NewSyscallError("write", syscall.EPIPE), ErrUnavailable},
		{"SQLSTATE 08006", raise("08006"), ErrUnavailable},
		{"SQLSTATE 57P01", raise("57P01"), ErrUnavailable},
		{"SQLSTATE 57P02", raise("57P02"), ErrUnavailable},
		{"SQLSTATE 57P03", raise("57P03"), ErrUnavailable},
		{"SQLSTATE 53300", raise("53300"), ErrUnavailable},
		{"read-only transaction (a standby)", raise("25006"), ErrUnavailable},
		{"undefined table", exec(conn, ctx, `SELECT * FROM no_such_table`), ErrNotMigrated},
		{"undefined column", exec(conn, ctx, `SELECT no_such_column FROM (SELECT 1) s`), ErrNotMigrated},
		{"invalid schema", exec(conn, ctx, `CREATE TABLE no_such_schema.t (a int)`), ErrNotMigrated},
		{"context deadline", deadline, context.DeadlineExceeded},
		{"context cancelled", cancelled, context.Canceled},
		{"scan error", scanErr, nil},
		{"no rows", noRows, nil},
		{"json error", jsonErr, nil},
		{"transaction closed", txClosed, nil},
		{"invalid text", exec(conn, ctx, `SELECT 'x'::int`), nil},
		{"serialization failure", raise("40001"), nil},
		{"plain error", errors.New("something else"), nil},
	} {
		if tc.raw == nil {
			t.Errorf("%s: the call did not fail", tc.name)
			continue
		}
		got := translate("compute: op", tc.raw)
		for _, sentinel := range []error{ErrUnavailable, ErrNotMigrated, ErrNotFound, context.DeadlineExceeded, context.Canceled} {
			if errors.Is(got, sentinel) != (sentinel == tc.want) {
				t.Errorf("%s: errors.Is(%q, %v) = %v, want %v", tc.name, got, sentinel, !(sentinel == tc.want), sentinel == tc.want)
			}
		}
		if !errors.Is(got, tc.raw) || !strings.HasPrefix(got.Error(), "compute: op: ") {
			t.Errorf("%s: %q does not name the operation and wrap %q", tc.name, got, tc.raw)
		}
	}
}

// TestLookupsOfMissingRowsAreNotFound checks that the calls looking up one
// job or key say ErrNotFound, naming what they looked for, and never
// ErrUnavailable.
func TestLookupsOfMissingRowsAreNotFound(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	q := openMigrated(t)
	id := contentJobID("missing", "{}", nil)
	_, getErr := q.Get(ctx, id)
	_, explainErr := q.Explain(ctx, id)
	_, waitErr := q.Wait(ctx, id)
	_, metaErr := q.GetMeta(ctx, "nokey")
	for _, tc := range []struct {
		err  error
		want string
	}{
		{getErr, "compute: get job " + id.String() + ": "},
		{explainErr, "compute: explain job " + id.String() + ": "},
		{waitErr, "compute: wait for job " + id.String() + ": there is no job with this id (never enqueued, or deleted): "},
		{metaErr, `compute: get meta "nokey": `},
	} {
		if !errors.Is(tc.err, ErrNotFound) || errors.Is(tc.err, ErrUnavailable) || tc.err.Error() != tc.want+ErrNotFound.Error() {
			t.Errorf("%v, want %q matching ErrNotFound only", tc.err, tc.want+ErrNotFound.Error())
		}
	}
}
