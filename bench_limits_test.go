package compute_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/computeplatform/compute"
)

// BenchmarkRateLimitedClaim claims one job per op from a queue with a
// RateLimit of 100,000 per hour whose window already holds a given number
// of starts (rows of compute.starts), written before the timer starts. A
// gated claim reads the starts in the window from their running counts
// (compute.start_counts), so the cost should not grow as the window fills;
// before those counts it counted the rows at every claim (9.7 ms at 99,000
// starts). "keyed" adds a KeyRateLimit, over 100 keys. At 100,000 starts
// the limit is reached and the claim returns no job. It reports ms/claim
// and jobs/claim.
func BenchmarkRateLimitedClaim(b *testing.B) {
	const limit = 100_000
	for _, keyed := range []bool{false, true} {
		for _, starts := range []int{0, 10_000, 50_000, 99_000, limit} {
			name := fmt.Sprintf("plain/starts=%d", starts)
			if keyed {
				name = fmt.Sprintf("keyed/starts=%d", starts)
			}
			b.Run(name, func(b *testing.B) {
				q := newQueue(b)
				s := compute.QueueSettings{RateLimit: limit, RatePeriod: time.Hour}
				if keyed {
					s.KeyRateLimit = limit
				}
				setSettings(b, q, "rl", s)
				// The starts spread over the last 58 minutes, over 100 keys
				// when keyed, as steady traffic would leave them.
				mustExec(b, q.Pool(), `
INSERT INTO compute.starts (queue, partition_key, at)
SELECT 'rl', CASE WHEN $2 THEN 'k' || (i % 100) END, now() - (i % 3480) * interval '1 second'
FROM generate_series(1, $1) i`, starts, keyed)
				jobs := make([]compute.Job, b.N)
				for i := range jobs {
					jobs[i] = compute.Job{Queue: "rl", Config: fmt.Sprintf(`{"n":%d}`, i)}
					if keyed {
						jobs[i].PartitionKey = fmt.Sprintf("k%d", i%100)
					}
				}
				for len(jobs) > 0 {
					chunk := jobs[:min(len(jobs), 10_000)]
					if _, err := q.EnqueueMany(b.Context(), chunk); err != nil {
						b.Fatal(err)
					}
					jobs = jobs[len(chunk):]
				}
				mustExec(b, q.Pool(), `ANALYZE compute.starts`)
				mustExec(b, q.Pool(), `ANALYZE compute.jobs`)
				claimed := 0
				b.ResetTimer()
				for range b.N {
					claimed += len(claimN(b, q, "rl", 1))
				}
				b.StopTimer()
				b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/claim")
				b.ReportMetric(float64(claimed)/float64(b.N), "jobs/claim")
			})
		}
	}
}
