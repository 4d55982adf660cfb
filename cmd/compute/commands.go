package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/migrations"
)

func runMigrate(e *env, path string, args []string) error {
	l := newLeaf(e, path, "[--to N] [--yes] | status",
		"Brings the compute schema to the latest version this command knows, or with --to N to version N.\n"+
			"Going down drops what the later versions added (--to 0 drops the schema, jobs included) and\n"+
			"asks first unless --yes. 'migrate status' prints the current and the latest version.", true)
	l.sessions()
	to := l.fs.Int64("to", -1, "migrate to this version instead of the latest")
	yes := l.fs.Bool("yes", false, "migrate down without asking")
	pos, err := l.parse(args, 0, 1)
	if err != nil {
		return err
	}
	if len(pos) == 1 && pos[0] != "status" {
		return l.usageErr("unexpected argument %q: the only subcommand is status", pos[0])
	}
	if *to < -1 {
		return l.usageErr("--to %d: use a version of 0 or more", *to)
	}
	q, err := l.open()
	if err != nil {
		return err
	}
	before, latest, err := q.SchemaVersion(e.ctx)
	if err != nil {
		return err
	}
	if len(pos) == 1 {
		if l.json() {
			return writeJSON(e.stdout, struct {
				Current int64 `json:"current"`
				Latest  int64 `json:"latest"`
			}{before, latest})
		}
		state := "up to date"
		switch {
		case before < latest:
			state = "behind: run 'compute migrate'"
		case before > latest:
			state = "newer than this command knows: use a newer compute"
		}
		fmt.Fprintf(e.stdout, "schema version %d, latest %d (%s)\n", before, latest, state)
		return nil
	}
	if *to > latest {
		return l.usageErr("--to %d: the latest version this command knows is %d", *to, latest)
	}
	if *to >= 0 && *to < before && !*yes {
		if err := confirm(e, fmt.Sprintf("migrate down from version %d to %d, dropping what the later versions hold?", before, *to)); err != nil {
			if _, ok := err.(*usageError); ok {
				return l.usageErr("%v", err)
			}
			return err
		}
	}
	if *to < 0 {
		err = q.Migrate(e.ctx)
	} else {
		err = q.MigrateTo(e.ctx, *to)
	}
	if err != nil {
		return err
	}
	after, _, err := q.SchemaVersion(e.ctx)
	if err != nil {
		return err
	}
	if l.json() {
		return writeJSON(e.stdout, struct {
			From int64 `json:"from"`
			To   int64 `json:"to"`
		}{before, after})
	}
	if before == after {
		fmt.Fprintf(e.stdout, "schema at version %d; nothing to do\n", after)
	} else {
		fmt.Fprintf(e.stdout, "schema migrated from version %d to %d\n", before, after)
	}
	return nil
}

// listFlag collects a repeated flag.
type listFlag []string

func (f *listFlag) String() string     { return strings.Join(*f, ",") }
func (f *listFlag) Set(v string) error { *f = append(*f, v); return nil }

func runEnqueue(e *env, path string, args []string) error {
	l := newLeaf(e, path, "--queue Q [--config JSON | --config @FILE] [--input NAME]... [--priority N]\n"+
		"       [--delay D | --run-at T] [--unique-key K] [--partition-key K] [--max-attempts N]",
		"Submits one job and prints its id. With --unique-key, an active job of the queue with the same key\n"+
			"is returned instead of a new one (duplicate: true).", true)
	queue := l.fs.String("queue", "", "the queue (required)")
	config := l.fs.String("config", "", "the job's config, or @FILE to read it from a file (- for stdin)")
	var inputs listFlag
	l.fs.Var(&inputs, "input", "an input file name (repeat for more)")
	priority := l.fs.Int("priority", 0, "claim order: smaller runs first")
	delay := l.fs.Duration("delay", 0, "run no sooner than this long from now (1m, 2h)")
	runAt := l.fs.String("run-at", "", "run no sooner than this time (RFC 3339: 2030-01-02T15:04:05Z)")
	unique := l.fs.String("unique-key", "", "skip the job if an active job of the queue has this key")
	partition := l.fs.String("partition-key", "", "the tenant the job belongs to, for per-key limits")
	maxAttempts := l.fs.Int("max-attempts", 0, "attempts before the job fails for good (default 25)")
	if _, err := l.parse(args, 0, 0); err != nil {
		return err
	}
	if *queue == "" {
		return l.usageErr("--queue is required")
	}
	job := compute.Job{Queue: *queue, InputFiles: inputs, Priority: *priority, Delay: *delay,
		Unique: compute.Unique{Key: *unique}, PartitionKey: *partition, MaxAttempts: *maxAttempts}
	switch {
	case *config == "@-":
		b, err := io.ReadAll(e.stdin)
		if err != nil {
			return fmt.Errorf("reading the config from standard input: %w", err)
		}
		job.Config = string(b)
	case strings.HasPrefix(*config, "@"):
		b, err := os.ReadFile(strings.TrimPrefix(*config, "@"))
		if err != nil {
			return l.usageErr("--config %s: %v", *config, errors.Unwrap(err))
		}
		job.Config = string(b)
	default:
		job.Config = *config
	}
	if *runAt != "" {
		if *delay != 0 {
			return l.usageErr("give --delay or --run-at, not both")
		}
		t, err := time.Parse(time.RFC3339, *runAt)
		if err != nil {
			return l.usageErr("--run-at %q: use RFC 3339, such as 2030-01-02T15:04:05Z", *runAt)
		}
		job.RunAt = t
	}
	q, err := l.open()
	if err != nil {
		return err
	}
	res, err := q.Submit(e.ctx, job)
	if err != nil {
		return err
	}
	if l.json() {
		return writeJSON(e.stdout, struct {
			ID        string `json:"id"`
			Duplicate bool   `json:"duplicate"`
		}{res[0].ID.String(), res[0].Duplicate})
	}
	fmt.Fprintln(e.stdout, res[0].ID)
	if res[0].Duplicate {
		fmt.Fprintln(e.stderr, "compute: a job with that unique key already exists; its id is printed and nothing was created")
	}
	return nil
}

func runExplain(e *env, path string, args []string) error {
	l := newLeaf(e, path, "ID", "Says why a job is or is not running: finished, running, a stale lease, scheduled later, its\n"+
		"queue paused, a cap or rate limit, jobs ahead of it, or no worker serving its queue.", true)
	id, q, err := l.jobArg(args)
	if err != nil {
		return err
	}
	ex, err := q.Explain(e.ctx, id)
	if err != nil {
		return err
	}
	if l.json() {
		type reason struct {
			Kind compute.ReasonKind `json:"kind"`
			Text string             `json:"text"`
		}
		out := struct {
			ID      string         `json:"id"`
			Queue   string         `json:"queue"`
			Status  compute.Status `json:"status"`
			Reasons []reason       `json:"reasons"`
		}{ID: ex.Job.ID.String(), Queue: ex.Job.Queue, Status: ex.Job.Status, Reasons: []reason{}}
		for _, r := range ex.Reasons {
			out.Reasons = append(out.Reasons, reason{r.Kind, r.Text})
		}
		return writeJSON(e.stdout, out)
	}
	fmt.Fprintf(e.stdout, "job %s in queue %s is %s\n", ex.Job.ID, ex.Job.Queue, ex.Job.Status)
	for _, r := range ex.Reasons {
		fmt.Fprintf(e.stdout, "  %-12s %s\n", r.Kind, r.Text)
	}
	return nil
}

func runWorkersList(e *env, path string, args []string) error {
	l := newLeaf(e, path, "", "Lists the worker registry: every worker seen in the last hour, newest refresh first. A live\n"+
		"worker refreshes its row at least every 20 s; one not seen for a minute is marked stale.", true)
	if _, err := l.parse(args, 0, 0); err != nil {
		return err
	}
	q, err := l.open()
	if err != nil {
		return err
	}
	workers, err := q.Workers(e.ctx)
	if err != nil {
		return err
	}
	if l.json() {
		type worker struct {
			ID      string    `json:"id"`
			Queues  []string  `json:"queues"`
			Started time.Time `json:"started"`
			Seen    time.Time `json:"seen"`
			Live    bool      `json:"live"`
		}
		out := make([]worker, len(workers))
		for i, w := range workers {
			out[i] = worker{w.ID, nonNil(w.Queues), w.Started, w.Seen, w.Live}
		}
		return writeJSON(e.stdout, out)
	}
	rows := make([][]string, len(workers))
	for i, w := range workers {
		state := "live"
		if !w.Live {
			state = "stale"
		}
		rows[i] = []string{w.ID, state, strings.Join(w.Queues, ","), stamp(w.Started), stamp(w.Seen)}
	}
	return table(e.stdout, []string{"WORKER", "STATE", "QUEUES", "STARTED", "SEEN"}, rows)
}

func runPeriodicList(e *env, path string, args []string) error {
	l := newLeaf(e, path, "", "Lists the periodic schedules workers have run, with the last tick each enqueued.\n"+
		"Schedules are defined in the workers' code (WorkerConfig.Periodic), not in the database.", true)
	if _, err := l.parse(args, 0, 0); err != nil {
		return err
	}
	q, err := l.open()
	if err != nil {
		return err
	}
	ticks, err := q.PeriodicTicks(e.ctx)
	if err != nil {
		return err
	}
	names := make([]string, 0, len(ticks))
	for n := range ticks {
		names = append(names, n)
	}
	sort.Strings(names)
	if l.json() {
		type schedule struct {
			Name     string    `json:"name"`
			LastTick time.Time `json:"last_tick"`
		}
		out := make([]schedule, len(names))
		for i, n := range names {
			out[i] = schedule{n, ticks[n]}
		}
		return writeJSON(e.stdout, out)
	}
	rows := make([][]string, len(names))
	for i, n := range names {
		rows[i] = []string{n, stamp(ticks[n])}
	}
	return table(e.stdout, []string{"NAME", "LAST TICK"}, rows)
}

func runEventsFollow(e *env, path string, args []string) error {
	l := newLeaf(e, path, "[--from CURSOR|now] [--queue Q]",
		"Prints the job journal, one line (or with --output json one JSON object per line) per event with\n"+
			"its cursor: the retained events from the oldest, then new ones as they happen, until interrupted.\n"+
			"--from CURSOR resumes after a printed cursor; --from now prints only what happens from now on.", true)
	l.sessions()
	from := l.fs.String("from", "", "start after this cursor, or now")
	queue := l.fs.String("queue", "", "only events of this queue (filtered here; the journal holds all queues)")
	if _, err := l.parse(args, 0, 0); err != nil {
		return err
	}
	var cursor compute.Cursor
	if *from != "" && *from != "now" {
		c, err := compute.ParseCursor(*from)
		if err != nil {
			return l.usageErr("--from %q: use a cursor printed by events follow (xid.seq.pos) or now", *from)
		}
		cursor = c
	}
	q, err := l.open()
	if err != nil {
		return err
	}
	if *from == "now" {
		if cursor, err = q.Head(e.ctx); err != nil {
			return err
		}
	}
	if !l.json() {
		fmt.Fprintln(e.stdout, "CURSOR  AT  QUEUE  STATUS  JOB  ATTEMPT")
	}
	err = q.Follow(e.ctx, cursor, func(events []compute.Event) error {
		var b strings.Builder
		for _, ev := range events {
			if *queue != "" && ev.Queue != *queue {
				continue
			}
			if l.json() {
				if err := writeJSONLine(&b, toEventJSON(ev)); err != nil {
					return err
				}
				continue
			}
			fmt.Fprintf(&b, "%s  %s  %s  %s  %s  %d\n", ev.Cursor, ev.At.UTC().Format(time.RFC3339Nano), ev.Queue, ev.Status, ev.JobID, ev.Attempt)
		}
		_, err := fmt.Fprint(e.stdout, b.String())
		return err
	})
	if errors.Is(err, context.Canceled) && e.ctx.Err() != nil {
		return nil // interrupted: the normal way to stop following
	}
	return err
}

func runVersion(e *env, path string, args []string) error {
	l := newLeaf(e, path, "", "Prints this command's version and the schema version it migrates to. Needs no database.", true)
	if _, err := l.parse(args, 0, 0); err != nil {
		return err
	}
	version := "(devel)"
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		version = bi.Main.Version
	}
	schema, err := latestSchema()
	if err != nil {
		return err
	}
	if l.json() {
		return writeJSON(e.stdout, struct {
			Version string `json:"version"`
			Go      string `json:"go"`
			Schema  int64  `json:"schema"`
		}{version, runtime.Version(), schema})
	}
	fmt.Fprintf(e.stdout, "compute %s (%s), schema version %d\n", version, runtime.Version(), schema)
	return nil
}

// latestSchema reads the highest migration number from the embedded files
// ("00012_snoozes.sql" is version 12), without a database.
func latestSchema() (int64, error) {
	names, err := fs.Glob(migrations.FS, "*.sql")
	if err != nil {
		return 0, err
	}
	var latest int64
	for _, n := range names {
		num, _, _ := strings.Cut(n, "_")
		if v, err := strconv.ParseInt(num, 10, 64); err == nil && v > latest {
			latest = v
		}
	}
	return latest, nil
}
