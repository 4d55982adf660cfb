package compute_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestRootPackageLinksOnlyItsDependencies: a program that imports only
// compute links pgx (with pgxpool), goose, uuid, robfig/cron, what they
// need, and the standard library. The command, the test helpers and any
// telemetry integration bring their own dependencies elsewhere.
func TestRootPackageLinksOnlyItsDependencies(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	allowed := []string{
		"github.com/computeplatform/compute",
		"github.com/jackc/",             // pgx, pgxpool, puddle, pgpassfile, pgservicefile
		"github.com/pressly/goose/",     // goose
		"github.com/mfridman/",          // goose's interpolate
		"github.com/sethvargo/go-retry", // goose
		"go.uber.org/multierr",          // goose
		"github.com/google/uuid",
		"github.com/robfig/cron/",
		"golang.org/x/text/", // pgx
		"golang.org/x/sync/", // puddle, goose
	}
	for _, pkg := range strings.Fields(string(out)) {
		first, _, _ := strings.Cut(pkg, "/")
		if !strings.Contains(first, ".") || strings.HasPrefix(pkg, "vendor/") {
			continue // the standard library
		}
		ok := false
		for _, a := range allowed {
			ok = ok || strings.HasPrefix(pkg, a)
		}
		if !ok {
			t.Errorf("the root package links %s, which is not one of its dependencies", pkg)
		}
	}
}
