package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// progressf prints a progress line on stderr, so stdout keeps only the table.
func progressf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// every calls f every d until the returned stop function is called; stop
// waits for the goroutine to end.
func every(d time.Duration, f func()) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				f()
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
	}
}

// counter counts handler calls and closes reached once the count gets to
// target, so a burn-down can wait on a channel instead of polling.
type counter struct {
	n       atomic.Int64
	target  int64
	once    sync.Once
	reached chan struct{}
}

func newCounter(target int) *counter {
	return &counter{target: int64(target), reached: make(chan struct{})}
}

func (c *counter) add() {
	if c.n.Add(1) >= c.target {
		c.once.Do(func() { close(c.reached) })
	}
}

// waitDone waits until the handlers ran target jobs and then until the
// database shows none of them unfinished, so the time covers the last
// outcome write, as River's own bench does by counting completion events.
// unfinished is polled only after the handlers are done: polling costs the
// database nothing while the jobs run.
func waitDone(ctx context.Context, c *counter, label string, unfinished func(context.Context) (int, error)) error {
	start := time.Now()
	stop := every(2*time.Second, func() {
		n := c.n.Load()
		progressf("%s: %d/%d jobs handled (%.0f jobs/s so far)", label, n, c.target, float64(n)/time.Since(start).Seconds())
	})
	defer stop()
	select {
	case <-c.reached:
	case <-ctx.Done():
		return fmt.Errorf("%s: %d of %d jobs handled: %w", label, c.n.Load(), c.target, ctx.Err())
	}
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		n, err := unfinished(ctx)
		if err != nil {
			return fmt.Errorf("%s: count unfinished jobs: %w", label, err)
		}
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %d jobs still unfinished: %w", label, n, ctx.Err())
		case <-tick.C:
		}
	}
}

// pickup records, per job, when its enqueue transaction committed (as the
// producer saw the commit return) and when its handler started, both on the
// monotonic clock of this process. A handler may start before its producer
// sees the commit return; such a job counts as picked up in 0 ms.
type pickup[K comparable] struct {
	mu     sync.Mutex
	commit map[K]time.Time
	start  map[K]time.Time
	from   time.Time // latencies leaves out jobs committed before it
}

func newPickup[K comparable]() *pickup[K] {
	return &pickup[K]{commit: make(map[K]time.Time), start: make(map[K]time.Time)}
}

func (p *pickup[K]) committed(id K) {
	now := time.Now()
	p.mu.Lock()
	p.commit[id] = now
	p.mu.Unlock()
}

func (p *pickup[K]) started(id K) {
	now := time.Now()
	p.mu.Lock()
	p.start[id] = now
	p.mu.Unlock()
}

// measureFrom makes latencies leave out the jobs committed before t.
func (p *pickup[K]) measureFrom(t time.Time) {
	p.mu.Lock()
	p.from = t
	p.mu.Unlock()
}

// measured returns how many jobs committed from measureFrom's time on.
func (p *pickup[K]) measured() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, c := range p.commit {
		if !c.Before(p.from) {
			n++
		}
	}
	return n
}

// counts returns how many jobs committed, and how many of them have not
// started yet (the backlog).
func (p *pickup[K]) counts() (committed, waiting int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id := range p.commit {
		if _, ok := p.start[id]; !ok {
			waiting++
		}
	}
	return len(p.commit), waiting
}

// latencies returns the pick-up latencies of the jobs that started, sorted,
// leaving out those committed before measureFrom's time.
func (p *pickup[K]) latencies() []time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]time.Duration, 0, len(p.commit))
	for id, c := range p.commit {
		if s, ok := p.start[id]; ok && !c.Before(p.from) {
			out = append(out, max(s.Sub(c), 0))
		}
	}
	slices.Sort(out)
	return out
}

// quantile returns the q-quantile (0..1) of sorted durations, nearest rank.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// median returns the median of xs (the mean of the middle two for an even
// count); 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// memStatus reads VmHWM (peak resident set) and VmRSS of this process from
// /proc/self/status, in KiB. Both are 0 where /proc is missing.
func memStatus() (hwmKiB, rssKiB int64) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(fields[1], 10, 64)
		switch fields[0] {
		case "VmHWM:":
			hwmKiB = v
		case "VmRSS:":
			rssKiB = v
		}
	}
	return hwmKiB, rssKiB
}

// parseSizes parses a comma-separated list of row counts such as
// "10k,1m,10m" (k = 1,000, m = 1,000,000).
func parseSizes(s string) ([]int, error) {
	var out []int
	for part := range strings.SplitSeq(s, ",") {
		part = strings.ToLower(strings.TrimSpace(part))
		if part == "" {
			continue
		}
		n, err := parseCount(part)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, nil
}

// parseCount parses one count with an optional k or m suffix.
func parseCount(s string) (int, error) {
	mult := 1
	switch {
	case strings.HasSuffix(s, "k"):
		mult, s = 1_000, strings.TrimSuffix(s, "k")
	case strings.HasSuffix(s, "m"):
		mult, s = 1_000_000, strings.TrimSuffix(s, "m")
	}
	n, err := strconv.ParseFloat(s, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a row count like 10k or 1m", s)
	}
	return int(n * float64(mult)), nil
}

// human formats a row count as 10k, 1M or 10M where that is exact.
func human(n int) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return fmt.Sprintf("%dM", n/1_000_000)
	case n >= 1_000 && n%1_000 == 0:
		return fmt.Sprintf("%dk", n/1_000)
	}
	return strconv.Itoa(n)
}

// thousands formats a number with comma separators.
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// cpuTimes is a reading of CPU time used so far: by the whole machine (all
// processes, every core) and by this process. Both are zero where /proc or
// getrusage are missing; a reading taken after another gives the CPU a
// phase cost.
type cpuTimes struct {
	machine, self time.Duration
}

// readCPU reads the machine's busy time from /proc/stat (user, nice,
// system, irq, softirq and steal; idle and iowait left out) and this
// process's user and system time (selfCPU).
func readCPU() cpuTimes {
	c := cpuTimes{self: selfCPU()}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return c
	}
	line, _, _ := strings.Cut(string(b), "\n")
	fields := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	if len(fields) < 9 || fields[0] != "cpu" {
		return c
	}
	var ticks int64
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		v, _ := strconv.ParseInt(fields[i], 10, 64)
		ticks += v
	}
	c.machine = time.Duration(ticks) * time.Second / clockTicks
	return c
}

// clockTicks is USER_HZ, the unit of /proc/stat: 100 on every Linux
// architecture Go supports.
const clockTicks = 100

// since is the CPU time used between an earlier reading and this one.
func (c cpuTimes) since(earlier cpuTimes) cpuTimes {
	return cpuTimes{machine: c.machine - earlier.machine, self: c.self - earlier.self}
}
