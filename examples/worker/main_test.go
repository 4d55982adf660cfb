package main

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/computeplatform/compute"
)

// TestHandle checks that the handler does what each config asks, and fails
// bad configs permanently.
func TestHandle(t *testing.T) {
	tests := []struct {
		config    string
		outputs   []string
		err       bool
		permanent bool
	}{
		{config: ``},
		{config: `{}`},
		{config: `{"sleep_ms": 1, "outputs": ["a", "b"]}`, outputs: []string{"a", "b"}},
		{config: `{"fail": true}`, err: true},
		{config: `not json`, err: true, permanent: true},
		{config: `{"sleep_ms": "x"}`, err: true, permanent: true},
		{config: `{"unknown": 1}`, err: true, permanent: true},
		{config: `{} {}`, err: true, permanent: true},
	}
	for _, tt := range tests {
		outputs, err := handle(context.Background(), &compute.Job{Config: tt.config})
		if (err != nil) != tt.err || errors.Is(err, compute.ErrPermanent) != tt.permanent {
			t.Errorf("config %q: error %v; want error %v, permanent %v", tt.config, err, tt.err, tt.permanent)
		}
		if !slices.Equal(outputs, tt.outputs) {
			t.Errorf("config %q: outputs %q; want %q", tt.config, outputs, tt.outputs)
		}
	}
}

// TestHandleHonoursContext checks that a sleeping job returns its context's
// cause when cancelled, unless its config says to ignore it.
func TestHandleHonoursContext(t *testing.T) {
	stop := errors.New("stop")
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(stop)
	if _, err := handle(ctx, &compute.Job{Config: `{"sleep_ms": 60000}`}); !errors.Is(err, stop) {
		t.Errorf("cancelled sleep returned %v; want the context's cause", err)
	}
	outputs, err := handle(ctx, &compute.Job{Config: `{"sleep_ms": 1, "ignore_cancel": true, "outputs": ["x"]}`})
	if err != nil || !slices.Equal(outputs, []string{"x"}) {
		t.Errorf("ignore_cancel returned %q, %v; want [x], nil", outputs, err)
	}
}

// TestHandlePanics checks that a config asking for a panic gets one.
func TestHandlePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("no panic")
		}
	}()
	_, _ = handle(context.Background(), &compute.Job{Config: `{"panic": true}`})
}
