package dashboard

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/computeplatform/compute"
)

// liveEvent is what the feed sends per batch of journal events that pass
// its filter: how many, and the last one's job and status. The page's
// script reacts by fetching itself again and swapping its live parts.
type liveEvent struct {
	Events int            `json:"events"`
	JobID  string         `json:"job_id"`
	Status compute.Status `json:"status"`
}

// live is the server-sent event feed of the journal, from the cursor the
// page was rendered at (after=, or the Last-Event-ID the browser sends when
// it reconnects), optionally narrowed to one job (job=) or queue (queue=).
// Follow runs in the request's own goroutine and ends with its context:
// when the browser leaves the page, or the server shuts down. At most
// maxLive feeds run at once; more are refused with 503.
func (h *Handler) live(w http.ResponseWriter, r *http.Request) error {
	if int(h.feeds.Add(1)) > maxLive {
		h.feeds.Add(-1)
		// A browser's EventSource does not retry after a 503: the page
		// stays as it is, without live updates, until reloaded.
		w.Header().Set("Retry-After", "60")
		http.Error(w, fmt.Sprintf("the dashboard already serves %d live feeds; reload the page later", maxLive), http.StatusServiceUnavailable)
		return nil
	}
	defer h.feeds.Add(-1)
	from := r.Header.Get("Last-Event-ID")
	if from == "" {
		from = r.FormValue("after")
	}
	after, err := compute.ParseCursor(from)
	if err != nil {
		return &errBadRequest{"after: " + err.Error()}
	}
	var job compute.JobID
	if s := r.FormValue("job"); s != "" {
		if job, err = compute.ParseJobID(s); err != nil {
			return &errBadRequest{"job: " + err.Error()}
		}
	}
	queue := r.FormValue("queue")
	flusher, ok := w.(http.Flusher)
	if !ok {
		return errors.New("the server cannot stream responses (no http.Flusher)")
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return nil // the headers alone: a HEAD never opens a feed
	}
	// A comment first, so the browser sees the stream open.
	if _, err := fmt.Fprint(w, ": live\n\n"); err != nil {
		return nil
	}
	flusher.Flush()
	err = h.q.Follow(r.Context(), after, func(events []compute.Event) error {
		var ev liveEvent
		for _, e := range events {
			if job != (compute.JobID{}) && e.JobID != job || queue != "" && e.Queue != queue {
				continue
			}
			ev.Events++
			ev.JobID, ev.Status = e.JobID.String(), e.Status
		}
		last := events[len(events)-1].Cursor
		if ev.Events == 0 {
			// Still move the browser's resume point past these.
			_, err := fmt.Fprintf(w, "id: %s\n\n", last)
			return err
		}
		data, err := json.Marshal(ev)
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintf(w, "id: %s\ndata: %s\n\n", last, data); err != nil {
			return err
		}
		flusher.Flush()
		return nil
	})
	// A closed Queue ends the feed as the client's leaving does: the
	// program is stopping, nothing failed.
	if err != nil && r.Context().Err() == nil && !errors.Is(err, compute.ErrClosed) {
		h.log.Warn("dashboard: the live feed stopped", "err", err)
	}
	return nil // the stream has started: nothing more can be sent
}

// maxLive caps the live feeds one Handler serves at once. Each feed reads
// the journal after every change of any job, so without a cap a few
// scripted clients could keep the pool's connections busy and slow the
// workers that share it. A browser tab holds one feed.
var maxLive = 100
