package gateway

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/kpush/kpush/gateway/client"
)

// SetLimits changes what new handshakes and requests meet on a running
// server, keeps what open connections already hold, and ignores an invalid
// config as a whole.
func TestSetLimitsOnRunningServer(t *testing.T) {
	cfg := Config{MaxConnections: 2, MaxSubscriptions: 1, AllowedOrigins: []string{"https://a.example"}}
	s := startServer(t, cfg)
	status := func(origin string) int {
		var h http.Header
		if origin != "" {
			h = http.Header{"Origin": {origin}}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := client.Dial(ctx, s.url, &client.DialOptions{Header: h})
		var se ws.StatusError
		if errors.As(err, &se) {
			return int(se)
		}
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		t.Cleanup(func() { c.NetConn().Close() })
		return 101
	}
	subscribe := func(c *client.Conn, ch string) string {
		if _, err := c.Send(&client.Request{Op: "subscribe", Channels: []string{ch}}); err != nil {
			t.Fatal(err)
		}
		f := readFrame(t, c)
		if f.Op == "ok" {
			return "ok"
		}
		return f.Code
	}

	a := dialT(t, s.url, nil)
	dialT(t, s.url, nil)
	waitUntil(t, "two connections", func() bool { return s.Connections() == 2 })
	if got := subscribe(a, "x"); got != "ok" {
		t.Fatalf("first subscription: %s", got)
	}
	if got := subscribe(a, "y"); got != CodeTooManySubscriptions {
		t.Fatalf("second subscription with max_subscriptions 1: %s", got)
	}

	bad := cfg
	bad.MaxSubscriptions = -1
	bad.MaxConnections = 10
	if err := s.SetLimits(bad); err == nil || !strings.Contains(err.Error(), "gateway.max_subscriptions") {
		t.Fatalf("invalid limits: %v, want an error naming gateway.max_subscriptions", err)
	}
	if got := status(""); got != http.StatusServiceUnavailable {
		t.Fatalf("after a rejected SetLimits: status %d, want 503 (max_connections still 2)", got)
	}

	next := cfg
	next.MaxConnections = 3
	next.MaxSubscriptions = 2
	next.AllowedOrigins = []string{"https://b.example"}
	if err := s.SetLimits(next); err != nil {
		t.Fatal(err)
	}
	if got := status("https://a.example"); got != http.StatusForbidden {
		t.Fatalf("origin no longer allowed: status %d, want 403", got)
	}
	if got := status("https://b.example"); got != 101 {
		t.Fatalf("newly allowed origin: status %d, want 101", got)
	}
	if got := subscribe(a, "y"); got != "ok" {
		t.Fatalf("second subscription with max_subscriptions 2 on an open connection: %s", got)
	}

	// Lowering a limit keeps what is held.
	next.MaxConnections = 1
	next.MaxSubscriptions = 1
	if err := s.SetLimits(next); err != nil {
		t.Fatal(err)
	}
	if got := status(""); got != http.StatusServiceUnavailable {
		t.Fatalf("max_connections lowered to 1: status %d, want 503", got)
	}
	// The third connection counts once the server has registered it (the
	// client may see 101 a moment earlier); none of the three is dropped.
	waitUntil(t, "the 3 open connections to be kept", func() bool { return s.Connections() == 3 })
	if got := subscribe(a, "z"); got != CodeTooManySubscriptions {
		t.Fatalf("third subscription with max_subscriptions 1: %s", got)
	}
}
