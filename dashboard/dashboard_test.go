package dashboard_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/dashboard"
	"github.com/computeplatform/compute/internal/testdb"
)

// TestMain shares one PostgreSQL server between the tests; each test gets
// a database of its own.
func TestMain(m *testing.M) { os.Exit(testdb.Run(m)) }

// xss is a config that would run script if it reached the page unescaped.
const xss = `<img src=x onerror=alert(1)>`

// newQueue opens a Queue on a fresh migrated database.
func newQueue(t *testing.T) *compute.Queue {
	t.Helper()
	q, err := compute.Open(t.Context(), testdb.New(t), compute.WithMigrate())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(q.Close)
	return q
}

// serve mounts the dashboard under base on a test server and returns its
// address (with base).
func serve(t *testing.T, q *compute.Queue, cfg dashboard.Config) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(cfg.BasePath+"/", dashboard.New(q, cfg))
	if cfg.BasePath != "" {
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "the app's own page") })
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL + cfg.BasePath
}

// client follows no redirects, so a test sees the 303 after a change.
func client(t *testing.T) *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// get fetches a page and returns its status and body.
func get(t *testing.T, c *http.Client, u string) (int, string) {
	t.Helper()
	res, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, string(body)
}

// tokenIn finds a form token in a page.
var tokenIn = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func token(t *testing.T, page string) string {
	t.Helper()
	m := tokenIn.FindStringSubmatch(page)
	if m == nil {
		t.Fatal("no form token in the page")
	}
	return m[1]
}

// post sends a form as a browser on the same origin would, and returns the
// status and the body.
func post(t *testing.T, c *http.Client, u string, form url.Values, header map[string]string) (int, string) {
	t.Helper()
	res := sendForm(t, c, u, form, header)
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(body)
}

// sendForm posts a form as a browser on the same origin would; the caller
// closes the response's body.
func sendForm(t *testing.T, c *http.Client, u string, form url.Values, header map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, u, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// postRedirect posts a form and returns where the response redirects.
func postRedirect(t *testing.T, c *http.Client, u string, form url.Values) *url.URL {
	t.Helper()
	res := sendForm(t, c, u, form, nil)
	res.Body.Close()
	loc, err := res.Location()
	if err != nil {
		t.Fatalf("POST %s: %d, no redirect (%v)", u, res.StatusCode, err)
	}
	return loc
}

// seed enqueues a few jobs and fails one, so every page has something.
func seed(t *testing.T, q *compute.Queue) (queued, failed, hostile compute.JobID) {
	t.Helper()
	ctx := t.Context()
	ids, err := q.EnqueueMany(ctx, []compute.Job{
		{Queue: "mail", Config: `{"to":"a@example.com"}`, PartitionKey: "customer-1"},
		{Queue: "mail", Config: `{"to":"b@example.com"}`, MaxAttempts: 1},
		{Queue: "images", Config: xss},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Cancel(ctx, ids[1], "a test failure\ngoroutine 1 [running]:\nmain.main()"); err != nil {
		t.Fatal(err)
	}
	return ids[0], ids[1], ids[2]
}

// TestPagesRenderAndEscape: every page answers 200 under a base path, with
// links under it, and a job's hostile config appears escaped only.
func TestPagesRenderAndEscape(t *testing.T) {
	q := newQueue(t)
	queued, failed, hostile := seed(t, q)
	base := serve(t, q, dashboard.Config{BasePath: "/admin/queue"})
	c := client(t)
	for _, path := range []string{"/", "/jobs", "/jobs?status=failed", "/jobs?queue=mail&key=customer-1",
		"/jobs?id=" + queued.String(), "/jobs/" + queued.String(), "/jobs/" + failed.String(), "/jobs/" + hostile.String(),
		"/queues/mail", "/queues/never-used", "/workers", "/periodic", "/health", "/static/app.css", "/static/app.js"} {
		code, body := get(t, c, base+path)
		if code != http.StatusOK {
			t.Errorf("GET %s: %d\n%s", path, code, body)
			continue
		}
		if strings.HasSuffix(path, ".css") || strings.HasSuffix(path, ".js") {
			continue
		}
		if !strings.Contains(body, `href="/admin/queue/jobs"`) {
			t.Errorf("GET %s: the nav links are not under the base path", path)
		}
		if strings.Contains(body, xss) {
			t.Errorf("GET %s: the hostile config appears unescaped", path)
		}
	}
	_, body := get(t, c, base+"/")
	if !strings.Contains(body, `k-failed"></span>failed 1`) {
		t.Error("the overview's chart does not count the one failed job")
	}
	_, body = get(t, c, base+"/jobs/"+hostile.String())
	if !strings.Contains(body, "&lt;img src=x onerror=alert(1)&gt;") {
		t.Error("the job page does not show the hostile config as text")
	}
	_, body = get(t, c, base+"/jobs/"+failed.String())
	if !strings.Contains(body, "<details>") || !strings.Contains(body, "cancelled: a test failure") {
		t.Error("the failed job's multi-line error is not folded in <details>")
	}
	_, body = get(t, c, base+"/jobs?status=failed")
	if !strings.Contains(body, failed.String()) || strings.Contains(body, queued.String()) {
		t.Error("the status filter does not narrow the list")
	}
	if code, _ := get(t, c, base+"/jobs?status=bogus"); code != http.StatusBadRequest {
		t.Errorf("a wrong status: %d, want 400", code)
	}
	if code, _ := get(t, c, base+"/jobs/"+compute.JobID{1}.String()); code != http.StatusNotFound {
		t.Errorf("an unknown job: %d, want 404", code)
	}
	if code, body := get(t, c, strings.TrimSuffix(base, "/admin/queue")+"/other"); code != http.StatusOK || body != "the app's own page" {
		t.Errorf("the app's own route: %d %q", code, body)
	}
	res, err := c.Get(base)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode/100 != 3 || !strings.HasSuffix(res.Header.Get("Location"), "/admin/queue/") {
		t.Errorf("the base path without a slash: %d to %q, want a redirect to the slash", res.StatusCode, res.Header.Get("Location"))
	}
}

// TestChangesNeedTokenAndSameOrigin: a POST without the form's token, with
// a forged one, or from another origin is refused with 403 and changes
// nothing; the same POST with the token pauses the queue.
func TestChangesNeedTokenAndSameOrigin(t *testing.T) {
	q := newQueue(t)
	seed(t, q)
	base := serve(t, q, dashboard.Config{})
	c := client(t)
	_, page := get(t, c, base+"/queues/mail")
	tok := token(t, page)
	pause := base + "/queues/mail/pause"
	for name, tc := range map[string]struct {
		form   url.Values
		header map[string]string
	}{
		"no token":     {url.Values{}, nil},
		"forged token": {url.Values{"csrf": {"1700000000.AAAA"}}, nil},
		"cross-site":   {url.Values{"csrf": {tok}}, map[string]string{"Sec-Fetch-Site": "cross-site"}},
		"other origin": {url.Values{"csrf": {tok}}, map[string]string{"Origin": "https://evil.example"}},
	} {
		if code, body := post(t, c, pause, tc.form, tc.header); code != http.StatusForbidden {
			t.Errorf("%s: %d, want 403\n%s", name, code, body)
		}
	}
	if s, err := q.GetQueueSettings(t.Context(), "mail"); err != nil || s.Paused {
		t.Fatalf("after refused requests the queue is paused=%v (%v)", s.Paused, err)
	}
	if code, body := post(t, c, pause, url.Values{"csrf": {tok}}, map[string]string{"Sec-Fetch-Site": "same-origin"}); code != http.StatusSeeOther {
		t.Fatalf("pause with the token: %d\n%s", code, body)
	}
	if s, err := q.GetQueueSettings(t.Context(), "mail"); err != nil || !s.Paused {
		t.Fatalf("after pause the queue is paused=%v (%v)", s.Paused, err)
	}
	if code, _ := get(t, c, base+"/queues/mail/pause"); code != http.StatusMethodNotAllowed {
		t.Errorf("GET of an action: %d, want 405", code)
	}
}

// TestReadOnlyRefusesChanges: read-only hides the buttons and refuses
// every action with 403, even with a valid token.
func TestReadOnlyRefusesChanges(t *testing.T) {
	q := newQueue(t)
	queued, failed, _ := seed(t, q)
	base := serve(t, q, dashboard.Config{ReadOnly: true})
	c := client(t)
	_, page := get(t, c, base+"/jobs/"+failed.String())
	if strings.Contains(page, `id="retry"`) {
		t.Error("read-only: the job page shows a retry button")
	}
	_, page = get(t, c, base+"/queues/mail")
	tok := token(t, page) // the settings form is shown, disabled
	for _, path := range []string{"/jobs/" + failed.String() + "/retry", "/jobs/" + queued.String() + "/cancel",
		"/jobs/" + queued.String() + "/delete", "/queues/mail/pause", "/queues/mail/resume", "/queues/mail/settings",
		"/bulk/cancel", "/bulk/retry", "/bulk/delete"} {
		code, body := post(t, c, base+path, url.Values{"csrf": {tok}, "queue": {"mail"}, "all": {"1"}, "confirm": {"1"}}, nil)
		if code != http.StatusForbidden || !strings.Contains(body, "read-only") {
			t.Errorf("read-only POST %s: %d, want 403 saying read-only", path, code)
		}
	}
	j, err := q.Get(t.Context(), queued)
	if err != nil || j.Status != compute.StatusQueued {
		t.Fatalf("read-only: the queued job is now %v (%v)", j.Status, err)
	}
}

// TestAuthorizeHook: the hook sees each request's action; refusing retry
// refuses it with 403 and its reason, and lets the pages and cancel through.
func TestAuthorizeHook(t *testing.T) {
	q := newQueue(t)
	queued, failed, _ := seed(t, q)
	var seen []dashboard.Action
	base := serve(t, q, dashboard.Config{Authorize: func(r *http.Request, a dashboard.Action) error {
		seen = append(seen, a)
		if a == dashboard.ActionRetry {
			return errors.New("operators only")
		}
		return nil
	}})
	c := client(t)
	_, page := get(t, c, base+"/jobs/"+failed.String())
	tok := token(t, page)
	code, body := post(t, c, base+"/jobs/"+failed.String()+"/retry", url.Values{"csrf": {tok}}, nil)
	if code != http.StatusForbidden || !strings.Contains(body, "operators only") {
		t.Errorf("refused retry: %d, want 403 with the hook's reason\n%s", code, body)
	}
	if code, _ := post(t, c, base+"/jobs/"+queued.String()+"/cancel", url.Values{"csrf": {tok}}, nil); code != http.StatusSeeOther {
		t.Errorf("allowed cancel: %d, want 303", code)
	}
	if j, err := q.Get(t.Context(), queued); err != nil || j.Status != compute.StatusFailed {
		t.Errorf("after cancel the job is %v (%v)", j.Status, err)
	}
	if j, err := q.Get(t.Context(), failed); err != nil || j.Status != compute.StatusFailed {
		t.Errorf("after the refused retry the job is %v (%v)", j.Status, err)
	}
	want := []dashboard.Action{dashboard.ActionView, dashboard.ActionRetry, dashboard.ActionCancel}
	if len(seen) != len(want) || seen[0] != want[0] || seen[1] != want[1] || seen[2] != want[2] {
		t.Errorf("the hook saw %v, want %v", seen, want)
	}
}

// TestBulkByFilterShowsCountThenRuns: "all matching" first shows how many
// jobs the action would change, and changes nothing; confirming runs it.
// Selected ids change only those jobs.
func TestBulkByFilterShowsCountThenRuns(t *testing.T) {
	q := newQueue(t)
	ctx := t.Context()
	jobs := make([]compute.Job, 7)
	for i := range jobs {
		jobs[i] = compute.Job{Queue: "bulk"}
	}
	ids, err := q.EnqueueMany(ctx, jobs)
	if err != nil {
		t.Fatal(err)
	}
	base := serve(t, q, dashboard.Config{})
	c := client(t)
	_, page := get(t, c, base+"/jobs?queue=bulk")
	tok := token(t, page)

	code, body := post(t, c, base+"/bulk/cancel", url.Values{"csrf": {tok}, "job": {ids[0].String(), ids[1].String()}, "queue": {"bulk"}}, nil)
	if code != http.StatusSeeOther {
		t.Fatalf("cancel selected: %d\n%s", code, body)
	}
	n, err := q.CancelMatching(ctx, compute.Filter{Queue: "other"}, "")
	if err != nil || n != 0 {
		t.Fatal(n, err)
	}
	code, body = post(t, c, base+"/bulk/cancel", url.Values{"csrf": {tok}, "queue": {"bulk"}, "all": {"1"}}, nil)
	if code != http.StatusOK || !strings.Contains(body, "<strong>5</strong> job(s)") {
		t.Fatalf("the confirmation does not show 5 jobs: %d\n%s", code, body)
	}
	if got := countStatus(t, q, "bulk", compute.StatusQueued); got != 5 {
		t.Fatalf("before confirming %d jobs are queued, want 5", got)
	}
	code, body = post(t, c, base+"/bulk/cancel", url.Values{"csrf": {tok}, "queue": {"bulk"}, "all": {"1"}, "confirm": {"1"}}, nil)
	if code != http.StatusSeeOther {
		t.Fatalf("confirmed cancel: %d\n%s", code, body)
	}
	if got := countStatus(t, q, "bulk", compute.StatusQueued); got != 0 {
		t.Fatalf("after confirming %d jobs are queued, want 0", got)
	}
	code, _ = post(t, c, base+"/bulk/retry", url.Values{"csrf": {tok}, "all": {"1"}, "confirm": {"1"}}, nil)
	if code != http.StatusBadRequest {
		t.Errorf("bulk with an empty filter: %d, want 400", code)
	}
	code, _ = post(t, c, base+"/bulk/retry", url.Values{"csrf": {tok}, "queue": {"bulk"}, "status": {"failed"}, "all": {"1"}, "confirm": {"1"}}, nil)
	if code != http.StatusSeeOther || countStatus(t, q, "bulk", compute.StatusQueued) != 7 {
		t.Errorf("retry all failed: %d, %d queued, want 7", code, countStatus(t, q, "bulk", compute.StatusQueued))
	}
}

func countStatus(t *testing.T, q *compute.Queue, queue string, s compute.Status) int {
	t.Helper()
	n := 0
	var after compute.JobID
	for {
		page, err := q.Find(t.Context(), compute.Filter{Queue: queue, Status: s}, after, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			return n
		}
		n += len(page)
		after = page[len(page)-1].ID
	}
}

// TestSettingsForm stores the form's rules and refuses a bad value.
func TestSettingsForm(t *testing.T) {
	q := newQueue(t)
	base := serve(t, q, dashboard.Config{})
	c := client(t)
	_, page := get(t, c, base+"/queues/reports")
	tok := token(t, page)
	form := url.Values{"csrf": {tok}, "max_running": {"4"}, "rate_limit": {"10"}, "rate_period": {"1m"}, "fair": {"1"}}
	if code, body := post(t, c, base+"/queues/reports/settings", form, nil); code != http.StatusSeeOther {
		t.Fatalf("settings: %d\n%s", code, body)
	}
	s, err := q.GetQueueSettings(t.Context(), "reports")
	if err != nil || s.MaxRunning != 4 || s.RateLimit != 10 || s.RatePeriod != time.Minute || !s.Fair {
		t.Fatalf("stored settings %+v (%v)", s, err)
	}
	form.Set("rate_period", "soon")
	if code, _ := post(t, c, base+"/queues/reports/settings", form, nil); code != http.StatusBadRequest {
		t.Errorf("a bad duration: %d, want 400", code)
	}
	form.Set("rate_period", "")
	if code, _ := post(t, c, base+"/queues/reports/settings", form, nil); code != http.StatusBadRequest {
		t.Errorf("a rate limit without a period: %d, want 400", code)
	}
}

// TestLiveFeedFollowsTheJournal: the feed sends an event for a change made
// after the page's cursor, only for the job it follows, and its handler
// returns when the client goes away.
func TestLiveFeedFollowsTheJournal(t *testing.T) {
	q := newQueue(t)
	queued, _, _ := seed(t, q)
	other, err := q.Enqueue(t.Context(), compute.Job{Queue: "mail"})
	if err != nil {
		t.Fatal(err)
	}
	base := serve(t, q, dashboard.Config{})
	_, page := get(t, client(t), base+"/jobs/"+queued.String())
	m := regexp.MustCompile(`data-live="([^"]+)"`).FindStringSubmatch(page)
	if m == nil {
		t.Fatal("the job page has no live feed")
	}
	feed := strings.ReplaceAll(m[1], "&amp;", "&")
	// Changes after the render and before the feed starts are not missed.
	if err := q.Cancel(t.Context(), other, ""); err != nil {
		t.Fatal(err)
	}
	if err := q.Cancel(t.Context(), queued, ""); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+feed, nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if ct := res.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("feed content type %q", ct)
	}
	lines := bufio.NewScanner(res.Body)
	var data string
	for lines.Scan() {
		if d, ok := strings.CutPrefix(lines.Text(), "data: "); ok {
			data = d
			break
		}
	}
	if !strings.Contains(data, queued.String()) || !strings.Contains(data, `"status":"failed"`) || strings.Contains(data, other.String()) {
		t.Fatalf("feed event %q, want the followed job's failure only", data)
	}
	if n := liveHandlers(); n != 1 {
		t.Fatalf("%d live handlers run, want 1", n)
	}
	cancel()
	waitLiveHandlersGone(t)
}

// waitLiveHandlersGone fails the test when a live feed's handler still
// runs 10 s after its client left.
func waitLiveHandlersGone(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for liveHandlers() > 0 {
		if time.Now().After(deadline) {
			t.Fatal("a live handler still runs 10 s after its client left")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// liveHandlers counts the goroutines inside the live feed's handler.
func liveHandlers() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return strings.Count(string(buf), "dashboard.(*Handler).live(")
}
