package main

import (
	"flag"
	"fmt"
	"strconv"
	"strings"

	"github.com/computeplatform/compute"
	diag "github.com/computeplatform/compute/internal/doctor"
)

// rulesJSON is a queue's rules in --output json; durations in seconds.
type rulesJSON struct {
	MaxRunning        int     `json:"max_running"`
	KeyMaxRunning     int     `json:"key_max_running"`
	RateLimit         int     `json:"rate_limit"`
	KeyRateLimit      int     `json:"key_rate_limit"`
	RatePeriodSeconds float64 `json:"rate_period_seconds"`
	Fair              bool    `json:"fair"`
	AgeAfterSeconds   float64 `json:"age_after_seconds"`
}

func toRulesJSON(s compute.QueueSettings) rulesJSON {
	return rulesJSON{MaxRunning: s.MaxRunning, KeyMaxRunning: s.KeyMaxRunning, RateLimit: s.RateLimit,
		KeyRateLimit: s.KeyRateLimit, RatePeriodSeconds: s.RatePeriod.Seconds(), Fair: s.Fair,
		AgeAfterSeconds: s.AgeAfter.Seconds()}
}

// rulesText says a queue's rules in a few words for the table.
func rulesText(s compute.QueueSettings) string {
	var r []string
	if s.MaxRunning > 0 {
		r = append(r, fmt.Sprintf("max %d running", s.MaxRunning))
	}
	if s.KeyMaxRunning > 0 {
		r = append(r, fmt.Sprintf("max %d per key", s.KeyMaxRunning))
	}
	if s.RateLimit > 0 {
		r = append(r, fmt.Sprintf("%d per %s", s.RateLimit, s.RatePeriod))
	}
	if s.KeyRateLimit > 0 {
		r = append(r, fmt.Sprintf("%d per key per %s", s.KeyRateLimit, s.RatePeriod))
	}
	if s.Fair {
		r = append(r, "fair")
	}
	if s.AgeAfter > 0 {
		r = append(r, "age after "+s.AgeAfter.String())
	}
	if len(r) == 0 {
		return "-"
	}
	return strings.Join(r, ", ")
}

// countsJSON is a queue's jobs per status in --output json.
type countsJSON struct {
	Queued     int64 `json:"queued"`
	InProgress int64 `json:"in_progress"`
	Complete   int64 `json:"complete"`
	Failed     int64 `json:"failed"`
	Expired    int64 `json:"expired"`
}

// queueJSON is one queue in --output json.
type queueJSON struct {
	Name                  string     `json:"name"`
	Paused                bool       `json:"paused"`
	Counts                countsJSON `json:"counts"`
	CountsEstimated       bool       `json:"counts_estimated"`
	Runnable              int64      `json:"runnable"`
	OldestRunnableSeconds float64    `json:"oldest_runnable_seconds"`
	Workers               int        `json:"workers"`
	Rules                 rulesJSON  `json:"rules"`
}

func runQueuesList(e *env, path string, args []string) error {
	l := newLeaf(e, path, "[--estimate]",
		"Lists every queue: jobs per status, whether it is paused, its rules, the workers seen serving it\n"+
			"in the last minute, and how long its oldest runnable job has waited. Queued, in-progress and\n"+
			"failed counts come from their partial indexes. Complete and expired jobs are counted exactly,\n"+
			"a pass over every finished row (seconds at tens of millions of rows); --estimate takes the\n"+
			"planner's estimates instead (marked ~), which cost nothing but lag behind until ANALYZE.", true)
	estimate := l.fs.Bool("estimate", false, "estimate complete and expired counts instead of counting them")
	if _, err := l.parse(args, 0, 0); err != nil {
		return err
	}
	q, err := l.open()
	if err != nil {
		return err
	}
	queues, err := q.Queues(e.ctx, !*estimate)
	if err != nil {
		return err
	}
	if l.json() {
		out := make([]queueJSON, len(queues))
		for i, qi := range queues {
			c := qi.Counts
			counts := countsJSON{Queued: c[compute.StatusQueued], InProgress: c[compute.StatusInProgress],
				Complete: c[compute.StatusComplete], Failed: c[compute.StatusFailed], Expired: c[compute.StatusExpired]}
			out[i] = queueJSON{Name: qi.Name, Paused: qi.Settings.Paused, Counts: counts, CountsEstimated: qi.Estimated,
				Runnable: qi.Runnable, OldestRunnableSeconds: qi.OldestRunnable.Seconds(), Workers: qi.Workers,
				Rules: toRulesJSON(qi.Settings)}
		}
		return writeJSON(e.stdout, out)
	}
	rows := make([][]string, len(queues))
	for i, qi := range queues {
		fin := func(s compute.Status) string {
			n := strconv.FormatInt(qi.Counts[s], 10)
			if qi.Estimated {
				return "~" + n
			}
			return n
		}
		paused := "no"
		if qi.Settings.Paused {
			paused = "yes"
		}
		rows[i] = []string{qi.Name, paused, strconv.FormatInt(qi.Counts[compute.StatusQueued], 10), strconv.FormatInt(qi.Runnable, 10),
			strconv.FormatInt(qi.Counts[compute.StatusInProgress], 10), strconv.FormatInt(qi.Counts[compute.StatusFailed], 10),
			fin(compute.StatusComplete), fin(compute.StatusExpired), strconv.Itoa(qi.Workers), diag.Duration(qi.OldestRunnable), rulesText(qi.Settings)}
	}
	return table(e.stdout, []string{"QUEUE", "PAUSED", "QUEUED", "RUNNABLE", "RUNNING", "FAILED", "COMPLETE", "EXPIRED", "WORKERS", "OLDEST RUNNABLE", "RULES"}, rows)
}

func runQueuesPause(e *env, path string, args []string) error {
	return pauseOrResume(e, path, args, true)
}

func runQueuesResume(e *env, path string, args []string) error {
	return pauseOrResume(e, path, args, false)
}

func pauseOrResume(e *env, path string, args []string, pause bool) error {
	about := "Pauses a queue for the whole cluster: running jobs finish, queued ones wait, enqueues go on."
	if !pause {
		about = "Resumes a paused queue; workers serving it are woken at once."
	}
	l := newLeaf(e, path, "QUEUE", about, true)
	pos, err := l.parse(args, 1, 1)
	if err != nil {
		return err
	}
	q, err := l.open()
	if err != nil {
		return err
	}
	if pause {
		err = q.Pause(e.ctx, pos[0])
	} else {
		err = q.Resume(e.ctx, pos[0])
	}
	if err != nil {
		return err
	}
	if l.json() {
		return writeJSON(e.stdout, struct {
			Name   string `json:"name"`
			Paused bool   `json:"paused"`
		}{pos[0], pause})
	}
	if pause {
		fmt.Fprintf(e.stdout, "paused %s\n", pos[0])
	} else {
		fmt.Fprintf(e.stdout, "resumed %s\n", pos[0])
	}
	return nil
}

func runQueuesSet(e *env, path string, args []string) error {
	l := newLeaf(e, path, "QUEUE [--max-running N] [--key-max-running N] [--rate-limit N] [--key-rate-limit N]\n"+
		"       [--rate-period D] [--fair=true|false] [--age-after D]",
		"Changes a queue's cluster-wide rules. Flags not given keep their current value; 0 turns a limit\n"+
			"off. Durations are Go durations (1m, 30s). Prints the rules now in force.", true)
	maxRunning := l.fs.Int("max-running", 0, "running jobs of the queue across the cluster (0: no cap)")
	keyMax := l.fs.Int("key-max-running", 0, "running jobs per partition key (0: no cap)")
	rate := l.fs.Int("rate-limit", 0, "job starts per --rate-period for the queue (0: no limit)")
	keyRate := l.fs.Int("key-rate-limit", 0, "job starts per --rate-period per partition key (0: no limit)")
	period := l.fs.Duration("rate-period", 0, "the sliding window of the rate limits")
	fair := l.fs.Bool("fair", false, "claim round-robin across partition keys")
	ageAfter := l.fs.Duration("age-after", 0, "move waiting jobs one priority step up per this long (0: off)")
	pos, err := l.parse(args, 1, 1)
	if err != nil {
		return err
	}
	set := map[string]bool{}
	l.fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	q, err := l.open()
	if err != nil {
		return err
	}
	s, err := q.GetQueueSettings(e.ctx, pos[0])
	if err != nil {
		return err
	}
	for name, apply := range map[string]func(){
		"max-running": func() { s.MaxRunning = *maxRunning }, "key-max-running": func() { s.KeyMaxRunning = *keyMax },
		"rate-limit": func() { s.RateLimit = *rate }, "key-rate-limit": func() { s.KeyRateLimit = *keyRate },
		"rate-period": func() { s.RatePeriod = *period }, "fair": func() { s.Fair = *fair },
		"age-after": func() { s.AgeAfter = *ageAfter },
	} {
		if set[name] {
			apply()
		}
	}
	if err := q.SetQueueSettings(e.ctx, pos[0], s); err != nil {
		return err
	}
	if l.json() {
		return writeJSON(e.stdout, struct {
			Name   string    `json:"name"`
			Paused bool      `json:"paused"`
			Rules  rulesJSON `json:"rules"`
		}{pos[0], s.Paused, toRulesJSON(s)})
	}
	fmt.Fprintf(e.stdout, "%s: %s\n", pos[0], rulesText(s))
	return nil
}
