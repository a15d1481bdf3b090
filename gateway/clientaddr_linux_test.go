package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kpush/kpush/gateway/client"
)

// lockedBuffer is a log destination safe for concurrent writers.
type lockedBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// connIPs returns the client addresses of the open connections, sorted.
func (g *secGateway) connIPs() []string {
	var ips []string
	for _, c := range g.srv.conns.Snapshot() {
		ips = append(ips, c.ip)
	}
	slices.Sort(ips)
	return ips
}

// forwardedFrom dials from local address ip with an X-Forwarded-For header.
func forwardedFrom(ip, xff string) *client.DialOptions {
	o := fromAddr(ip)
	o.Header = http.Header{"X-Forwarded-For": {xff}}
	return o
}

// From a trusted peer the client is the rightmost untrusted X-Forwarded-For
// address, and the per-address limit counts it; from any other peer the
// header changes nothing, so a client cannot escape the limit by naming
// another address.
func TestForwardedForFromTrustedPeersOnly(t *testing.T) {
	logs := &lockedBuffer{}
	g := startSecGatewayLog(t, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), func(c *Config) {
		c.TrustedProxies = []string{"127.0.0.2/32", "10.0.0.0/8"}
		c.MaxConnectionsPerIP = 1
	})
	// Through the trusted proxy 127.0.0.2: two clients, one slot each.
	a := mustDial(t, g.url, forwardedFrom("127.0.0.2", "203.0.113.1"))
	_, err := dialClient(t, g.url, forwardedFrom("127.0.0.2", "203.0.113.1"))
	if got := handshakeStatus(t, err); got != http.StatusTooManyRequests {
		t.Fatalf("second connection of 203.0.113.1: HTTP %d, want 429", got)
	}
	// A client that puts an address of its own in front is still itself;
	// a chain through another trusted proxy (10.1.1.1) is walked past.
	mustDial(t, g.url, forwardedFrom("127.0.0.2", "6.6.6.6, 203.0.113.2, 10.1.1.1"))
	// The untrusted peer 127.0.0.3 names other addresses: ignored.
	mustDial(t, g.url, forwardedFrom("127.0.0.3", "203.0.113.9"))
	_, err = dialClient(t, g.url, forwardedFrom("127.0.0.3", "203.0.113.10"))
	if got := handshakeStatus(t, err); got != http.StatusTooManyRequests {
		t.Fatalf("untrusted peer escaped its limit with X-Forwarded-For: HTTP %d, want 429", got)
	}
	want := []string{"127.0.0.3", "203.0.113.1", "203.0.113.2"}
	waitUntil(t, fmt.Sprintf("connections from %v", want), func() bool { return slices.Equal(g.connIPs(), want) })
	if got := g.metric("kpush_handshake_client_addresses_total", "source", "forwarded"); got != 2 {
		t.Fatalf("forwarded addresses counted %v, want 2", got)
	}
	if got := g.rejected("max_connections_per_ip"); got != 2 {
		t.Fatalf("max_connections_per_ip rejections %v, want 2", got)
	}
	// The log names the client, and the proxy it came through.
	for _, want := range []string{
		"per-address limit reached\" client=203.0.113.1 peer=127.0.0.2 source=forwarded",
		"per-address limit reached\" client=127.0.0.3 peer=127.0.0.3 source=peer",
	} {
		if !strings.Contains(logs.String(), want) {
			t.Fatalf("log lacks %q:\n%s", want, logs.String())
		}
	}
	// A freed slot of a forwarded client is given back.
	a.NetConn().Close()
	secWaitUntil(t, 10*time.Second, "203.0.113.1's slot to free up", func() bool {
		c, err := dialClient(t, g.url, forwardedFrom("127.0.0.2", "203.0.113.1"))
		if err == nil {
			c.NetConn().Close()
		}
		return err == nil
	})
	secWaitUntil(t, 10*time.Second, "the per-address table to shrink", func() bool { return g.perIPAddresses() == 2 })
}

// proxyDial dials from local address ip and sends header first, as a load
// balancer with the PROXY protocol does.
func proxyDial(ip string, header []byte) *client.DialOptions {
	o := fromAddr(ip)
	dial := o.NetDial
	o.NetDial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if _, err := c.Write(header); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	return o
}

func v2From(src string, port uint16) []byte {
	return proxyV2(0x21, 0x11, proxyV2TCP4(src, "127.0.0.1", port, 8080))
}

// gateway.proxy_protocol v2: a trusted peer's header names the client, over
// ws and wss alike (the header comes before TLS); the per-address limit
// counts that client; a trusted peer that sends no header, or a broken
// one, is cut and counted; an untrusted peer connects as itself.
func TestProxyProtocolV2(t *testing.T) {
	for _, withTLS := range []bool{false, true} {
		name := "ws"
		if withTLS {
			name = "wss"
		}
		t.Run(name, func(t *testing.T) {
			mutate := func(c *Config) {
				c.TrustedProxies = []string{"127.0.0.2"}
				c.ProxyProtocol = ProxyProtocolV2
				c.MaxConnectionsPerIP = 1
				c.HandshakeTimeout = 500 * time.Millisecond
			}
			var g *secGateway
			with := func(o *client.DialOptions) *client.DialOptions { return o }
			if withTLS {
				p := newTestPKI(t)
				g = startTLSGateway(t, p, mutate)
				with = func(o *client.DialOptions) *client.DialOptions {
					o.TLS = p.clientTLS().TLS
					return o
				}
			} else {
				g = startSecGateway(t, mutate)
			}
			a := mustDial(t, g.url, with(proxyDial("127.0.0.2", v2From("198.51.100.1", 40001))))
			if f := a.subscribe(t, "pp.feed"); f.Op != "ok" {
				t.Fatalf("subscribe: %+v", f)
			}
			g.publish("pp.feed", `{"n":1}`)
			if f := a.expectMsg(t, "pp.feed"); string(f.Data) != `{"n":1}` {
				t.Fatalf("got %s", f.Data)
			}
			_, err := dialClient(t, g.url, with(proxyDial("127.0.0.2", v2From("198.51.100.1", 40002))))
			if got := handshakeStatus(t, err); got != http.StatusTooManyRequests {
				t.Fatalf("second connection of 198.51.100.1: HTTP %d, want 429", got)
			}
			// Another client through the same proxy; X-Forwarded-For from
			// the (untrusted) client behind the header is ignored.
			o := with(proxyDial("127.0.0.2", v2From("198.51.100.2", 40003)))
			o.Header = http.Header{"X-Forwarded-For": {"1.1.1.1"}}
			mustDial(t, g.url, o)
			// A health check (LOCAL) is the proxy itself.
			mustDial(t, g.url, with(proxyDial("127.0.0.2", proxyV2(0x20, 0, nil))))
			// An untrusted peer sends no header and is itself.
			mustDial(t, g.url, with(fromAddr("127.0.0.3")))
			// The 101 is written before the server registers a connection.
			want := []string{"127.0.0.2", "127.0.0.3", "198.51.100.1", "198.51.100.2"}
			waitUntil(t, fmt.Sprintf("connections from %v", want), func() bool { return slices.Equal(g.connIPs(), want) })

			// Refused: each is closed without an answer and counted.
			for _, tc := range []struct {
				result string
				send   []byte
			}{
				{proxyMissing, []byte(upgradeRequest(""))},
				{proxyMalformed, proxyV2(0x21, 0x41, proxyV2TCP4("1.2.3.4", "5.6.7.8", 1, 2))},
				{proxyMalformed, []byte("PROXY TCP4 198.51.100.7 127.0.0.1 1 2\r\n")},
				{proxyTruncated, proxyV2Sig}, // and then nothing until the deadline
			} {
				c := rawDial(t, "127.0.0.2", g.addr)
				c.Write(tc.send)
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				// Closed with unread bytes, the socket may answer with a reset.
				if b, err := io.ReadAll(c); (err != nil && !errors.Is(err, syscall.ECONNRESET)) || len(b) > 0 {
					t.Fatalf("%s header: read %q, %v; want the connection closed without an answer", tc.result, b, err)
				}
			}
			secWaitUntil(t, 5*time.Second, "the refused headers to be counted", func() bool {
				return g.metric("kpush_proxy_protocol_headers_total", "result", proxyMissing) == 1 &&
					g.metric("kpush_proxy_protocol_headers_total", "result", proxyMalformed) == 2 &&
					g.metric("kpush_proxy_protocol_headers_total", "result", proxyTruncated) == 1
			})
			// An untrusted peer cannot claim an address with a header: it is
			// not read, and the connection fails as a bad request.
			_, err = dialClient(t, g.url, with(proxyDial("127.0.0.4", v2From("198.51.100.9", 1))))
			if err == nil {
				t.Fatal("untrusted peer's PROXY header was accepted")
			}
			if got := g.metric("kpush_proxy_protocol_headers_total", "result", proxyOK); got != 3 {
				t.Fatalf("headers ok %v, want 3 (an untrusted peer's header must not be read)", got)
			}
			if got := g.metric("kpush_proxy_protocol_headers_total", "result", proxyLocal); got != 1 {
				t.Fatalf("headers local %v, want 1", got)
			}
			g.publish("pp.feed", `{"n":2}`)
			if f := a.expectMsg(t, "pp.feed"); string(f.Data) != `{"n":2}` {
				t.Fatalf("got %s", f.Data)
			}
		})
	}
}

// BenchmarkProxyHandshake: one WebSocket upgrade over loopback, directly and
// behind a PROXY header of each version (v1 is read byte by byte past its
// first 15 bytes, so that nothing after it is consumed).
func BenchmarkProxyHandshake(b *testing.B) {
	for _, bc := range []struct {
		name, pp string
		header   []byte
	}{
		{"direct", ProxyProtocolOff, nil},
		{"v1", ProxyProtocolV1, []byte("PROXY TCP4 198.51.100.1 127.0.0.1 40001 8080\r\n")},
		{"v2", ProxyProtocolV2, v2From("198.51.100.1", 40001)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			g := startSecGateway(b, func(c *Config) {
				c.TrustedProxies = []string{"127.0.0.1"}
				c.ProxyProtocol = bc.pp
			})
			req := append(append([]byte{}, bc.header...), upgradeRequest("")...)
			resp := make([]byte, 12)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				c, err := net.Dial("tcp", g.addr)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := c.Write(req); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, resp); err != nil || string(resp) != "HTTP/1.1 101" {
					b.Fatalf("answer %q, %v", resp, err)
				}
				c.Close()
			}
		})
	}
}
