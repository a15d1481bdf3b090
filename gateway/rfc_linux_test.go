package gateway

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// Protocol conformance from outside: raw sockets, hand-built frames, and
// assertions on the HTTP status or the close code the server sends.

// rawWS is a client connection driven byte by byte.
type rawWS struct {
	net.Conn
	br *bufio.Reader
}

// rawUpgrade sends an upgrade request with extra header lines and, in the
// same write, behind (frames sent without waiting for the 101). It returns
// the connection and the server's answer.
func rawUpgrade(t testing.TB, nc net.Conn, req string, behind []byte) (*rawWS, *http.Response) {
	t.Helper()
	_ = nc.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := nc.Write(append([]byte(req), behind...)); err != nil {
		t.Fatalf("write upgrade request: %v", err)
	}
	r := &rawWS{Conn: nc, br: bufio.NewReader(nc)}
	resp, err := http.ReadResponse(r.br, nil)
	if err != nil {
		t.Fatalf("read the answer to the upgrade request: %v", err)
	}
	return r, resp
}

func dialRawWS(t testing.TB, addr string) *rawWS {
	t.Helper()
	r, resp := rawUpgrade(t, rawDial(t, "127.0.0.1", addr), upgradeRequest(""), nil)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: HTTP %d", resp.StatusCode)
	}
	return r
}

func (r *rawWS) send(t testing.TB, fin bool, op ws.OpCode, payload []byte) {
	t.Helper()
	if _, err := r.Write(maskedFrame(fin, op, payload)); err != nil {
		t.Fatalf("write frame: %v", err)
	}
}

// readFrame reads one server frame.
func (r *rawWS) readFrame(t testing.TB) ws.Frame {
	t.Helper()
	f, err := ws.ReadFrame(r.br)
	if err != nil {
		t.Fatalf("read frame: %v", err)
	}
	if f.Header.Masked {
		t.Fatal("server frame is masked")
	}
	return f
}

// closeCode reads frames up to the server's close frame and returns its
// status code, or 0 for an empty body.
func (r *rawWS) closeCode(t testing.TB) int {
	t.Helper()
	for {
		f := r.readFrame(t)
		if f.Header.OpCode != ws.OpClose {
			continue
		}
		if len(f.Payload) < 2 {
			return 0
		}
		return int(binary.BigEndian.Uint16(f.Payload))
	}
}

// reply reads frames up to the next text frame and decodes it.
func (r *rawWS) reply(t testing.TB) map[string]any {
	t.Helper()
	for {
		f := r.readFrame(t)
		if f.Header.OpCode == ws.OpClose {
			t.Fatalf("closed with %v while waiting for a reply", f.Payload)
		}
		if f.Header.OpCode != ws.OpText {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(f.Payload, &m); err != nil {
			t.Fatalf("reply %q: %v", f.Payload, err)
		}
		return m
	}
}

func closeBody(code uint16, reason string) []byte {
	b := binary.BigEndian.AppendUint16(nil, code)
	return append(b, reason...)
}

// TestCloseFrameValidation: RFC 6455 §5.5.1 and §7.4. A valid close is
// echoed with its code; a 1-byte body or a code not valid on the wire fails
// the connection with 1002, a reason that is not UTF-8 with 1007, and an
// invalid code is never echoed.
func TestCloseFrameValidation(t *testing.T) {
	g := startSecGateway(t, nil)
	cases := []struct {
		name string
		body []byte
		want int
	}{
		{"empty body", nil, 1000},
		{"normal", closeBody(1000, "bye"), 1000},
		{"going away", closeBody(1001, ""), 1001},
		{"registered 1014", closeBody(1014, ""), 1014},
		{"library range", closeBody(3000, ""), 3000},
		{"private range top", closeBody(4999, "x"), 4999},
		{"one byte", []byte{0x03}, 1002},
		{"code 0", closeBody(0, ""), 1002},
		{"code 999", closeBody(999, ""), 1002},
		{"reserved 1004", closeBody(1004, ""), 1002},
		{"no status 1005", closeBody(1005, ""), 1002},
		{"abnormal 1006", closeBody(1006, ""), 1002},
		{"tls 1015", closeBody(1015, ""), 1002},
		{"unassigned 1016", closeBody(1016, ""), 1002},
		{"unassigned 2999", closeBody(2999, ""), 1002},
		{"above 4999", closeBody(5000, ""), 1002},
		{"top", closeBody(65535, ""), 1002},
		{"reason not utf-8", append(closeBody(1000, "ok"), 0xff, 0xfe), 1007},
		{"reason truncated utf-8", append(closeBody(1000, ""), 0xe2, 0x82), 1007},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRawWS(t, g.addr)
			c.send(t, true, ws.OpClose, tc.body)
			if got := c.closeCode(t); got != tc.want {
				t.Fatalf("server answered close %d, want %d", got, tc.want)
			}
		})
	}
}

// TestDataFrameInsideFragmentedMessage: only control frames may come between
// the fragments of a message; a text or binary frame there fails the
// connection with 1002, while a ping is answered and the message completes.
func TestDataFrameInsideFragmentedMessage(t *testing.T) {
	g := startSecGateway(t, nil)
	for _, op := range []ws.OpCode{ws.OpText, ws.OpBinary} {
		for _, fin := range []bool{true, false} {
			c := dialRawWS(t, g.addr)
			c.send(t, false, ws.OpText, []byte(`{"op":"pi`))
			c.send(t, fin, op, []byte(`{"op":"ping","id":1}`))
			if got := c.closeCode(t); got != 1002 {
				t.Fatalf("opcode %v (fin %v) inside a fragmented message: close %d, want 1002", op, fin, got)
			}
		}
	}
	c := dialRawWS(t, g.addr)
	c.send(t, false, ws.OpText, []byte(`{"op":"pi`))
	c.send(t, true, ws.OpPing, []byte("x"))
	if f := c.readFrame(t); f.Header.OpCode != ws.OpPong || string(f.Payload) != "x" {
		t.Fatalf("ping between fragments: got %v %q, want pong", f.Header.OpCode, f.Payload)
	}
	c.send(t, true, ws.OpContinuation, []byte(`ng","id":2}`))
	if m := c.reply(t); m["op"] != "pong" || m["id"] != 2.0 {
		t.Fatalf("fragmented ping: %v", m)
	}
}

// TestHandshakeRequestChecks: a Sec-WebSocket-Key that is not the base64 of
// 16 bytes and a duplicate Host get 400; a request line over 4 KiB gets the
// documented 431 (not a reset), including one made long by a token in the
// query string.
func TestHandshakeRequestChecks(t *testing.T) {
	g := startSecGateway(t, func(c *Config) { c.MaxConnectionsPerIP = 100 })
	withKey := func(key string) string {
		return "GET /ws HTTP/1.1\r\nHost: kpush\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + "\r\n\r\n"
	}
	long := strings.Repeat("a", 5000)
	cases := []struct {
		name   string
		req    string
		want   int
		reason string // kpush_rejected_total label that must grow, if any
	}{
		{"valid", upgradeRequest(""), 101, ""},
		{"key not base64", withKey("!!!!!!!!!!!!!!!!!!!!!!=="), 400, ""},
		{"key of 17 bytes", withKey("AAAAAAAAAAAAAAAAAAAAAAA="), 400, ""},
		{"key of 15 bytes", withKey("AAAAAAAAAAAAAAAAAAAA"), 400, ""},
		{"two keys", upgradeRequest("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"), 400, ""},
		{"duplicate host", upgradeRequest("Host: other\r\n"), 400, ""},
		{"duplicate host, other case", upgradeRequest("host: kpush\r\n"), 400, ""},
		{"long token in the query", strings.Replace(upgradeRequest(""), "/ws", "/ws?token="+long, 1), 431, "header_too_large"},
		{"long path", strings.Replace(upgradeRequest(""), "/ws", "/"+long, 1), 431, "header_too_large"},
		{"long headers", upgradeRequest("X-Padding: " + strings.Repeat(long, 4) + "\r\n"), 431, "header_too_large"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := g.rejected(tc.reason)
			_, resp := rawUpgrade(t, rawDial(t, "127.0.0.1", g.addr), tc.req, nil)
			if resp.StatusCode != tc.want {
				t.Fatalf("HTTP %d, want %d", resp.StatusCode, tc.want)
			}
			if tc.reason != "" && g.rejected(tc.reason) <= before {
				t.Fatalf("kpush_rejected_total{reason=%q} did not grow", tc.reason)
			}
		})
	}
	t.Run("wss long token in the query", func(t *testing.T) {
		p := newTestPKI(t)
		g := startTLSGateway(t, p, nil)
		tc, err := tls.Dial("tcp", g.addr, &tls.Config{RootCAs: p.pool, ServerName: "127.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tc.Close() })
		_, resp := rawUpgrade(t, tc, strings.Replace(upgradeRequest(""), "/ws", "/ws?token="+long, 1), nil)
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("HTTP %d, want 431", resp.StatusCode)
		}
	})
}

// TestFramesBehindUpgradeRequest: a client that sends its first frames in the
// same write as the upgrade request, without waiting for the 101, gets them
// answered, over ws and over wss.
func TestFramesBehindUpgradeRequest(t *testing.T) {
	behind := append(maskedFrame(true, ws.OpText, []byte(`{"op":"ping","id":7}`)),
		maskedFrame(true, ws.OpText, []byte(`{"op":"subscribe","id":8,"channels":["early.ch"]}`))...)
	check := func(t *testing.T, g *secGateway, nc net.Conn) {
		c, resp := rawUpgrade(t, nc, upgradeRequest(""), behind)
		if resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade: HTTP %d", resp.StatusCode)
		}
		if m := c.reply(t); m["op"] != "pong" || m["id"] != 7.0 {
			t.Fatalf("first frame: %v, want pong 7", m)
		}
		if m := c.reply(t); m["op"] != "ok" || m["id"] != 8.0 {
			t.Fatalf("second frame: %v, want ok 8", m)
		}
		if n := g.publish("early.ch", `{"n":1}`); n != 1 {
			t.Fatalf("publish reached %d connections, want the early subscriber", n)
		}
		if m := c.reply(t); m["op"] != "msg" || m["ch"] != "early.ch" {
			t.Fatalf("after subscribing: %v", m)
		}
	}
	t.Run("ws", func(t *testing.T) {
		g := startSecGateway(t, nil)
		check(t, g, rawDial(t, "127.0.0.1", g.addr))
	})
	t.Run("wss", func(t *testing.T) {
		p := newTestPKI(t)
		g := startTLSGateway(t, p, nil)
		tc, err := tls.Dial("tcp", g.addr, &tls.Config{RootCAs: p.pool, ServerName: "127.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tc.Close() })
		check(t, g, tc)
	})
}

// TestErrorRepliesCarryTheRequestID: every error answering a request that
// carried an integer id carries that id, wherever the id sits in the object
// and whatever made the request invalid.
func TestErrorRepliesCarryTheRequestID(t *testing.T) {
	g := startSecGateway(t, func(c *Config) { c.MaxSubscriptions = 2 })
	c := dialRawWS(t, g.addr)
	cases := []struct {
		req  string
		code string
	}{
		{`{"op":"ping","id":11,"bogus":1}`, CodeBadRequest},
		{`{"op":"ping","bogus":1,"id":12}`, CodeBadRequest},
		{`{"bogus":{"a":[1,2]},"op":"ping","id":13}`, CodeBadRequest},
		{`{"op":"subscribe","channels":"x","id":14}`, CodeBadRequest},
		{`{"op":"subscribe","snapshot":"yes","id":15}`, CodeBadRequest},
		{`{"op":"subscribe","id":16,"channels":["a b"]}`, CodeInvalidChannel},
		{`{"op":"subscribe","id":17,"channels":["a","b","c"]}`, CodeTooManySubscriptions},
		{`{"op":"nope","id":18}`, CodeUnknownOp},
		{`{"id":19}`, CodeBadRequest},
		{`{"op":"ping","id":20} trailing`, CodeBadRequest},
	}
	for _, tc := range cases {
		c.send(t, true, ws.OpText, []byte(tc.req))
		m := c.reply(t)
		want := float64(0)
		json.Unmarshal([]byte(strings.TrimSuffix(tc.req, " trailing")), &struct {
			ID *float64 `json:"id"`
		}{&want})
		if m["op"] != "error" || m["code"] != tc.code || m["id"] != want {
			t.Errorf("%s: got %v, want error %s with id %v", tc.req, m, tc.code, want)
		}
	}
	// An id that is not an integer cannot be echoed.
	c.send(t, true, ws.OpText, []byte(`{"op":"ping","id":"21","x":1}`))
	if m := c.reply(t); m["op"] != "error" || m["id"] != 0.0 {
		t.Errorf("string id: %v, want error with id 0", m)
	}
}
