// Command compute is the operator's tool for a compute job queue: it
// migrates the schema, enqueues jobs, lists, retries, cancels and deletes
// them, pauses and configures queues, explains why a job waits, follows the
// job journal, checks the installation's health and serves the dashboard.
//
// Usage:
//
//	compute <command> [subcommand] [flags] [arguments]
//
// Run "compute help" for the command list and "compute <command> --help"
// for each command's flags. The database comes from --database-url, else
// DATABASE_URL, else the PG* environment variables; through a pooler in
// transaction mode (PgBouncer), the commands that need a session of their
// own (migrate, events follow, ui) take a direct connection string from
// --direct-url, else DIRECT_URL. Exit status: 0 on
// success, 1 when the command failed (or doctor found a failing check), 2
// for a wrong flag or argument.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"syscall"

	"github.com/computeplatform/compute"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit statuses.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// env is what a command runs with: the process's context and streams.
type env struct {
	ctx    context.Context
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	// secrets are the passwords found in the connection settings, removed
	// from every message written to stderr.
	secrets []string
	// queues are the Queues the command opened; run closes them.
	queues []*compute.Queue
}

// usageError is a wrong flag or argument: run prints it with the
// command's usage and exits 2.
type usageError struct {
	cmd string // the command path, "jobs list"
	msg string
}

func (e *usageError) Error() string { return e.msg }

// exitError ends the command with a status and no further message (the
// command already printed what went wrong).
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// errHelp is returned when --help was asked for and printed.
var errHelp = errors.New("help printed")

// command is a node of the command tree: a leaf has run, a group has subs.
type command struct {
	name    string
	summary string
	run     func(e *env, path string, args []string) error
	subs    []*command
}

// commands is the command tree.
var commands = []*command{
	{name: "migrate", summary: "bring the schema to the latest version (--to N for another); migrate status shows it", run: runMigrate},
	{name: "enqueue", summary: "submit a job and print its id", run: runEnqueue},
	{name: "jobs", summary: "list, show, cancel, retry and delete jobs", subs: []*command{
		{name: "list", summary: "list jobs by queue, status and partition key", run: runJobsList},
		{name: "get", summary: "show a job: config, files, errors and its journal timeline", run: runJobsGet},
		{name: "cancel", summary: "cancel queued or running jobs, by id or by filter", run: runJobsCancel},
		{name: "retry", summary: "queue failed jobs again, by id or by filter", run: runJobsRetry},
		{name: "delete", summary: "delete jobs that are not running, by id or by filter", run: runJobsDelete},
	}},
	{name: "queues", summary: "show queues, pause, resume and configure them", subs: []*command{
		{name: "list", summary: "per queue: counts per status, rules, workers, oldest runnable job", run: runQueuesList},
		{name: "pause", summary: "stop every worker from starting the queue's jobs", run: runQueuesPause},
		{name: "resume", summary: "let workers start the queue's jobs again", run: runQueuesResume},
		{name: "set", summary: "change a queue's rules (flags not given keep their value)", run: runQueuesSet},
	}},
	{name: "explain", summary: "say why a job is or is not running", run: runExplain},
	{name: "workers", summary: "show the worker registry", subs: []*command{
		{name: "list", summary: "workers seen in the last hour, with their queues", run: runWorkersList},
	}},
	{name: "periodic", summary: "show periodic schedules", subs: []*command{
		{name: "list", summary: "each schedule's last enqueued tick", run: runPeriodicList},
	}},
	{name: "events", summary: "read the job journal", subs: []*command{
		{name: "follow", summary: "print journal events from the oldest retained (or --from), then follow", run: runEventsFollow},
	}},
	{name: "doctor", summary: "check the installation's health; exit 1 when a check fails", run: runDoctor},
	{name: "ui", summary: "serve the dashboard (--addr HOST:PORT, --read-only)", run: runUI},
	{name: "version", summary: "print the command's and the schema's versions", run: runVersion},
}

// run runs the command line args (without the program name) and returns
// the exit status. The tests call it in-process.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &env{ctx: ctx, stdin: stdin, stdout: stdout, stderr: stderr}
	e.secrets = secretsIn(args)
	err := dispatch(e, "", commands, moveGlobalFlags(args))
	for _, q := range e.queues {
		q.Close()
	}
	var usage *usageError
	var exit *exitError
	switch {
	case err == nil, errors.Is(err, errHelp):
		return exitOK
	case errors.As(err, &exit):
		return exit.code
	case errors.As(err, &usage):
		cmd := strings.TrimSpace("compute " + usage.cmd)
		fmt.Fprintf(stderr, "%s: %s\n", cmd, e.redact(usage.msg))
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd)
		return exitUsage
	case errors.Is(err, compute.ErrInvalid):
		// The library refused a value from the command line before
		// anything was written: a wrong argument.
		fmt.Fprintln(stderr, e.redact(message(err)))
		return exitUsage
	default:
		fmt.Fprintln(stderr, e.redact(explainError(err)))
		return exitFailure
	}
}

// dispatch finds the command named by args[0] among cmds and runs it.
func dispatch(e *env, path string, cmds []*command, args []string) error {
	name := ""
	if len(args) > 0 {
		name = args[0]
	}
	switch name {
	case "", "help", "-h", "-help", "--help":
		if name == "" {
			printGroupUsage(e.stderr, path, cmds)
			return &exitError{exitUsage}
		}
		if name == "help" && path == "" && len(args) > 1 {
			return dispatch(e, path, cmds, []string{args[1], "--help"})
		}
		printGroupUsage(e.stdout, path, cmds)
		return errHelp
	}
	for _, c := range cmds {
		if c.name != name {
			continue
		}
		sub := strings.TrimSpace(path + " " + c.name)
		if c.subs != nil {
			return dispatch(e, sub, c.subs, args[1:])
		}
		return c.run(e, sub, args[1:])
	}
	where := "compute"
	if path != "" {
		where = "compute " + path
	}
	printGroupUsage(e.stderr, path, cmds)
	fmt.Fprintln(e.stderr)
	return &usageError{cmd: path, msg: fmt.Sprintf("%q is not a command of %s", name, where)}
}

func printGroupUsage(w io.Writer, path string, cmds []*command) {
	prefix := "compute"
	if path != "" {
		prefix += " " + path
	}
	fmt.Fprintf(w, "Usage: %s <command> [flags] [arguments]\n\nCommands:\n", prefix)
	for _, c := range cmds {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nRun '%s <command> --help' for a command's flags.\n", prefix)
	if path == "" {
		fmt.Fprint(w, "The database comes from --database-url, else DATABASE_URL, else the PG* variables;\n"+
			"through a pooler in transaction mode, migrate, events follow and ui need --direct-url (or DIRECT_URL).\n"+
			"Exit status: 0 success, 1 failure (or a failing doctor check), 2 wrong flag or argument.\n")
	}
}

// leaf holds a leaf command's flag set and the flags every command shares.
type leaf struct {
	e        *env
	path     string
	fs       *flag.FlagSet
	synopsis string // the arguments after the command path
	about    string
	dbURL    string
	output   string
	// directURL is --direct-url, on the commands that need a session of
	// their own (see sessions); nil on the others.
	directURL *string
}

// newLeaf makes a leaf command's flags: --database-url always, --output when
// the command prints data.
func newLeaf(e *env, path, synopsis, about string, withOutput bool) *leaf {
	l := &leaf{e: e, path: path, synopsis: synopsis, about: about, fs: flag.NewFlagSet(path, flag.ContinueOnError)}
	l.fs.SetOutput(io.Discard)
	l.fs.StringVar(&l.dbURL, "database-url", "", "PostgreSQL connection string (default: $DATABASE_URL, else the PG* variables)")
	if withOutput {
		l.fs.StringVar(&l.output, "output", "table", "output format: table or json")
	}
	return l
}

// sessions adds --direct-url to a command that needs a session of its
// own (Migrate's lock, a listener), which a pooler in transaction mode
// does not keep.
func (l *leaf) sessions() {
	l.directURL = l.fs.String("direct-url", "", "connection string that reaches the server directly, for what needs a session "+
		"(Migrate's lock, listening) when --database-url goes through a pooler in transaction mode (default: $"+directURLEnv+")")
}

// directURLEnv is the environment variable --direct-url falls back to, the
// name Prisma and Supabase give the direct connection string beside a
// pooled DATABASE_URL.
const directURLEnv = "DIRECT_URL"

// usage prints the command's synopsis and flags.
func (l *leaf) usage(w io.Writer) {
	fmt.Fprintf(w, "Usage: compute %s %s\n\n%s\n\nFlags:\n", l.path, l.synopsis, l.about)
	l.fs.SetOutput(w)
	l.fs.PrintDefaults()
	l.fs.SetOutput(io.Discard)
}

// parse reads flags and arguments in any order (flags may follow
// arguments, "--" ends the flags) and checks that between min and max
// arguments remain (max < 0: no limit).
func (l *leaf) parse(args []string, min, max int) ([]string, error) {
	var pos []string
	for {
		if err := l.fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				l.usage(l.e.stdout)
				return nil, errHelp
			}
			return nil, l.usageErr("%v", err)
		}
		rest := l.fs.Args()
		if len(rest) == 0 {
			break
		}
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	if l.output != "" && l.output != "table" && l.output != "json" {
		return nil, l.usageErr("--output %q: use table or json", l.output)
	}
	switch {
	case len(pos) < min && min == max:
		return nil, l.usageErr("expected %d argument(s) (%s), got %d", min, l.synopsis, len(pos))
	case len(pos) < min:
		return nil, l.usageErr("expected at least %d argument(s) (%s), got %d", min, l.synopsis, len(pos))
	case max >= 0 && len(pos) > max:
		if max == 0 {
			return nil, l.usageErr("unexpected argument %q: this command takes flags only", pos[0])
		}
		return nil, l.usageErr("expected at most %d argument(s) (%s), got %d", max, l.synopsis, len(pos))
	}
	return pos, nil
}

// usageErr makes a usage error for this command and prints its usage.
func (l *leaf) usageErr(format string, args ...any) error {
	l.usage(l.e.stderr)
	fmt.Fprintln(l.e.stderr)
	return &usageError{cmd: l.path, msg: fmt.Sprintf(format, args...)}
}

// json reports whether --output json was asked for.
func (l *leaf) json() bool { return l.output == "json" }

// open connects to the database: --database-url, else DATABASE_URL, else
// the PG* variables; for the sessions of a command that has --direct-url,
// that, else DIRECT_URL, when set. It does not migrate. run closes the
// Queue when the command returns.
func (l *leaf) open() (*compute.Queue, error) {
	conn := l.dbURL
	if conn == "" {
		conn = os.Getenv("DATABASE_URL")
	}
	l.e.secrets = append(l.e.secrets, secretsIn([]string{conn})...)
	opts := []compute.Option{compute.WithWorkerID("compute-cli")}
	if l.directURL != nil {
		direct := *l.directURL
		if direct == "" {
			direct = os.Getenv(directURLEnv)
		}
		if direct != "" {
			l.e.secrets = append(l.e.secrets, secretsIn([]string{direct})...)
			opts = append(opts, compute.WithDirectURL(direct))
		}
	}
	q, err := compute.Open(l.e.ctx, conn, opts...)
	if err == nil {
		l.e.queues = append(l.e.queues, q)
	}
	return q, err
}

// jobArg reads the command's one argument, a job id, and connects.
func (l *leaf) jobArg(args []string) (compute.JobID, *compute.Queue, error) {
	pos, err := l.parse(args, 1, 1)
	if err != nil {
		return compute.JobID{}, nil, err
	}
	ids, err := parseIDs(l, pos)
	if err != nil {
		return compute.JobID{}, nil, err
	}
	q, err := l.open()
	return ids[0], q, err
}

// passwordInKV finds a password in a key=value connection string.
var passwordInKV = regexp.MustCompile(`(?i)password\s*=\s*('(?:[^'\\]|\\.)*'|\S*)`)

// secretsIn finds the passwords in connection strings among args, so that
// no message repeats them.
func secretsIn(args []string) []string {
	var out []string
	for _, a := range args {
		name, v, ok := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !ok || name != "database-url" && name != "direct-url" {
			v = a
		}
		if u, err := url.Parse(v); err == nil && u.User != nil {
			if p, ok := u.User.Password(); ok && p != "" {
				out = append(out, p, url.QueryEscape(p), url.PathEscape(p))
			}
		}
		for _, m := range passwordInKV.FindAllStringSubmatch(v, -1) {
			out = append(out, m[1], strings.Trim(m[1], "'"))
		}
	}
	if p := os.Getenv("PGPASSWORD"); p != "" {
		out = append(out, p)
	}
	return out
}

// redact removes every known password from a message.
func (e *env) redact(s string) string {
	for _, p := range e.secrets {
		if p != "" {
			s = strings.ReplaceAll(s, p, "xxxxx")
		}
	}
	return s
}

// moveGlobalFlags moves --database-url, --direct-url and --output given before the
// command to the end, where the command's own flag set reads them:
// "compute --output json queues list" is "compute queues list --output json".
func moveGlobalFlags(args []string) []string {
	var global []string
	for len(args) > 0 {
		name, _, hasValue := strings.Cut(strings.TrimLeft(args[0], "-"), "=")
		if !strings.HasPrefix(args[0], "-") || name != "database-url" && name != "direct-url" && name != "output" {
			break
		}
		n := 1
		if !hasValue && len(args) > 1 {
			n = 2
		}
		global, args = append(global, args[:n]...), args[n:]
	}
	return append(append([]string(nil), args...), global...)
}

// message is an error's text starting with "compute: " once.
func message(err error) string {
	msg := err.Error()
	if !strings.HasPrefix(msg, "compute: ") {
		msg = "compute: " + msg
	}
	return msg
}

// explainError adds what to do to the errors an operator meets most.
func explainError(err error) string {
	msg := message(err)
	switch {
	case errors.Is(err, compute.ErrNotMigrated):
		return msg + " (run 'compute migrate')"
	case errors.Is(err, compute.ErrTransactionPooler) && !errors.Is(err, compute.ErrInvalidOption):
		return msg + " (give a connection string that reaches the server directly with --direct-url or " + directURLEnv + ")"
	case errors.Is(err, compute.ErrUnavailable):
		return msg + " (check --database-url, DATABASE_URL or the PG* variables, and that the server runs)"
	}
	return msg
}
