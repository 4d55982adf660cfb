// Package dashboard is a web dashboard for a compute job queue: an
// http.Handler that a program mounts next to its own routes, and that the
// compute command's "ui" serves.
//
// Pages: Overview (every queue with counts per status, rules, workers, the
// age of its oldest runnable job, and a chart of jobs finished per minute
// over the last hour, read from the journal), Jobs (filters, newest first,
// bulk cancel, retry and delete), Job (config, files, attempts and their
// errors, the journal timeline, Explain's reasons, actions), Queue (rules,
// pause and resume, settings), Workers, Periodic and Health (the compute
// command's doctor checks). Counts and a job's status follow the journal
// live, through server-sent events.
//
// Mount it under a path prefix by giving the same prefix as BasePath; the
// handler's routes hold it, so no http.StripPrefix is needed:
//
//	mux.Handle("/admin/queue/", dashboard.New(q, dashboard.Config{BasePath: "/admin/queue"}))
//
// Every page is rendered on the server with html/template, so every value
// from a job is escaped. Every change is a POST carrying a token bound to
// this handler (an HMAC over a time stamp, valid for a day) and is refused
// when the browser says it comes from another origin. ReadOnly refuses
// every change, and Authorize can refuse any request, both with 403.
//
// A page or a single action that the database does not answer within 30 s
// fails with 504 (503 when the database refuses connections). A live feed
// lasts as long as its request: it ends when the browser leaves, when the
// request's context ends or when the Queue closes. http.Server.Shutdown
// waits for open requests, so give the server a BaseContext that ends
// when shutting down begins, or Shutdown waits for every open tab. One
// Handler serves at most 100 live feeds at once and refuses more with 503.
package dashboard

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/computeplatform/compute"
)

// Action names what a request wants to do, for [Config.Authorize].
type Action string

// The actions of the dashboard. ActionView covers every page and the live
// feed; the others change jobs or queues.
const (
	ActionView     Action = "view"
	ActionCancel   Action = "cancel"
	ActionRetry    Action = "retry"
	ActionDelete   Action = "delete"
	ActionPause    Action = "pause"
	ActionResume   Action = "resume"
	ActionSettings Action = "settings" // edit a queue's rules
)

// changes reports whether the action changes the database.
func (a Action) changes() bool { return a != ActionView }

// Config holds the dashboard's options. The zero value serves every page
// and action at the root path, to anyone who can reach it: put it behind
// your own authentication, or set Authorize.
type Config struct {
	// ReadOnly refuses every change with 403 and hides the buttons.
	ReadOnly bool
	// Authorize, when set, is called before every request with the
	// action it asks for; an error refuses it with 403 and its text.
	// Use it for per-user access (for example, view for everyone,
	// changes for operators).
	Authorize func(r *http.Request, action Action) error
	// BasePath is the path prefix the handler is mounted under, such as
	// "/admin/queue" (no trailing slash; "" for the root). The handler
	// strips it from requests and puts it in front of every link.
	BasePath string
	// Logger receives errors the pages meet; nil means slog.Default().
	Logger *slog.Logger
	// Secret is the key that signs the forms' tokens and the notes shown
	// after a change, at least 32 bytes. Give every replica of a program
	// behind one address the same Secret (and keep it out of the page
	// and the logs, as a password): with nil each Handler draws a random
	// key, so a form rendered by one replica, or before a restart, is
	// refused by another with "the form's token is missing or stale".
	Secret []byte
}

// Handler serves the dashboard. Make one with [New].
type Handler struct {
	q      *compute.Queue
	cfg    Config
	log    *slog.Logger
	mux    *http.ServeMux
	secret []byte // signs the forms' tokens
	origin *http.CrossOriginProtection
	pages  *pages
	feeds  atomic.Int32 // live feeds running; each live request adds and removes itself
}

// New returns the dashboard of q. It panics on a programming error: a
// BasePath that does not start with "/", ends with one or holds a
// character that a route pattern or a link would read otherwise ({, }, ?,
// #, %, space), or a Secret shorter than 32 bytes.
func New(q *compute.Queue, cfg Config) *Handler {
	if cfg.BasePath != "" && (!strings.HasPrefix(cfg.BasePath, "/") || strings.HasSuffix(cfg.BasePath, "/") ||
		strings.ContainsAny(cfg.BasePath, "{}?#% \t")) {
		panic(fmt.Sprintf("dashboard: BasePath %q must start with / and not end with one, and hold no {}?#%% or space", cfg.BasePath))
	}
	if cfg.Secret != nil && len(cfg.Secret) < 32 {
		panic(fmt.Sprintf("dashboard: Secret has %d bytes; give at least 32 random bytes, or nil for a random key", len(cfg.Secret)))
	}
	h := &Handler{q: q, cfg: cfg, log: cfg.Logger, mux: http.NewServeMux(), secret: bytes.Clone(cfg.Secret),
		origin: http.NewCrossOriginProtection()}
	if h.log == nil {
		h.log = slog.Default()
	}
	if h.secret == nil {
		h.secret = make([]byte, 32)
		_, _ = rand.Read(h.secret) // never fails (crypto/rand)
	}
	h.pages = loadPages()
	h.routes()
	return h
}

// ServeHTTP serves a request under BasePath: it sets the headers every
// answer carries and hands the request to the routes, which hold BasePath
// themselves, so that the redirects of http.ServeMux (to a clean path,
// to /static/) keep it and a path segment may hold an escaped '/'.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.cfg.BasePath != "" && r.URL.Path == h.cfg.BasePath {
		http.Redirect(w, r, h.cfg.BasePath+"/", http.StatusFound)
		return
	}
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Frame-Options", "DENY")
	w.Header().Set("Referrer-Policy", "same-origin")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'")
	h.mux.ServeHTTP(w, r)
}

// routes registers every page and action under BasePath.
func (h *Handler) routes() {
	route := func(method, path string, action Action, fn func(http.ResponseWriter, *http.Request) error) {
		h.mux.Handle(method+" "+h.link(path), h.guard(action, fn))
	}
	view := func(path string, fn func(http.ResponseWriter, *http.Request) error) {
		route("GET", path, ActionView, timed(fn))
	}
	view("/{$}", h.overview)
	view("/jobs", h.jobs)
	view("/jobs/{id}", h.job)
	view("/queues/{name}", h.queue)
	view("/workers", h.workers)
	view("/periodic", h.periodic)
	view("/health", h.health)
	route("GET", "/live", ActionView, h.live) // a stream: no pageTimeout
	view("/static/", h.static)

	route("POST", "/jobs/{id}/cancel", ActionCancel, timed(h.jobAction(ActionCancel)))
	route("POST", "/jobs/{id}/retry", ActionRetry, timed(h.jobAction(ActionRetry)))
	route("POST", "/jobs/{id}/delete", ActionDelete, timed(h.jobAction(ActionDelete)))
	for _, a := range []Action{ActionCancel, ActionRetry, ActionDelete} {
		// Not timed: a bulk action on every matching job runs for as long
		// as it takes, in batches that each commit, until the client
		// leaves; bulk bounds its other statements itself.
		route("POST", "/bulk/"+string(a), a, h.bulk(a))
	}
	route("POST", "/queues/{name}/pause", ActionPause, timed(h.pause(true)))
	route("POST", "/queues/{name}/resume", ActionResume, timed(h.pause(false)))
	route("POST", "/queues/{name}/settings", ActionSettings, timed(h.settings))
}

// pageTimeout bounds how long a page or an action may take, so a database
// that does not answer (a dropped network path, a lock) gives an error page
// instead of a request that hangs until the browser gives up.
var pageTimeout = 30 * time.Second

// timed runs fn with a context that ends after pageTimeout.
func timed(fn func(http.ResponseWriter, *http.Request) error) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
		defer cancel()
		return fn(w, r.WithContext(ctx))
	}
}

// errForbidden is a refused request; its text is shown to the user.
type errForbidden struct{ why string }

func (e *errForbidden) Error() string { return e.why }

// errBadRequest is a wrong form value or id; its text is shown.
type errBadRequest struct{ why string }

func (e *errBadRequest) Error() string { return e.why }

// guard checks a request before fn runs: for changes the origin, the
// token and read-only mode; for every request Authorize. It renders fn's
// error as a page with the fitting status.
func (h *Handler) guard(action Action, fn func(http.ResponseWriter, *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		err := h.allow(r, action)
		if err == nil {
			err = fn(w, r)
		}
		if err != nil {
			h.fail(w, r, err)
		}
	})
}

// allow decides whether a request may run.
func (h *Handler) allow(r *http.Request, action Action) error {
	if action.changes() {
		if h.cfg.ReadOnly {
			return &errForbidden{"the dashboard is read-only"}
		}
		if err := h.origin.Check(r); err != nil {
			return &errForbidden{"refused a cross-origin request: " + err.Error()}
		}
		if !h.validToken(r.PostFormValue("csrf"), time.Now()) {
			return &errForbidden{"the form's token is missing or stale: reload the page and try again"}
		}
	}
	if h.cfg.Authorize != nil {
		if err := h.cfg.Authorize(r, action); err != nil {
			return &errForbidden{"not allowed to " + string(action) + ": " + err.Error()}
		}
	}
	return nil
}

// fail renders an error page: 403, 400, 404, 503 (the database is
// unavailable), 504 (it did not answer within pageTimeout) or 500.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	var forbidden *errForbidden
	var bad *errBadRequest
	code := http.StatusInternalServerError
	switch {
	case errors.As(err, &forbidden):
		code = http.StatusForbidden
	case errors.As(err, &bad), errors.Is(err, compute.ErrInvalid), errors.Is(err, compute.ErrWrongStatus):
		code = http.StatusBadRequest
	case errors.Is(err, compute.ErrNotFound):
		code = http.StatusNotFound
	case r.Context().Err() != nil:
		return // the client went away
	case errors.Is(err, context.DeadlineExceeded):
		code = http.StatusGatewayTimeout
		err = fmt.Errorf("the database did not answer within %s: %w", pageTimeout, err)
	case errors.Is(err, compute.ErrUnavailable):
		code = http.StatusServiceUnavailable
	}
	if code >= 500 {
		h.log.Error("dashboard: a page failed", "path", r.URL.Path, "err", err)
	}
	h.render(w, r, code, "error", "Error", map[string]any{"Code": code, "Status": http.StatusText(code), "Message": err.Error()})
}

// tokenTTL is how long a form's token stays valid.
const tokenTTL = 24 * time.Hour

// token returns a form token for now: the time in seconds and its HMAC
// under the handler's secret. Another site cannot read it, so it cannot
// forge a form that carries one.
func (h *Handler) token(now time.Time) string {
	ts := strconv.FormatInt(now.Unix(), 10)
	return ts + "." + base64.RawURLEncoding.EncodeToString(h.sign("form", ts))
}

// sign is the HMAC of s under the handler's secret for one purpose ("form"
// for tokens, "note" for seeOther's notes), so that neither can stand in
// for the other.
func (h *Handler) sign(purpose, s string) []byte {
	m := hmac.New(sha256.New, h.secret)
	m.Write([]byte("compute-dashboard-" + purpose + "\x00" + s))
	return m.Sum(nil)
}

// validToken checks a token's HMAC and age.
func (h *Handler) validToken(tok string, now time.Time) bool {
	ts, mac, ok := strings.Cut(tok, ".")
	if !ok {
		return false
	}
	sum, err := base64.RawURLEncoding.DecodeString(mac)
	if err != nil || !hmac.Equal(sum, h.sign("form", ts)) {
		return false
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return false
	}
	age := now.Sub(time.Unix(sec, 0))
	return age > -time.Minute && age < tokenTTL
}

// link is a path inside the dashboard, with BasePath in front.
func (h *Handler) link(path string) string { return h.cfg.BasePath + path }

// seeOther sends the browser to a dashboard page after a change, with a
// note of what was done. The note travels in the query (msg=) with its
// HMAC (sig=), so a link made elsewhere cannot put its own words on the
// dashboard's page.
func (h *Handler) seeOther(w http.ResponseWriter, r *http.Request, path, msg string) {
	page, query, _ := strings.Cut(path, "?")
	v, err := url.ParseQuery(query)
	if err != nil {
		v = url.Values{} // our own paths always parse
	}
	v.Set("msg", msg)
	v.Set("sig", base64.RawURLEncoding.EncodeToString(h.sign("note", msg)))
	http.Redirect(w, r, h.link(page)+"?"+v.Encode(), http.StatusSeeOther)
}

// message is the note seeOther sent, or "" when it is missing or was not
// signed by this handler.
func (h *Handler) message(r *http.Request) string {
	msg := r.FormValue("msg")
	sig, err := base64.RawURLEncoding.DecodeString(r.FormValue("sig"))
	if msg == "" || err != nil || !hmac.Equal(sig, h.sign("note", msg)) {
		return ""
	}
	return msg
}
