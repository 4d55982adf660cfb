package dashboard

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/internal/doctor"
)

// pageSize is how many jobs a list shows per page.
const pageSize = 50

// liveFrom is the journal position a page was rendered at: the live feed
// starts there, so no change between the render and the feed's start is
// missed.
type liveFrom struct {
	cursor compute.Cursor
	ok     bool   // false when the journal could not be read
	query  string // extra filters for the feed
}

func (l liveFrom) liveQuery() string {
	if !l.ok {
		return ""
	}
	v := url.Values{"after": {l.cursor.String()}}
	if l.query != "" {
		return v.Encode() + "&" + l.query
	}
	return v.Encode()
}

// head reads the journal's head for a page's live feed. A journal that
// cannot be read (turned off, copied from another cluster) leaves the page
// without live updates rather than failing it.
func (h *Handler) head(ctx context.Context, query string) liveFrom {
	c, err := h.q.Head(ctx)
	if err != nil {
		h.log.Warn("dashboard: reading the journal's head failed; the page will not update live", "err", err)
		return liveFrom{}
	}
	return liveFrom{cursor: c, ok: true, query: query}
}

// overviewData is the Overview page.
type overviewData struct {
	liveFrom
	Queues    []compute.QueueInfo
	Totals    map[compute.Status]int64
	Estimated bool
	Workers   int
	Chart     chart
}

func (h *Handler) overview(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	live := h.head(ctx, "")
	queues, err := h.q.Queues(ctx, false)
	if err != nil {
		return err
	}
	workers, err := h.q.Workers(ctx)
	if err != nil {
		return err
	}
	c, err := h.finishedChart(ctx, time.Now())
	if err != nil {
		return err
	}
	d := overviewData{liveFrom: live, Queues: queues, Totals: map[compute.Status]int64{}, Chart: c}
	for _, qi := range queues {
		for s, n := range qi.Counts {
			d.Totals[s] += n
		}
		d.Estimated = d.Estimated || qi.Estimated
	}
	for _, wi := range workers {
		if wi.Live {
			d.Workers++
		}
	}
	h.render(w, r, http.StatusOK, "overview", "Overview", d)
	return nil
}

// jobFilter is the Jobs page's filter, read from the query or a form.
type jobFilter struct {
	compute.Filter
	ID string
}

// readFilter reads queue, status, key and id from a request's form.
func readFilter(r *http.Request) (jobFilter, error) {
	f := jobFilter{Filter: compute.Filter{
		Queue:        strings.TrimSpace(r.FormValue("queue")),
		Status:       compute.Status(r.FormValue("status")),
		PartitionKey: strings.TrimSpace(r.FormValue("key")),
	}, ID: strings.TrimSpace(r.FormValue("id"))}
	if f.Status != "" && !slices.Contains(funcs["statuses"].(func() []compute.Status)(), f.Status) {
		return f, &errBadRequest{fmt.Sprintf("status %q is not one of queued, in-progress, complete, failed, expired", f.Status)}
	}
	return f, nil
}

// QueryString is the filter as a query string, for links.
func (f jobFilter) QueryString() string {
	v := url.Values{}
	for k, s := range map[string]string{"queue": f.Queue, "status": string(f.Status), "key": f.PartitionKey, "id": f.ID} {
		if s != "" {
			v.Set(k, s)
		}
	}
	return v.Encode()
}

// jobsData is the Jobs page.
type jobsData struct {
	Filter jobFilter
	Query  string // the filter as a query string
	Jobs   []*compute.Job
	Next   string // the before= value of the next (older) page, "" on the last
	First  bool   // whether this is the first page, of the newest jobs
	// Bulk says which bulk actions the filter allows.
	CanCancel, CanRetry, CanDelete bool
	// NoAll hides "all matching": the filter is empty (a bulk action
	// needs one), or names one job by id, which the *Matching calls do
	// not take, so they would act on far more than the page lists.
	NoAll   bool
	Message string
}

func (h *Handler) jobs(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	f, err := readFilter(r)
	if err != nil {
		return err
	}
	// No live feed here: a refresh would lose the rows a user selected.
	d := jobsData{Filter: f, Query: f.QueryString(), First: r.FormValue("before") == "", Message: h.message(r)}
	if f.ID != "" {
		id, err := compute.ParseJobID(f.ID)
		if err != nil {
			return &errBadRequest{err.Error()}
		}
		j, err := h.q.Get(ctx, id)
		switch {
		case errors.Is(err, compute.ErrNotFound):
		case err != nil:
			return err
		default:
			d.Jobs = []*compute.Job{j}
		}
	} else {
		// Newest first: on a busy queue the last minutes matter, and the
		// oldest of a million jobs would otherwise fill every first page.
		var before compute.JobID
		if b := r.FormValue("before"); b != "" {
			if before, err = compute.ParseJobID(b); err != nil {
				return &errBadRequest{"before: " + err.Error()}
			}
		}
		d.Jobs, err = h.q.FindNewest(ctx, f.Filter, before, pageSize+1)
		if err != nil {
			return err
		}
		if len(d.Jobs) > pageSize {
			d.Jobs = d.Jobs[:pageSize]
			d.Next = d.Jobs[pageSize-1].ID.String()
		}
	}
	d.NoAll = f.Filter == compute.Filter{} || f.ID != ""
	s := f.Status
	d.CanCancel = s == "" || s == compute.StatusQueued || s == compute.StatusInProgress
	d.CanRetry = s == "" || s == compute.StatusFailed
	d.CanDelete = s != compute.StatusInProgress
	h.render(w, r, http.StatusOK, "jobs", "Jobs", d)
	return nil
}

// jobData is the Job page.
type jobData struct {
	liveFrom
	Job     *compute.Job
	History []compute.Event
	Reasons []compute.Reason
	Message string
}

func (h *Handler) job(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	id, err := compute.ParseJobID(r.PathValue("id"))
	if err != nil {
		return &errBadRequest{err.Error()}
	}
	d := jobData{liveFrom: h.head(ctx, url.Values{"job": {id.String()}}.Encode()), Message: h.message(r)}
	if d.Job, err = h.q.Get(ctx, id); err != nil {
		return err
	}
	if d.History, err = h.q.History(ctx, id); err != nil && !errors.Is(err, compute.ErrNotFound) {
		return err
	}
	if d.Job.Status != compute.StatusInProgress {
		ex, err := h.q.Explain(ctx, id)
		switch {
		case errors.Is(err, compute.ErrNotFound):
		case err != nil:
			return err
		default:
			d.Reasons = ex.Reasons
		}
	}
	h.render(w, r, http.StatusOK, "job", "Job "+shortID(id), d)
	return nil
}

// jobAction cancels, retries or deletes one job.
func (h *Handler) jobAction(a Action) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		id, err := compute.ParseJobID(r.PathValue("id"))
		if err != nil {
			return &errBadRequest{err.Error()}
		}
		ctx := r.Context()
		switch a {
		case ActionCancel:
			err = h.q.Cancel(ctx, id, r.PostFormValue("reason"))
		case ActionRetry:
			err = h.q.Retry(ctx, id)
		case ActionDelete:
			if err = h.q.Delete(ctx, id); err == nil {
				h.seeOther(w, r, "/jobs", "Deleted job "+id.String())
				return nil
			}
		}
		if err != nil {
			return err
		}
		h.seeOther(w, r, "/jobs/"+id.String(), pastTense[a]+" the job")
		return nil
	}
}

// pastTense words the result of an action.
var pastTense = map[Action]string{ActionCancel: "Cancelled", ActionRetry: "Queued again", ActionDelete: "Deleted"}

// bulkData is the confirmation page of a bulk action.
type bulkData struct {
	Action Action
	Filter jobFilter
	IDs    []string
	Count  int64
	More   bool // more than countCap match
}

// countCap bounds the count shown before a bulk action, so counting never
// walks millions of finished rows.
const countCap = 100_000

// actionStatuses are the statuses each bulk action changes.
var actionStatuses = map[Action][]compute.Status{
	ActionCancel: {compute.StatusQueued, compute.StatusInProgress},
	ActionRetry:  {compute.StatusFailed},
	ActionDelete: {compute.StatusQueued, compute.StatusComplete, compute.StatusFailed, compute.StatusExpired},
}

// bulk cancels, retries or deletes the selected jobs, or every job the
// filter matches: the first POST of "all matching" shows the count and
// asks to confirm, the second runs the *Matching call.
func (h *Handler) bulk(a Action) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		// Only the *Matching call runs for as long as it takes; the
		// selected jobs' statements and the count are bounded as a page
		// is, so a database that does not answer gives an error page.
		ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
		defer cancel()
		f, err := readFilter(r)
		if err != nil {
			return err
		}
		back := "/jobs?" + f.QueryString()
		if r.PostFormValue("all") == "" {
			n := 0
			for _, s := range r.PostForm["job"] {
				id, err := compute.ParseJobID(s)
				if err != nil {
					return &errBadRequest{err.Error()}
				}
				switch a {
				case ActionCancel:
					err = h.q.Cancel(ctx, id, "")
				case ActionRetry:
					err = h.q.Retry(ctx, id)
				case ActionDelete:
					err = h.q.Delete(ctx, id)
				}
				switch {
				case errors.Is(err, compute.ErrWrongStatus), errors.Is(err, compute.ErrNotFound):
				case err != nil:
					return err
				default:
					n++
				}
			}
			h.seeOther(w, r, back, fmt.Sprintf("%s %d of %d selected job(s)", pastTense[a], n, len(r.PostForm["job"])))
			return nil
		}
		if f.Filter == (compute.Filter{}) {
			return &errBadRequest{"set a queue, status or partition key first: a bulk action needs a filter"}
		}
		if r.PostFormValue("confirm") == "" {
			n, err := h.q.CountMatching(ctx, f.Filter, actionStatuses[a], countCap+1)
			if err != nil {
				return err
			}
			h.render(w, r, http.StatusOK, "confirm", "Confirm", bulkData{Action: a, Filter: f, Count: int64(min(n, countCap)), More: n > countCap})
			return nil
		}
		var n int
		switch ctx := r.Context(); a {
		case ActionCancel:
			n, err = h.q.CancelMatching(ctx, f.Filter, "")
		case ActionRetry:
			n, err = h.q.RetryMatching(ctx, f.Filter)
		case ActionDelete:
			n, err = h.q.DeleteMatching(ctx, f.Filter)
		}
		if err != nil {
			return fmt.Errorf("%s: %d job(s) changed before: %w", a, n, err)
		}
		h.seeOther(w, r, back, fmt.Sprintf("%s %d job(s)", pastTense[a], n))
		return nil
	}
}

// queueData is the Queue page.
type queueData struct {
	liveFrom
	Info    compute.QueueInfo
	Jobs    []*compute.Job
	Message string
}

func (h *Handler) queue(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	name := r.PathValue("name")
	d := queueData{liveFrom: h.head(ctx, url.Values{"queue": {name}}.Encode()), Message: h.message(r)}
	queues, err := h.q.Queues(ctx, false)
	if err != nil {
		return err
	}
	d.Info = compute.QueueInfo{Name: name, Counts: map[compute.Status]int64{}}
	if i := slices.IndexFunc(queues, func(qi compute.QueueInfo) bool { return qi.Name == name }); i >= 0 {
		d.Info = queues[i]
	} else if d.Info.Settings, err = h.q.GetQueueSettings(ctx, name); err != nil {
		return err
	}
	if d.Jobs, err = h.q.FindNewest(ctx, compute.Filter{Queue: name}, compute.JobID{}, pageSize); err != nil {
		return err
	}
	h.render(w, r, http.StatusOK, "queue", "Queue "+name, d)
	return nil
}

// pause pauses or resumes a queue.
func (h *Handler) pause(paused bool) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		name := r.PathValue("name")
		var err error
		msg := "Paused"
		if paused {
			err = h.q.Pause(r.Context(), name)
		} else {
			err, msg = h.q.Resume(r.Context(), name), "Resumed"
		}
		if err != nil {
			return err
		}
		h.seeOther(w, r, "/queues/"+url.PathEscape(name), msg)
		return nil
	}
}

// settings stores a queue's rules from the settings form.
func (h *Handler) settings(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	var s compute.QueueSettings
	var err error
	num := func(field string) int {
		v := strings.TrimSpace(r.PostFormValue(field))
		if v == "" || err != nil {
			return 0
		}
		n, e := strconv.Atoi(v)
		if e != nil || n < 0 {
			err = &errBadRequest{fmt.Sprintf("%s: %q is not a whole number of 0 or more", field, v)}
		}
		return n
	}
	duration := func(field string) time.Duration {
		v := strings.TrimSpace(r.PostFormValue(field))
		if v == "" || err != nil {
			return 0
		}
		d, e := time.ParseDuration(v)
		if e != nil {
			err = &errBadRequest{fmt.Sprintf("%s: %q is not a duration such as 1s, 5m or 1h", field, v)}
		}
		return d
	}
	s.MaxRunning, s.KeyMaxRunning = num("max_running"), num("key_max_running")
	s.RateLimit, s.KeyRateLimit = num("rate_limit"), num("key_rate_limit")
	s.RatePeriod, s.AgeAfter = duration("rate_period"), duration("age_after")
	s.Fair = r.PostFormValue("fair") != ""
	if err != nil {
		return err
	}
	if err := h.q.SetQueueSettings(r.Context(), name, s); err != nil {
		return err
	}
	h.seeOther(w, r, "/queues/"+url.PathEscape(name), "Saved the settings")
	return nil
}

func (h *Handler) workers(w http.ResponseWriter, r *http.Request) error {
	ws, err := h.q.Workers(r.Context())
	if err != nil {
		return err
	}
	h.render(w, r, http.StatusOK, "workers", "Workers", ws)
	return nil
}

// tick is one periodic schedule's last tick.
type tick struct {
	Name string
	Last time.Time
}

func (h *Handler) periodic(w http.ResponseWriter, r *http.Request) error {
	ticks, err := h.q.PeriodicTicks(r.Context())
	if err != nil {
		return err
	}
	out := make([]tick, 0, len(ticks))
	for name, last := range ticks {
		out = append(out, tick{name, last})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	h.render(w, r, http.StatusOK, "periodic", "Periodic", out)
	return nil
}

func (h *Handler) health(w http.ResponseWriter, r *http.Request) error {
	checks := doctor.Run(r.Context(), h.q)
	h.render(w, r, http.StatusOK, "health", "Health", checks)
	return nil
}
