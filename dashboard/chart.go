package dashboard

import (
	"context"
	"fmt"
	"html/template"
	"strings"
	"time"
)

// chartMinutes is the chart's span: the last hour, a bar per minute.
const chartMinutes = 60

// finishedPerMinuteSQL counts the jobs that became complete or failed in
// each of the last 60 minutes from the journal, where each row is one
// statement's batch of jobs (so cardinality, not count). It counts the
// attempts array, which has one entry per job as job_ids does but is small
// and stored in the row, where job_ids is stored out of line: reading it
// would fetch every batch's ids. The BRIN index on at limits the read to
// the last hour's rows; minute 0 is the current one.
const finishedPerMinuteSQL = `
SELECT floor(extract(epoch FROM $1::timestamptz - e.at) / 60)::int AS minute, e.status, sum(cardinality(e.attempts))::bigint
FROM compute.events e
WHERE e.at > $1::timestamptz - interval '60 minutes' AND e.at <= $1::timestamptz AND e.status IN ('complete', 'failed')
GROUP BY 1, 2`

// chart is the overview's bar chart of finished jobs per minute.
type chart struct {
	Complete, Failed [chartMinutes]int64 // index 0 is the oldest minute
	TotalComplete    int64
	TotalFailed      int64
	Max              int64
	SVG              template.HTML
}

// finishedChart reads the last hour from the journal and draws it.
func (h *Handler) finishedChart(ctx context.Context, now time.Time) (chart, error) {
	var c chart
	rows, err := h.q.Pool().Query(ctx, finishedPerMinuteSQL, now)
	if err != nil {
		return c, err
	}
	defer rows.Close()
	for rows.Next() {
		var minute int
		var status string
		var n int64
		if err := rows.Scan(&minute, &status, &n); err != nil {
			return c, err
		}
		if minute < 0 || minute >= chartMinutes {
			continue
		}
		i := chartMinutes - 1 - minute
		if status == "complete" {
			c.Complete[i] += n
			c.TotalComplete += n
		} else {
			c.Failed[i] += n
			c.TotalFailed += n
		}
	}
	if err := rows.Err(); err != nil {
		return c, err
	}
	for i := range c.Complete {
		c.Max = max(c.Max, c.Complete[i]+c.Failed[i])
	}
	c.SVG = c.draw()
	return c, nil
}

// draw renders the chart as inline SVG: stacked bars (complete below,
// failed above), a scale line at the maximum, and minute labels. Only
// numbers go into the markup, so nothing needs escaping.
func (c *chart) draw() template.HTML {
	const (
		width, height = 720.0, 160.0
		left, bottom  = 44.0, 20.0
		top           = 8.0
	)
	plotW, plotH := width-left-4, height-bottom-top
	barW := plotW / chartMinutes
	scale := float64(c.Max)
	if scale == 0 {
		scale = 1
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" viewBox="0 0 %.0f %.0f" role="img" aria-label="Jobs finished per minute over the last hour: %d complete, %d failed">`,
		width, height, c.TotalComplete, c.TotalFailed)
	fmt.Fprintf(&b, `<line class="axis" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f"/>`, left, top+plotH, width-4, top+plotH)
	fmt.Fprintf(&b, `<line class="grid" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f"/>`, left, top, width-4, top)
	fmt.Fprintf(&b, `<text class="label" x="%.1f" y="%.1f" text-anchor="end">%s</text>`, left-6, top+4, axisCount(c.Max))
	fmt.Fprintf(&b, `<text class="label" x="%.1f" y="%.1f" text-anchor="end">0</text>`, left-6, top+plotH+4)
	for i := range chartMinutes {
		x := left + float64(i)*barW + 1
		hc := float64(c.Complete[i]) / scale * plotH
		hf := float64(c.Failed[i]) / scale * plotH
		if c.Complete[i] > 0 {
			fmt.Fprintf(&b, `<rect class="bar-complete" x="%.1f" y="%.1f" width="%.1f" height="%.1f"><title>%d min ago: %d complete</title></rect>`,
				x, top+plotH-hc, barW-2, hc, chartMinutes-1-i, c.Complete[i])
		}
		if c.Failed[i] > 0 {
			fmt.Fprintf(&b, `<rect class="bar-failed" x="%.1f" y="%.1f" width="%.1f" height="%.1f"><title>%d min ago: %d failed</title></rect>`,
				x, top+plotH-hc-hf, barW-2, hf, chartMinutes-1-i, c.Failed[i])
		}
	}
	for _, m := range []int{60, 45, 30, 15, 0} {
		x := left + float64(chartMinutes-m)*barW
		label := fmt.Sprintf("-%dm", m)
		if m == 0 {
			label = "now"
		}
		fmt.Fprintf(&b, `<text class="label" x="%.1f" y="%.1f" text-anchor="middle">%s</text>`, min(x, width-16), height-4, label)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) // numbers and fixed text only
}

// axisCount writes the scale's number in the few characters the chart's
// left margin holds: 9,999, then 10k, 876k, 1.2M, 35M.
func axisCount(n int64) string {
	switch {
	case n < 10_000:
		return formatCount(n)
	case n < 999_500:
		return fmt.Sprintf("%dk", (n+500)/1000)
	case n < 9_950_000:
		return fmt.Sprintf("%.1fM", float64(n)/1e6)
	}
	return fmt.Sprintf("%dM", (n+500_000)/1_000_000)
}
