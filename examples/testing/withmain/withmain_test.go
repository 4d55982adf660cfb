// Package withmain_test shows the TestMain a package needs when its
// PostgreSQL server would outlive the test process (Docker, or local
// binaries outside Linux); it is harmless elsewhere.
package withmain_test

import (
	"os"
	"testing"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/computetest"
)

func TestMain(m *testing.M) { os.Exit(computetest.Run(m)) }

func TestQueueUnderRun(t *testing.T) {
	q := computetest.NewQueue(t)
	if _, err := q.Enqueue(t.Context(), compute.Job{Queue: "emails", Config: `{}`}); err != nil {
		t.Fatal(err)
	}
	computetest.RequireEnqueued(t, q, computetest.Match{Queue: "emails"})
}
