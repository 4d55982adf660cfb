package main

import (
	"context"
	"strings"
	"testing"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/internal/testdb"
)

// TestDirectURLThroughPgBouncer: with --database-url through PgBouncer in
// transaction mode, migrate fails and names --direct-url; with
// --direct-url (or DIRECT_URL) it migrates, events follow listens on the
// direct connection, and migrate refuses a --direct-url through the pooler.
func TestDirectURLThroughPgBouncer(t *testing.T) {
	db := testdb.New(t)
	pooled := testdb.NewBouncer(t, db)

	r := wantExit(t, 1, "migrate", "--database-url", pooled)
	if !strings.Contains(r.stderr, "pooler in transaction mode") || !strings.Contains(r.stderr, "--direct-url") {
		t.Errorf("migrate through PgBouncer without --direct-url: stderr does not name the pooler and --direct-url:\n%s", r.stderr)
	}

	t.Setenv("DATABASE_URL", pooled)
	t.Setenv("DIRECT_URL", db)
	must(t, "migrate")
	v := mustJSON[struct{ Current, Latest int64 }](t, "migrate", "status")
	if v.Current == 0 || v.Current != v.Latest {
		t.Fatalf("after migrate with DIRECT_URL: %+v", v)
	}
	t.Setenv("DIRECT_URL", "")
	must(t, "migrate", "--to", "1", "--yes", "--direct-url", db)
	must(t, "--direct-url", db, "migrate")
	if v := mustJSON[struct{ Current, Latest int64 }](t, "migrate", "status"); v.Current != v.Latest {
		t.Fatalf("after migrate down and up with --direct-url: %+v", v)
	}

	q, err := compute.Open(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	out, stop := follow(t, "--database-url", pooled, "--direct-url", db)
	// Only a listening journal hub announces itself (compute.meta's
	// journal_listened_until), and through the pooler it does not listen.
	waitFor(t, "events follow to listen on the direct connection", func() bool {
		return count(t, q, `SELECT count(*) FROM compute.meta WHERE key = 'journal_listened_until'`) > 0
	})
	id := enqueueMany(t, q, "direct", 1)[0]
	waitFor(t, "the new job's event", func() bool { return strings.Contains(out.String(), id) })
	stop()

	r = wantExit(t, 1, "migrate", "--database-url", pooled, "--direct-url", pooled)
	if !strings.Contains(r.stderr, "WithDirectURL's connection goes through one too") {
		t.Errorf("migrate with a --direct-url through the pooler: stderr does not refuse it:\n%s", r.stderr)
	}
}
