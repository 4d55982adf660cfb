package compute

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/puddle/v2"
)

// [ErrNotFound] is returned when no job (or meta key) has the given id (key).
var ErrNotFound = errors.New("compute: not found")

// [ErrInvalid] is matched (with errors.Is) by every error about bad input:
// [ErrInvalidQueue], [ErrInvalidConfig], [ErrConfigTooLarge], [ErrInvalidFiles],
// [ErrInvalidJob], [ErrInvalidMeta] and [ErrInvalidOption]. Nothing was written
// when such an error is returned.
var ErrInvalid = errors.New("compute: invalid input")

// [Errors] about bad input. Each returned error wraps one of them and says
// which value is wrong and what is allowed.
var (
	ErrInvalidQueue   error = &invalidError{"compute: invalid queue name"}
	ErrInvalidConfig  error = &invalidError{"compute: invalid config"}
	ErrConfigTooLarge error = &invalidError{"compute: config too large"}
	ErrInvalidFiles   error = &invalidError{"compute: invalid file names"}
	ErrInvalidJob     error = &invalidError{"compute: invalid job"}
	ErrInvalidMeta    error = &invalidError{"compute: invalid meta key or value"}
	ErrInvalidOption  error = &invalidError{"compute: invalid option"}
)

// invalidError is a bad-input sentinel that also matches [ErrInvalid].
type invalidError struct{ msg string }

func (e *invalidError) Error() string        { return e.msg }
func (e *invalidError) Is(target error) bool { return target == ErrInvalid }

// [ErrLeaseLost] is matched by the error Complete, Fail and Heartbeat return
// when the caller no longer holds a job: its lease ran out and the job was
// requeued or claimed again, or it was cancelled. The caller must stop
// working on those jobs; their results were not written. See LeaseLostError.
var ErrLeaseLost = errors.New("compute: lease lost")

// LeaseLostError lists the jobs a Complete, Fail or Heartbeat call did not
// hold any more. The other jobs of the call were written.
type LeaseLostError struct {
	IDs []JobID
}

func (e *LeaseLostError) Error() string {
	if len(e.IDs) == 0 {
		return "compute: lease lost"
	}
	return fmt.Sprintf("compute: lease lost on %d job(s) (first %s): another holder or a cancel took them; stop working on them", len(e.IDs), e.IDs[0])
}

// Is makes errors.Is(err, [ErrLeaseLost]) true.
func (e *LeaseLostError) Is(target error) bool { return target == ErrLeaseLost }

// [ErrBadRow] is matched by a *BadRowError: a job row, written outside the
// library, holds a value the library cannot read.
var ErrBadRow = errors.New("compute: job row holds a value the library cannot read")

// BadRowError names a job row and the column the library cannot read: a
// NULL file name, an infinite timestamp, or a config larger than the
// Queue's [WithMaxConfigSize]. A claim fails such a job at once, alone and
// for good, with this error as its reason; Get, List and Explain return it
// (List with the page read before that row). Fix the row with SQL, or
// delete it.
type BadRowError struct {
	ID      JobID
	Column  string
	Problem string
}

func (e *BadRowError) Error() string {
	return fmt.Sprintf("compute: job %s: column %s cannot be read: %s; fix or delete the row", e.ID, e.Column, e.Problem)
}

// Is makes errors.Is(err, [ErrBadRow]) true.
func (e *BadRowError) Is(target error) bool { return target == ErrBadRow }

// [ErrWrongStatus] is returned when a job exists but its status does not allow
// the operation: cancelling a finished job, retrying one that did not fail.
var ErrWrongStatus = errors.New("compute: job status does not allow this")

// [ErrUnavailable] is matched by errors caused by a database that cannot be
// reached or went away (refused or cut connections, a restarting server),
// or that is a read-only standby (during a failover, before its promotion).
// Nothing is lost: retry later, or check the connection string and that the
// server runs.
var ErrUnavailable = errors.New("compute: database unavailable")

// [ErrClosed] is returned by every method called after Close.
var ErrClosed = errors.New("compute: queue closed")

// [ErrJournalFromAnotherCluster] is matched by the error Events, Head and
// Follow return when the journal, or the cursor given, holds transaction
// ids this server has not assigned yet: they were written by another
// cluster, and the database was copied (pg_dump and pg_restore, or a
// switchover to a logical replica). Call [Queue.RebaseJournal] once, then
// start readers again from the zero Cursor or from Head. A cursor read
// on a primary whose asynchronous standby was then promoted without those
// transactions matches it too, as does one read before a crash of a server
// running with synchronous_commit off (see Failover in the package
// documentation): start again from Head.
var ErrJournalFromAnotherCluster = errors.New("compute: journal written by another cluster")

// [ErrNotMigrated] is returned when a table or column a call needs is missing:
// the compute schema was never migrated, or is older than the call needs
// (calls that use only the version-1 columns, such as Counts, work on a
// version-1 schema). Call Migrate, or open with [WithMigrate].
var ErrNotMigrated = errors.New("compute: schema not migrated; call Queue.Migrate or open with WithMigrate")

// Postgres error codes the library reacts to.
const (
	codeSerializationFailure = "40001"
	codeDeadlockDetected     = "40P01"
	codeUndefinedTable       = "42P01"
	codeUndefinedColumn      = "42703"
	codeInvalidSchema        = "3F000"
	codeReadOnlyTransaction  = "25006"
)

// Postgres error codes of lost and doubled prepared statements: what pgx's
// statement cache meets behind a pooler that hands each transaction another
// server connection.
const (
	codeInvalidStatementName       = "26000"
	codeDuplicatePreparedStatement = "42P05"
)

// statementLost reports whether err is a prepared statement that a pooler
// in transaction mode lost (or found already made on the server
// connection it handed out). Only pgx's cached statements and the pooler
// probe's are recognised: both have names of their own.
func statementLost(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) &&
		(pgErr.Code == codeInvalidStatementName || pgErr.Code == codeDuplicatePreparedStatement) &&
		(strings.Contains(pgErr.Message, `"stmtcache_`) || strings.Contains(pgErr.Message, `"`+poolerProbePrefix))
}

// retryable reports whether err is a serialization failure or deadlock, which
// the library retries instead of surfacing.
func retryable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == codeSerializationFailure || pgErr.Code == codeDeadlockDetected
	}
	return false
}

// translate turns a driver error into one users can match: context errors
// stay as they are, a missing schema becomes [ErrNotMigrated], and lost or
// refused connections match [ErrUnavailable], and a prepared statement that
// a pooler lost matches [ErrTransactionPooler]. Every other error (a scan or
// JSON error, pgx.ErrNoRows, any other server error) keeps its identity,
// wrapped with the operation's name, so it never reads as an unavailable
// database. It is the one place that looks inside pgx errors. what names
// the operation for the message.
func translate(what string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w", what, err)
	}
	// Failing to connect (refused, unknown database, bad credentials) is
	// an unavailable database, whatever the server said.
	var connectErr *pgconn.ConnectError
	if errors.As(err, &connectErr) {
		return fmt.Errorf("%s: %w: %w", what, ErrUnavailable, err)
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == codeUndefinedTable || pgErr.Code == codeUndefinedColumn || pgErr.Code == codeInvalidSchema:
			return fmt.Errorf("%s: %w: %w", what, ErrNotMigrated, err)
		case strings.HasPrefix(pgErr.Code, "08"), // connection exception
			pgErr.Code == "57P01", pgErr.Code == "57P02", pgErr.Code == "57P03", // shutdown, crash, starting up
			pgErr.Code == "53300",                 // too many connections
			pgErr.Code == codeReadOnlyTransaction: // a standby, until it is promoted
			return fmt.Errorf("%s: %w: %w", what, ErrUnavailable, err)
		case statementLost(err):
			return fmt.Errorf("%s: %w, and %s: %w", what, ErrTransactionPooler, statementsLostHint, err)
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	if connectionLost(err) {
		return fmt.Errorf("%s: %w: %w", what, ErrUnavailable, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// connectionLost reports whether err says the connection failed rather than
// the statement: a timeout or a failure pgx knows happened before anything
// was sent, a closed connection or pool, a network error, or a connection
// cut mid-message.
func connectionLost(err error) bool {
	var opErr *net.OpError
	var dnsErr *net.DNSError
	return pgconn.Timeout(err) || pgconn.SafeToRetry(err) || // includes "conn busy"
		errors.Is(err, pgconn.ErrConnClosed) || errors.Is(err, puddle.ErrClosedPool) ||
		errors.As(err, &opErr) || errors.As(err, &dnsErr) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ETIMEDOUT)
}

// notFound turns the no-row error of a lookup by id or key into [ErrNotFound],
// with a message made of format and args that names what was looked for;
// any other error (or nil) is returned as it is.
func notFound(err error, format string, args ...any) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf(format+": %w", append(args, ErrNotFound)...)
	}
	return err
}

// passwordInURL and passwordInKV find the password of a postgres:// URL and of
// a key=value connection string.
var (
	passwordInURL = regexp.MustCompile(`(://[^:/@\s]*:)[^@\s]*@`)
	passwordInKV  = regexp.MustCompile(`(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s]*)`)
)

// redact removes passwords from text that may hold a connection string, and
// also the literal passwords given (as found by passwordsIn, or known).
func redact(s string, passwords ...string) string {
	for _, p := range passwords {
		if p != "" {
			s = strings.ReplaceAll(s, p, "xxxxx")
		}
	}
	s = passwordInURL.ReplaceAllString(s, "${1}xxxxx@")
	return passwordInKV.ReplaceAllString(s, "${1}xxxxx")
}

// passwordsIn finds the password values written in a connection string, so
// that an error about a string pgx could not parse can be redacted by value,
// whatever pgx's own redaction left over.
func passwordsIn(connString string) []string {
	var found []string
	for _, m := range passwordInURL.FindAllString(connString, -1) {
		if i := strings.LastIndexByte(strings.TrimSuffix(m, "@"), ':'); i >= 0 {
			found = append(found, strings.TrimSuffix(m, "@")[i+1:])
		}
	}
	for _, m := range passwordInKV.FindAllStringSubmatch(connString, -1) {
		found = append(found, m[2], strings.Trim(m[2], "'"))
	}
	return found
}

// redactedError keeps errors.Is/As working on the cause while its message has
// no password in it.
type redactedError struct {
	msg   string
	cause error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.cause }

// redactError wraps err so that its message holds no password.
func redactError(err error, password string) error {
	if err == nil {
		return nil
	}
	msg := redact(err.Error(), password)
	if msg == err.Error() {
		return err
	}
	return &redactedError{msg: msg, cause: err}
}

// [ErrPermanent] is matched by errors made with Permanent.
var ErrPermanent = errors.New("compute: permanent failure")

// Permanent marks err as a failure that retrying cannot fix: a handler that
// returns it (or a Failure that carries it) fails the job now, whatever
// attempts remain. errors.Is(Permanent(err), [ErrPermanent]) is true, and the
// result still wraps err.
func Permanent(err error) error {
	if err == nil {
		err = errors.New("failed")
	}
	return &permanentError{err}
}

type permanentError struct{ err error }

func (e *permanentError) Error() string        { return "permanent: " + e.err.Error() }
func (e *permanentError) Unwrap() error        { return e.err }
func (e *permanentError) Is(target error) bool { return target == ErrPermanent }

// Snooze returns an error that, returned by a handler (or carried by a
// Failure), queues the job again to run after d without spending an attempt
// and without recording an error. d must not be negative.
func Snooze(d time.Duration) error { return &snoozeError{max(d, 0)} }

type snoozeError struct{ d time.Duration }

func (e *snoozeError) Error() string { return fmt.Sprintf("compute: snoozed for %s", e.d) }
