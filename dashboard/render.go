package dashboard

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/computeplatform/compute"
)

// assets holds the page templates and the static files (CSS, JS, icon).
//
//go:embed templates/*.html static/*
var assets embed.FS

// pages holds one parsed template set per page: the layout plus the page.
type pages struct {
	byName map[string]*template.Template
}

// loadPages parses the embedded templates; a broken template is a
// programming error, caught by every test.
func loadPages() *pages {
	layout := template.Must(template.New("layout.html").Funcs(funcs).ParseFS(assets, "templates/layout.html"))
	names, err := fs.Glob(assets, "templates/*.html")
	if err != nil {
		panic(err)
	}
	p := &pages{byName: map[string]*template.Template{}}
	for _, name := range names {
		base := strings.TrimSuffix(strings.TrimPrefix(name, "templates/"), ".html")
		if base == "layout" {
			continue
		}
		p.byName[base] = template.Must(template.Must(layout.Clone()).ParseFS(assets, name))
	}
	return p
}

// view is what every page's template gets.
type view struct {
	Title    string
	Nav      string // the nav entry to highlight
	Base     string // BasePath, for links
	Token    string // the forms' token
	ReadOnly bool
	// Live is the query string of the live feed (after=cursor and
	// filters), or "" for a page that does not follow the journal.
	Live string
	Now  time.Time
	Data any
}

// render writes a page. Templates run into a buffer first, so a failing
// template never sends half a page.
func (h *Handler) render(w http.ResponseWriter, r *http.Request, code int, page, title string, data any) {
	v := view{Title: title, Nav: page, Base: h.cfg.BasePath, Token: h.token(time.Now()), ReadOnly: h.cfg.ReadOnly,
		Now: time.Now(), Data: data}
	if live, ok := data.(interface{ liveQuery() string }); ok {
		v.Live = live.liveQuery()
	}
	var buf bytes.Buffer
	if err := h.pages.byName[page].ExecuteTemplate(&buf, "layout.html", v); err != nil {
		h.log.Error("dashboard: rendering a page failed", "page", page, "err", err)
		http.Error(w, "rendering the page failed: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(buf.Bytes())
}

// static serves the embedded CSS, JS and icon, and nothing else: any other
// name, a directory included, is not found. The pages link them as
// /static/<assetVersion>/<name>, and such a request is cached for good: a
// new release changes the version, and the path (not a query string a
// proxy might leave out of its cache key) with it, so a browser never runs
// last release's script against this release's pages. /static/<name>, or
// another version, is served too (a page of the last release may still ask
// for it), but must be asked for again each time; the ETag makes that a
// 304.
func (h *Handler) static(w http.ResponseWriter, r *http.Request) error {
	rest := strings.TrimPrefix(r.URL.Path, h.cfg.BasePath+"/static/")
	version, name, versioned := strings.Cut(rest, "/")
	if !versioned {
		name = rest
	}
	if info, err := fs.Stat(assets, "static/"+name); err != nil || info.IsDir() {
		http.NotFound(w, r)
		return nil
	}
	if versioned && version == assetVersion {
		w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	} else {
		w.Header().Set("Cache-Control", "no-cache")
	}
	w.Header().Set("ETag", `"`+assetVersion+`"`)
	http.ServeFileFS(w, r, assets, "static/"+name)
	return nil
}

// shortID is a job id as the lists show it: its random end, since its
// start is a time stamp, the same for jobs created together.
func shortID(id compute.JobID) string { s := id.String(); return "…" + s[len(s)-12:] }

// assetVersion names this build's static files: the start of a hash of
// their contents, which the pages put in the files' links.
var assetVersion = func() string {
	sum := sha256.New()
	files, err := fs.Glob(assets, "static/*")
	if err != nil {
		panic(err)
	}
	for _, name := range files {
		b, err := fs.ReadFile(assets, name)
		if err != nil {
			panic(err)
		}
		fmt.Fprintf(sum, "%s %d\n", name, len(b))
		sum.Write(b)
	}
	return hex.EncodeToString(sum.Sum(nil))[:12]
}()

// funcs are the templates' helpers.
var funcs = template.FuncMap{
	"assetVersion": func() string { return assetVersion },
	"statuses": func() []compute.Status {
		return []compute.Status{compute.StatusQueued, compute.StatusInProgress, compute.StatusComplete,
			compute.StatusFailed, compute.StatusExpired}
	},
	"count":   formatCount,
	"ago":     ago,
	"until":   until,
	"dur":     formatDuration,
	"time":    formatTime,
	"isoTime": func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"short":   shortID,
	"pretty":  prettyConfig,
	// seg escapes a value that fills one segment of a link's path (a
	// queue name written by plain SQL may hold '/', '?' or '#'):
	// html/template leaves those alone in a path.
	"seg":  url.PathEscape,
	"clip": clip,
	"firstLine": func(s string) string {
		first, _, _ := strings.Cut(s, "\n")
		return first
	},
	"multiline": func(s string) bool { return strings.Contains(strings.TrimSpace(s), "\n") },
	"get":       func(m map[compute.Status]int64, s compute.Status) int64 { return m[s] },
	"add":       func(a, b int) int { return a + b },
	"secs": func(d time.Duration) string {
		if d == 0 {
			return ""
		}
		return d.String()
	},
	"intOrEmpty": func(n int) string {
		if n == 0 {
			return ""
		}
		return strconv.Itoa(n)
	},
}

// formatCount writes 1234567 as 1,234,567.
func formatCount(n int64) string {
	s := strconv.FormatInt(n, 10)
	if n < 0 {
		return "-" + formatCount(-n)
	}
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// formatDuration rounds a duration for people: 3.2s, 4m10s, 2h5m, 3d4h.
func formatDuration(d time.Duration) string {
	switch {
	case d <= 0:
		return "0s"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	case d < time.Hour:
		return d.Round(time.Second).String()
	case d < 48*time.Hour:
		return strings.TrimSuffix(d.Round(time.Minute).String(), "0s")
	}
	days := int(d / (24 * time.Hour))
	return fmt.Sprintf("%dd%dh", days, int((d%(24*time.Hour))/time.Hour))
}

// ago says how long before now t was; "" for the zero time.
func ago(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := time.Since(t)
	if d < 0 {
		return "in " + formatDuration(-d)
	}
	return formatDuration(d) + " ago"
}

// until says how far t is from now, in either direction.
func until(t time.Time) string { return ago(t) }

// formatTime writes a time in UTC to the second; "" for the zero time.
func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

// prettyConfig indents a JSON config; other text comes back as it is.
func prettyConfig(s string) string {
	if !json.Valid([]byte(s)) {
		return s
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, []byte(s), "", "  "); err != nil {
		return s
	}
	return buf.String()
}

// listClip is how much of a config a list shows: the start, for a row
// that CSS cuts to one line anyway, rather than up to 50 configs of a
// megabyte each (the default WithMaxConfigSize).
const listClip = 200

// clip cuts s to at most listClip bytes, on a character boundary, with an
// ellipsis when it cut.
func clip(s string) string {
	if len(s) <= listClip {
		return s
	}
	cut := listClip
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
