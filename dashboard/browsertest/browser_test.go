// Package browsertest drives the dashboard in headless Chromium (Debian's
// chromium package) against a real database. It is a module of its own so
// that chromedp never enters the library's go.mod.
package browsertest

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/computetest"
	"github.com/computeplatform/compute/dashboard"
)

// TestMain stops the browser and the database server the tests started.
func TestMain(m *testing.M) {
	code := computetest.Run(m)
	stopChromium()
	os.Exit(code)
}

// The browser process is shared by the tests (starting it takes seconds);
// each test gets a tab of its own.
var (
	chromiumOnce sync.Once
	chromiumCtx  context.Context
	chromiumErr  error
	stopChromium = func() {}
)

// startChromium starts the shared browser on first use.
func startChromium(path string) (context.Context, error) {
	chromiumOnce.Do(func() {
		dir, err := os.MkdirTemp("", "compute-dashboard-chromium-")
		if err != nil {
			chromiumErr = err
			return
		}
		opts := []chromedp.ExecAllocatorOption{
			chromedp.ExecPath(path),
			chromedp.Flag("headless", true),
			chromedp.Flag("no-sandbox", true), // the tests may run as root
			chromedp.Flag("disable-gpu", true),
			chromedp.Flag("disable-quic", true),
			chromedp.Flag("no-first-run", true),
			chromedp.Flag("disable-background-networking", true),
			chromedp.Flag("disable-component-update", true),
			chromedp.Flag("disable-sync", true),
			chromedp.Flag("hide-scrollbars", true),
			chromedp.UserDataDir(dir),
			chromedp.WindowSize(1280, 900),
		}
		allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
		ctx, cancelBrowser := chromedp.NewContext(allocCtx)
		stopChromium = func() {
			cancelBrowser()
			cancelAlloc() // waits for the browser process to exit
			_ = os.RemoveAll(dir)
		}
		// The first Run starts the browser; it must not carry a timeout.
		if err := chromedp.Do(ctx); err != nil {
			chromiumErr = fmt.Errorf("starting %s: %w", path, err)
			return
		}
		chromiumCtx = ctx
	})
	return chromiumCtx, chromiumErr
}

// xss is a config that would run script if it reached the page unescaped.
const xss = `<img src=x onerror=alert(1)>`

// browserTimeout bounds each test's browser session.
const browserTimeout = 2 * time.Minute

// findChromium returns the browser to drive. Without one the test is
// skipped, unless CI is set: there it fails, since CI installs chromium.
func findChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no chromium found on PATH, and CI is set: install Debian's chromium package (.ci/run does)")
	}
	t.Skip("no chromium found on PATH (apt-get install chromium): skipping the browser tests")
	return ""
}

// shotDir is where the tests write their screenshots, one folder per run.
var shotDir = sync.OnceValues(func() (string, error) {
	return os.MkdirTemp("", "compute-dashboard-shots-")
})

// browser is one test's headless Chromium tab, with what it reported.
type browser struct {
	t   *testing.T
	ctx context.Context

	mu      sync.Mutex
	errors  []string // console errors and uncaught exceptions
	dialogs []string // alert, confirm and prompt texts
}

// newBrowser starts Chromium for one test; it is stopped in t.Cleanup.
// Two goroutines collect the console's errors and close dialogs; both end
// with the tab's context, and the cleanup waits for them.
func newBrowser(t *testing.T) *browser {
	t.Helper()
	path := findChromium(t)
	browserCtx, err := startChromium(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancelTab := chromedp.NewContext(browserCtx) // a new tab
	b := &browser{t: t, ctx: ctx}
	if err := chromedp.Do(ctx); err != nil {
		cancelTab()
		t.Fatalf("opening a tab: %v", err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancelTab() // closes the tab, and with it the page's live feed
		wg.Wait()
	})
	messages := chromedp.Console(ctx)
	dialogs := chromedp.Events(ctx, page.JavascriptDialogOpening)
	wg.Go(func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.IsException() {
				b.mu.Lock()
				b.errors = append(b.errors, m.String()+" "+m.URL)
				b.mu.Unlock()
			}
		}
	})
	wg.Go(func() {
		for d, err := range dialogs {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.dialogs = append(b.dialogs, string(d.Type)+": "+d.Message)
			b.mu.Unlock()
			// Close it, or the page stays blocked.
			_, _ = chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: false})
		}
	})
	return b
}

// do runs actions with the test's time limit and fails the test on error.
func (b *browser) do(actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("browser: %v", err)
	}
}

// eval evaluates a JavaScript expression (awaiting a promise) and returns
// its value.
func eval[T any](b *browser, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		b.t.Fatalf("browser: evaluating %s: %v", expr, err)
	}
	return v
}

// open loads a page and waits for its main content.
func (b *browser) open(url string) {
	b.t.Helper()
	b.do(chromedp.Navigate(url), chromedp.WaitVisible(chromedp.CSS("main h1")))
}

// click clicks an element and waits for another to show.
func (b *browser) click(sel, then string) {
	b.t.Helper()
	b.do(chromedp.Click(chromedp.CSS(sel)), chromedp.WaitVisible(chromedp.CSS(then)))
}

// reported returns the errors and dialogs seen so far.
func (b *browser) reported() (errors, dialogs []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.errors...), append([]string(nil), b.dialogs...)
}

// noErrors fails the test when the page reported a console error or an
// exception.
func (b *browser) noErrors(what string) {
	b.t.Helper()
	if errs, _ := b.reported(); len(errs) > 0 {
		b.t.Errorf("%s: the browser reported:\n%s", what, strings.Join(errs, "\n"))
	}
}

// screenshot writes the whole page as a PNG and logs its path.
func (b *browser) screenshot(name string) {
	b.t.Helper()
	dir, err := shotDir()
	if err != nil {
		b.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(b.ctx, browserTimeout)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatal(err)
	}
	path := filepath.Join(dir, name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot: %s", path)
}

// text reads an element's text.
func (b *browser) text(sel string) string {
	b.t.Helper()
	return strings.TrimSpace(eval[string](b, fmt.Sprintf(`document.querySelector(%q).textContent`, sel)))
}

// fixture is a dashboard on a fresh database with a few jobs.
type fixture struct {
	q                         *compute.Queue
	url                       string
	queued, failed, hostile   compute.JobID
	scheduled, panicked, done compute.JobID
}

// newFixture seeds jobs of every kind and serves the dashboard under
// /ops, as a program that mounts it next to its own routes would.
func newFixture(t *testing.T, cfg dashboard.Config) *fixture {
	t.Helper()
	q := computetest.NewQueue(t)
	ctx := t.Context()
	f := &fixture{q: q}
	ids, err := q.EnqueueMany(ctx, []compute.Job{
		{Queue: "emails", Config: `{"to":"ada@example.com","template":"welcome"}`, PartitionKey: "customer-1"},
		{Queue: "emails", Config: `{"to":"bob@example.com"}`, MaxAttempts: 1},
		{Queue: "images", Config: xss, InputFiles: []string{"in/a.png"}},
		{Queue: "reports", Config: `{"month":"2026-11"}`, RunAt: time.Now().Add(time.Hour)},
		{Queue: "images", Config: `{"image":"b.png"}`, MaxAttempts: 1},
		{Queue: "images", Config: `{"image":"c.png"}`},
	})
	if err != nil {
		t.Fatal(err)
	}
	f.queued, f.failed, f.hostile, f.scheduled, f.panicked, f.done = ids[0], ids[1], ids[2], ids[3], ids[4], ids[5]
	if err := q.Cancel(ctx, f.failed, "mailbox unavailable"); err != nil {
		t.Fatal(err)
	}
	// The three images jobs: the hostile one and c.png complete, b.png
	// panics (one attempt allowed, so it fails).
	for range 3 {
		computetest.WorkOne(t, q, "images", func(ctx context.Context, j *compute.Job) ([]string, error) {
			if j.ID == f.panicked {
				panic("decoder: nil image")
			}
			return []string{"out/" + j.ID.String() + ".png"}, nil
		})
	}
	if cfg.BasePath == "" {
		cfg.BasePath = "/ops"
	}
	mux := http.NewServeMux()
	mux.Handle(cfg.BasePath+"/", dashboard.New(q, cfg))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close) // after the browser's cleanup, which runs first
	f.url = srv.URL + cfg.BasePath
	return f
}

// status reads a job's status from the database.
func (f *fixture) status(t *testing.T, id compute.JobID) compute.Status {
	t.Helper()
	j, err := f.q.Get(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	return j.Status
}

// TestPagesLoadWithoutErrors opens every page, checks that the browser
// reports no error, and writes a screenshot of each.
func TestPagesLoadWithoutErrors(t *testing.T) {
	f := newFixture(t, dashboard.Config{})
	b := newBrowser(t)
	for _, p := range []struct{ name, path, heading string }{
		{"overview", "/", "Overview"},
		{"jobs", "/jobs", "Jobs"},
		{"jobs-failed", "/jobs?status=failed", "Jobs"},
		{"job-failed", "/jobs/" + f.panicked.String(), f.panicked.String()},
		{"job-queued", "/jobs/" + f.scheduled.String(), f.scheduled.String()},
		{"job-complete", "/jobs/" + f.done.String(), f.done.String()},
		{"queue", "/queues/emails", "emails"},
		{"workers", "/workers", "Workers"},
		{"periodic", "/periodic", "Periodic schedules"},
		{"health", "/health", "Health"},
	} {
		b.open(f.url + p.path)
		if h := b.text("main h1"); !strings.HasPrefix(h, p.heading) {
			t.Errorf("%s: heading %q, want %q", p.name, h, p.heading)
		}
		b.screenshot(p.name)
		b.noErrors(p.name)
	}
	// Dark mode follows the system's preference.
	b.do(chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: "dark"}},
		})
		return err
	}))
	b.open(f.url + "/")
	if bg := eval[string](b, `getComputedStyle(document.body).backgroundColor`); bg != "rgb(17, 20, 26)" {
		t.Errorf("dark mode: the background is %s", bg)
	}
	b.screenshot("overview-dark")
	b.open(f.url + "/jobs/" + f.panicked.String())
	b.screenshot("job-failed-dark")

	// The panicked attempt's stack is folded until opened.
	b.open(f.url + "/jobs/" + f.panicked.String())
	if eval[bool](b, `document.querySelector("ol.attempts details").open`) {
		t.Error("the panic stack is not folded")
	}
	if s := b.text("ol.attempts summary"); !strings.Contains(s, "decoder: nil image") {
		t.Errorf("the attempt's summary %q does not show the panic", s)
	}
}

// TestFiltersNarrowTheList chooses a status in the Jobs filter and checks
// that only jobs of that status remain.
func TestFiltersNarrowTheList(t *testing.T) {
	f := newFixture(t, dashboard.Config{})
	b := newBrowser(t)
	b.open(f.url + "/jobs")
	all := eval[int](b, `document.querySelectorAll("table.jobs tbody tr").length`)
	b.do(chromedp.SetValue(chromedp.CSS(`select[name="status"]`), "failed"))
	b.click(`form.filters button[type="submit"]`, `body:has(select[name="status"] option[value="failed"][selected])`)
	failed := eval[int](b, `document.querySelectorAll("table.jobs tbody tr").length`)
	statuses := eval[[]string](b, `[...document.querySelectorAll("table.jobs tbody .status")].map(e => e.textContent)`)
	if all != 6 || failed != 2 {
		t.Errorf("%d rows unfiltered, %d with status failed; want 6 and 2", all, failed)
	}
	for _, s := range statuses {
		if s != "failed" {
			t.Errorf("a %s job is listed under status failed", s)
		}
	}
	b.do(chromedp.SetValue(chromedp.CSS(`select[name="status"]`), ""), chromedp.SetValue(chromedp.CSS(`input[name="queue"]`), "images"))
	b.click(`form.filters button[type="submit"]`, `input[name="queue"][value="images"]`)
	queues := eval[[]string](b, `[...document.querySelectorAll("table.jobs tbody tr td:nth-child(3)")].map(e => e.textContent.trim())`)
	if len(queues) != 3 {
		t.Errorf("queue images lists %d jobs, want 3: %v", len(queues), queues)
	}
	for _, q := range queues {
		if q != "images" {
			t.Errorf("queue %q listed under the images filter", q)
		}
	}
	b.noErrors("filters")
}

// TestButtonsChangeTheDatabase clicks retry, cancel, pause and resume and
// reads the outcome from the database.
func TestButtonsChangeTheDatabase(t *testing.T) {
	f := newFixture(t, dashboard.Config{})
	b := newBrowser(t)
	ctx := t.Context()

	b.open(f.url + "/jobs/" + f.failed.String())
	b.click("#retry", "p.flash")
	if s := f.status(t, f.failed); s != compute.StatusQueued {
		t.Errorf("after Retry the job is %s, want queued", s)
	}

	b.open(f.url + "/jobs/" + f.queued.String())
	b.click("#cancel", "p.flash")
	if s := f.status(t, f.queued); s != compute.StatusFailed {
		t.Errorf("after Cancel the job is %s, want failed", s)
	}

	b.open(f.url + "/queues/emails")
	b.click("#pause", "#resume")
	if s, err := f.q.GetQueueSettings(ctx, "emails"); err != nil || !s.Paused {
		t.Errorf("after Pause the queue is paused=%v (%v)", s.Paused, err)
	}
	b.screenshot("queue-paused")
	b.click("#resume", "#pause")
	if s, err := f.q.GetQueueSettings(ctx, "emails"); err != nil || s.Paused {
		t.Errorf("after Resume the queue is paused=%v (%v)", s.Paused, err)
	}

	// Retry every failed job of a filter, after seeing the count.
	b.open(f.url + "/jobs?queue=images&status=failed")
	b.click(`button[formaction$="/bulk/retry"][name="all"]`, "p.big")
	if s := b.text("p.big strong"); s != "1" {
		t.Errorf("the confirmation counts %q jobs, want 1", s)
	}
	b.screenshot("confirm")
	b.click(`form.actions button[type="submit"]`, "p.flash")
	if s := f.status(t, f.panicked); s != compute.StatusQueued {
		t.Errorf("after Retry all the panicked job is %s, want queued", s)
	}
	b.noErrors("buttons")
}

// TestLiveUpdateArrivesWithoutReload keeps a job's page open, cancels the
// job from Go, and waits for the page to show it failed; a marker set on
// the window before shows the page was not reloaded. The overview's
// counts follow too.
func TestLiveUpdateArrivesWithoutReload(t *testing.T) {
	f := newFixture(t, dashboard.Config{})
	b := newBrowser(t)
	b.open(f.url + "/jobs/" + f.queued.String())
	b.do(chromedp.WaitVisible(chromedp.CSS(`#live-dot.on`)))
	eval[bool](b, `window.notReloaded = true`)
	if s := b.text("#job-status"); s != "queued" {
		t.Fatalf("the job page shows %q before the change", s)
	}
	if err := f.q.Cancel(t.Context(), f.queued, "stopped from the test"); err != nil {
		t.Fatal(err)
	}
	b.do(chromedp.WaitVisible(chromedp.CSS(`#job-status .s-failed`)))
	if !eval[bool](b, `window.notReloaded === true`) {
		t.Error("the page was reloaded instead of updated")
	}

	b.open(f.url + "/")
	b.do(chromedp.WaitVisible(chromedp.CSS(`#live-dot.on`)))
	eval[bool](b, `window.notReloaded = true`)
	before := b.text(`#totals a[href$="status=queued"] .card-value`)
	if _, err := f.q.Enqueue(t.Context(), compute.Job{Queue: "emails"}); err != nil {
		t.Fatal(err)
	}
	b.do(chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := chromedp.Poll[bool](fmt.Sprintf(`document.querySelector('#totals a[href$="status=queued"] .card-value').textContent.trim() !== %q`, before))(ctx, t)
		return err
	}))
	if !eval[bool](b, `window.notReloaded === true`) {
		t.Error("the overview was reloaded instead of updated")
	}
	b.noErrors("live")
}

// TestHostileConfigRendersInert opens the job whose config is an HTML
// image with an onerror handler: no dialog opens, and the text shows.
func TestHostileConfigRendersInert(t *testing.T) {
	f := newFixture(t, dashboard.Config{})
	b := newBrowser(t)
	for _, path := range []string{"/jobs/" + f.hostile.String(), "/jobs?queue=images", "/queues/images"} {
		b.open(f.url + path)
		if imgs := eval[int](b, `document.querySelectorAll("main img").length`); imgs != 0 {
			t.Errorf("%s: %d img elements in the page", path, imgs)
		}
	}
	b.open(f.url + "/jobs/" + f.hostile.String())
	if s := b.text("#config"); s != xss {
		t.Errorf("the config shows %q, want the text %q", s, xss)
	}
	b.screenshot("job-hostile")
	if _, dialogs := b.reported(); len(dialogs) > 0 {
		t.Errorf("dialogs opened: %v", dialogs)
	}
	b.noErrors("hostile config")
}

// TestReadOnlyRefuses: no action buttons, and a POST the page's own
// script sends with a valid token gets 403.
func TestReadOnlyRefuses(t *testing.T) {
	f := newFixture(t, dashboard.Config{ReadOnly: true})
	b := newBrowser(t)
	b.open(f.url + "/jobs/" + f.failed.String())
	if buttons := eval[int](b, `document.querySelectorAll("#retry, #cancel, #delete").length`); buttons != 0 {
		t.Errorf("read-only job page shows %d action buttons", buttons)
	}
	b.open(f.url + "/queues/emails")
	b.screenshot("queue-read-only")
	code := eval[int](b, `fetch(location.pathname + "/pause", {method: "POST", body: new URLSearchParams(new FormData(document.querySelector("form.settings")))}).then(r => r.status)`)
	if code != http.StatusForbidden {
		t.Errorf("a POST in read-only mode: %d, want 403", code)
	}
	if s, err := f.q.GetQueueSettings(t.Context(), "emails"); err != nil || s.Paused {
		t.Errorf("read-only: the queue is paused=%v (%v)", s.Paused, err)
	}
}

// hide makes the page believe its tab went to the background (or back),
// as switching tabs does: headless tabs all count as visible.
func (b *browser) hide(hidden bool) {
	b.t.Helper()
	state := "visible"
	if hidden {
		state = "hidden"
	}
	eval[bool](b, fmt.Sprintf(`Object.defineProperty(document, "visibilityState", {value: %q, configurable: true});
		Object.defineProperty(document, "hidden", {value: %t, configurable: true});
		document.dispatchEvent(new Event("visibilitychange")); true`, state, hidden))
}

// TestBackgroundTabsLeaveConnections: a browser opens at most six HTTP/1.1
// connections to one server, and every live page holds one for its feed.
// With six dashboard tabs in the background a seventh must still load, so
// a hidden tab closes its feed; shown again, it catches up on what changed
// meanwhile and follows live again.
func TestBackgroundTabsLeaveConnections(t *testing.T) {
	f := newFixture(t, dashboard.Config{})
	tabs := make([]*browser, 6)
	for i := range tabs {
		tabs[i] = newBrowser(t)
		tabs[i].open(f.url + "/jobs/" + f.queued.String())
		tabs[i].do(chromedp.WaitVisible(chromedp.CSS(`#live-dot.on`)))
		tabs[i].hide(true)
	}
	seventh := newBrowser(t)
	ctx, cancel := context.WithTimeout(seventh.ctx, 15*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(f.url+"/workers"), chromedp.WaitVisible(chromedp.CSS("main h1"))); err != nil {
		t.Fatalf("a seventh tab does not load while six live tabs are in the background: %v", err)
	}
	if err := f.q.Cancel(t.Context(), f.queued, "cancelled while the tab was hidden"); err != nil {
		t.Fatal(err)
	}
	tabs[0].hide(false)
	tabs[0].do(chromedp.WaitVisible(chromedp.CSS(`#job-status .s-failed`)), chromedp.WaitVisible(chromedp.CSS(`#live-dot.on`)))
	for _, b := range append(tabs, seventh) {
		b.noErrors("background tabs")
	}
}
