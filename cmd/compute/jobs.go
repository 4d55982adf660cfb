package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/computeplatform/compute"
)

// filterFlags are the flags that select jobs for list and the bulk actions.
type filterFlags struct {
	queue, status, partitionKey string
}

func (f *filterFlags) register(l *leaf) {
	l.fs.StringVar(&f.queue, "queue", "", "only jobs of this queue")
	l.fs.StringVar(&f.status, "status", "", "only jobs in this status: queued, in-progress, complete, failed or expired")
	l.fs.StringVar(&f.partitionKey, "partition-key", "", "only jobs with this partition key")
}

func (f *filterFlags) filter(l *leaf) (compute.Filter, error) {
	switch compute.Status(f.status) {
	case "", compute.StatusQueued, compute.StatusInProgress, compute.StatusComplete, compute.StatusFailed, compute.StatusExpired:
	default:
		return compute.Filter{}, l.usageErr("--status %q: use queued, in-progress, complete, failed or expired", f.status)
	}
	return compute.Filter{Queue: f.queue, Status: compute.Status(f.status), PartitionKey: f.partitionKey}, nil
}

// describe says in words which jobs a filter selects, for the confirmation.
func describe(f compute.Filter) string {
	var parts []string
	if f.Queue != "" {
		parts = append(parts, "queue "+strconv.Quote(f.Queue))
	}
	if f.Status != "" {
		parts = append(parts, "status "+string(f.Status))
	}
	if f.PartitionKey != "" {
		parts = append(parts, "partition key "+strconv.Quote(f.PartitionKey))
	}
	return strings.Join(parts, ", ")
}

func parseIDs(l *leaf, args []string) ([]compute.JobID, error) {
	ids := make([]compute.JobID, len(args))
	for i, a := range args {
		id, err := compute.ParseJobID(a)
		if err != nil {
			return nil, l.usageErr("%q is not a job id: use the 36-character form compute prints (or 32 hex digits)", a)
		}
		ids[i] = id
	}
	return ids, nil
}

func runJobsList(e *env, path string, args []string) error {
	l := newLeaf(e, path, "[--queue Q] [--status S] [--partition-key K] [--limit N] [--after ID]",
		"Lists jobs in job id order (creation order for default ids), a page at a time: pass the last\n"+
			"id printed as --after to read on.", true)
	var ff filterFlags
	ff.register(l)
	limit := l.fs.Int("limit", 100, "at most this many jobs (1..10000)")
	after := l.fs.String("after", "", "start after this job id")
	if _, err := l.parse(args, 0, 0); err != nil {
		return err
	}
	f, err := ff.filter(l)
	if err != nil {
		return err
	}
	if *limit < 1 || *limit > 10000 {
		return l.usageErr("--limit %d: use 1..10000", *limit)
	}
	var afterID compute.JobID
	if *after != "" {
		ids, err := parseIDs(l, []string{*after})
		if err != nil {
			return err
		}
		afterID = ids[0]
	}
	q, err := l.open()
	if err != nil {
		return err
	}
	jobs, err := q.Find(e.ctx, f, afterID, *limit)
	// A row the library cannot read ends the page early: the jobs before
	// it are printed, then the error says how to read on.
	var bad *compute.BadRowError
	if err != nil && !errors.As(err, &bad) {
		return err
	}
	if err := printJobs(e, l, jobs); err != nil {
		return err
	}
	if bad != nil {
		return fmt.Errorf("%w; the jobs before it are listed above; continue with --after %s", bad, bad.ID)
	}
	return nil
}

// printJobs prints a page of jobs as a table or as one JSON document.
func printJobs(e *env, l *leaf, jobs []*compute.Job) error {
	if l.json() {
		out := make([]jobJSON, len(jobs))
		for i, j := range jobs {
			out[i] = toJobJSON(j)
		}
		return writeJSON(e.stdout, out)
	}
	rows := make([][]string, len(jobs))
	for i, j := range jobs {
		rows[i] = []string{j.ID.String(), j.Queue, string(j.Status), fmt.Sprintf("%d/%d", j.Spent(), j.MaxAttempts),
			strconv.Itoa(j.Priority), stamp(j.Created), stamp(j.RunAt), dash(j.PartitionKey)}
	}
	return table(e.stdout, []string{"ID", "QUEUE", "STATUS", "ATTEMPTS", "PRIORITY", "CREATED", "RUN AT", "PARTITION"}, rows)
}

func runJobsGet(e *env, path string, args []string) error {
	l := newLeaf(e, path, "ID", "Shows a job: its fields, config, files, every attempt's error and its journal timeline.\n"+
		"Reading a finished job counts as a read for retention (last_accessed).", true)
	id, q, err := l.jobArg(args)
	if err != nil {
		return err
	}
	job, err := q.Get(e.ctx, id)
	if err != nil {
		return err
	}
	events, err := q.History(e.ctx, id)
	if err != nil {
		return err
	}
	if l.json() {
		out := toJobJSON(job)
		out.Config = &job.Config
		out.Events = make([]eventJSON, len(events))
		for i, ev := range events {
			out.Events[i] = toEventJSON(ev)
		}
		return writeJSON(e.stdout, out)
	}
	w := e.stdout
	rows := [][]string{
		{"queue", job.Queue}, {"status", string(job.Status)},
		{"attempts", fmt.Sprintf("%d spent of %d (%d claims, %d snoozed)", job.Spent(), job.MaxAttempts, job.Attempt, job.Snoozes)},
		{"priority", strconv.Itoa(job.Priority)}, {"created", stamp(job.Created)}, {"run at", stamp(job.RunAt)},
		{"grabbed", stamp(job.Grabbed)}, {"finished", stamp(job.Finished)}, {"last accessed", stamp(job.LastAccessed)},
		{"worker", dash(job.Worker)}, {"lease expires", stamp(job.LeaseExpires)},
		{"partition key", dash(job.PartitionKey)}, {"unique key", dash(job.Unique.Key)},
		{"input files", dash(strings.Join(job.InputFiles, ", "))}, {"output files", dash(strings.Join(job.OutputFiles, ", "))},
	}
	if err := table(w, []string{"id", job.ID.String()}, rows); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nconfig:\n%s\n", indent(job.Config))
	if len(job.Errors) > 0 {
		fmt.Fprintf(w, "\nerrors:\n")
		for _, ae := range job.Errors {
			fmt.Fprintf(w, "  attempt %d at %s:\n%s\n", ae.Attempt, stamp(ae.At), indent(indent(ae.Error)))
		}
	}
	fmt.Fprintf(w, "\ntimeline (journal):\n")
	if len(events) == 0 {
		fmt.Fprintln(w, "  (no events: the journal is off or its retention removed them)")
	}
	for _, ev := range events {
		fmt.Fprintf(w, "  %s  %-11s  attempt %d  cursor %s\n", stamp(ev.At), ev.Status, ev.Attempt, ev.Cursor)
	}
	return nil
}

func indent(s string) string {
	if s == "" {
		return "  (empty)"
	}
	return "  " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n  ")
}

// action is one of the three by-id-or-by-filter job actions.
type action struct {
	verb, past string // "retry", "retried"
	about      string
	one        func(q *compute.Queue, e *env, id compute.JobID) error
	many       func(q *compute.Queue, e *env, f compute.Filter) (int, error)
}

func runJobsCancel(e *env, path string, args []string) error {
	var reason string
	return runAction(e, path, args, action{
		verb: "cancel", past: "cancelled",
		about: "Cancels queued or running jobs: they end failed with the reason, and running ones' handlers are\n" +
			"told to stop. Give job ids, or a filter (--queue, --status, --partition-key) to cancel every\n" +
			"match on the server in batches of 1,000.",
		one: func(q *compute.Queue, e *env, id compute.JobID) error { return q.Cancel(e.ctx, id, reason) },
		many: func(q *compute.Queue, e *env, f compute.Filter) (int, error) {
			return q.CancelMatching(e.ctx, f, reason)
		},
	}, func(l *leaf) {
		l.fs.StringVar(&reason, "reason", "cancelled by request", "why, recorded in the job's errors")
	})
}

func runJobsRetry(e *env, path string, args []string) error {
	return runAction(e, path, args, action{
		verb: "retry", past: "retried",
		about: "Queues failed jobs again to run now, with at least one more attempt. Give job ids, or a filter\n" +
			"(--queue, --status failed, --partition-key) to retry every failed match on the server in batches.",
		one:  func(q *compute.Queue, e *env, id compute.JobID) error { return q.Retry(e.ctx, id) },
		many: func(q *compute.Queue, e *env, f compute.Filter) (int, error) { return q.RetryMatching(e.ctx, f) },
	}, nil)
}

func runJobsDelete(e *env, path string, args []string) error {
	return runAction(e, path, args, action{
		verb: "delete", past: "deleted",
		about: "Deletes jobs for good; running jobs are refused (cancel them first). Give job ids, or a filter\n" +
			"(--queue, --status, --partition-key) to delete every match that is not running, in batches.",
		one:  func(q *compute.Queue, e *env, id compute.JobID) error { return q.Delete(e.ctx, id) },
		many: func(q *compute.Queue, e *env, f compute.Filter) (int, error) { return q.DeleteMatching(e.ctx, f) },
	}, nil)
}

// actionResult is one id's outcome in --output json.
type actionResult struct {
	ID    string `json:"id"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// runAction runs cancel, retry or delete: by ids, each reported, or by
// filter after a confirmation, reporting how many changed.
func runAction(e *env, path string, args []string, a action, extra func(*leaf)) error {
	l := newLeaf(e, path, "ID... | --queue Q [--status S] [--partition-key K] [--yes]", a.about, true)
	var ff filterFlags
	ff.register(l)
	yes := l.fs.Bool("yes", false, "act on a filter's matches without asking")
	if extra != nil {
		extra(l)
	}
	pos, err := l.parse(args, 0, -1)
	if err != nil {
		return err
	}
	f, err := ff.filter(l)
	if err != nil {
		return err
	}
	switch {
	case len(pos) > 0 && f != (compute.Filter{}):
		return l.usageErr("give job ids or a filter, not both")
	case len(pos) == 0 && f == (compute.Filter{}):
		return l.usageErr("give job ids, or a filter (--queue, --status, --partition-key) to %s every match", a.verb)
	}
	if len(pos) > 0 {
		ids, err := parseIDs(l, pos)
		if err != nil {
			return err
		}
		q, err := l.open()
		if err != nil {
			return err
		}
		results := make([]actionResult, len(ids))
		failed := 0
		for i, id := range ids {
			results[i] = actionResult{ID: id.String(), OK: true}
			if err := a.one(q, e, id); err != nil {
				if e.ctx.Err() != nil {
					return err
				}
				results[i].OK, results[i].Error = false, e.redact(message(err))
				failed++
			}
		}
		if l.json() {
			if err := writeJSON(e.stdout, struct {
				Changed int            `json:"changed"`
				Results []actionResult `json:"results"`
			}{len(ids) - failed, results}); err != nil {
				return err
			}
		} else {
			for _, r := range results {
				if r.OK {
					fmt.Fprintf(e.stdout, "%s %s\n", a.past, r.ID)
				} else {
					fmt.Fprintln(e.stderr, r.Error)
				}
			}
		}
		if failed > 0 {
			return &exitError{exitFailure}
		}
		return nil
	}
	if !*yes {
		if err := confirm(e, fmt.Sprintf("%s every job matching %s?", a.verb, describe(f))); err != nil {
			if _, ok := err.(*usageError); ok {
				return l.usageErr("%v", err)
			}
			return err
		}
	}
	q, err := l.open()
	if err != nil {
		return err
	}
	n, err := a.many(q, e, f)
	if err != nil {
		if n > 0 {
			fmt.Fprintf(e.stderr, "compute: %s %d job(s) before the error\n", a.past, n)
		}
		return err
	}
	if l.json() {
		return writeJSON(e.stdout, struct {
			Changed int `json:"changed"`
		}{n})
	}
	fmt.Fprintf(e.stdout, "%s %d job(s)\n", a.past, n)
	return nil
}

// isTerminal reports whether r is an interactive terminal; tests replace it.
var isTerminal = func(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	return isTTY(f.Fd())
}

// errDeclined is a confirmation answered with anything but yes.
var errDeclined = fmt.Errorf("not confirmed; nothing was changed")

// confirm asks a yes/no question on the terminal. Without a terminal it
// refuses, as a usage error, since nobody can answer.
func confirm(e *env, question string) error {
	if !isTerminal(e.stdin) {
		return &usageError{msg: "standard input is not a terminal, so nobody can confirm; pass --yes to go ahead"}
	}
	fmt.Fprintf(e.stderr, "%s [y/N] ", question)
	line, _ := bufio.NewReader(e.stdin).ReadString('\n')
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return nil
	}
	return errDeclined
}
