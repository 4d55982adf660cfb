package compute

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// jobFields are the columns of a job that every statement returning jobs
// returns first, in the order scanJob reads; the config comes last, whole
// (jobColumns) or, in a claim, only up to the worker's size limit
// (claimColumns). octet_length reads only a value's header, even when it
// is stored out of line, so a claim that leaves out a config too large
// still tells how large it was. Columns are qualified: statements alias
// compute.jobs as j. A new job column is added here, in scanJob, in
// insertRows and in a migration. trace_context is at most 1 KiB (see
// maxTraceContext) and NULL for most jobs, so reading it costs a claim
// next to nothing.
const jobFields = `j.job_id, j.status, j.queue, j.input_files, j.created, j.last_accessed,
	j.grabbed, j.finished, j.output_files, j.priority, j.run_at, j.attempt, j.max_attempts, j.worker,
	j.lease_expires, j.errors, j.unique_key, j.partition_key, j.snoozes, j.trace_context, octet_length(j.config)`

// jobColumns is jobFields and the whole config.
const jobColumns = jobFields + `, j.config`

// scanJob reads one row of jobColumns (or claimColumns), after the destinations in before
// for columns that precede them. Values the library cannot take (a NULL
// file name, an infinite time, a config left out for its size) do not
// fail the scan: the job comes back with its bad field set, so that one
// such row, written by plain SQL, cannot fail the other rows of a claim.
// Callers that hand out jobs check it (see unreadable).
func scanJob(row pgx.Row, before ...any) (*Job, error) {
	// The destinations live in one value: pgx takes them as interfaces, and
	// a local variable per column escaped to the heap one by one (about 17
	// allocations per claimed job). Nullable columns scan into pgtype
	// values, not pointers, for the same reason.
	var (
		s struct {
			id                              []byte
			config, worker, unique, part    pgtype.Text
			created, lastAccessed, runAt    pgtype.Timestamptz
			grabbed, finished, leaseExpires pgtype.Timestamptz
			inputs, outputs                 pgtype.FlatArray[pgtype.Text] // no reflection, unlike a []pgtype.Text
			errs, trace                     []byte
			size                            pgtype.Int4
			dest                            [24]any
		}
		j = new(Job)
	)
	dest := append(s.dest[:0], before...)
	dest = append(dest, &s.id, &j.Status, &j.Queue, &s.inputs, &s.created, &s.lastAccessed,
		&s.grabbed, &s.finished, &s.outputs, &j.Priority, &s.runAt, &j.Attempt, &j.MaxAttempts,
		&s.worker, &s.leaseExpires, &s.errs, &s.unique, &s.part, &j.Snoozes, &s.trace, &s.size, &s.config)
	if err := row.Scan(dest...); err != nil {
		return nil, err
	}
	copy(j.ID[:], s.id)
	j.Config, j.Worker = s.config.String, s.worker.String
	j.Unique.Key, j.PartitionKey = s.unique.String, s.part.String
	j.Errors = attemptErrors(s.errs)
	j.TraceContext = decodeTraceContext(s.trace)
	bad := func(column, problem string) {
		if j.bad == nil {
			j.bad = &BadRowError{ID: j.ID, Column: column, Problem: problem}
		}
	}
	if !s.config.Valid && s.size.Valid {
		bad("config", fmt.Sprintf("it is %d bytes, more than this Queue takes (WithMaxConfigSize)", s.size.Int32))
	}
	var problem string
	if j.InputFiles, problem = fileNames(s.inputs); problem != "" {
		bad("input_files", problem)
	}
	if j.OutputFiles, problem = fileNames(s.outputs); problem != "" {
		bad("output_files", problem)
	}
	for _, t := range []struct {
		column string
		from   pgtype.Timestamptz
		to     *time.Time
	}{
		{"created", s.created, &j.Created}, {"last_accessed", s.lastAccessed, &j.LastAccessed}, {"run_at", s.runAt, &j.RunAt},
		{"grabbed", s.grabbed, &j.Grabbed}, {"finished", s.finished, &j.Finished}, {"lease_expires", s.leaseExpires, &j.LeaseExpires},
	} {
		if t.from.InfinityModifier != pgtype.Finite {
			bad(t.column, "it is "+t.from.InfinityModifier.String()+", which no job time can be")
			continue
		}
		*t.to = t.from.Time
	}
	return j, nil
}

// fileNames turns a file array into names; a NULL element is a problem
// (no file has no name), reported with its position.
func fileNames(in []pgtype.Text) ([]string, string) {
	if in == nil {
		return nil, ""
	}
	out := make([]string, len(in))
	for i, f := range in {
		if !f.Valid {
			return out, fmt.Sprintf("element %d is NULL; every file needs a name", i+1)
		}
		out[i] = f.String
	}
	return out, ""
}

// attemptErrors decodes the errors column. It is diagnostics, so whatever
// plain SQL wrote there is kept readable rather than refused: an element
// that is not an attempt error, or a value that is not an array, becomes
// one entry holding its JSON text.
func attemptErrors(raw []byte) []AttemptError {
	// Most jobs have no errors: '[]' needs no JSON decoder.
	if string(raw) == "[]" {
		return []AttemptError{}
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(raw, &elems); err != nil {
		return []AttemptError{{Error: "unreadable errors column: " + string(raw)}}
	}
	out := make([]AttemptError, len(elems))
	for i, e := range elems {
		if err := json.Unmarshal(e, &out[i]); err != nil {
			out[i] = AttemptError{Error: "unreadable entry: " + string(e)}
		}
	}
	return out
}

// pageLimit checks a page size of List or Find (what names the call): 0
// means 100, at most 10,000.
func pageLimit(what string, limit int) (int, error) {
	switch {
	case limit == 0:
		return 100, nil
	case limit < 0 || limit > 10000:
		return 0, fmt.Errorf("%w: %s limit %d is outside 1..10000", ErrInvalidOption, what, limit)
	}
	return limit, nil
}

// afterID is a keyset page's starting id as a parameter: nil from the
// start, even for a job whose id is all zeros.
func afterID(after JobID) []byte {
	if after == (JobID{}) {
		return nil
	}
	return after[:]
}

// queryPage runs a page query of jobs (List, Find) and cuts the page at
// the first row the library cannot read, returning its *BadRowError.
func (q *Queue) queryPage(ctx context.Context, what, sql string, args ...any) ([]*Job, error) {
	var jobs []*Job
	err := q.do(ctx, what, func(ctx context.Context) error {
		rows, err := q.pool.Query(ctx, sql, args...)
		if err != nil {
			return err
		}
		jobs, err = pgx.CollectRows(rows, collectJob)
		return err
	})
	for i, j := range jobs {
		if j.bad != nil {
			return jobs[:i], j.bad
		}
	}
	return jobs, err
}

// collectJob is scanJob in the shape pgx.CollectRows takes.
func collectJob(row pgx.CollectableRow) (*Job, error) { return scanJob(row) }

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
