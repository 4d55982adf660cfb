package main

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// printTable writes the header and the one results table.
func printTable(out io.Writer, h header, o options, res *results) {
	fmt.Fprintf(out, "\ncompute vs River %s (riverpgxv5), same PostgreSQL server, one run of this program\n", h.riverVersion)
	fmt.Fprintf(out, "PostgreSQL %s on %s: fsync=%s full_page_writes=%s synchronous_commit=%s shared_buffers=%s max_connections=%s\n",
		h.pgVersion, h.server, h.fsync, h.fullPageWrites, h.syncCommit, h.sharedBufs, h.maxConns)
	if h.fsync == "off" {
		fmt.Fprintln(out, "  fsync is off: absolute figures are higher than on a durable server; compare the two systems with each other")
	}
	fmt.Fprintf(out, "Go %s\n", goInfo())
	fmt.Fprintf(out, "Pools: pool_max_conns=%d for each system's worker; steady-state producers use a separate pool of %d per system\n", o.conns, o.producers)
	fmt.Fprintf(out, "compute: Worker, one queue, Concurrency=%d, library defaults otherwise (LISTEN/NOTIFY, 1 s poll)\n", o.workers)
	fmt.Fprintf(out, "River:   MaxWorkers=%d, FetchCooldown=%s, FetchPollInterval=%s (River's bench: cmd/river/riverbench/river_bench.go)\n",
		o.workers, riverFetchCooldown, riverFetchPollInterval)
	if o.runs > 1 {
		fmt.Fprintf(out, "Runs: %d of (a), (b), (c) and (f), changing which system goes first; the table shows medians, per-run figures follow it\n", o.runs)
	}
	if o.smoke {
		fmt.Fprintln(out, "SMOKE MODE: tiny sizes, the figures mean nothing")
	}
	fmt.Fprintln(out)

	// The comparison table goes out only when a workload put a row in it:
	// -only r or -only u print their own tables, not an empty one.
	var table bytes.Buffer
	rows := 0
	tw := tabwriter.NewWriter(&table, 0, 0, 2, ' ', tabwriter.Debug)
	row := func(cells ...string) {
		rows++
		// A system left out with -systems has no figures: say so
		// rather than "failed".
		for i, sys := range map[int]string{1: "compute", 2: "River"} {
			if !o.takesPart(sys) && cells[i] == "failed" {
				cells[i] = "not run"
			}
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t")
	}
	row("workload", "compute", "River", "ratio", "target", "met")
	row("", "", "", "", "", "")

	if c, r := res.burn["compute"], res.burn["River"]; len(c)+len(r) > 0 {
		row(fmt.Sprintf("(a) burn-down, %s jobs: jobs/s", human(o.jobs)),
			cell(c, rate), cell(r, rate), ratioCell(c, r), "compute/River ≥ 2", met(c, r, func(c, r float64) bool { return c >= 2*r }))
		row("    extra handler runs (jobs run again), all runs", thousands(int64(res.reruns["compute"])), thousands(int64(res.reruns["River"])),
			"", "0", yes(len(c) > 0 && res.reruns["compute"] == 0))
	}
	if c, r := res.bulk["compute"], res.bulk["River"]; len(c)+len(r) > 0 {
		row(fmt.Sprintf("(b) bulk insert, %s in batches of %s: jobs/s", human(o.insertJobs), thousands(int64(o.insertBatch))),
			cell(c, rate), cell(r, rate), ratioCell(c, r), "compute/River ≥ 1", met(c, r, func(c, r float64) bool { return c >= r }))
	}
	if sc, sr := res.steady["compute"], res.steady["River"]; len(sc)+len(sr) > 0 {
		// field picks one figure of every run of a system.
		field := func(rs []steadyResult, f func(steadyResult) float64) []float64 {
			xs := make([]float64, len(rs))
			for i, x := range rs {
				xs[i] = f(x)
			}
			return xs
		}
		ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
		p50 := func(s steadyResult) float64 { return ms(s.p50) }
		p99 := func(s steadyResult) float64 { return ms(s.p99) }
		worst := func(s steadyResult) float64 { return ms(s.max) }
		produced := func(s steadyResult) float64 { return s.rate }
		backlog := func(s steadyResult) float64 { return float64(s.backlog) }
		c, r := field(sc, p50), field(sr, p50)
		row(fmt.Sprintf("(c) steady %s jobs/s for %s after %s, 1 job/tx: pick-up p50 ms", thousands(int64(o.rate)), o.steady, o.warmup),
			cell(c, millis), cell(r, millis), ratioCell(c, r), "≤ 5 ms, < River", met(c, r, func(c, r float64) bool { return c <= 5 && c < r }))
		c, r = field(sc, p99), field(sr, p99)
		row("    pick-up p99 ms", cell(c, millis), cell(r, millis), ratioCell(c, r), "≤ 25 ms, < River", met(c, r, func(c, r float64) bool { return c <= 25 && c < r }))
		c, r = field(sc, worst), field(sr, worst)
		row("    pick-up max ms", cell(c, millis), cell(r, millis), ratioCell(c, r), "", "")
		machine := func(s steadyResult) float64 { return s.cpuPerThousand(s.cpu.machine) }
		self := func(s steadyResult) float64 { return s.cpuPerThousand(s.cpu.self) }
		c, r = field(sc, machine), field(sr, machine)
		row("    CPU ms per 1,000 jobs, whole machine", cell(c, millis), cell(r, millis), ratioCell(c, r), "", "")
		c, r = field(sc, self), field(sr, self)
		row("    of which this process (producers, worker)", cell(c, millis), cell(r, millis), ratioCell(c, r), "", "")
		row("    enqueued jobs/s (producers)", cell(field(sc, produced), rate), cell(field(sr, produced), rate), "", "", "")
		keeps := func(rs []steadyResult) bool {
			for _, s := range rs {
				if !s.keepsUp(o.rate) {
					return false
				}
			}
			return len(rs) > 0
		}
		row("    backlog when producers stop", cell(field(sc, backlog), count), cell(field(sr, backlog), count), "",
			fmt.Sprintf("keeps up (River: %s)", yes(keeps(sr))), yes(keeps(sc)))
	}
	if c, r := res.flood["compute"], res.flood["River"]; len(c)+len(r)+len(res.flood[floodEvery]) > 0 {
		field := func(rs []floodResult, f func(floodResult) float64) []float64 {
			xs := make([]float64, len(rs))
			for i, x := range rs {
				xs[i] = f(x)
			}
			return xs
		}
		perSec := func(f floodResult) float64 { return f.perSec() }
		p99 := func(f floodResult) float64 { return float64(f.p99) / float64(time.Millisecond) }
		e := res.flood[floodEvery]
		row(fmt.Sprintf("(f) %d producers, 1 job/tx, no worker, fsync=%s: jobs/s", o.floodProducers, h.fsync),
			cell(field(c, perSec), rate), cell(field(r, perSec), rate), ratioCell(field(c, perSec), field(r, perSec)), "", "")
		row("    transaction p99 ms", cell(field(c, p99), millis), cell(field(r, p99), millis), ratioCell(field(c, p99), field(r, p99)), "", "")
		row("    compute with a notification per enqueue: jobs/s", cell(field(e, perSec), rate), "—", ratioCell(field(e, perSec), field(r, perSec)), "", "")
		row("    and its transaction p99 ms", cell(field(e, p99), millis), "—", "", "", "")
	}
	if res.ceil > 0 {
		label := fmt.Sprintf("(e) ceiling: bare Claim+Complete, %d goroutines × %s/claim: jobs/s", o.ceilingGoroutines, thousands(int64(o.ceilingBatch)))
		if a := res.burn["compute"]; len(a) > 0 {
			row(label, rate(res.ceil), "—", fmt.Sprintf("(a)/(e) %.2f", median(a)/res.ceil), "(a) ≥ 0.7 of (e)", yes(median(a) >= 0.7*res.ceil))
		} else {
			row(label, rate(res.ceil), "—", "", "", "")
		}
	}
	if c, ok := res.rss["compute"]; ok {
		r := res.rss["River"]
		mib := func(kib int64) string { return fmt.Sprintf("%.0f", float64(kib)/1024) }
		row(fmt.Sprintf("RSS, %s-job burn-down, child process: VmHWM MiB", human(c.Jobs)), mib(c.HWMKiB), mib(r.HWMKiB), ratio(float64(c.HWMKiB), float64(r.HWMKiB)), "", "")
		row("    VmRSS MiB before / after", mib(c.BaseRSSKiB)+" / "+mib(c.RSSKiB), mib(r.BaseRSSKiB)+" / "+mib(r.RSSKiB), "", "", "")
		row("    extra handler runs in that run", thousands(int64(c.Handled-c.Jobs)), thousands(int64(r.Handled-r.Jobs)), "", "", "")
		row("    jobs/s in that run", rate(float64(c.Jobs)/c.Seconds), rate(float64(r.Jobs)/r.Seconds), ratio(float64(c.Jobs)/c.Seconds, float64(r.Jobs)/r.Seconds), "", "")
	}
	tw.Flush()
	if rows > 2 { // more than the header and its rule
		out.Write(table.Bytes())
	}
	if len(res.failures) > 0 {
		fmt.Fprintln(out, "\nFAILED phases (their cells are missing or show the other runs only):")
		for _, f := range res.failures {
			fmt.Fprintln(out, "  "+f)
		}
	}

	if rows > 2 { // the footnote of the table above, printed only with it
		printFootnote(out)
	}

	printUser(out, o, res)
	printGrowth(out, o, res)

	if o.runs > 1 {
		fmt.Fprintln(out, "\nPer run (in run order):")
		for _, sys := range []string{"compute", "River"} {
			if xs := res.burn[sys]; len(xs) > 0 {
				fmt.Fprintf(out, "  (a) %-8s jobs/s: %s\n", sys, list(xs, rate))
			}
		}
		for _, sys := range []string{"compute", "River"} {
			if xs := res.bulk[sys]; len(xs) > 0 {
				fmt.Fprintf(out, "  (b) %-8s jobs/s: %s\n", sys, list(xs, rate))
			}
		}
		for _, sys := range []string{"compute", floodEvery, "River"} {
			for i, f := range res.flood[sys] {
				fmt.Fprintf(out, "  (f) %-20s run %d: %s jobs/s, p50 %s ms, p99 %s ms\n", sys, i+1,
					rate(f.perSec()), millis(float64(f.p50)/1e6), millis(float64(f.p99)/1e6))
			}
		}
		for _, sys := range []string{"compute", "River"} {
			for i, s := range res.steady[sys] {
				fmt.Fprintf(out, "  (c) %-8s run %d: p50 %s ms, p99 %s ms, max %s ms, %s jobs/s enqueued, backlog %d, CPU per 1,000 jobs %s ms (this process %s)\n", sys, i+1,
					millis(float64(s.p50)/1e6), millis(float64(s.p99)/1e6), millis(float64(s.max)/1e6), rate(s.rate), s.backlog,
					millis(s.cpuPerThousand(s.cpu.machine)), millis(s.cpuPerThousand(s.cpu.self)))
			}
		}
	}
}

func rate(x float64) string { return thousands(int64(x + 0.5)) }

func count(x float64) string { return fmt.Sprintf("%.0f", x) }

// cell formats the median of a system's runs, or "failed" when it has none.
func cell(xs []float64, f func(float64) string) string {
	if len(xs) == 0 {
		return "failed"
	}
	return f(median(xs))
}

// ratioCell is compute's median over River's.
func ratioCell(c, r []float64) string {
	if len(c) == 0 || len(r) == 0 {
		return "—"
	}
	return ratio(median(c), median(r))
}

// met applies a target to the medians; a missing side fails it.
func met(c, r []float64, ok func(c, r float64) bool) string {
	return yes(len(c) > 0 && len(r) > 0 && ok(median(c), median(r)))
}

func millis(x float64) string { return fmt.Sprintf("%.2f", x) }

func ratio(c, r float64) string {
	if r == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f", c/r)
}

func yes(ok bool) string {
	if ok {
		return "yes"
	}
	return "no"
}

func list(xs []float64, f func(float64) string) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = f(x)
	}
	return strings.Join(parts, ", ")
}

// printFootnote explains the comparison table's columns.
func printFootnote(out io.Writer) {
	fmt.Fprintln(out)
	fmt.Fprintln(out, "ratio = compute ÷ River. Burn-down time runs from the worker's start to the last completion visible in the")
	fmt.Fprintln(out, "database; jobs are loaded, VACUUM ANALYZEd and CHECKPOINTed first, untimed. Pick-up latency runs from the producer's")
	fmt.Fprintln(out, "commit returning to the handler's start, on this process's monotonic clock. Keeps up: the producers hit 95%")
	fmt.Fprintln(out, "of the rate, at most 1/4 s of jobs waited when they stopped, and all started within the drain time. Jobs")
	fmt.Fprintln(out, "committed in the warm-up (connections open, statements are prepared) count only in the backlog. CPU is busy")
	fmt.Fprintln(out, "time after the warm-up while the producers ran: the whole machine's (Postgres, this process and anything")
	fmt.Fprintln(out, "else running) and this process's own.")
}
