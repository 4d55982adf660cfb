package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/computeplatform/compute"
)

// writeJSON prints v as one indented JSON document.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// writeJSONLine prints v as one JSON object on one line.
func writeJSONLine(w io.Writer, v any) error {
	return json.NewEncoder(w).Encode(v)
}

// table prints rows under a header, aligned in columns.
func table(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// jobJSON is a job in --output json: stable snake_case names. Times that a
// job may not have yet are null.
type jobJSON struct {
	ID           string                 `json:"id"`
	Queue        string                 `json:"queue"`
	Status       compute.Status         `json:"status"`
	Attempt      int                    `json:"attempt"`
	Snoozes      int                    `json:"snoozes"`
	MaxAttempts  int                    `json:"max_attempts"`
	Priority     int                    `json:"priority"`
	Created      time.Time              `json:"created"`
	RunAt        time.Time              `json:"run_at"`
	Grabbed      *time.Time             `json:"grabbed"`
	Finished     *time.Time             `json:"finished"`
	LastAccessed time.Time              `json:"last_accessed"`
	Worker       string                 `json:"worker"`
	LeaseExpires *time.Time             `json:"lease_expires"`
	PartitionKey string                 `json:"partition_key"`
	UniqueKey    string                 `json:"unique_key"`
	InputFiles   []string               `json:"input_files"`
	OutputFiles  []string               `json:"output_files"`
	Errors       []compute.AttemptError `json:"errors"`
	// Config and Events only in jobs get.
	Config *string     `json:"config,omitempty"`
	Events []eventJSON `json:"events,omitempty"`
}

func optTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func toJobJSON(j *compute.Job) jobJSON {
	errs := j.Errors
	if errs == nil {
		errs = []compute.AttemptError{}
	}
	return jobJSON{
		ID: j.ID.String(), Queue: j.Queue, Status: j.Status, Attempt: j.Attempt, Snoozes: j.Snoozes,
		MaxAttempts: j.MaxAttempts, Priority: j.Priority, Created: j.Created, RunAt: j.RunAt,
		Grabbed: optTime(j.Grabbed), Finished: optTime(j.Finished), LastAccessed: j.LastAccessed,
		Worker: j.Worker, LeaseExpires: optTime(j.LeaseExpires), PartitionKey: j.PartitionKey,
		UniqueKey: j.Unique.Key, InputFiles: nonNil(j.InputFiles), OutputFiles: nonNil(j.OutputFiles), Errors: errs,
	}
}

// eventJSON is a journal event in --output json.
type eventJSON struct {
	Cursor  string         `json:"cursor"`
	JobID   string         `json:"job_id"`
	Queue   string         `json:"queue"`
	Status  compute.Status `json:"status"`
	Attempt int            `json:"attempt"`
	At      time.Time      `json:"at"`
}

func toEventJSON(ev compute.Event) eventJSON {
	return eventJSON{Cursor: ev.Cursor.String(), JobID: ev.JobID.String(), Queue: ev.Queue,
		Status: ev.Status, Attempt: ev.Attempt, At: ev.At}
}

// stamp formats a time for tables: UTC to the second; "-" for none.
func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

// dash shows an empty value as "-".
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
