package shop_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/computeplatform/compute"
	"github.com/computeplatform/compute/computetest"

	"example.com/shop"
)

// This package has no TestMain: computetest starts its server on first use.

// newShop is a Queue on a fresh database with the shop's own table.
func newShop(t *testing.T) *compute.Queue {
	t.Helper()
	q := computetest.NewQueue(t)
	if _, err := q.Pool().Exec(t.Context(), `CREATE TABLE customers (email text PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	return q
}

// begin starts a transaction, rolled back at cleanup unless the test ends it.
func begin(t *testing.T, q *compute.Queue) pgx.Tx {
	t.Helper()
	tx, err := q.Pool().Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	return tx
}

func TestSignUpEnqueuesTheWelcomeEmailWithTheCustomer(t *testing.T) {
	t.Parallel()
	q := newShop(t)
	ctx := t.Context()
	tx := begin(t, q)
	if err := shop.SignUp(ctx, q, tx, "ada@example.com"); err != nil {
		t.Fatal(err)
	}
	welcome := computetest.Match{Queue: "emails", Config: `{"to": "ada@example.com", "template": "welcome"}`, UniqueKey: "welcome:ada@example.com"}
	computetest.RequireEnqueuedTx(t, tx, welcome)
	computetest.RequireNotEnqueued(t, q, welcome) // not before the commit
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	computetest.RequireEnqueued(t, q, welcome)
}

func TestSignUpRolledBackEnqueuesNothing(t *testing.T) {
	t.Parallel()
	q := newShop(t)
	ctx := t.Context()
	tx := begin(t, q)
	if err := shop.SignUp(ctx, q, tx, "bob@example.com"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	computetest.RequireNotEnqueued(t, q, computetest.Match{Queue: "emails"})
}

func TestSendEmailOutcomes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		err    error
		result computetest.Result
	}{
		{"sent", nil, computetest.Complete},
		{"mail server down", errors.New("connection refused"), computetest.Retried},
		{"bounced", shop.ErrBounced, computetest.Failed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			q := newShop(t)
			if _, err := q.Enqueue(t.Context(), compute.Job{Queue: "emails", Config: `{"to": "ada@example.com", "template": "welcome"}`}); err != nil {
				t.Fatal(err)
			}
			var sentTo string
			out := computetest.WorkOne(t, q, "emails", shop.SendEmail(func(_ context.Context, to, _ string) error {
				sentTo = to
				return tc.err
			}))
			if out.Result != tc.result || sentTo != "ada@example.com" {
				t.Fatalf("WorkOne = %s (err %v), sent to %q; want %s, sent to ada@example.com", out.Result, out.Err, sentTo, tc.result)
			}
		})
	}
}

func TestDrainSendsEveryWelcome(t *testing.T) {
	t.Parallel()
	q := newShop(t)
	for _, config := range []string{`{"to": "a@example.com"}`, `{"to": "b@example.com"}`, `not json`} {
		if _, err := q.Enqueue(t.Context(), compute.Job{Queue: "emails", Config: config}); err != nil {
			t.Fatal(err)
		}
	}
	counts := computetest.Drain(t, q, map[string]compute.Handler{
		"emails": shop.SendEmail(func(context.Context, string, string) error { return nil }),
	})
	if want := (computetest.Counts{Complete: 2, Failed: 1}); counts != want {
		t.Fatalf("Drain = %+v, want %+v", counts, want)
	}
}
