package dashboard_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/dashboard"
	"github.com/jackc/pgx/v5"
)

// TestQueueNamesAreEscapedInPaths: a queue name written by plain SQL may
// hold '?', '/' or '#'; in a link or a form's action it must stay one path
// segment, or the Pause button of a crafted queue posts somewhere else.
func TestQueueNamesAreEscapedInPaths(t *testing.T) {
	q := newQueue(t)
	ids, err := q.EnqueueMany(t.Context(), []compute.Job{{Queue: "mail"}, {Queue: "mail"}, {Queue: "mail"}})
	if err != nil {
		t.Fatal(err)
	}
	// Unescaped, crafted's links would lead to /jobs/delete, and odd's to
	// the page of queue "a".
	const crafted, odd = "x/../../jobs/delete?#y", "a/b?c#d"
	for i, name := range []string{crafted, odd} {
		if _, err := q.Pool().Exec(t.Context(), `UPDATE compute.jobs SET queue = $1 WHERE job_id = $2`, name, ids[i][:]); err != nil {
			t.Fatal(err)
		}
	}
	base := serve(t, q, dashboard.Config{BasePath: "/admin"})
	c := client(t)
	both := []string{crafted, odd}
	for path, names := range map[string][]string{"/": both, "/jobs": both, "/jobs/" + ids[0].String(): {crafted}, "/jobs/" + ids[1].String(): {odd}} {
		code, body := get(t, c, base+path)
		if code != http.StatusOK {
			t.Fatalf("GET %s: %d\n%s", path, code, body)
		}
		if strings.Contains(body, "/queues/x/") || strings.Contains(body, "/queues/a/") {
			t.Errorf("GET %s: a queue name is not escaped in a path", path)
		}
		for _, name := range names {
			if !strings.Contains(body, `href="/admin/queues/`+url.PathEscape(name)+`"`) {
				t.Errorf("GET %s: no link to queue %q's own page", path, name)
			}
		}
	}
	// The library refuses such a name in a filter: the queue's page says so.
	code, body := get(t, c, base+"/queues/"+url.PathEscape(odd))
	if code != http.StatusBadRequest || !strings.Contains(body, "invalid queue name") {
		t.Errorf("the odd queue's page: %d, want 400 for its name\n%s", code, body)
	}
}

// TestBulkAllIsHiddenWhenTheListShowsOneJob: with a job id in the filter
// the page lists that job alone, so "all matching" (which would act on the
// queue, status and key without the id) must not be offered.
func TestBulkAllIsHiddenWhenTheListShowsOneJob(t *testing.T) {
	q := newQueue(t)
	queued, _, _ := seed(t, q)
	base := serve(t, q, dashboard.Config{})
	_, body := get(t, client(t), base+"/jobs?queue=mail&id="+queued.String())
	if !strings.Contains(body, queued.String()) {
		t.Fatal("the job is not listed")
	}
	if strings.Contains(body, `name="all"`) {
		t.Error("the page of one job offers to act on every job of its queue")
	}
}

// TestJobListClipsBigConfigs: the list shows the start of each config, not
// up to 50 configs of a megabyte each; the job's own page shows it whole.
func TestJobListClipsBigConfigs(t *testing.T) {
	q := newQueue(t)
	big := `{"data":"` + strings.Repeat("a", 200_000) + `"}`
	id, err := q.Enqueue(t.Context(), compute.Job{Queue: "big", Config: big})
	if err != nil {
		t.Fatal(err)
	}
	base := serve(t, q, dashboard.Config{})
	c := client(t)
	for _, path := range []string{"/jobs", "/queues/big"} {
		_, body := get(t, c, base+path)
		if !strings.Contains(body, id.String()) {
			t.Fatalf("GET %s: the job is not listed", path)
		}
		if len(body) > 50_000 {
			t.Errorf("GET %s: %d bytes for one job", path, len(body))
		}
	}
	if _, body := get(t, c, base+"/jobs/"+id.String()); !strings.Contains(body, strings.Repeat("a", 199_000)) || len(body) < len(big) {
		t.Error("the job's page does not show its whole config")
	}
}

// TestFlashMessagesComeOnlyFromTheDashboard: the note shown after an
// action travels in the redirect's query; a link with a made-up one must
// not put its text on the dashboard's page.
func TestFlashMessagesComeOnlyFromTheDashboard(t *testing.T) {
	q := newQueue(t)
	queued, _, _ := seed(t, q)
	base := serve(t, q, dashboard.Config{})
	c := client(t)
	const lie = "Your session expired: sign in again at evil.example"
	for _, path := range []string{"/jobs?msg=", "/jobs/" + queued.String() + "?msg=", "/queues/mail?msg="} {
		if _, body := get(t, c, base+path+url.QueryEscape(lie)); strings.Contains(body, "evil.example") {
			t.Errorf("GET %s shows a message from the link", path)
		}
	}
	_, page := get(t, c, base+"/jobs/"+queued.String())
	loc := postRedirect(t, c, base+"/jobs/"+queued.String()+"/cancel", url.Values{"csrf": {token(t, page)}})
	if _, body := get(t, c, loc.String()); !strings.Contains(body, "Cancelled the job") {
		t.Errorf("after cancel the page at %s does not say so", loc)
	}
}

// TestLiveFeedsAreCapped: each feed reads the journal at every change, so
// their number is bounded; one more than the cap is refused with 503, and
// a freed slot can be taken again.
func TestLiveFeedsAreCapped(t *testing.T) {
	defer dashboard.SetMaxLive(3)()
	q := newQueue(t)
	base := serve(t, q, dashboard.Config{})
	open := func(ctx context.Context) *http.Response {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/live", nil)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	ctx, cancel := context.WithCancel(t.Context())
	for range 3 {
		res := open(ctx)
		defer res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Fatalf("a feed under the cap: %d", res.StatusCode)
		}
	}
	res := open(t.Context())
	res.Body.Close()
	if res.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("a feed over the cap: %d, want 503", res.StatusCode)
	}
	cancel()
	waitLiveHandlersGone(t)
	res = open(t.Context())
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("a feed after the others left: %d", res.StatusCode)
	}
}

// TestBasePathKeptInCleaningRedirects: a handler that is the server's
// whole handler (no outer ServeMux cleaning the path) sends an unclean
// path to its clean form under BasePath, not to the site's root.
func TestBasePathKeptInCleaningRedirects(t *testing.T) {
	q := newQueue(t)
	srv := httptest.NewServer(dashboard.New(q, dashboard.Config{BasePath: "/admin"}))
	t.Cleanup(srv.Close)
	c := client(t)
	for path, want := range map[string]string{"/admin//jobs": "/admin/jobs", "/admin/static": "/admin/static/", "/admin/x/../workers": "/admin/workers"} {
		req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
		req.URL.Opaque = path // sent as it is, dots and all
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if got := res.Header.Get("Location"); res.StatusCode/100 != 3 || got != want {
			t.Errorf("GET %s: %d to %q, want a redirect to %q", path, res.StatusCode, got, want)
		}
	}
	// Paths that only start like BasePath are not the dashboard's.
	for _, path := range []string{"/adminX/jobs", "/adminX", "/jobs", "/admi"} {
		if code, _ := get(t, c, srv.URL+path); code != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", path, code)
		}
	}
}

// dbProxy forwards connections to a PostgreSQL server until it is told to
// go down, then answers none: new connections are held open in silence, as
// a server behind a dropped network path does, and open ones are cut.
type dbProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	down   bool
	conns  []net.Conn
}

func newDBProxy(t *testing.T, target string) *dbProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &dbProxy{ln: ln, target: target}
	t.Cleanup(func() {
		ln.Close()
		p.setDown()
	})
	go p.serve()
	return p
}

func (p *dbProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.conns = append(p.conns, c)
		down := p.down
		p.mu.Unlock()
		if down {
			continue // held, never answered
		}
		go func() {
			s, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				return
			}
			p.mu.Lock()
			p.conns = append(p.conns, s)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(s, c); s.Close() }()
			_, _ = io.Copy(c, s)
			c.Close()
		}()
	}
}

// setDown cuts every open connection; later ones hang.
func (p *dbProxy) setDown() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// TestDatabaseDownFailsPagesClearly: with the database unreachable (its
// connections cut, new ones unanswered) every page answers within its
// timeout with an error page, and neither the page nor the log holds the
// connection's password.
func TestDatabaseDownFailsPagesClearly(t *testing.T) {
	defer dashboard.SetPageTimeout(time.Second)()
	q := newQueue(t)
	seed(t, q)
	cfg, err := pgx.ParseConfig(q.Pool().Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	p := newDBProxy(t, net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))))
	const password = "s3cret-pw-xyzzy"
	u := &url.URL{Scheme: "postgres", User: url.UserPassword(cfg.User, password), Host: p.ln.Addr().String(),
		Path: "/" + cfg.Database, RawQuery: "sslmode=disable&pool_max_conns=2"}
	viaProxy, err := compute.Open(t.Context(), u.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(viaProxy.Close)
	var logs bytes.Buffer
	var logMu sync.Mutex
	logger := slog.New(slog.NewTextHandler(&lockedWriter{w: &logs, mu: &logMu}, nil))
	base := serve(t, viaProxy, dashboard.Config{Logger: logger})
	c := client(t)
	c.Timeout = 20 * time.Second
	code, jobsPage := get(t, c, base+"/jobs?queue=mail")
	if code != http.StatusOK {
		t.Fatalf("jobs with the database up: %d", code)
	}
	tok := token(t, jobsPage)
	p.setDown()
	// A bulk action's confirmation counts the matching jobs: bounded like
	// a page, though the action itself is not.
	start := time.Now()
	if code, body := post(t, c, base+"/bulk/cancel", url.Values{"csrf": {tok}, "queue": {"mail"}, "all": {"1"}}, nil); code != http.StatusServiceUnavailable && code != http.StatusGatewayTimeout {
		t.Errorf("bulk cancel's confirmation with the database down: %d, want 503 or 504:\n%s", code, body)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("bulk cancel's confirmation with the database down took %s", took)
	}
	for _, path := range []string{"/", "/jobs", "/queues/mail", "/workers", "/periodic"} {
		start := time.Now()
		code, body := get(t, c, base+path)
		// 504 when the page's time ran out, 503 when the library said
		// the database is unavailable; never a bare 500.
		if code != http.StatusServiceUnavailable && code != http.StatusGatewayTimeout {
			t.Errorf("GET %s with the database down: %d, want 503 or 504", path, code)
		}
		if took := time.Since(start); took > 10*time.Second {
			t.Errorf("GET %s with the database down took %s", path, took)
		}
		if !strings.Contains(body, "error-message") {
			t.Errorf("GET %s: not the error page:\n%s", path, body)
		}
		if strings.Contains(body, password) {
			t.Errorf("GET %s: the page shows the password", path)
		}
	}
	logMu.Lock()
	defer logMu.Unlock()
	if strings.Contains(logs.String(), password) {
		t.Errorf("the log holds the password:\n%s", logs.String())
	}
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// TestReplicasWithOneSecretAcceptEachOthersForms: behind a load balancer a
// form rendered by one replica is often posted to another. With the same
// Secret they accept each other's tokens; without one each replica draws
// its own key and refuses the other's forms.
func TestReplicasWithOneSecretAcceptEachOthersForms(t *testing.T) {
	q := newQueue(t)
	seed(t, q)
	c := client(t)
	secret := bytes.Repeat([]byte{7}, 32)
	for _, tc := range []struct {
		secret []byte
		want   int
	}{{secret, http.StatusSeeOther}, {nil, http.StatusForbidden}} {
		a := serve(t, q, dashboard.Config{Secret: tc.secret})
		b := serve(t, q, dashboard.Config{Secret: tc.secret})
		_, page := get(t, c, a+"/queues/mail")
		if code, body := post(t, c, b+"/queues/mail/pause", url.Values{"csrf": {token(t, page)}}, nil); code != tc.want {
			t.Errorf("secret %v: a form of one replica posted to another: %d, want %d\n%s", tc.secret != nil, code, tc.want, body)
		}
	}
}

// TestLiveFeedEndsWhenTheQueueCloses: closing the Queue ends every open
// feed's stream (so an http.Server can shut down after it) and logs no
// warning for it: the feed did not fail, the program is stopping.
func TestLiveFeedEndsWhenTheQueueCloses(t *testing.T) {
	q := newQueue(t)
	var logs bytes.Buffer
	var logMu sync.Mutex
	logger := slog.New(slog.NewTextHandler(&lockedWriter{w: &logs, mu: &logMu}, nil))
	base := serve(t, q, dashboard.Config{Logger: logger})
	res, err := http.Get(base + "/live")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("feed: %d", res.StatusCode)
	}
	q.Close()
	ended := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, res.Body); ended <- err }()
	select {
	case err := <-ended:
		if err != nil {
			t.Fatalf("the stream broke instead of ending: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the feed still streams 10 s after Queue.Close")
	}
	waitLiveHandlersGone(t)
	logMu.Lock()
	defer logMu.Unlock()
	if strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("closing the Queue logged a warning:\n%s", logs.String())
	}
}

// TestBulkOnSelectedJobsReturnsToTheSameList: after acting on the jobs
// ticked in a list, the browser goes back to that list (its filter), not
// to the first selected job alone: the form's id fields are the
// selection, not the list's job id filter.
func TestBulkOnSelectedJobsReturnsToTheSameList(t *testing.T) {
	q := newQueue(t)
	ids, err := q.EnqueueMany(t.Context(), []compute.Job{{Queue: "bulk"}, {Queue: "bulk"}, {Queue: "bulk"}})
	if err != nil {
		t.Fatal(err)
	}
	base := serve(t, q, dashboard.Config{})
	c := client(t)
	_, page := get(t, c, base+"/jobs?queue=bulk")
	form := url.Values{"csrf": {token(t, page)}, "queue": {"bulk"}, "job": {ids[0].String(), ids[1].String()}}
	loc := postRedirect(t, c, base+"/bulk/cancel", form)
	if loc.Path != "/jobs" || loc.Query().Get("queue") != "bulk" || loc.Query().Has("id") {
		t.Errorf("after the bulk cancel the browser goes to %s, want the list of queue bulk", loc)
	}
	_, body := get(t, c, loc.String())
	if !strings.Contains(body, "Cancelled 2 of 2 selected job(s)") || !strings.Contains(body, ids[2].String()) {
		t.Errorf("the list after the bulk cancel does not say so or lacks the third job")
	}
}

// TestJobsListShowsNewestFirst: on a busy installation the jobs of the
// last minutes matter, so the list starts with the newest job and pages
// towards older ones, every job once, with the same created time on all.
func TestJobsListShowsNewestFirst(t *testing.T) {
	q := newQueue(t)
	jobs := make([]compute.Job, 70)
	for i := range jobs {
		jobs[i] = compute.Job{Queue: "pages"}
	}
	ids, err := q.EnqueueMany(t.Context(), jobs) // one statement: one created time
	if err != nil {
		t.Fatal(err)
	}
	base := serve(t, q, dashboard.Config{})
	c := client(t)
	rows := regexp.MustCompile(`name="job" value="([0-9a-f-]{36})"`)
	next := regexp.MustCompile(`href="([^"]+)">Older`)
	var seen []string
	path := "/jobs?queue=pages"
	for range 3 {
		_, body := get(t, c, base+path)
		for _, m := range rows.FindAllStringSubmatch(body, -1) {
			seen = append(seen, m[1])
		}
		m := next.FindStringSubmatch(body)
		if m == nil {
			break
		}
		path = strings.ReplaceAll(m[1], "&amp;", "&")
	}
	if len(seen) != len(ids) {
		t.Fatalf("the pages listed %d jobs, want %d", len(seen), len(ids))
	}
	for i, s := range seen {
		if want := ids[len(ids)-1-i].String(); s != want {
			t.Fatalf("row %d is %s, want %s (newest first)", i, s, want)
		}
	}
	_, body := get(t, c, base+"/queues/pages")
	if m := regexp.MustCompile(`/jobs/([0-9a-f-]{36})"`).FindStringSubmatch(body); m == nil || m[1] != ids[len(ids)-1].String() {
		t.Errorf("the queue's page does not start with its newest job")
	}
}

// TestStaleTokenIsRefused: a token is an HMAC over its time stamp, valid
// for a day; one signed with the right key but two days old, or dated an
// hour ahead, is refused.
func TestStaleTokenIsRefused(t *testing.T) {
	q := newQueue(t)
	seed(t, q)
	secret := bytes.Repeat([]byte{9}, 32)
	base := serve(t, q, dashboard.Config{Secret: secret})
	sign := func(at time.Time) string {
		ts := strconv.FormatInt(at.Unix(), 10)
		m := hmac.New(sha256.New, secret)
		m.Write([]byte("compute-dashboard-form\x00" + ts))
		return ts + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
	}
	c := client(t)
	for name, at := range map[string]time.Time{"two days old": time.Now().Add(-48 * time.Hour), "an hour ahead": time.Now().Add(time.Hour)} {
		if code, _ := post(t, c, base+"/queues/mail/pause", url.Values{"csrf": {sign(at)}}, nil); code != http.StatusForbidden {
			t.Errorf("a token %s: %d, want 403", name, code)
		}
	}
	if code, body := post(t, c, base+"/queues/mail/pause", url.Values{"csrf": {sign(time.Now().Add(-time.Hour))}}, nil); code != http.StatusSeeOther {
		t.Errorf("a token an hour old: %d, want 303\n%s", code, body)
	}
}

// TestJobPageTitlesDiffer: jobs created together share the start of their
// ids (a time stamp), so a job page's title, which names its browser tab,
// shows the random end of the id, as the lists do.
func TestJobPageTitlesDiffer(t *testing.T) {
	q := newQueue(t)
	ids, err := q.EnqueueMany(t.Context(), []compute.Job{{Queue: "t"}, {Queue: "t"}})
	if err != nil {
		t.Fatal(err)
	}
	base := serve(t, q, dashboard.Config{})
	title := regexp.MustCompile(`<title>([^<]*)</title>`)
	var titles []string
	for _, id := range ids {
		_, body := get(t, client(t), base+"/jobs/"+id.String())
		m := title.FindStringSubmatch(body)
		if m == nil {
			t.Fatal("no title")
		}
		titles = append(titles, m[1])
	}
	if titles[0] == titles[1] {
		t.Errorf("two jobs' pages have the same title %q", titles[0])
	}
}

// TestStaticFilesAndLiveFeedHEAD: only the static files are served, no
// directory listing and nothing else; the pages link each with this
// build's version in its path, which is cached for good, while a link
// without it or with another version must be asked for again (a browser
// never keeps last release's script for this release's pages), and the
// ETag answers that with a 304; a HEAD of the live feed answers with its
// headers and opens no feed.
func TestStaticFilesAndLiveFeedHEAD(t *testing.T) {
	q := newQueue(t)
	srv := httptest.NewServer(dashboard.New(q, dashboard.Config{BasePath: "/admin"}))
	t.Cleanup(srv.Close)
	c := client(t)
	_, page := get(t, c, srv.URL+"/admin/")
	m := regexp.MustCompile(`"/admin/static/([0-9a-f]{12})/app\.js"`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("the overview links no versioned app.js:\n%s", page)
	}
	version := m[1]
	for _, path := range []string{"/static/", "/static/" + version + "/", "/static/" + version + "/index.html",
		"/static/" + version + "/x/app.js", "/static/nothing.js"} {
		if code, body := get(t, c, srv.URL+"/admin"+path); code != http.StatusNotFound || strings.Contains(body, "app.js") {
			t.Errorf("GET %s: %d, want 404 and no listing; body %q", path, code, body)
		}
	}
	for path, want := range map[string]string{
		"/static/" + version + "/app.js": "public, max-age=31536000, immutable",
		"/static/app.js":                 "no-cache",
		"/static/0123456789ab/app.js":    "no-cache",
	} {
		res, err := c.Get(srv.URL + "/admin" + path)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if got := res.Header.Get("Cache-Control"); res.StatusCode != http.StatusOK || got != want {
			t.Errorf("GET %s: %d with Cache-Control %q, want 200 with %q", path, res.StatusCode, got, want)
		}
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/admin"+path, nil)
		req.Header.Set("If-None-Match", res.Header.Get("ETag"))
		again, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		again.Body.Close()
		if again.StatusCode != http.StatusNotModified {
			t.Errorf("GET %s with its ETag %q: %d, want 304", path, res.Header.Get("ETag"), again.StatusCode)
		}
	}

	// A HEAD answers with the stream's headers and opens no feed: with
	// room for one feed, a GET still gets it while the HEAD's connection
	// stays open. (Closing that connection ends a feed the HEAD opened, so
	// a failing run ends too.)
	defer dashboard.SetMaxLive(1)()
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "HEAD /admin/live HTTP/1.1\r\nHost: dashboard\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: http.MethodHead})
	if err != nil {
		t.Fatal(err)
	}
	if ct := res.Header.Get("Content-Type"); res.StatusCode != http.StatusOK || ct != "text/event-stream" {
		t.Errorf("HEAD /live: %d with Content-Type %q, want 200 text/event-stream", res.StatusCode, ct)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/admin/live", nil)
	res, err = (&http.Client{}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Errorf("GET /live after a HEAD, with room for one feed: %d, want 200 (the HEAD kept a feed open)", res.StatusCode)
	}
}
