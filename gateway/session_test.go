package gateway

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/kpush/kpush/gateway/wire"
	"github.com/kpush/kpush/router"
)

// Sessions without a socket, on any system: requests go straight to
// handleRequest on a session whose transport is fakeLink, and the test
// reads what its outbound queue holds and what it asked of its transport.
// The Server is newCore's: its sessions' half only.

// fakeLink is a session's transport that records what the session asks of
// it. Its counters are guarded by the session's mu, like the transport's
// state.
type fakeLink struct {
	session
	wakes       int     // flushes asked for at once
	delayed     int     // flushes asked for after write_delay
	armed       []int64 // timer deadlines asked for
	closings    int     // close frames queued
	unsubscribe bool    // the last closingLocked asked for dropSubscriptions
}

var _ transport = (*fakeLink)(nil)

func (l *fakeLink) Enqueue(f *router.Frame) bool { return l.deliver(l, f) }
func (l *fakeLink) sess() *session               { return &l.session }
func (l *fakeLink) armLocked(due int64)          { l.armed = append(l.armed, due) }
func (l *fakeLink) wakeLocked(delayed bool) {
	if delayed {
		l.delayed++
	} else {
		l.wakes++
	}
}
func (l *fakeLink) closingLocked(unsubscribe bool) {
	l.closings++
	l.unsubscribe = unsubscribe
}

// request hands one protocol v1 request to the session.
func (l *fakeLink) request(p string) { l.srv.handleRequest(l, []byte(p)) }

func newSessionServer(t testing.TB, mutate func(*Config)) *Server {
	t.Helper()
	cfg := Config{Listen: "127.0.0.1:0"}
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := newCore(cfg, router.New(), nil, nil)
	if err != nil {
		t.Fatalf("gateway newCore: %v", err)
	}
	return s
}

func newFakeLink(s *Server, ip string) *fakeLink {
	return &fakeLink{session: session{srv: s, ip: ip}}
}

// payloads returns the payloads of the text frames queued on c, and forgets
// them as written.
func payloads(t *testing.T, c *session) []string {
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

// runResumePool runs one resume pool goroutine for s until the test ends.
func runResumePool(t *testing.T, s *Server) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.runResumes(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

func secWaitUntil(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// collect gathers the payloads queued on c until one of them contains
// until, and returns them all.
func collect(t *testing.T, c *session, until string) []string {
	t.Helper()
	var got []string
	secWaitUntil(t, 20*time.Second, "a reply containing "+until, func() bool {
		got = append(got, payloads(t, c)...)
		return strings.Contains(strings.Join(got, "\n"), until)
	})
	return got
}

func TestSessionSubscribeFromHistory(t *testing.T) {
	s := newSessionServer(t, nil)
	c := newFakeLink(s, "192.0.2.1")
	keep := &router.Retention{Last: true, HistoryRecords: 10, HistoryBytes: 1 << 20, HistoryAge: time.Minute}
	for o := int64(1); o <= 4; o++ {
		s.Publish(&Message{Channel: "h.a", Offset: o, Epoch: 1, Data: []byte(`1`)}, keep)
	}
	c.request(`{"op":"subscribe","id":1,"channels":["h.a"],"since":{"h.a":{"0":2}}}`)
	got := strings.Join(payloads(t, &c.session), "\n")
	want := `{"op":"msg","ch":"h.a","p":0,"o":3,"ts":0,"data":1}` + "\n" +
		`{"op":"msg","ch":"h.a","p":0,"o":4,"ts":0,"data":1}` + "\n" +
		`{"op":"ok","id":1,"recovered":{"h.a":true}}`
	if got != want {
		t.Fatalf("resume from history queued\n%s\nwant\n%s", got, want)
	}
	// Live records follow; one at or below the client's position is not
	// sent again.
	s.Publish(&Message{Channel: "h.a", Offset: 5, Epoch: 1, Data: []byte(`1`)}, keep)
	if got := payloads(t, &c.session); len(got) != 1 || !strings.Contains(got[0], `"o":5`) {
		t.Fatalf("live record after the resume: %q", got)
	}
	// A second connection asks for the snapshot only.
	c2 := newFakeLink(s, "192.0.2.2")
	c2.request(`{"op":"subscribe","id":2,"channels":["h.a"],"snapshot":true}`)
	got2 := payloads(t, &c2.session)
	if len(got2) != 2 || !strings.Contains(got2[0], `"snap":true`) || !strings.Contains(got2[0], `"o":5`) || got2[1] != `{"op":"ok","id":2}` {
		t.Fatalf("subscribe with snapshot queued %q", got2)
	}
	// Unsubscribe: no more records.
	c.request(`{"op":"unsubscribe","id":3,"channels":["h.a"]}`)
	s.Publish(&Message{Channel: "h.a", Offset: 6, Epoch: 1, Data: []byte(`1`)}, keep)
	if got := payloads(t, &c.session); len(got) != 1 || got[0] != `{"op":"ok","id":3}` {
		t.Fatalf("after unsubscribe: %q", got)
	}
	s.router.Unsubscribe(c2, "h.a")
}

// TestSessionSubscriptionBound: a subscribe that would hold more than
// max_subscriptions channels is refused as a whole.
func TestSessionSubscriptionBound(t *testing.T) {
	s := newSessionServer(t, func(cfg *Config) { cfg.MaxSubscriptions = 2 })
	c := newFakeLink(s, "192.0.2.1")
	c.request(`{"op":"subscribe","id":1,"channels":["b.a","b.b"]}`)
	c.request(`{"op":"subscribe","id":2,"channels":["b.c"]}`)
	got := payloads(t, &c.session)
	if len(got) != 2 || got[0] != `{"op":"ok","id":1}` || !strings.Contains(got[1], `"code":"too_many_subscriptions"`) {
		t.Fatalf("replies %q", got)
	}
	if n := s.Publish(&Message{Channel: "b.c", Data: []byte(`1`)}, nil); n != 0 {
		t.Fatalf("the refused channel reached %d connections", n)
	}
	s.router.Unsubscribe(c, "b.a", "b.b")
}

// TestSessionUnsubscribe: unsubscribe drops only the channels named, with
// their caps, and a channel subscribed twice is held once.
func TestSessionUnsubscribe(t *testing.T) {
	s := newSessionServer(t, nil)
	c := newFakeLink(s, "192.0.2.1")
	c.request(`{"op":"subscribe","id":1,"channels":["u.a","u.b","u.a"],"max_rate":2}`)
	c.request(`{"op":"subscribe","id":2,"channels":["u.b"]}`)
	c.request(`{"op":"unsubscribe","id":3,"channels":["u.a","u.none"]}`)
	if got := payloads(t, &c.session); strings.Join(got, " ") != `{"op":"ok","id":1} {"op":"ok","id":2} {"op":"ok","id":3}` {
		t.Fatalf("replies %q", got)
	}
	c.mu.Lock()
	subs := strings.Join(c.subs, ",")
	capped := c.out.findCap("u.a") != nil
	c.mu.Unlock()
	if subs != "u.b" || capped {
		t.Fatalf("after unsubscribe: subs %q, u.a still capped %v", subs, capped)
	}
	if n := s.Publish(&Message{Channel: "u.a", Data: []byte(`1`)}, nil); n != 0 {
		t.Fatalf("the dropped channel reached %d connections", n)
	}
	if n := s.Publish(&Message{Channel: "u.b", Data: []byte(`1`)}, nil); n != 1 {
		t.Fatalf("the kept channel reached %d connections, want 1", n)
	}
	s.router.Unsubscribe(c, "u.b")
}

// TestSessionSlowRepliesClose: a client that sends requests without reading
// the replies is closed as a slow consumer (4008) once the replies reach the
// queue's bounds. The session tells its transport: the close frame is
// queued last, and its subscriptions are left to dropSubscriptions, which
// takes it out of the router.
func TestSessionSlowRepliesClose(t *testing.T) {
	s := newSessionServer(t, func(cfg *Config) { cfg.MaxQueueMessages = 4 })
	c := newFakeLink(s, "192.0.2.1")
	c.request(`{"op":"subscribe","id":1,"channels":["s.a"]}`)
	for id := 2; id <= 6; id++ {
		c.request(`{"op":"ping","id":` + strconv.Itoa(id) + `}`)
	}
	c.mu.Lock()
	n := len(c.out.frames)
	last := c.out.frames[n-1].Data
	closings, unsub := c.closings, c.unsubscribe
	c.mu.Unlock()
	if n != 1 || closeCodeOf(t, last) != CloseSlowConsumer {
		t.Fatalf("queue holds %d frames ending %x, want only a 4008 close frame (the unread replies dropped)", n, last)
	}
	if closings != 1 || !unsub {
		t.Fatalf("transport told of %d closes (unsubscribe %v), want 1 asking to unsubscribe", closings, unsub)
	}
	if got := count(t, s.metrics.closes.WithLabelValues("slow_consumer")); got != 1 {
		t.Fatalf("kpush_connection_closes_total{reason=slow_consumer} = %v, want 1", got)
	}
	// A closing session takes no more frames or requests.
	if s.Publish(&Message{Channel: "s.a", Data: []byte(`1`)}, nil) != 0 {
		t.Fatal("a closing session accepted a record")
	}
	c.request(`{"op":"subscribe","id":9,"channels":["s.b"]}`)
	c.dropSubscriptions(c)
	if n := s.router.Stats().Subscriptions; n != 0 {
		t.Fatalf("%d subscriptions left after the close", n)
	}
	if !c.closing() {
		t.Fatal("the session does not report closing")
	}
}

// TestSessionWakesItsTransport: a live record asks for a delayed flush (it
// may wait for write_delay), a reply for one at once, and a capped record
// arms the transport's timer.
func TestSessionWakesItsTransport(t *testing.T) {
	s := newSessionServer(t, nil)
	c := newFakeLink(s, "192.0.2.1")
	c.request(`{"op":"subscribe","id":1,"channels":["w.a"]}`)
	c.request(`{"op":"subscribe","id":2,"channels":["w.c"],"max_rate":1}`)
	s.Publish(&Message{Channel: "w.a", Offset: 1, Data: []byte(`1`)}, nil)
	s.Publish(&Message{Channel: "w.c", Offset: 1, Data: []byte(`1`)}, nil)
	s.Publish(&Message{Channel: "w.c", Offset: 2, Data: []byte(`1`)}, nil) // within the cap's interval: waits
	c.mu.Lock()
	wakes, delayed, armed := c.wakes, c.delayed, len(c.armed)
	c.mu.Unlock()
	if wakes != 2 || delayed != 2 || armed != 1 {
		t.Fatalf("wakes %d at once, %d delayed, %d timers; want 2 (replies), 2 (records), 1 (the capped record)", wakes, delayed, armed)
	}
	s.router.Unsubscribe(c, "w.a", "w.c")
}

// closeCodeOf returns the status code of a close frame's bytes.
func closeCodeOf(t *testing.T, b []byte) ws.StatusCode {
	t.Helper()
	if len(b) < 4 || b[0] != 0x88 || int(b[1]) != len(b)-2 {
		t.Fatalf("frame %x is not a close frame with a status", b)
	}
	code, fail, why := wire.CheckCloseBody(b[2:])
	if fail != 0 {
		t.Fatalf("close frame %x: %s", b, why)
	}
	return code
}

// deliverOne queues f on l through Enqueue, as the router does, and
// consumes it as the writer would.
func deliverOne(tb testing.TB, l *fakeLink, f *router.Frame) {
	if !l.Enqueue(f) {
		tb.Fatal("the session refused a record")
	}
	l.mu.Lock()
	l.out.consume(l.out.bytes)
	l.mu.Unlock()
}

// TestSessionDeliverDoesNotAllocate: a live record goes through the
// session to its queue without allocating (the Linux writer adds its own
// check, TestWriterDoesNotAllocate).
func TestSessionDeliverDoesNotAllocate(t *testing.T) {
	l := newFakeLink(newSessionServer(t, nil), "192.0.2.1")
	f := benchFrame()
	deliverOne(t, l, f) // the queue's first slice
	if n := testing.AllocsPerRun(1000, func() { deliverOne(t, l, f) }); n != 0 {
		t.Fatalf("%.1f allocations per delivery, want 0", n)
	}
}

// TestSessionDeliverDeflate: a session that writes the shared compressed
// form makes it on its first delivery of a compressible record, once; later
// deliveries of that record, to it or to others, neither compress again
// nor allocate; a plain session delivering it never compresses it.
func TestSessionDeliverDeflate(t *testing.T) {
	s := newSessionServer(t, nil)
	plain := newFakeLink(s, "192.0.2.1")
	z := newFakeLink(s, "192.0.2.2")
	z.out.deflate, z.out.zshared = true, true
	f := deflatableFrame()
	deliverOne(t, plain, f)
	if n := s.deflated.Load(); n != 0 || f.Deflated.Made() != nil {
		t.Fatalf("a plain session's delivery compressed the record (%d)", n)
	}
	deliverOne(t, z, f)
	zf := f.Deflated.Made()
	if n := s.deflated.Load(); n != 1 || zf == nil || len(zf) >= len(f.Data) {
		t.Fatalf("after a deflate session's delivery: %d compressions, form of %d bytes (plain %d)", n, len(zf), len(f.Data))
	}
	z.mu.Lock()
	z.out.frames = append(z.out.frames[:0], f)
	if w := z.out.wire(f); &w[0] != &zf[0] {
		t.Fatal("the deflate session does not write the shared compressed form")
	}
	if w := plain.out.wire(f); &w[0] != &f.Data[0] {
		t.Fatal("the plain session does not write Data")
	}
	z.out.frames = z.out.frames[:0]
	z.mu.Unlock()
	if n := testing.AllocsPerRun(1000, func() { deliverOne(t, z, f) }); n != 0 {
		t.Fatalf("%.1f allocations per delivery to a deflate session, want 0", n)
	}
	if n := s.deflated.Load(); n != 1 {
		t.Fatalf("%d compressions after 1000 more deliveries, want 1", n)
	}
}

// BenchmarkSessionDeliverDeflate: one live record, already compressed by
// an earlier subscriber, through a deflate session to its queue.
func BenchmarkSessionDeliverDeflate(b *testing.B) {
	l := newFakeLink(newSessionServer(b, nil), "192.0.2.1")
	l.out.deflate, l.out.zshared = true, true
	f := deflatableFrame()
	b.ReportAllocs()
	for b.Loop() {
		deliverOne(b, l, f)
	}
}

// deflatableFrame is a 2 KB market record marked compressible, as Encode
// marks it while a connection has permessage-deflate.
func deflatableFrame() *router.Frame {
	f := EncodeMessage(&Message{Channel: "ticks.AAPL", Partition: 3, Offset: 123456, Timestamp: 1700000000000,
		Data: []byte(`{"sym":"AAPL","book":[` + strings.Repeat(`{"px":189.52,"size":300},`, 80) + `{}]}`)})
	f.Deflated = new(router.Lazy)
	return f
}

// BenchmarkSessionDeliver: one live record through the session (the body
// of Enqueue) to its queue, without a socket.
func BenchmarkSessionDeliver(b *testing.B) {
	l := newFakeLink(newSessionServer(b, nil), "192.0.2.1")
	f := benchFrame()
	b.ReportAllocs()
	for b.Loop() {
		deliverOne(b, l, f)
	}
}

// benchFrame is a market record of typical size.
func benchFrame() *router.Frame {
	return EncodeMessage(&Message{Channel: "ticks.AAPL", Partition: 3, Offset: 123456, Timestamp: 1700000000000,
		Data: []byte(`{"sym":"AAPL","price":189.52,"bid":189.51,"ask":189.53,"size":300,"seq":123456,"ts":1700000000000}`)})
}
