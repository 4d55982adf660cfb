package compute_test

import (
	"os"
	"testing"

	"github.com/computeplatform/compute/internal/testdb"
)

// TestMain shares one throwaway PostgreSQL server between the package's
// tests and stops it at the end; each test gets its own database.
func TestMain(m *testing.M) { os.Exit(testdb.RunWithExamples(m)) }
