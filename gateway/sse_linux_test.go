package gateway

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/kpush/kpush/router"
)

// sseEvent is one dispatched event of a stream, as a browser sees it.
type sseEv struct {
	event, id, data string
}

// sseClient is a raw HTTP/1.1 event stream client over TCP.
type sseClient struct {
	nc     net.Conn
	status int
	header http.Header
	events chan sseEv
	done   chan struct{} // closed at the end of the stream
	lastID string        // as a browser keeps it (ids of events read so far)
}

func dialSSE(t testing.TB, addr, target string, hdr map[string]string) *sseClient {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return sseOn(t, nc, addr, target, hdr)
}

// sseOn is dialSSE on a connection already open (TLS).
func sseOn(t testing.TB, nc net.Conn, addr, target string, hdr map[string]string) *sseClient {
	t.Helper()
	t.Cleanup(func() { nc.Close() })
	var req strings.Builder
	fmt.Fprintf(&req, "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n", target, addr)
	for k, v := range hdr {
		fmt.Fprintf(&req, "%s: %s\r\n", k, v)
	}
	req.WriteString("\r\n")
	if _, err := nc.Write([]byte(req.String())); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read event stream response: %v", err)
	}
	c := &sseClient{nc: nc, status: resp.StatusCode, header: resp.Header, events: make(chan sseEv, 1<<16), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		defer resp.Body.Close()
		rd := bufio.NewReader(resp.Body)
		var ev sseEv
		var data []string
		for {
			line, err := rd.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimSuffix(line, "\n")
			switch {
			case line == "":
				if data != nil {
					ev.data = strings.Join(data, "\n")
					c.events <- ev
				}
				ev, data = sseEv{}, nil
			case strings.HasPrefix(line, ":"):
			default:
				k, v, _ := strings.Cut(line, ":")
				v = strings.TrimPrefix(v, " ")
				switch k {
				case "event":
					ev.event = v
				case "id":
					ev.id = v
				case "data":
					data = append(data, v)
				}
			}
		}
	}()
	return c
}

// next returns the next event, failing after a generous deadline.
func (c *sseClient) next(t testing.TB) sseEv {
	t.Helper()
	select {
	case ev := <-c.events:
		if ev.id != "" {
			c.lastID = ev.id
		}
		return ev
	case <-time.After(15 * time.Second):
		t.Fatal("no event within 15s")
	}
	return sseEv{}
}

// waitEnd waits for the server to end the stream.
func (c *sseClient) waitEnd(t testing.TB) {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(15 * time.Second):
		t.Fatal("stream not ended within 15s")
	}
}

// records reads n record events of the stream, checking their data.
func (c *sseClient) records(t testing.TB, n int) []sseEv {
	t.Helper()
	var out []sseEv
	for len(out) < n {
		ev := c.next(t)
		if strings.HasPrefix(ev.event, "kpush-") {
			t.Fatalf("got %s %s while waiting for records", ev.event, ev.data)
		}
		out = append(out, ev)
	}
	return out
}

func startSSEServer(t testing.TB, mutate func(*Config)) *served {
	t.Helper()
	cfg := Config{DrainTimeout: 200 * time.Millisecond, Workers: 4}
	if mutate != nil {
		mutate(&cfg)
	}
	return serveGateway(t, cfg, serveOptions{})
}

func publishN(s *Server, ch string, p int32, from, to int64, keep *router.Retention) {
	for o := from; o <= to; o++ {
		s.Publish(&Message{Channel: ch, Partition: p, Offset: o, Timestamp: time.Now().UnixMilli(),
			Data: []byte(fmt.Sprintf(`{"ch":%q,"o":%d}`, ch, o))}, keep)
	}
}

// waitSubscribed waits until the server holds n subscriptions.
func waitSubscribed(t testing.TB, s *Server, n int64) {
	t.Helper()
	secWaitUntil(t, 10*time.Second, fmt.Sprintf("%d subscriptions", n), func() bool { return s.router.Stats().Subscriptions == n })
}

func TestSSEStreamExactData(t *testing.T) {
	g := startSSEServer(t, nil)
	c := dialSSE(t, g.addr, "/events?channel=ticks.AAPL&channel=ticks.MSFT", map[string]string{"Origin": "https://app.example"})
	if c.status != 200 || c.header.Get("Content-Type") != "text/event-stream" || c.header.Get("Access-Control-Allow-Origin") != "https://app.example" {
		t.Fatalf("answer %d %v", c.status, c.header)
	}
	waitSubscribed(t, g.srv, 2)
	publishN(g.srv, "ticks.AAPL", 2, 10, 11, nil)
	publishN(g.srv, "ticks.MSFT", 0, 5, 5, nil)
	evs := c.records(t, 3)
	h := sseHash([]string{"ticks.AAPL", "ticks.MSFT"})
	want := []sseEv{
		{"ticks.AAPL", h + "_0.2.a", `{"ch":"ticks.AAPL","o":10}`},
		{"ticks.AAPL", h + "_0.2.b", `{"ch":"ticks.AAPL","o":11}`},
		{"ticks.MSFT", h + "_0.2.b_1.0.5", `{"ch":"ticks.MSFT","o":5}`},
	}
	for i := range want {
		if evs[i] != want[i] {
			t.Fatalf("event %d = %+v, want %+v", i, evs[i], want[i])
		}
	}
	if n := g.srv.metrics.sseConns.Load(); n != 1 {
		t.Fatalf("sse connections = %d", n)
	}
	sg := &secGateway{srv: g.srv, reg: g.reg}
	if v := sg.metric("kpush_connections", "protocol", "sse"); v != 1 {
		t.Fatalf(`kpush_connections{protocol="sse"} = %v`, v)
	}
	if v := sg.metric("kpush_handshakes_total", "protocol", "sse"); v != 1 {
		t.Fatalf(`kpush_handshakes_total{protocol="sse"} = %v`, v)
	}
	c.nc.Close()
	secWaitUntil(t, 10*time.Second, "the stream to be released", func() bool { return g.srv.Connections() == 0 && g.srv.metrics.sseConns.Load() == 0 })
}

// TestSSEResumeAcrossCut cuts a stream in the middle of a steady publish
// and reconnects with Last-Event-ID, on the same instance and on a second
// one fed the same records: every record arrives once, in order.
func TestSSEResumeAcrossCut(t *testing.T) {
	keep := &router.Retention{HistoryRecords: 10000, HistoryBytes: 16 << 20, HistoryAge: time.Minute}
	a := startSSEServer(t, nil)
	b := startSSEServer(t, nil)
	target := "/events?channel=x&channel=y"
	got := map[string][]int64{}
	record := func(evs []sseEv) {
		for _, ev := range evs {
			var o int64
			if _, err := fmt.Sscanf(ev.data[strings.Index(ev.data, `"o":`):], `"o":%d}`, &o); err != nil {
				t.Fatalf("data %q: %v", ev.data, err)
			}
			got[ev.event] = append(got[ev.event], o)
		}
	}
	both := func(from, to int64) {
		for _, s := range []*Server{a.srv, b.srv} {
			publishN(s, "x", 0, from, to, keep)
			publishN(s, "y", 3, from, to, keep)
		}
	}
	c := dialSSE(t, a.addr, target, nil)
	waitSubscribed(t, a.srv, 2)
	both(0, 99)
	record(c.records(t, 200))
	c.nc.Close()
	both(100, 149) // missed while cut
	c = dialSSE(t, a.addr, target, map[string]string{"Last-Event-ID": c.lastIDOr(t)})
	record(c.records(t, 100))
	if ev := c.next(t); ev.event != "kpush-resume" || ev.data != `{"recovered":{"x":true,"y":true}}` && ev.data != `{"recovered":{"y":true,"x":true}}` {
		t.Fatalf("after the replay: %+v", ev)
	}
	both(150, 159)
	record(c.records(t, 20))
	last := c.lastID
	c.nc.Close()
	both(160, 169)
	// The second instance, through the query fallback.
	c = dialSSE(t, b.addr, target+"&lastEventId="+last, nil)
	record(c.records(t, 20))
	if ev := c.next(t); ev.event != "kpush-resume" {
		t.Fatalf("after the replay: %+v", ev)
	}
	for _, ch := range []string{"x", "y"} {
		if fmt.Sprint(got[ch]) != fmt.Sprint(span(0, 169)) {
			t.Fatalf("%s: got %v", ch, got[ch])
		}
	}
}

func (c *sseClient) lastIDOr(t testing.TB) string {
	if c.lastID == "" {
		t.Fatal("no id seen")
	}
	return c.lastID
}

// TestSSEBadLastEventID: an id of another channel list resumes nothing and
// says so first; the stream is live.
func TestSSEBadLastEventID(t *testing.T) {
	g := startSSEServer(t, nil)
	c := dialSSE(t, g.addr, "/events?channel=x", map[string]string{"Last-Event-ID": sseHash([]string{"y"}) + "_0.0.5"})
	if ev := c.next(t); ev.event != "kpush-resume" || ev.data != `{"recovered":{"x":false}}` {
		t.Fatalf("first event %+v", ev)
	}
	waitSubscribed(t, g.srv, 1)
	publishN(g.srv, "x", 0, 1, 1, nil)
	if ev := c.records(t, 1)[0]; ev.data != `{"ch":"x","o":1}` {
		t.Fatalf("record %+v", ev)
	}
}

func TestSSESnapshotAndHeartbeat(t *testing.T) {
	g := startSSEServer(t, func(c *Config) { c.PingInterval = 200 * time.Millisecond; c.IdleTimeout = 2 * time.Second })
	publishN(g.srv, "x", 0, 1, 3, &router.Retention{Last: true})
	nc, err := net.Dial("tcp", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	fmt.Fprintf(nc, "GET /events?channel=x&snapshot=true HTTP/1.1\r\nHost: k\r\n\r\n")
	br := bufio.NewReader(nc)
	var text strings.Builder
	_ = nc.SetReadDeadline(time.Now().Add(15 * time.Second))
	// Past the idle timeout: the heartbeats keep a reading client's stream.
	deadline := time.Now().Add(3 * time.Second)
	pings := 0
	for time.Now().Before(deadline) || pings < 2 {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("stream ended: %v after %q", err, text.String())
		}
		text.WriteString(line)
		if line == ": ping\n" {
			pings++
		}
	}
	if !strings.Contains(text.String(), "event: x\nid: "+sseHash([]string{"x"})+"_0.0.3\ndata: {\"ch\":\"x\",\"o\":3}\n\n") {
		t.Fatalf("no snapshot in %q", text.String())
	}
	if g.srv.Connections() != 1 {
		t.Fatal("stream closed")
	}
}

func TestSSERefusals(t *testing.T) {
	g := startAuthGateway(t, func(c *Config) { c.MaxConnectionsPerIP = 3 })
	tok := testToken(t, secTestSecret, func(m jwt.MapClaims) { m["channels"] = []string{"ticks.*"} })
	many := "/events?"
	for i := 0; i <= sseMaxChannels; i++ {
		many += fmt.Sprintf("channel=public.c%d&", i)
	}
	for _, tc := range []struct {
		name, target string
		hdr          map[string]string
		status       int
	}{
		{"no channel", "/events", nil, 400},
		{"bad channel", "/events?channel=a%20b", nil, 400},
		{"too many channels", many, nil, 400},
		{"not granted anonymously", "/events?channel=ticks.A", nil, 403},
		{"bad token", "/events?channel=ticks.A&token=nope", nil, 401},
		{"not granted by the token", "/events?channel=other.A&token=" + tok, nil, 403},
		{"origin", "/events?channel=public.a", map[string]string{"Origin": "https://evil.example"}, 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "origin" {
				g.srv.SetLimits(Config{AllowedOrigins: []string{"https://app.example"}})
				defer g.srv.SetLimits(Config{})
			}
			c := dialSSE(t, g.addr, tc.target, tc.hdr)
			if c.status != tc.status {
				t.Fatalf("status %d, want %d", c.status, tc.status)
			}
		})
	}
	// Both token transports, and the per-address limit (3).
	ok1 := dialSSE(t, g.addr, "/events?channel=ticks.A&token="+tok, nil)
	ok2 := dialSSE(t, g.addr, "/events?channel=ticks.A", map[string]string{"Authorization": "Bearer " + tok})
	ok3 := dialSSE(t, g.addr, "/events?channel=public.a", nil)
	for _, c := range []*sseClient{ok1, ok2, ok3} {
		if c.status != 200 {
			t.Fatalf("status %d", c.status)
		}
	}
	if c := dialSSE(t, g.addr, "/events?channel=public.a", nil); c.status != 429 {
		t.Fatalf("fourth stream from one address: %d, want 429", c.status)
	}
	waitSubscribed(t, g.srv, 3)
	g.publish("ticks.A", `{"v":1}`)
	for _, c := range []*sseClient{ok1, ok2} {
		if ev := c.records(t, 1)[0]; ev.data != `{"v":1}` {
			t.Fatalf("got %+v", ev)
		}
	}
}

// TestSSESlowConsumer: a stream that does not read is closed at its queue
// bound like a WebSocket (disconnect policy), with the kpush-close event
// when it can still be written; its memory is released.
func TestSSESlowConsumer(t *testing.T) {
	g := startSSEServer(t, func(c *Config) { c.MaxQueueMessages = 64; c.MaxQueueBytes = 64 << 10 })
	nc, err := net.Dial("tcp", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.(*net.TCPConn).SetReadBuffer(4096)
	fmt.Fprintf(nc, "GET /events?channel=x HTTP/1.1\r\nHost: k\r\n\r\n")
	waitSubscribed(t, g.srv, 1)
	big := strings.Repeat("z", 2000)
	for o := int64(0); g.srv.Connections() > 0 && o < 1_000_000; o++ {
		g.srv.Publish(&Message{Channel: "x", Offset: o, Data: []byte(`"` + big + `"`)}, nil)
	}
	secWaitUntil(t, 15*time.Second, "the slow stream to be closed", func() bool { return g.srv.Connections() == 0 })
	sg := &secGateway{srv: g.srv, reg: g.reg}
	if v := sg.metric("kpush_slow_consumers_total", "policy", "disconnect"); v < 1 {
		t.Fatalf("slow consumers = %v", v)
	}
	if g.srv.metrics.sseConns.Load() != 0 || g.srv.router.Stats().Subscriptions != 0 {
		t.Fatal("stream not released")
	}
}

// TestSSEIDTooLong: a stream whose position outgrows sseMaxIDBytes (one
// channel fed by many partitions) ends with kpush-close 4010.
func TestSSEIDTooLong(t *testing.T) {
	g := startSSEServer(t, nil)
	c := dialSSE(t, g.addr, "/events?channel=all", nil)
	waitSubscribed(t, g.srv, 1)
	for p := int32(0); p < 400; p++ {
		g.srv.Publish(&Message{Channel: "all", Partition: p, Offset: 1 << 50, Data: []byte(`1`)}, nil)
	}
	n := 0
	for {
		ev := c.next(t)
		if ev.event == "kpush-close" {
			if !strings.Contains(ev.data, `"code":4010`) {
				t.Fatalf("close %s", ev.data)
			}
			break
		}
		if len(ev.id) > sseMaxIDBytes {
			t.Fatalf("id of %d bytes", len(ev.id))
		}
		n++
	}
	if n == 0 || n >= 400 {
		t.Fatalf("%d records before the close", n)
	}
	c.waitEnd(t)
	c.nc.Close() // the client's side of the close: the server releases at once
	secWaitUntil(t, 10*time.Second, "the stream to be released", func() bool { return g.srv.Connections() == 0 })
}

// TestSSECurl reads a stream with curl -N, a client nobody here wrote.
func TestSSECurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl not installed")
	}
	g := startSSEServer(t, nil)
	cmd := exec.Command(curl, "-sN", "--max-time", "20", "http://"+g.addr+"/events?channel=x")
	out := startCommand(t, cmd)
	waitSubscribed(t, g.srv, 1)
	publishN(g.srv, "x", 1, 7, 8, nil)
	br := bufio.NewReader(out)
	var text strings.Builder
	want := "event: x\nid: " + sseHash([]string{"x"}) + "_0.1.8\ndata: {\"ch\":\"x\",\"o\":8}\n\n"
	for !strings.Contains(text.String(), want) {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("curl output ended: %v; got %q", err, text.String())
		}
		text.WriteString(line)
	}
	if !strings.Contains(text.String(), "data: {\"ch\":\"x\",\"o\":7}\n") {
		t.Fatalf("curl got %q", text.String())
	}
}

// TestSSENodeEventSource reads a stream with Node's eventsource package
// across a cut: the package reconnects by itself with Last-Event-ID and
// the records published while it was away arrive once, in order.
func TestSSENodeEventSource(t *testing.T) {
	node, err := exec.LookPath("node")
	if _, statErr := os.Stat("testdata/node/node_modules/eventsource"); err != nil || statErr != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("node and gateway/testdata/node's packages are needed (.ci/run installs them with npm ci)")
		}
		t.Skip("node or the eventsource package is missing (cd gateway/testdata/node && npm ci)")
	}
	keep := &router.Retention{HistoryRecords: 1000, HistoryBytes: 1 << 20, HistoryAge: time.Minute}
	g := startSSEServer(t, nil)
	cmd := exec.Command(node, "testdata/node/sse_client.mjs", "http://"+g.addr+"/events?channel=x", "60", "x")
	out := startCommand(t, cmd)
	lines := make(chan map[string]string, 256)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var m map[string]string
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				lines <- m
			}
		}
		close(lines)
	}()
	next := func() map[string]string {
		select {
		case m, ok := <-lines:
			if !ok {
				t.Fatal("node client ended early")
			}
			return m
		case <-time.After(20 * time.Second):
			t.Fatal("no line from the node client within 20s")
		}
		return nil
	}
	var got []int64
	readRecords := func(n int) {
		for len(got) < n {
			m := next()
			if m["event"] != "x" {
				continue
			}
			var v struct{ O int64 }
			if err := json.Unmarshal([]byte(m["data"]), &v); err != nil {
				t.Fatalf("data %q: %v", m["data"], err)
			}
			got = append(got, v.O)
		}
	}
	waitSubscribed(t, g.srv, 1)
	publishN(g.srv, "x", 0, 0, 19, keep)
	readRecords(20)
	for _, c := range g.srv.conns.Snapshot() {
		c.abort() // the cut: the server side goes away
	}
	publishN(g.srv, "x", 0, 20, 39, keep)
	waitSubscribed(t, g.srv, 1) // reconnected by itself
	publishN(g.srv, "x", 0, 40, 59, keep)
	readRecords(60)
	if fmt.Sprint(got) != fmt.Sprint(span(0, 59)) {
		t.Fatalf("got %v", got)
	}
}

// keptAliveStream asks for a page on nc and reads its answer whole, then
// asks on the same connection for channel x's event stream with the extra
// header lines hdr (each ending in CRLF), as a browser reuses the page's
// connection. It fails the test unless the page's answer keeps the
// connection alive and the second answer is an event stream; it returns
// the reader positioned at the stream's first byte and the page's status.
func keptAliveStream(t *testing.T, nc net.Conn, hdr string) (*bufio.Reader, int) {
	t.Helper()
	br := bufio.NewReader(nc)
	fmt.Fprintf(nc, "GET /page HTTP/1.1\r\nHost: k\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.Close {
		t.Fatalf("page: %d, the connection is not kept alive", resp.StatusCode)
	}
	page := resp.StatusCode
	fmt.Fprintf(nc, "GET /events?channel=x HTTP/1.1\r\nHost: k\r\n%s\r\n", hdr)
	resp, err = http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("stream: %v %v", resp, err)
	}
	return br, page
}

// TestSSEOnKeptAliveConnection: browsers send the stream's request on a
// connection that already carried the page; it is taken over from net/http.
func TestSSEOnKeptAliveConnection(t *testing.T) {
	g := startSSEServer(t, nil)
	nc, err := net.Dial("tcp", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	br, page := keptAliveStream(t, nc, "")
	if page != 404 {
		t.Fatalf("page: %d, want 404", page)
	}
	waitSubscribed(t, g.srv, 1)
	publishN(g.srv, "x", 0, 4, 4, nil)
	var text strings.Builder
	_ = nc.SetReadDeadline(time.Now().Add(15 * time.Second))
	for !strings.Contains(text.String(), "data: {\"ch\":\"x\",\"o\":4}\n\n") {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("%v after %q", err, text.String())
		}
		text.WriteString(line)
	}
	if g.srv.Connections() != 1 || g.srv.metrics.sseConns.Load() != 1 {
		t.Fatal("the stream is not an epoll connection")
	}
}

// TestSSEIdleCost opens idle event streams and checks that they hold no
// goroutine on the server; it logs the heap per stream (client sockets
// included, so an upper bound):
// go test -run TestSSEIdleCost -v ./gateway/
func TestSSEIdleCost(t *testing.T) {
	const n = 400
	g := startSSEServer(t, nil)
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	goBefore := runtime.NumGoroutine()
	conns := make([]net.Conn, 0, n)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for i := 0; i < n; i++ {
		nc, err := net.Dial("tcp", g.addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, nc)
		fmt.Fprintf(nc, "GET /events?channel=idle.%d&channel=all HTTP/1.1\r\nHost: k\r\n\r\n", i)
		// Read the head synchronously: the client holds no goroutine either.
		resp, err := http.ReadResponse(bufio.NewReaderSize(nc, 512), nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("stream %d: %v %v", i, resp, err)
		}
	}
	waitSubscribed(t, g.srv, 2*n)
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	extra := runtime.NumGoroutine() - goBefore
	t.Logf("%d idle streams: %+d goroutines, heap %+d bytes per stream (client side included)",
		n, extra, (int64(after.HeapInuse)-int64(before.HeapInuse))/n)
	if extra > 20 {
		t.Fatalf("%d idle streams hold %d more goroutines", n, extra)
	}
}

// TestSSEOverTLS: a stream over native TLS (the TLS flush path), records
// larger than a TLS record, exact data.
func TestSSEOverTLS(t *testing.T) {
	p := newTestPKI(t)
	g := startTLSGateway(t, p, nil)
	nc, err := tls.Dial("tcp", g.addr, &tls.Config{RootCAs: p.pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	c := sseOn(t, nc, g.addr, "/events?channel=x", nil)
	if c.status != 200 {
		t.Fatalf("status %d", c.status)
	}
	secWaitUntil(t, 10*time.Second, "the subscription", func() bool { return g.srv.router.Stats().Subscriptions == 1 })
	big := strings.Repeat("q", 20000)
	for o := int64(1); o <= 20; o++ {
		g.srv.Publish(&Message{Channel: "x", Offset: o, Data: []byte(fmt.Sprintf(`{"o":%d,"pad":%q}`, o, big))}, nil)
	}
	for o := int64(1); o <= 20; o++ {
		ev := c.records(t, 1)[0]
		if want := fmt.Sprintf(`{"o":%d,"pad":%q}`, o, big); ev.data != want || !strings.HasSuffix(ev.id, "_0.0."+strconv.FormatInt(o, 36)) {
			t.Fatalf("record %d: id %q, %d bytes of data", o, ev.id, len(ev.data))
		}
	}
}
