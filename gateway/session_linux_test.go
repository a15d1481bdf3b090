package gateway

import (
	"strings"
	"testing"
	"time"

	"github.com/kpush/kpush/router"
)

// Sessions without a socket: requests go straight to handleRequest on a
// connection that has no descriptor, and the test reads what its outbound
// queue holds. The Server is built but never serves.

func newSessionConn(t *testing.T, mutate func(*Config)) (*Server, *conn) {
	t.Helper()
	cfg := Config{Listen: "127.0.0.1:0"}
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := New(cfg, router.New(), nil, nil)
	if err != nil {
		t.Fatalf("gateway.New: %v", err)
	}
	t.Cleanup(func() {
		s.readPoller.Release()
		s.writePoller.Release()
	})
	return s, &conn{srv: s, fd: -1, ip: "192.0.2.1"}
}

// payloads returns the payloads queued on c, and forgets them as written.
func payloads(t *testing.T, c *conn) []string {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, f := range c.out.frames {
		out = append(out, string(payloadOf(t, f.Data)))
	}
	c.out.consume(c.out.bytes)
	return out
}

func TestSessionSubscribeFromHistory(t *testing.T) {
	s, c := newSessionConn(t, nil)
	keep := &router.Retention{Last: true, HistoryRecords: 10, HistoryBytes: 1 << 20, HistoryAge: time.Minute}
	for o := int64(1); o <= 4; o++ {
		s.Publish(&Message{Channel: "h.a", Offset: o, Epoch: 1, Data: []byte(`1`)}, keep)
	}
	s.handleRequest(c, []byte(`{"op":"subscribe","id":1,"channels":["h.a"],"since":{"h.a":{"0":2}}}`))
	got := strings.Join(payloads(t, c), "\n")
	want := `{"op":"msg","ch":"h.a","p":0,"o":3,"ts":0,"data":1}` + "\n" +
		`{"op":"msg","ch":"h.a","p":0,"o":4,"ts":0,"data":1}` + "\n" +
		`{"op":"ok","id":1,"recovered":{"h.a":true}}`
	if got != want {
		t.Fatalf("resume from history queued\n%s\nwant\n%s", got, want)
	}
	// Live records follow; one at or below the client's position is not
	// sent again.
	s.Publish(&Message{Channel: "h.a", Offset: 5, Epoch: 1, Data: []byte(`1`)}, keep)
	if got := payloads(t, c); len(got) != 1 || !strings.Contains(got[0], `"o":5`) {
		t.Fatalf("live record after the resume: %q", got)
	}
	// A second connection asks for the snapshot only.
	c2 := &conn{srv: s, fd: -1, ip: "192.0.2.2"}
	s.handleRequest(c2, []byte(`{"op":"subscribe","id":2,"channels":["h.a"],"snapshot":true}`))
	got2 := payloads(t, c2)
	if len(got2) != 2 || !strings.Contains(got2[0], `"snap":true`) || !strings.Contains(got2[0], `"o":5`) || got2[1] != `{"op":"ok","id":2}` {
		t.Fatalf("subscribe with snapshot queued %q", got2)
	}
	// Unsubscribe: no more records.
	s.handleRequest(c, []byte(`{"op":"unsubscribe","id":3,"channels":["h.a"]}`))
	s.Publish(&Message{Channel: "h.a", Offset: 6, Epoch: 1, Data: []byte(`1`)}, keep)
	if got := payloads(t, c); len(got) != 1 || got[0] != `{"op":"ok","id":3}` {
		t.Fatalf("after unsubscribe: %q", got)
	}
	s.router.Unsubscribe(c2, "h.a")
}

// TestSessionSubscriptionBound: a subscribe that would hold more than
// max_subscriptions channels is refused as a whole.
func TestSessionSubscriptionBound(t *testing.T) {
	s, c := newSessionConn(t, func(cfg *Config) { cfg.MaxSubscriptions = 2 })
	s.handleRequest(c, []byte(`{"op":"subscribe","id":1,"channels":["b.a","b.b"]}`))
	s.handleRequest(c, []byte(`{"op":"subscribe","id":2,"channels":["b.c"]}`))
	got := payloads(t, c)
	if len(got) != 2 || got[0] != `{"op":"ok","id":1}` || !strings.Contains(got[1], `"code":"too_many_subscriptions"`) {
		t.Fatalf("replies %q", got)
	}
	if n := s.Publish(&Message{Channel: "b.c", Data: []byte(`1`)}, nil); n != 0 {
		t.Fatalf("the refused channel reached %d connections", n)
	}
	s.router.Unsubscribe(c, "b.a", "b.b")
}
