package main

import (
	"errors"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

// TestHealthzFailsWithTheGateway: /healthz answers 200 while the gateway
// serves and 503 once it reports a fatal failure (its epoll failed), and
// `kpush healthcheck` turns that into a non-zero exit.
func TestHealthzFailsWithTheGateway(t *testing.T) {
	var failure atomic.Pointer[error]
	srv := httptest.NewServer(healthz(func() error {
		if p := failure.Load(); p != nil {
			return *p
		}
		return nil
	}))
	defer srv.Close()
	if code := cmdHealthcheck([]string{"-url", srv.URL}); code != 0 {
		t.Fatalf("healthcheck of a serving gateway exited %d, want 0", code)
	}
	err := errors.New("gateway: read poller failed: epoll_wait: bad file descriptor")
	failure.Store(&err)
	if code := cmdHealthcheck([]string{"-url", srv.URL}); code != 1 {
		t.Fatalf("healthcheck of a failed gateway exited %d, want 1", code)
	}
}
