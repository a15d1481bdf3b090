package main

import (
	"errors"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

// TestHealthzFailsWithTheGateway: /healthz answers 200 while the gateway
// serves and 503 while a partition reader is stalled or once the gateway
// reports a fatal failure (its epoll failed), and
// `kpush healthcheck` turns that into a non-zero exit.
func TestHealthzFailsWithTheGateway(t *testing.T) {
	var failure atomic.Pointer[error]
	var stalled atomic.Pointer[[]string]
	srv := httptest.NewServer(healthz(func() error {
		if p := failure.Load(); p != nil {
			return *p
		}
		return nil
	}, func() []string {
		if p := stalled.Load(); p != nil {
			return *p
		}
		return nil
	}))
	defer srv.Close()
	if code := cmdHealthcheck([]string{"-url", srv.URL}); code != 0 {
		t.Fatalf("healthcheck of a serving gateway exited %d, want 0", code)
	}
	// A partition reader that stopped turning is this pod's own fault.
	st := []string{"ticks[3]"}
	stalled.Store(&st)
	if code := cmdHealthcheck([]string{"-url", srv.URL}); code != 1 {
		t.Fatalf("healthcheck with a stalled partition reader exited %d, want 1", code)
	}
	stalled.Store(nil)
	if code := cmdHealthcheck([]string{"-url", srv.URL}); code != 0 {
		t.Fatalf("healthcheck once the reader turns again exited %d, want 0", code)
	}
	err := errors.New("gateway: read poller failed: epoll_wait: bad file descriptor")
	failure.Store(&err)
	if code := cmdHealthcheck([]string{"-url", srv.URL}); code != 1 {
		t.Fatalf("healthcheck of a failed gateway exited %d, want 1", code)
	}
}
