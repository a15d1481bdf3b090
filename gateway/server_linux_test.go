package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/kpush/kpush/gateway/client"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

type testServer struct {
	*Server
	url string
	reg *prometheus.Registry
}

// startServer runs a gateway on a random loopback port (serveGateway).
func startServer(t *testing.T, cfg Config) *testServer {
	t.Helper()
	g := serveGateway(t, cfg, serveOptions{})
	return &testServer{Server: g.srv, url: g.url, reg: g.reg}
}

func dialT(t *testing.T, url string, h http.Header) *client.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, url, &client.DialOptions{Header: h})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.NetConn().Close() })
	return c
}

func readFrame(t *testing.T, c *client.Conn) *client.Frame {
	t.Helper()
	c.NetConn().SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := c.Read()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return f
}

func subscribeT(t *testing.T, c *client.Conn, chs ...string) {
	t.Helper()
	id, err := c.Send(&client.Request{Op: "subscribe", Channels: chs})
	if err != nil {
		t.Fatal(err)
	}
	if f := readFrame(t, c); f.Op != "ok" || f.ID != id {
		t.Fatalf("subscribe reply %+v", f)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSlowConsumerClosedOthersKeepReceiving(t *testing.T) {
	// Batches stay well under the 64 KiB bound: bytes a writev has just
	// sent count as queued until the writer takes them off the queue.
	const total, batch = 50000, 16
	s := startServer(t, Config{MaxQueueBytes: 64 << 10, MaxQueueMessages: 1 << 20})
	slow := dialT(t, s.url, nil)
	subscribeT(t, slow, "c")
	fast := dialT(t, s.url, nil)
	subscribeT(t, fast, "c")

	// The fast client reads in the background and reports its progress.
	progress := make(chan int64, 1024)
	go func() {
		defer close(progress)
		for {
			fast.NetConn().SetReadDeadline(time.Now().Add(10 * time.Second))
			f, err := fast.Read()
			if err != nil {
				return
			}
			if f.Op == "msg" {
				progress <- f.O
			}
		}
	}()
	// Publish in batches below the queue bound, letting the fast client
	// catch up after each: it is never slow, the silent one soon is.
	data := []byte(`"` + strings.Repeat("x", 1000) + `"`)
	slowClosed := func() bool { return testutil.ToFloat64(s.metrics.slowConsumers.WithLabelValues("disconnect")) == 1 }
	var last int64 = -1
	publishBatch := func(from int64) {
		for i := from; i < from+batch; i++ {
			s.Publish(&Message{Channel: "c", Offset: i, Data: data}, nil)
		}
		for last < from+batch-1 {
			o, ok := <-progress
			if !ok {
				t.Fatalf("fast client stopped at offset %d", last)
			}
			if o != last+1 {
				t.Fatalf("fast client got offset %d after %d", o, last)
			}
			last = o
		}
	}
	next := int64(0)
	for ; !slowClosed(); next += batch {
		if next >= total {
			t.Fatalf("%d records published and the silent client is still not a slow consumer", next)
		}
		publishBatch(next)
	}
	// The silent client now reads: its backlog, then close 4008. (Had it
	// stayed silent past the close grace period it would just be cut.)
	var code ws.StatusCode
	for {
		slow.NetConn().SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := slow.ReadRaw()
		var ce client.CloseError
		if errors.As(err, &ce) {
			code = ce.Code
			break
		}
		if err != nil {
			t.Fatalf("slow client: %v before a close frame", err)
		}
	}
	if code != CloseSlowConsumer {
		t.Fatalf("slow client closed with %d, want 4008", code)
	}
	// The fast client is unaffected and keeps receiving.
	publishBatch(next)
	if n := testutil.ToFloat64(s.metrics.slowConsumers.WithLabelValues("disconnect")); n != 1 {
		t.Fatalf("kpush_slow_consumers_total = %v, want 1", n)
	}
	waitUntil(t, "the slow connection to leave the router", func() bool { return s.router.Subscribers("c") == 1 })
}

func TestPingIdleAndClientPing(t *testing.T) {
	s := startServer(t, Config{PingInterval: 200 * time.Millisecond, IdleTimeout: 1500 * time.Millisecond})
	// A client that answers pings (client.Conn does, inside Read) stays.
	alive := dialT(t, s.url, nil)
	// A raw client that never answers is closed after idle_timeout.
	dead, err := net.Dial("tcp", strings.TrimPrefix(strings.TrimSuffix(s.url, "/ws"), "ws://"))
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	u, _ := url.Parse(s.url)
	if _, _, err := (ws.Dialer{}).Upgrade(dead, u); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "two connections", func() bool { return s.Connections() == 2 })

	// WebSocket-level ping from the client is answered with a pong carrying
	// the same payload; it surfaces here as the connection staying healthy.
	pings := 0
	deadline := time.Now().Add(2500 * time.Millisecond)
	for time.Now().Before(deadline) {
		id, _ := alive.Send(&client.Request{Op: "ping"})
		if f := readFrame(t, alive); f.Op != "pong" || f.ID != id {
			t.Fatalf("got %+v, want pong %d", f, id)
		}
		pings++
		time.Sleep(100 * time.Millisecond)
	}
	waitUntil(t, "the silent connection to be closed", func() bool { return s.Connections() == 1 })
	// The silent client saw server pings and then a close frame.
	dead.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, _ := io.ReadAll(dead)
	if !containsOpcode(b, ws.OpPing) || !containsOpcode(b, ws.OpClose) {
		t.Fatalf("silent client received %d bytes without a ping and a close frame", len(b))
	}
}

// containsOpcode scans unmasked server frames for op.
func containsOpcode(b []byte, op ws.OpCode) bool {
	for len(b) >= 2 {
		n, h := int(b[1]&0x7f), 2
		if n == 126 {
			n, h = int(b[2])<<8|int(b[3]), 4
		}
		if ws.OpCode(b[0]&0x0f) == op {
			return true
		}
		if h+n > len(b) {
			return false
		}
		b = b[h+n:]
	}
	return false
}

func TestHandshakeRejections(t *testing.T) {
	s := startServer(t, Config{MaxConnections: 2, AllowedOrigins: []string{"https://app.example.com"}})
	ctx := context.Background()
	status := func(h http.Header) int {
		_, err := client.Dial(ctx, s.url, &client.DialOptions{Header: h})
		var se ws.StatusError
		if errors.As(err, &se) {
			return int(se)
		}
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		return 101
	}
	if got := status(http.Header{"Origin": {"https://evil.example"}}); got != http.StatusForbidden {
		t.Fatalf("foreign origin: status %d, want 403", got)
	}
	dialT(t, s.url, http.Header{"Origin": {"https://app.example.com"}})
	dialT(t, s.url, nil) // non-browser clients send no Origin
	waitUntil(t, "two connections", func() bool { return s.Connections() == 2 })
	if got := status(nil); got != http.StatusServiceUnavailable {
		t.Fatalf("over max_connections: status %d, want 503", got)
	}
	if n := testutil.ToFloat64(s.metrics.rejected.WithLabelValues("origin")); n != 1 {
		t.Fatalf("kpush_rejected_total{reason=origin} = %v", n)
	}
	if n := testutil.ToFloat64(s.metrics.rejected.WithLabelValues("max_connections")); n != 1 {
		t.Fatalf("kpush_rejected_total{reason=max_connections} = %v", n)
	}
}

func TestHTTPFallbackAndGoroutinesIndependentOfConnections(t *testing.T) {
	s := startServer(t, Config{})
	s.HandleHTTP(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "page:"+r.URL.Path) }))
	base := strings.Replace(strings.TrimSuffix(s.url, "/ws"), "ws://", "http://", 1)
	resp, err := http.Get(base + "/demo")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "page:/demo" {
		t.Fatalf("fallback served %q", body)
	}
	// A plain GET of the WebSocket path is a bad handshake, not a page,
	// both as a connection's first request and on a kept-alive one.
	for _, keepAlive := range []bool{false, true} {
		cl := &http.Client{Transport: &http.Transport{DisableKeepAlives: !keepAlive}}
		if keepAlive {
			r, err := cl.Get(base + "/demo")
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, r.Body)
			r.Body.Close()
		}
		resp, err = cl.Get(base + "/ws")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("GET /ws without upgrade (keep-alive %v): %d, want 400", keepAlive, resp.StatusCode)
		}
	}
	// Handshakes and idle connections add no goroutines.
	before := runtime.NumGoroutine()
	for i := 0; i < 200; i++ {
		subscribeT(t, dialT(t, s.url, nil), fmt.Sprintf("ch.%d", i))
	}
	waitUntil(t, "200 connections", func() bool { return s.Connections() == 200 })
	// The test's own client readers are not running (nothing reads), so the
	// goroutine count is the server's plus a constant.
	if after := runtime.NumGoroutine(); after > before+10 {
		t.Fatalf("goroutines went from %d to %d with 200 idle connections", before, after)
	}
}

func TestFragmentedMessageAndCloseEcho(t *testing.T) {
	s := startServer(t, Config{})
	c := dialT(t, s.url, nil)
	// A request split over three frames is reassembled.
	nc := c.NetConn()
	parts := []string{`{"op":"pi`, `ng","i`, `d":9}`}
	for i, p := range parts {
		op := ws.OpContinuation
		if i == 0 {
			op = ws.OpText
		}
		f := ws.NewFrame(op, i == len(parts)-1, []byte(p))
		if err := ws.WriteFrame(nc, ws.MaskFrameInPlace(f)); err != nil {
			t.Fatal(err)
		}
	}
	if f := readFrame(t, c); f.Op != "pong" || f.ID != 9 {
		t.Fatalf("got %+v, want pong 9", f)
	}
	// A client close is echoed and the connection released.
	if err := ws.WriteFrame(nc, ws.MaskFrameInPlace(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye")))); err != nil {
		t.Fatal(err)
	}
	_, err := c.Read()
	var ce client.CloseError
	if !errors.As(err, &ce) || ce.Code != ws.StatusNormalClosure {
		t.Fatalf("after client close: %v, want an echoed 1000", err)
	}
	waitUntil(t, "the connection to be released", func() bool { return s.Connections() == 0 })
}
