package compute

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/computeplatform/compute/internal/listen"
	"github.com/computeplatform/compute/internal/testdb"
)

func TestValidQueue(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"a", true},
		{"0", true},
		{"images", true},
		{"Render_v2.high-prio", true},
		{strings.Repeat("q", 32), true},
		{"a-", true},
		{"", false},
		{strings.Repeat("q", 33), false},
		{"-a", false},
		{"_a", false},
		{".a", false},
		{"a b", false},
		{"a/b", false},
		{"a'b", false},
		{`a"b`, false},
		{"a;b", false},
		{"a'; drop table compute.jobs; --", false},
		{"ü", false},
		{"aü", false},
		{"a\x00", false},
		{"a\n", false},
		{"\xff", false},
	} {
		err := validQueue(tc.name)
		if tc.ok != (err == nil) {
			t.Errorf("validQueue(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && (!errors.Is(err, ErrInvalidQueue) || !errors.Is(err, ErrInvalid)) {
			t.Errorf("validQueue(%q) = %v, want ErrInvalidQueue and ErrInvalid", tc.name, err)
		}
	}
}

func TestValidFiles(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files []string
		ok    bool
	}{
		{"nil", nil, true},
		{"empty list", []string{}, true},
		{"tricky but valid", []string{`a"b`, `c\d`, "e,f", "{g}", " h ", "NULL", "日本"}, true},
		{"same name in other case", []string{"a", "A"}, true},
		{"empty name", []string{""}, false},
		{"empty name later", []string{"a", ""}, false},
		{"duplicate", []string{"a", "b", "a"}, false},
		{"NUL", []string{"a\x00"}, false},
		{"invalid UTF-8", []string{"a\xc3"}, false},
	} {
		err := validFiles(tc.files, "input files")
		if tc.ok != (err == nil) {
			t.Errorf("%s: validFiles(%q) = %v, want ok=%v", tc.name, tc.files, err, tc.ok)
		}
		if err != nil && (!errors.Is(err, ErrInvalidFiles) || !errors.Is(err, ErrInvalid)) {
			t.Errorf("%s: validFiles = %v, want ErrInvalidFiles and ErrInvalid", tc.name, err)
		}
	}
}

func TestValidMetaCountsCharacters(t *testing.T) {
	for _, tc := range []struct {
		name, key, value string
		ok               bool
	}{
		{"shortest key", "abc", "", true},
		{"longest key", strings.Repeat("k", 32), "v", true},
		{"three multibyte characters", "äöü", "v", true},
		{"longest multibyte value", "key", strings.Repeat("€", 256), true},
		{"two characters in six bytes", "€€", "v", false},
		{"33 characters", strings.Repeat("ä", 33), "v", false},
		{"257 characters", "key", strings.Repeat("v", 257), false},
		{"NUL in value", "key", "\x00", false},
		{"bad UTF-8 key", "ke\xff", "v", false},
	} {
		err := validMeta(tc.key, tc.value)
		if tc.ok != (err == nil) {
			t.Errorf("%s: validMeta = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && (!errors.Is(err, ErrInvalidMeta) || !errors.Is(err, ErrInvalid)) {
			t.Errorf("%s: validMeta = %v, want ErrInvalidMeta and ErrInvalid", tc.name, err)
		}
	}
}

func TestCleanErrorMakesErrorsStorable(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"plain", "plain"},
		{"nul\x00byte", `nul\x00byte`},
		{"bad\xffutf8", "bad\uFFFDutf8"},
	} {
		if got := cleanError(tc.in); got != tc.want {
			t.Errorf("cleanError(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	long := cleanError(strings.Repeat("é", maxErrorLen)) // twice the limit in bytes
	if len(long) > maxErrorLen+len(" [truncated]") || !strings.HasSuffix(long, " [truncated]") || !strings.HasPrefix(long, "éé") {
		t.Errorf("cleanError of %d bytes gave %d bytes ending %q", 2*maxErrorLen, len(long), long[len(long)-20:])
	}
	if strings.ContainsRune(long, '\uFFFD') {
		t.Error("truncation split a character")
	}
}

// TestArrayLiteralRoundTripsThroughPostgres casts arrayLiteral's output to
// varchar[] in Postgres, as the batched statements do, and checks that the
// same names come back. It is not parallel: a paused parallel test of
// package compute would look like a leaked library goroutine to the
// goroutine-leak checks of the worker tests.
func TestArrayLiteralRoundTripsThroughPostgres(t *testing.T) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, testdb.New(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, names := range [][]string{
		{},
		{"plain"},
		{`quote"d`, `back\slash`, `\`, `"`, `\"`, `""`, `\\`},
		{"com,ma", "{braces}", "{", "}", "{}", "a}b{c"},
		{"sp ace", " leading", "trailing ", " ", "\t", "tab\there", "new\nline", "cr\r"},
		{"NULL", "null", "Null"},
		{"'single'", "a;b", "$1", "--", "/* */"},
		{"ünïcødé", "日本語", "🎉", "\u200b", "\uFEFFbom"},
		{strings.Repeat(`"\,{} `, 500)},
	} {
		lit := arrayLiteral(names)
		var got []string
		if err := conn.QueryRow(ctx, `SELECT $1::text::varchar[]`, lit).Scan(&got); err != nil {
			t.Errorf("%.40q as %.200s: %v", names, lit, err)
			continue
		}
		if got == nil {
			got = []string{}
		}
		if strings.Join(got, "\x00") != strings.Join(names, "\x00") || len(got) != len(names) {
			t.Errorf("round trip of %.40q through %.200s gave %.40q", names, lit, got)
		}
	}
}

// TestContentJobIDIsStable pins the derivation: ids already stored in
// databases must keep matching the jobs that made them.
func TestContentJobIDIsStable(t *testing.T) {
	id := contentJobID("images", `{"w": 100}`, []string{"a.png", "b.png"})
	if again := contentJobID("images", `{"w": 100}`, []string{"a.png", "b.png"}); again != id {
		t.Fatalf("same job, two ids: %s and %s", id, again)
	}
	const pinned = "530c2cdafbb78e08b731b97625fefe24" // recomputed outside Go from the documented derivation
	if got := hex.EncodeToString(id[:]); got != pinned {
		t.Errorf("contentJobID changed: %s, was %s; a changed derivation duplicates every content-id job already stored", got, pinned)
	}
	u := uuid.UUID(id)
	if u.Version() != 8 || u.Variant() != uuid.RFC4122 {
		t.Errorf("content id %s is version %d variant %v, want version 8, RFC 9562 variant", id, u.Version(), u.Variant())
	}

	// No two ways of splitting the same bytes collide.
	seen := make(map[JobID]string)
	for _, tc := range []struct {
		queue, config string
		files         []string
	}{
		{"ab", "c", nil},
		{"a", "bc", nil},
		{"a", "b", []string{"c"}},
		{"a", "", []string{"bc"}},
		{"a", "", []string{"b", "c"}},
		{"a", "", []string{"c", "b"}},
		{"a", "", []string{""}},
		{"a", "", []string{"", ""}},
		{"a", "", nil},
		{"a", "compute.job.v1", nil},
	} {
		id := contentJobID(tc.queue, tc.config, tc.files)
		key := fmt.Sprintf("%q/%q/%q", tc.queue, tc.config, tc.files)
		if prev, dup := seen[id]; dup {
			t.Errorf("%s and %s share the id %s", prev, key, id)
		}
		seen[id] = key
		if u := uuid.UUID(id); u.Version() != 8 || u.Variant() != uuid.RFC4122 {
			t.Errorf("content id %s of %s is version %d variant %v", id, key, u.Version(), u.Variant())
		}
	}
	if contentJobID("a", "", nil) != contentJobID("a", "", []string{}) {
		t.Error("nil and empty input files give different ids; both mean no files")
	}
}

func TestParseJobID(t *testing.T) {
	id, err := newJobID()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{id.String(), strings.ToUpper(id.String()), hex.EncodeToString(id[:])} {
		got, err := ParseJobID(s)
		if err != nil || got != id {
			t.Errorf("ParseJobID(%q) = %s, %v; want %s", s, got, err, id)
		}
	}
	for _, s := range []string{
		"",
		"xyz",
		id.String()[:35],
		id.String() + "0",
		strings.Replace(id.String(), "-", "x", 1),
		"{" + id.String() + "}",
		"urn:uuid:" + id.String(),
		strings.Repeat("g", 32),
		hex.EncodeToString(id[:]) + "00",
	} {
		if _, err := ParseJobID(s); !errors.Is(err, ErrInvalidJob) || !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseJobID(%q) = %v, want ErrInvalidJob", s, err)
		}
	}
}

func TestRedact(t *testing.T) {
	const pw = "S3cretPw"
	for _, tc := range []struct {
		in, known string
		keep      string // must survive redaction
	}{
		{"postgres://user:S3cretPw@host:5432/db", "", "postgres://user:"},
		{"postgresql://user:S3cretPw@host/db?sslmode=disable", "", "host/db?sslmode=disable"},
		{"cannot parse `postgres://user:S3cretPw@host:x/db`: invalid port", "", "invalid port"},
		{`parse "postgres://user:S3cretPw@h:x/db": invalid port`, "", `parse "postgres://user:`},
		{"host=h password=S3cretPw dbname=db", "", "dbname=db"},
		{"host=h PASSWORD = S3cretPw dbname=db", "", "dbname=db"},
		{"host=h password='S3cretPw with spaces' dbname=db", "", "dbname=db"},
		{`host=h password='S3cret\'Pw' dbname=db`, "", "dbname=db"},
		{"dial error: S3cretPw", pw, "dial error"},
	} {
		got := redact(tc.in, tc.known)
		if strings.Contains(got, pw) || strings.Contains(got, "S3cret") {
			t.Errorf("redact(%q) = %q still holds the password", tc.in, got)
		}
		if !strings.Contains(got, tc.keep) {
			t.Errorf("redact(%q) = %q lost %q", tc.in, got, tc.keep)
		}
	}
	for _, s := range []string{"postgres://user@host/db", "host=h user=u dbname=db", "no secret here"} {
		if got := redact(s, ""); got != s {
			t.Errorf("redact(%q) = %q, want it unchanged", s, got)
		}
	}
	cause := errors.New("connect postgres://u:S3cretPw@h/db: refused")
	err := redactError(cause, "")
	if strings.Contains(err.Error(), pw) || !errors.Is(err, cause) {
		t.Errorf("redactError = %q (wraps cause: %v), want no password and the cause kept", err, errors.Is(err, cause))
	}
}

// TestBackoffGrowsAndIsCapped checks the bounds of every attempt (base
// 2^(attempt-1) s capped at 1 h, plus up to 25% jitter), that each attempt
// up to the cap waits longer than any wait of the one before, and that the
// jitter is there.
func TestBackoffGrowsAndIsCapped(t *testing.T) {
	base := func(attempt int) time.Duration {
		if attempt < 1 {
			attempt = 1
		}
		if attempt > 13 {
			return time.Hour
		}
		return min(time.Duration(1<<(attempt-1))*time.Second, time.Hour)
	}
	const samples = 200
	var prevLongest time.Duration
	for attempt := -2; attempt <= 30; attempt++ {
		lo, hi := base(attempt), base(attempt)+base(attempt)/4
		shortest, longest := time.Duration(1<<62), time.Duration(0)
		distinct := make(map[time.Duration]bool)
		for range samples {
			d := Backoff(attempt)
			if d < lo || d > hi {
				t.Fatalf("Backoff(%d) = %s, want %s..%s", attempt, d, lo, hi)
			}
			shortest, longest = min(shortest, d), max(longest, d)
			distinct[d] = true
		}
		if len(distinct) < samples/2 {
			t.Errorf("Backoff(%d) gave only %d distinct waits in %d: too little jitter", attempt, len(distinct), samples)
		}
		if attempt >= 2 && attempt <= 13 && shortest <= prevLongest {
			t.Errorf("Backoff(%d) can wait %s, not longer than Backoff(%d)'s %s", attempt, shortest, attempt-1, prevLongest)
		}
		prevLongest = longest
	}
	for _, attempt := range []int{64, 1000, 1 << 30, 1<<62 + 1} {
		if d := Backoff(attempt); d < time.Hour || d > time.Hour+15*time.Minute {
			t.Errorf("Backoff(%d) = %s, want 1h..1h15m", attempt, d)
		}
	}
}

// TestFencedStatementsProbeThePrimaryKey checks the plans of Complete, Fail
// and Heartbeat as fenced runs them: a nested loop over the arrays probing
// jobs_pkey, never a pass over jobs_running, whose cost grows with every
// job in progress in the cluster (or, as a merge on worker, with the batch
// squared). It looks at fresh statistics with no job in progress and with
// 20,000 held by another worker; each of those made the planner leave the
// primary key before fenced pinned the plan.
func TestFencedStatementsProbeThePrimaryKey(t *testing.T) {
	ctx := t.Context()
	q := openMigrated(t)
	jobs := make([]Job, 5000)
	for i := range jobs {
		jobs[i] = Job{Queue: "p"}
	}
	for range 5 {
		if _, err := q.EnqueueMany(ctx, jobs); err != nil {
			t.Fatal(err)
		}
	}
	other, err := New(ctx, q.pool, WithWorkerID("other"))
	if err != nil {
		t.Fatal(err)
	}
	plan := func(sql string, extra ...any) string {
		t.Helper()
		mine, err := q.Claim(ctx, "p", 1000)
		if err != nil {
			t.Fatal(err)
		}
		ids, attempts, workers := make([][]byte, len(mine)), make([]int32, len(mine)), make([]string, len(mine))
		for i, j := range mine {
			ids[i], attempts[i], workers[i] = j.ID[:], int32(j.Attempt), j.Worker
		}
		lines, err := queryPinned(ctx, q, "EXPLAIN "+sql, append([]any{ids, attempts, workers}, extra...), pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return strings.Join(lines, "\n")
	}
	n := 1000
	for _, inProgressElsewhere := range []int{0, 20000} {
		for claimed := 0; claimed < inProgressElsewhere; {
			got, err := other.Claim(ctx, "p", 1000)
			if err != nil {
				t.Fatal(err)
			}
			claimed += len(got)
		}
		if _, err := q.pool.Exec(ctx, `ANALYZE compute.jobs`); err != nil {
			t.Fatal(err)
		}
		strs := func(s string) []string { return slices.Repeat([]string{s}, n) }
		for name, p := range map[string]string{
			"complete":  plan(completeJobsSQL, strs("{}")),
			"fail":      plan(failJobsSQL, strs("x"), make([]bool, n), make([]bool, n), make([]int64, n)),
			"heartbeat": plan(heartbeatJobsSQL, int64(60e6)),
		} {
			if !strings.Contains(p, "Nested Loop") || !strings.Contains(p, "Index Scan using jobs_pkey") ||
				strings.Contains(p, "jobs_running") {
				t.Errorf("%s with %d jobs in progress elsewhere: want a nested loop probing jobs_pkey, got\n%s",
					name, inProgressElsewhere, p)
			}
		}
	}
}

// TestClaimPlanFromAnEmptyTableKeepsTheTidScan checks the claim's generic
// plan as the pipeline's pinJoinsSQL leaves it, made from the statistics of an
// empty, freshly analyzed table: the state of a new deployment, whose
// workers cache that plan on every pooled connection and keep it until the
// next autoanalyze. Unpinned, that plan read the whole table for every
// claim (the update as a Seq Scan), so claims slowed as finished jobs piled
// up; with status = 'queued' in the update it read all of jobs_claim or
// jobs_partition instead.
func TestClaimPlanFromAnEmptyTableKeepsTheTidScan(t *testing.T) {
	ctx := t.Context()
	q := openMigrated(t)
	if _, err := q.pool.Exec(ctx, `VACUUM ANALYZE compute.jobs`); err != nil {
		t.Fatal(err)
	}
	tx, err := q.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	for _, sql := range []string{pinJoinsSQL, "SET LOCAL plan_cache_mode = force_generic_plan", "PREPARE claim_plan AS " + claimJobsSQL} {
		if _, err := tx.Exec(ctx, sql); err != nil {
			t.Fatalf("%v\n%s", err, sql)
		}
	}
	rows, err := tx.Query(ctx, `EXPLAIN EXECUTE claim_plan('q', 3, 'w', 1000000, 1048576)`)
	if err != nil {
		t.Fatal(err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	p := strings.Join(lines, "\n")
	if !strings.Contains(p, "Tid Scan on jobs j") || strings.Contains(p, "Seq Scan on jobs") ||
		!strings.Contains(p, "Index Scan using jobs_claim on jobs") {
		t.Errorf("want the pick through jobs_claim and the update through a Tid Scan, nothing sequential; got\n%s", p)
	}
}

// TestCompleterDoesNotMakeAHeldBackFetcherWait: a queue whose twice
// Concurrency outcomes wait unwritten claims nothing until they are
// written, so the completer writes them at once instead of waiting out
// writeGap. The gap is an hour here: the jobs get written only if the
// completer does not wait. Once the queue runs dry, fewer than twice
// Concurrency outcomes may wait out the gap (a claim can find a slot not
// yet released and take one job), so all but 2*Concurrency-1 jobs must
// complete.
func TestCompleterDoesNotMakeAHeldBackFetcherWait(t *testing.T) {
	// Not parallel: a test of package compute paused in t.Parallel would
	// count as a leaked goroutine in TestWorkerLeavesNoGoroutinesBehind.
	ctx := t.Context()
	q := openMigrated(t)
	const total, concurrency = 20, 2
	jobs := make([]Job, total)
	for i := range jobs {
		jobs[i] = Job{Queue: "held"}
	}
	if _, err := q.EnqueueMany(ctx, jobs); err != nil {
		t.Fatal(err)
	}
	w, err := NewWorker(q, WorkerConfig{Queues: map[string]QueueConfig{
		"held": {Handler: func(context.Context, *Job) ([]string, error) { return nil, nil }, Concurrency: concurrency},
	}})
	if err != nil {
		t.Fatal(err)
	}
	w.writeGap = time.Hour
	defer runInternal(t, w)()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var done int
		if err := q.pool.QueryRow(ctx, `SELECT count(*) FROM compute.jobs WHERE status = 'complete'`).Scan(&done); err != nil {
			t.Fatal(err)
		}
		if done >= total-(2*concurrency-1) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d jobs complete after 20 s, want at least %d: the completer waited out its gap while the fetcher was held back", done, total, total-(2*concurrency-1))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestListenerRepeatsItsAnnouncementAndWakesTwice: a listener with an announce hook
// runs it when it connects and again every AnnounceEvery on a quiet
// connection; the journal hub relies on it to keep journal_listened_until
// (a minute ahead) from running out under a long Follow. It also wakes
// everyone twice: on connecting and listen.RewakeAfter later.
func TestListenerRepeatsItsAnnouncementAndWakesTwice(t *testing.T) {
	// Not parallel: see TestCompleterDoesNotMakeAHeldBackFetcherWait.
	ctx := t.Context()
	q := openMigrated(t)
	announced := make(chan struct{}, 100)
	woken := make(chan struct{}, 100)
	l := q.newListener(q.opts.logger, nil, func(string, string) {}, func() {
		select {
		case woken <- struct{}{}:
		default:
		}
	})
	l.AnnounceEvery = 20 * time.Millisecond
	l.Announce = func(ctx context.Context, conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, `SELECT 1`)
		select {
		case announced <- struct{}{}:
		default: // the test has seen enough
		}
		return err
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); l.Run(runCtx) }()
	defer func() { stop(); <-done }()
	timeout := time.After(20 * time.Second)
	for n := range 5 {
		select {
		case <-announced:
		case <-timeout:
			t.Fatalf("%d announcements in 20 s, want 5 (one per 20 ms)", n)
		}
	}
	for n := range 2 {
		select {
		case <-woken:
		case <-timeout:
			t.Fatalf("woken %d times in 20 s, want 2 (on connecting and %s later)", n, listen.RewakeAfter)
		}
	}
}

// openMigrated opens a Queue on a fresh migrated test database, closed at
// the end of the test.
func openMigrated(t *testing.T) *Queue {
	t.Helper()
	q, err := Open(t.Context(), testdb.New(t), WithMigrate())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(q.Close)
	return q
}

// TestRescueIntervalIsTheOldNameOfMaintenanceInterval: a configuration
// written before the rename keeps its interval, and the new name wins.
func TestRescueIntervalIsTheOldNameOfMaintenanceInterval(t *testing.T) {
	o, err := buildOptions(nil)
	if err != nil {
		t.Fatal(err)
	}
	q := &Queue{opts: o}
	h := func(context.Context, *Job) ([]string, error) { return nil, nil }
	for _, c := range []struct {
		cfg  WorkerConfig
		want time.Duration
	}{
		{WorkerConfig{}, 10 * time.Second},
		{WorkerConfig{RescueInterval: time.Minute}, time.Minute},
		{WorkerConfig{RescueInterval: time.Minute, MaintenanceInterval: time.Second}, time.Second},
	} {
		c.cfg.Queues = map[string]QueueConfig{"q": {Handler: h}}
		w, err := NewWorker(q, c.cfg)
		if err != nil {
			t.Fatal(err)
		}
		if w.cfg.MaintenanceInterval != c.want {
			t.Errorf("RescueInterval %s, MaintenanceInterval %s: the round runs every %s, want %s",
				c.cfg.RescueInterval, c.cfg.MaintenanceInterval, w.cfg.MaintenanceInterval, c.want)
		}
	}
}

// TestRulesDecideRoomAndWhatHolds: the claim's room and Explain's reasons
// come from the same rules.
func TestRulesDecideRoomAndWhatHolds(t *testing.T) {
	for _, c := range []struct {
		s          QueueSettings
		queue, key usage
		room       int
		holding    []ReasonKind
	}{
		{QueueSettings{}, usage{100, 100}, usage{}, math.MaxInt, nil},
		{QueueSettings{Paused: true}, usage{}, usage{}, 0, []ReasonKind{ReasonPaused}},
		{QueueSettings{MaxRunning: 5}, usage{3, 0}, usage{}, 2, nil},
		{QueueSettings{MaxRunning: 5}, usage{7, 0}, usage{}, 0, []ReasonKind{ReasonQueueCap}},
		{QueueSettings{MaxRunning: 5, RateLimit: 10}, usage{1, 9}, usage{}, 1, nil},
		{QueueSettings{RateLimit: 10, KeyMaxRunning: 2}, usage{0, 10}, usage{2, 0}, 0, []ReasonKind{ReasonKeyCap, ReasonQueueRate}},
		{QueueSettings{KeyRateLimit: 3}, usage{}, usage{0, 3}, math.MaxInt, []ReasonKind{ReasonKeyRate}},
	} {
		if got := c.s.room(c.queue); got != c.room {
			t.Errorf("%+v with %+v: room %d, want %d", c.s, c.queue, got, c.room)
		}
		if got := c.s.holding(c.queue, c.key); !slices.Equal(got, c.holding) {
			t.Errorf("%+v with %+v, key %+v: held by %v, want %v", c.s, c.queue, c.key, got, c.holding)
		}
	}
}

// TestWriteOfNothingIsNoContact: an outcome write whose jobs were all
// lost meanwhile sends no statement, so it must not count as a successful
// write (or contact) for Health: while the database is away it would keep
// an unready worker ready.
func TestWriteOfNothingIsNoContact(t *testing.T) {
	q := openMigrated(t)
	w, err := NewWorker(q, WorkerConfig{Queues: map[string]QueueConfig{
		"q": {Handler: func(context.Context, *Job) ([]string, error) { return nil, nil }},
	}})
	if err != nil {
		t.Fatal(err)
	}
	q.Close()                            // any statement would fail now
	lost := &Job{Queue: "q", Attempt: 1} // not in the running set: lost
	if _, sent, err := w.write([]outcome{{job: lost, qs: w.queues["q"]}}); err != nil || sent {
		t.Fatalf("write of a lost job: sent %v, %v; want nothing sent and nil", sent, err)
	}
	if h := w.Health(); !h.LastWrite.IsZero() || !h.LastContact.IsZero() {
		t.Errorf("a write that sent nothing was recorded: last write %v, last contact %v", h.LastWrite, h.LastContact)
	}
}
