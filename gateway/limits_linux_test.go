package gateway

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/kpush/kpush/gateway/client"
)

// Hostile clients come from 127.0.0.2 and up, the witness from 127.0.0.1,
// so per-address limits on the hostile ones never touch it.

func fromAddr(ip string) *client.DialOptions {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return &client.DialOptions{NetDial: d.DialContext}
}

func rawDial(t testing.TB, ip, addr string) net.Conn {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial from %s: %v", ip, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func upgradeRequest(extra string) string {
	return "GET /ws HTTP/1.1\r\nHost: kpush\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" + extra + "\r\n"
}

func hostileConfig(c *Config) {
	c.AllowedOrigins = []string{"https://good.example"}
	c.MaxConnectionsPerIP = 3
	c.HandshakeTimeout = 300 * time.Millisecond
	c.MaxHeaderBytes = 2048
	c.MaxMessageBytes = 1024
	c.MaxSubscriptions = 3
	c.MaxRequestsPerSecond = 1
	c.RequestBurst = 5
}

func TestHostileClientLimits(t *testing.T) {
	g := startSecGateway(t, hostileConfig)
	w := newWitness(t, g, nil)

	cases := []struct {
		name   string
		reason string // kpush_rejected_total label that must grow
		run    func(t *testing.T)
	}{
		{"origin", "origin", func(t *testing.T) {
			o := fromAddr("127.0.0.2")
			o.Header = http.Header{"Origin": {"https://evil.example"}}
			_, err := dialClient(t, g.url, o)
			if got := handshakeStatus(t, err); got != http.StatusForbidden {
				t.Fatalf("HTTP %d, want 403", got)
			}
			o.Header = http.Header{"Origin": {"https://good.example"}}
			if c, err := dialClient(t, g.url, o); err != nil {
				t.Fatalf("allowed origin refused: %v", err)
			} else {
				c.NetConn().Close()
			}
		}},
		{"connections per address", "max_connections_per_ip", func(t *testing.T) {
			var held []*testClient
			for i := 0; i < 3; i++ {
				held = append(held, mustDial(t, g.url, fromAddr("127.0.0.3")))
			}
			_, err := dialClient(t, g.url, fromAddr("127.0.0.3"))
			if got := handshakeStatus(t, err); got != http.StatusTooManyRequests {
				t.Fatalf("HTTP %d, want 429", got)
			}
			// Another address is not affected, and a freed slot is reusable.
			mustDial(t, g.url, fromAddr("127.0.0.4")).NetConn().Close()
			held[0].NetConn().Close()
			secWaitUntil(t, 10*time.Second, "a slot to free up", func() bool {
				c, err := dialClient(t, g.url, fromAddr("127.0.0.3"))
				if err == nil {
					c.NetConn().Close()
				}
				return err == nil
			})
		}},
		{"handshake timeout", "handshake_timeout", func(t *testing.T) {
			c := rawDial(t, "127.0.0.5", g.addr)
			io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: kpush\r\n") // and then nothing
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadAll(c); err != nil {
				t.Fatalf("slow sender not cut by the handshake timeout: %v", err)
			}
		}},
		{"header size", "header_too_large", func(t *testing.T) {
			c := rawDial(t, "127.0.0.6", g.addr)
			io.WriteString(c, upgradeRequest("X-Padding: "+strings.Repeat("a", 4000)+"\r\n"))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
				t.Fatalf("HTTP %d, want 431", resp.StatusCode)
			}
		}},
		{"frame size", "message_too_big", func(t *testing.T) {
			c := mustDial(t, g.url, fromAddr("127.0.0.7"))
			c.WriteText([]byte(`{"op":"ping","id":1,"x":"` + strings.Repeat("a", 2000) + `"}`))
			if code := c.closeCode(t); code != int(ws.StatusMessageTooBig) {
				t.Fatalf("close %d, want 1009", code)
			}
		}},
		{"binary frame", "binary_frame", func(t *testing.T) {
			c := mustDial(t, g.url, fromAddr("127.0.0.7"))
			c.WriteFrame(ws.OpBinary, []byte{1, 2, 3})
			if code := c.closeCode(t); code != int(ws.StatusUnsupportedData) {
				t.Fatalf("close %d, want 1003", code)
			}
		}},
		{"invalid utf-8", "invalid_utf8", func(t *testing.T) {
			c := mustDial(t, g.url, fromAddr("127.0.0.7"))
			c.WriteText([]byte{'"', 0xff, 0xfe, '"'})
			if code := c.closeCode(t); code != int(ws.StatusInvalidFramePayloadData) {
				t.Fatalf("close %d, want 1007", code)
			}
		}},
		{"too many subscriptions", "too_many_subscriptions", func(t *testing.T) {
			c := mustDial(t, g.url, fromAddr("127.0.0.8"))
			if f := c.subscribe(t, "a", "b"); f.Op != "ok" {
				t.Fatalf("%+v", f)
			}
			if f := c.subscribe(t, "c", "d"); f.Op != "error" || f.Code != CodeTooManySubscriptions {
				t.Fatalf("4 subscriptions with max 3: %+v", f)
			}
			if f := c.subscribe(t, "c"); f.Op != "ok" {
				t.Fatalf("3rd subscription: %+v", f)
			}
		}},
		{"request rate", "rate_limited", func(t *testing.T) {
			c := mustDial(t, g.url, fromAddr("127.0.0.9"))
			// Burst of 5 at 1/s: 5 pongs, then rate_limited, then after 5
			// refusals in a row the connection is closed with 1008.
			var pongs, limited int
			for i := 0; i < 12; i++ {
				if _, err := c.Send(&client.Request{Op: "ping"}); err != nil {
					break
				}
			}
			for f := range c.frames {
				switch {
				case f.Op == "pong":
					pongs++
				case f.Op == "error" && f.Code == CodeRateLimited:
					limited++
				}
			}
			var ce client.CloseError
			if err := <-c.errc; !asCloseError(err, &ce) || ce.Code != ws.StatusPolicyViolation {
				t.Fatalf("ended with %v, want close 1008", err)
			}
			if pongs < 5 || limited < 1 {
				t.Fatalf("%d pongs and %d rate_limited errors before the close", pongs, limited)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := g.rejected(tc.reason)
			tc.run(t)
			secWaitUntil(t, 5*time.Second, fmt.Sprintf("kpush_rejected_total{reason=%q} to grow", tc.reason), func() bool {
				return g.rejected(tc.reason) > before
			})
			w.check(t)
		})
	}
}

func TestGlobalConnectionLimit(t *testing.T) {
	g := startSecGateway(t, func(c *Config) { c.MaxConnections = 2 })
	w := newWitness(t, g, nil)
	mustDial(t, g.url, nil)
	_, err := dialClient(t, g.url, nil)
	if got := handshakeStatus(t, err); got != http.StatusServiceUnavailable {
		t.Fatalf("HTTP %d, want 503", got)
	}
	if g.rejected("max_connections") != 1 {
		t.Fatal("503 not counted")
	}
	w.check(t)
}

func TestTLSHandshakeTimeout(t *testing.T) {
	p := newTestPKI(t)
	g := startTLSGateway(t, p, func(c *Config) { c.HandshakeTimeout = 300 * time.Millisecond })
	w := newWitness(t, g, p.clientTLS())
	c := rawDial(t, "127.0.0.2", g.addr) // connects, never says hello
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("silent TLS client not cut: %v", err)
	}
	secWaitUntil(t, 5*time.Second, "handshake_timeout to be counted", func() bool { return g.rejected("handshake_timeout") == 1 })
	w.check(t)
}

// After a burst of hostile clients has been dealt with, the server is back
// where it started: connections, goroutines and heap.
func TestHostileBurstReturnsToBaseline(t *testing.T) {
	g := startSecGateway(t, func(c *Config) {
		hostileConfig(c)
		c.MaxConnectionsPerIP = 1000
	})
	w := newWitness(t, g, nil)
	w.check(t)
	heap0, gr0 := settledHeap()

	kinds := []func(t *testing.T, ip string){
		func(t *testing.T, ip string) { // binary
			if c, err := dialClient(t, g.url, fromAddr(ip)); err == nil {
				c.WriteFrame(ws.OpBinary, []byte("x"))
				<-c.errc
			}
		},
		func(t *testing.T, ip string) { // oversized frame
			if c, err := dialClient(t, g.url, fromAddr(ip)); err == nil {
				c.WriteText(make([]byte, 5000))
				<-c.errc
			}
		},
		func(t *testing.T, ip string) { // request flood
			if c, err := dialClient(t, g.url, fromAddr(ip)); err == nil {
				for i := 0; i < 50; i++ {
					if _, err := c.Send(&client.Request{Op: "subscribe", Channels: []string{"x"}}); err != nil {
						break
					}
				}
				<-c.errc
			}
		},
		func(t *testing.T, ip string) { // slow handshake
			d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
			if c, err := d.Dial("tcp", g.addr); err == nil {
				io.WriteString(c, "GET /ws HTTP/1.1\r\n")
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				io.ReadAll(c)
				c.Close()
			}
		},
		func(t *testing.T, ip string) { // oversized headers
			d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
			if c, err := d.Dial("tcp", g.addr); err == nil {
				io.WriteString(c, upgradeRequest("X-Padding: "+strings.Repeat("b", 3000)+"\r\n"))
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				io.ReadAll(c)
				c.Close()
			}
		},
		func(t *testing.T, ip string) { // connects and vanishes mid-frame
			if c, err := dialClient(t, g.url, fromAddr(ip)); err == nil {
				c.NetConn().Write([]byte{0x81, 0xfe, 0x01})
				c.NetConn().Close()
				<-c.errc
			}
		},
		func(t *testing.T, ip string) { // bad origin
			o := fromAddr(ip)
			o.Header = http.Header{"Origin": {"https://evil.example"}}
			if c, err := dialClient(t, g.url, o); err == nil {
				c.NetConn().Close()
			}
		},
	}
	const clients = 140
	var wg sync.WaitGroup
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			kinds[i%len(kinds)](t, fmt.Sprintf("127.0.1.%d", 1+i%200))
		}()
	}
	// The witness keeps receiving while the burst goes on.
	w.check(t)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("hostile clients did not finish within 60s")
	}
	w.check(t)
	secWaitUntil(t, 10*time.Second, "kpush_connections to return to 1 (the witness)", func() bool { return g.gauge("kpush_connections") == 1 })
	var heap1 uint64
	var gr1 int
	secWaitUntil(t, 10*time.Second, "goroutines and heap to return to their baseline", func() bool {
		heap1, gr1 = settledHeap()
		return gr1 <= gr0+1 && heap1 < heap0+4<<20
	})
	t.Logf("baseline %d goroutines, heap %d KiB; after %d hostile clients %d goroutines, heap %d KiB",
		gr0, heap0>>10, clients, gr1, heap1>>10)
	if g.perIPAddresses() != 1 {
		t.Fatalf("per-address table holds %d addresses, want the witness's only", g.perIPAddresses())
	}
	w.check(t)
}

func (g *secGateway) perIPAddresses() int { return g.srv.perIP.addresses() }

func asCloseError(err error, ce *client.CloseError) bool {
	c, ok := err.(client.CloseError)
	if ok {
		*ce = c
	}
	return ok
}
