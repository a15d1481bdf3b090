package gateway

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	centrifuge "github.com/centrifugal/centrifuge-go"
	"github.com/golang-jwt/jwt/v5"
	"github.com/kpush/kpush/router"
)

// Centrifugo's protocol with the unmodified centrifuge-go SDK.

func cfURL(addr string) string { return "ws://" + addr + DefaultCentrifugoPath }

// cfEvents records a centrifuge-go subscription's events, in order, on
// channels a test reads with recv.
type cfEvents struct {
	pubs        chan centrifuge.PublicationEvent
	subscribed  chan centrifuge.SubscribedEvent
	subscribing chan centrifuge.SubscribingEvent
}

// sdkSubscribe creates ch's subscription with cfg, records its events and
// calls Subscribe without waiting for the answer. The handlers are set
// before Subscribe: the SDK does not allow setting them while it runs.
func sdkSubscribe(t *testing.T, cl *centrifuge.Client, ch string, cfg centrifuge.SubscriptionConfig) *cfEvents {
	t.Helper()
	sub, err := cl.NewSubscription(ch, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ev := &cfEvents{
		pubs:        make(chan centrifuge.PublicationEvent, 1024),
		subscribed:  make(chan centrifuge.SubscribedEvent, 16),
		subscribing: make(chan centrifuge.SubscribingEvent, 16),
	}
	sub.OnPublication(func(e centrifuge.PublicationEvent) { ev.pubs <- e })
	sub.OnSubscribed(func(e centrifuge.SubscribedEvent) { ev.subscribed <- e })
	sub.OnSubscribing(func(e centrifuge.SubscribingEvent) { ev.subscribing <- e })
	if err := sub.Subscribe(); err != nil {
		t.Fatal(err)
	}
	return ev
}

// cfSub subscribes ch and waits for the first subscribed event;
// publications arrive on pubs, and every later subscribed event (a
// resubscribe after a reconnect) on resubs.
func cfSub(t *testing.T, cl *centrifuge.Client, ch string) (pubs chan centrifuge.PublicationEvent, resubs chan centrifuge.SubscribedEvent) {
	t.Helper()
	ev := sdkSubscribe(t, cl, ch, centrifuge.SubscriptionConfig{})
	recv(t, ev.subscribed, "subscribed to "+ch)
	return ev.pubs, ev.subscribed
}

// recv waits up to 15s for the next value on ch; what names it in the
// failure.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(15 * time.Second):
		t.Fatalf("no %s within 15s", what)
	}
	var zero T
	return zero
}

// startCommand starts cmd, its standard error going to the test's unless
// the caller set it, and returns its standard output; the command is
// killed and waited for when the test ends.
func startCommand(t *testing.T, cmd *exec.Cmd) io.Reader {
	t.Helper()
	if cmd.Stderr == nil {
		cmd.Stderr = os.Stderr
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return out
}

func cfClient(t *testing.T, addr string, cfg centrifuge.Config) *centrifuge.Client {
	t.Helper()
	cl := centrifuge.NewJsonClient(cfURL(addr), cfg)
	t.Cleanup(cl.Close)
	if err := cl.Connect(); err != nil {
		t.Fatal(err)
	}
	return cl
}

func nextPub(t *testing.T, pubs chan centrifuge.PublicationEvent) centrifuge.PublicationEvent {
	t.Helper()
	return recv(t, pubs, "publication")
}

func TestCentrifugoGoSDKExactData(t *testing.T) {
	g := startSSEServer(t, nil)
	cl := cfClient(t, g.addr, centrifuge.Config{})
	pubs, _ := cfSub(t, cl, "ticks.AAPL")
	waitSubscribed(t, g.srv, 1)
	publishN(g.srv, "ticks.AAPL", 0, 1, 50, nil)
	for o := int64(1); o <= 50; o++ {
		e := nextPub(t, pubs)
		if want := fmt.Sprintf(`{"ch":"ticks.AAPL","o":%d}`, o); string(e.Data) != want || e.Offset != uint64(o) {
			t.Fatalf("publication %d: %s offset %d, want %s", o, e.Data, e.Offset, want)
		}
	}
	// kpush is one-way: the SDK gets "not available" and stays connected.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for name, call := range map[string]func() error{
		"publish": func() error { _, err := cl.Publish(ctx, "ticks.AAPL", []byte(`{}`)); return err },
		"history": func() error { _, err := cl.History(ctx, "ticks.AAPL"); return err },
		"rpc":     func() error { _, err := cl.RPC(ctx, "m", []byte(`{}`)); return err },
	} {
		var e *centrifuge.Error
		if err := call(); !errors.As(err, &e) || e.Code != cfErrNotAvailable {
			t.Fatalf("%s: %v, want error %d", name, err, cfErrNotAvailable)
		}
	}
	if cl.State() != centrifuge.StateConnected {
		t.Fatalf("state %v after the not-available answers", cl.State())
	}
	sg := &secGateway{srv: g.srv, reg: g.reg}
	if v, all := sg.metric("kpush_connections", "protocol", "centrifugo"), sg.gauge("kpush_connections"); v != 1 || all != 1 {
		t.Fatalf(`kpush_connections{protocol="centrifugo"} = %v, all protocols %v`, v, all)
	}
	publishN(g.srv, "ticks.AAPL", 0, 51, 51, nil)
	if e := nextPub(t, pubs); e.Offset != 51 {
		t.Fatalf("after not available: offset %d", e.Offset)
	}
}

func TestCentrifugoGoSDKTokens(t *testing.T) {
	g := startAuthGateway(t, func(c *Config) { c.Auth.ClockSkew = 3 * time.Second })
	// Without a token: public channels only.
	anon := cfClient(t, g.addr, centrifuge.Config{})
	pubs, _ := cfSub(t, anon, "public.news")
	g.publish("public.news", `{"n":1}`)
	if e := nextPub(t, pubs); string(e.Data) != `{"n":1}` {
		t.Fatalf("got %s", e.Data)
	}
	denied, err := anon.NewSubscription("ticks.AAPL")
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 4)
	denied.OnError(func(e centrifuge.SubscriptionErrorEvent) { errs <- e.Error })
	denied.OnUnsubscribed(func(e centrifuge.UnsubscribedEvent) { errs <- fmt.Errorf("unsubscribed %d %s", e.Code, e.Reason) })
	_ = denied.Subscribe()
	select {
	case err := <-errs:
		if !strings.Contains(err.Error(), "103") && !strings.Contains(err.Error(), "permission denied") {
			t.Fatalf("denied subscribe: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no answer to a denied subscribe")
	}
	// With a token that expires in 2s and a GetToken that refreshes it:
	// the SDK sends refresh before the expiry and the connection outlives
	// the first token (the server closes with 4001 at exp + clock_skew).
	exp := time.Now().Add(2 * time.Second)
	first := testToken(t, secTestSecret, func(m jwt.MapClaims) { m["exp"] = exp.Unix() })
	var refreshes atomic.Int32
	cl := cfClient(t, g.addr, centrifuge.Config{Token: first, GetToken: func(centrifuge.ConnectionTokenEvent) (string, error) {
		refreshes.Add(1)
		return testToken(t, secTestSecret, nil), nil
	}})
	tpubs, _ := cfSub(t, cl, "ticks.AAPL")
	secWaitUntil(t, 15*time.Second, "a token refresh", func() bool { return refreshes.Load() > 0 })
	// The first token's expiry, with its clock skew, is behind us.
	secWaitUntil(t, 15*time.Second, "the first token's expiry to pass", func() bool { return time.Now().After(exp.Add(3500 * time.Millisecond)) })
	g.publish("ticks.AAPL", `{"v":1}`)
	if e := nextPub(t, tpubs); string(e.Data) != `{"v":1}` {
		t.Fatalf("got %s", e.Data)
	}
	if n := g.metric("kpush_connection_closes_total", "reason", "token_expired"); n != 0 || cl.State() != centrifuge.StateConnected {
		t.Fatalf("closed for an expired token %v times despite the refresh; state %v", n, cl.State())
	}
}

// TestCentrifugoGoSDKRecovers cuts the SDK's connection at the server while
// records are published: the SDK reconnects by itself, resubscribes with
// recover, offset and epoch, and gets the missed records in the subscribe
// reply, then live ones: every record once, in order.
func TestCentrifugoGoSDKRecovers(t *testing.T) {
	keep := &router.Retention{Last: true, HistoryRecords: 1000, HistoryBytes: 1 << 20, HistoryAge: time.Minute}
	g := startSSEServer(t, nil)
	pub := func(from, to int64) {
		for o := from; o <= to; o++ {
			g.srv.Publish(&Message{Channel: "ticks.AAPL", Topic: "ticks", Partition: 3, Offset: o, Epoch: 7, Timestamp: time.Now().UnixMilli(),
				Data: []byte(fmt.Sprintf(`{"o":%d}`, o))}, keep)
		}
	}
	pub(100, 100) // the channel's position before the client comes
	cl := cfClient(t, g.addr, centrifuge.Config{MinReconnectDelay: 50 * time.Millisecond, MaxReconnectDelay: 200 * time.Millisecond})
	pubs, recovered := cfSub(t, cl, "ticks.AAPL")
	// The route keeps the last record: the SDK gets it on subscribe
	// (Centrifugo's cache mode), and the channel's position.
	var got []int64
	read := func(n int) {
		for len(got) < n {
			e := nextPub(t, pubs)
			if int64(e.Offset) != 100+int64(len(got)) || string(e.Data) != fmt.Sprintf(`{"o":%d}`, e.Offset) {
				t.Fatalf("after %v: offset %d data %s", got, e.Offset, e.Data)
			}
			got = append(got, int64(e.Offset))
		}
	}
	pub(101, 120)
	read(21)
	for _, c := range g.srv.conns.Snapshot() {
		c.abort() // the cut
	}
	pub(121, 140)
	ev := recv(t, recovered, "resubscribe")
	if !ev.WasRecovering || !ev.Recovered || !ev.Recoverable || ev.StreamPosition == nil || ev.StreamPosition.Epoch != "ticks:3:7" {
		t.Fatalf("resubscribed with %+v", ev)
	}
	pub(141, 150)
	read(51)
}

// TestCentrifugoNodeSDK runs the centrifuge npm package (centrifuge-js) in
// Node: exact data, a server-side cut recovered with no gap and no
// duplicate, and the "not available" answers.
func TestCentrifugoNodeSDK(t *testing.T) {
	runSDKScript(t, sdkRun{}, nodeSDKCommand(t, ""))
}

// TestCentrifugoNodeSDKSecondInstance: the same, the reconnect reaching a
// second kpush instance.
func TestCentrifugoNodeSDKSecondInstance(t *testing.T) {
	runSDKScript(t, sdkRun{second: true}, nodeSDKCommand(t, ""))
}

// TestCentrifugoNodeSDKProtobuf: the same with the package's Protobuf
// build, in the Protobuf format.
func TestCentrifugoNodeSDKProtobuf(t *testing.T) {
	runSDKScript(t, sdkRun{proto: true}, nodeSDKCommand(t, "protobuf"))
}

// nodeSDKCommand runs cf_client.mjs; format "protobuf" selects the
// package's Protobuf build.
func nodeSDKCommand(t *testing.T, format string) func(url string) *exec.Cmd {
	node, err := exec.LookPath("node")
	if _, statErr := os.Stat("testdata/node/node_modules/centrifuge"); err != nil || statErr != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("node and gateway/testdata/node's packages are needed (.ci/run installs them with npm ci)")
		}
		t.Skip("node or the centrifuge package is missing (cd gateway/testdata/node && npm ci)")
	}
	return func(url string) *exec.Cmd {
		return exec.Command(node, "testdata/node/cf_client.mjs", url, "x", "41", format)
	}
}

// TestCentrifugoPythonSDK is the same with centrifuge-python (PyPI), from
// the virtual environment .ci/run makes in gateway/testdata/python/.venv.
func TestCentrifugoPythonSDK(t *testing.T) {
	runSDKScript(t, sdkRun{}, pythonSDKCommand(t, ""))
}

// TestCentrifugoPythonSDKSecondInstance: the same, the reconnect reaching
// a second kpush instance.
func TestCentrifugoPythonSDKSecondInstance(t *testing.T) {
	runSDKScript(t, sdkRun{second: true}, pythonSDKCommand(t, ""))
}

// TestCentrifugoPythonSDKProtobuf: the same in the Protobuf format.
func TestCentrifugoPythonSDKProtobuf(t *testing.T) {
	runSDKScript(t, sdkRun{proto: true}, pythonSDKCommand(t, "protobuf"))
}

// pythonSDKCommand runs cf_client.py; format "protobuf" selects the
// Protobuf format.
func pythonSDKCommand(t *testing.T, format string) func(url string) *exec.Cmd {
	py := "testdata/python/.venv/bin/python"
	if _, err := os.Stat(py); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("gateway/testdata/python/.venv is needed (.ci/run makes it with pip install -r requirements.txt)")
		}
		t.Skip("no gateway/testdata/python/.venv (python3 -m venv .venv && .venv/bin/pip install -r requirements.txt)")
	}
	return func(url string) *exec.Cmd {
		return exec.Command(py, "testdata/python/cf_client.py", url, "x", "41", format)
	}
}

// runSDKScript runs an SDK client script against a gateway: it must
// subscribe to x, print its events as JSON lines, and after 41
// publications try publish and history. Record 1 comes with the subscribe
// reply (the route keeps the last record), 2..21 arrive live, 22..31
// while the connection is cut at the server (recovered on resubscribe),
// 32..41 live again. With second, the client goes through a proxy that
// sends its reconnect to a second instance (fed the same records, its own
// continuity epoch), which recovers it.
func runSDKScript(t *testing.T, run sdkRun, command func(url string) *exec.Cmd) {
	second := run.second
	keep := &router.Retention{Last: true, HistoryRecords: 1000, HistoryBytes: 1 << 20, HistoryAge: time.Minute}
	g := startSSEServer(t, nil)
	srvs := []*Server{g.srv}
	var b *served
	addr := g.addr
	var proxy *tcpProxy
	if second {
		b = startSSEServer(t, nil)
		srvs = append(srvs, b.srv)
		proxy = startProxy(t, g.addr)
		addr = proxy.ln.Addr().String()
	}
	pub := func(from, to int64) {
		for o := from; o <= to; o++ {
			for i, s := range srvs {
				s.Publish(&Message{Channel: "x", Topic: "t", Partition: 0, Offset: o, Epoch: uint64(3 + i), Timestamp: time.Now().UnixMilli(),
					Data: []byte(fmt.Sprintf(`{"o":%d}`, o))}, keep)
			}
		}
	}
	pub(1, 1)
	cmd := command(cfURL(addr))
	out := startCommand(t, cmd)
	type line struct {
		Event         string          `json:"event"`
		Offset        int64           `json:"offset"`
		Data          json.RawMessage `json:"data"`
		Code          int             `json:"code"`
		Recovered     bool            `json:"recovered"`
		WasRecovering bool            `json:"wasRecovering"`
		State         string          `json:"state"`
	}
	lines := make(chan line, 256)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var l line
			if json.Unmarshal(sc.Bytes(), &l) == nil {
				lines <- l
			}
		}
		close(lines)
	}()
	next := func() line {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("the client script ended early")
			}
			return l
		case <-time.After(20 * time.Second):
			t.Fatal("no line from the client script within 20s")
		}
		return line{}
	}
	expect := func(ev string) line {
		l := next()
		if l.Event != ev {
			t.Fatalf("got %+v, want %s", l, ev)
		}
		return l
	}
	var got []int64
	readPubs := func(n int) {
		for len(got) < n {
			l := expect("publication")
			var d struct{ O int64 }
			if err := json.Unmarshal(l.Data, &d); err != nil || d.O != l.Offset {
				t.Fatalf("publication %+v (data %s)", l, l.Data)
			}
			got = append(got, l.Offset)
		}
	}
	expect("subscribed")
	waitSubscribed(t, g.srv, 1)
	for _, c := range g.srv.conns.Snapshot() {
		if cf := c.cfState(); cf == nil || cf.proto != run.proto {
			t.Fatalf("the script's session: %+v, want Protobuf %v", cf, run.proto)
		}
	}
	readPubs(1) // the route's snapshot: the last record on subscribe
	pub(2, 21)
	readPubs(21)
	if second {
		bAddr := b.addr
		proxy.target.Store(&bAddr)
	}
	for _, c := range g.srv.conns.Snapshot() {
		c.abort() // the cut
	}
	pub(22, 31)
	if l := expect("subscribed"); !l.Recovered || !l.WasRecovering {
		t.Fatalf("resubscribed with %+v", l)
	}
	readPubs(31)
	if second && b.srv.Connections() != 1 {
		// Before the last records: the script disconnects after them.
		t.Fatalf("the client is not on the second instance (%d connections there)", b.srv.Connections())
	}
	pub(32, 41)
	readPubs(41)
	if fmt.Sprint(got) != fmt.Sprint(span(1, 41)) {
		t.Fatalf("got %v", got)
	}
	for _, name := range []string{"publish", "history"} {
		if l := expect(name); l.Code != cfErrNotAvailable {
			t.Fatalf("%s answered %+v", name, l)
		}
	}
	if l := expect("state"); l.State != "connected" {
		t.Fatalf("state after the not-available answers: %+v", l)
	}
}

// sdkRun is how runSDKScript runs: second sends the reconnect to a second
// instance; proto expects the script to use the Protobuf format.
type sdkRun struct{ second, proto bool }

// tcpProxy forwards TCP connections to whichever address target holds
// (a test switches it to move a client's reconnect to another instance)
// and counts the bytes the server sends back in down.
type tcpProxy struct {
	ln     net.Listener
	target atomic.Pointer[string]
	down   atomic.Int64
}

func startProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln}
	p.target.Store(&target)
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", *p.target.Load())
			if err != nil {
				c.Close()
				continue
			}
			wg.Add(2)
			pipe := func(dst io.Writer, dc, sc net.Conn) {
				defer wg.Done()
				_, _ = io.Copy(dst, sc)
				dc.Close()
				sc.Close()
			}
			go pipe(up, up, c)
			go pipe(countingWriter{c, &p.down}, c, up)
		}
	}()
	return p
}

// countingWriter counts what passes through it.
type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// TestCentrifugoGoSDKRecoversOnSecondInstance: the SDK's connection is cut
// and its reconnect reaches another kpush instance (its own consumer, so
// another continuity epoch) fed the same records: the missed records come
// from the second instance's history, with no gap and no duplicate.
func TestCentrifugoGoSDKRecoversOnSecondInstance(t *testing.T) {
	keep := &router.Retention{Last: true, HistoryRecords: 1000, HistoryBytes: 1 << 20, HistoryAge: time.Minute}
	a := startSSEServer(t, nil)
	b := startSSEServer(t, nil)
	pub := func(from, to int64) {
		for o := from; o <= to; o++ {
			for i, s := range []*Server{a.srv, b.srv} {
				s.Publish(&Message{Channel: "x", Partition: 1, Offset: o, Epoch: uint64(10 + i), Timestamp: time.Now().UnixMilli(),
					Data: []byte(fmt.Sprintf(`{"o":%d}`, o))}, keep)
			}
		}
	}
	pub(1, 1)
	proxy := startProxy(t, a.addr)
	cl := cfClient(t, proxy.ln.Addr().String(), centrifuge.Config{MinReconnectDelay: 50 * time.Millisecond, MaxReconnectDelay: 200 * time.Millisecond})
	pubs, resubscribed := cfSub(t, cl, "x")
	if e := nextPub(t, pubs); e.Offset != 1 {
		t.Fatalf("the snapshot on subscribe has offset %d", e.Offset)
	}
	var got []int64
	read := func(n int) {
		for len(got) < n {
			got = append(got, int64(nextPub(t, pubs).Offset))
		}
	}
	pub(2, 11)
	read(10)
	bAddr := b.addr
	proxy.target.Store(&bAddr)
	for _, c := range a.srv.conns.Snapshot() {
		c.abort() // instance a goes away for this client
	}
	pub(12, 21)
	if e := recv(t, resubscribed, "resubscribe on the second instance"); !e.Recovered {
		t.Fatalf("resubscribed on the second instance with %+v", e)
	}
	pub(22, 31)
	read(30)
	if fmt.Sprint(got) != fmt.Sprint(span(2, 31)) {
		t.Fatalf("got %v", got)
	}
	if b.srv.Connections() != 1 {
		t.Fatal("the client is not on the second instance")
	}
}
