package dashboard

import (
	"regexp"
	"strings"
	"testing"
)

// TestChartScaleFitsTheMargin: the scale's label at the top of the chart
// is short enough for the 44-unit margin left of the bars (about six
// characters at the label's size); "875,592" lost its first digit there.
func TestChartScaleFitsTheMargin(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 9_999: "9,999", 10_000: "10k", 875_592: "876k", 999_499: "999k",
		999_500: "1.0M", 1_234_567: "1.2M", 9_949_999: "9.9M", 9_950_000: "10M", 35_400_000: "35M"} {
		c := chart{Max: n}
		svg := string(c.draw())
		if !strings.Contains(svg, `text-anchor="end">`+want+`</text>`) {
			t.Errorf("scale %d: want the label %q in\n%s", n, want, svg[:min(300, len(svg))])
		}
		for _, m := range endLabel.FindAllStringSubmatch(svg, -1) {
			if len([]rune(m[1])) > 6 {
				t.Errorf("scale %d: the label %q is longer than 6 characters", n, m[1])
			}
		}
	}
}

// endLabel finds the chart's right-aligned labels (its scale).
var endLabel = regexp.MustCompile(`text-anchor="end">([^<]*)</text>`)
