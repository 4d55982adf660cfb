package compute_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/computeplatform/compute"
)

// TestMetaRoundTrip checks GetMeta, SetMeta (an upsert) and DeleteMeta, with
// lengths counted in characters as VARCHAR counts them.
func TestMetaRoundTrip(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newQueue(t)
	if _, err := q.GetMeta(ctx, "colour"); !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("get of a missing key: %v, want ErrNotFound", err)
	}
	if err := q.SetMeta(ctx, "colour", "red"); err != nil {
		t.Fatal(err)
	}
	if v, err := q.GetMeta(ctx, "colour"); err != nil || v != "red" {
		t.Errorf("get: %q, %v; want red", v, err)
	}
	if err := q.SetMeta(ctx, "colour", "blue"); err != nil {
		t.Fatalf("set of an existing key: %v", err)
	}
	if v, err := q.GetMeta(ctx, "colour"); err != nil || v != "blue" {
		t.Errorf("get after upsert: %q, %v; want blue", v, err)
	}
	if n := queryOne[int64](t, q.Pool(), `SELECT count(*) FROM compute.meta WHERE key = 'colour'`); n != 1 {
		t.Errorf("%d rows for the key, want 1", n)
	}

	// Three characters (nine bytes) and 256 characters (512 bytes) fit.
	key, value := "日本語", strings.Repeat("é", 256)
	if err := q.SetMeta(ctx, key, value); err != nil {
		t.Fatalf("set of a multibyte key and value at the limits: %v", err)
	}
	if v, err := q.GetMeta(ctx, key); err != nil || v != value {
		t.Errorf("get of the multibyte key: %d bytes, %v", len(v), err)
	}

	if err := q.DeleteMeta(ctx, "colour"); err != nil {
		t.Fatal(err)
	}
	if _, err := q.GetMeta(ctx, "colour"); !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("get after delete: %v, want ErrNotFound", err)
	}
	if err := q.DeleteMeta(ctx, "colour"); err != nil {
		t.Errorf("delete of a missing key: %v, want nil", err)
	}
	if v, err := q.GetMeta(ctx, key); err != nil || v != value {
		t.Errorf("deleting one key touched another: %v", err)
	}
}
