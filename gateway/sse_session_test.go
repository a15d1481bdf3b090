package gateway

import (
	"testing"

	"github.com/gobwas/ws"
	"github.com/kpush/kpush/router"
)

// TestSSESessionSubscribe: a new event stream's channels are subscribed as
// protocol v1's subscribe; a Last-Event-ID that could not be used is said
// first (nothing recovered), and a draining server closes the stream with
// 1001 once it is subscribed. On the fake transport, on any system.
func TestSSESessionSubscribe(t *testing.T) {
	s := newSessionServer(t, nil)
	l := newFakeLink(s, "192.0.2.1")
	s.sseSubscribe(l, &Request{Op: "subscribe", Channels: []string{"s.a"}}, true)
	wantReplies(t, "stream with a bad Last-Event-ID", payloads(t, &l.session),
		`{"op":"ok","id":0,"recovered":{"s.a":false}}`, `{"op":"ok","id":0}`)
	if s.router.Subscribers("s.a") != 1 {
		t.Fatal("the stream's channels were not subscribed")
	}
	if n := s.Publish(&Message{Channel: "s.a", Offset: 1, Data: []byte(`1`)}, nil); n != 1 {
		t.Fatalf("a record of the stream's channel reached %d connections", n)
	}
	l.dropSubscriptions(l)

	s.draining.Store(true)
	d := newFakeLink(s, "192.0.2.2")
	s.sseSubscribe(d, &Request{Op: "subscribe", Channels: []string{"s.c"}}, false)
	d.mu.Lock()
	frames := append([]*router.Frame(nil), d.out.frames...)
	d.mu.Unlock()
	if len(frames) != 2 || closeCodeOf(t, frames[1].Data) != ws.StatusGoingAway || d.closings != 1 {
		t.Fatalf("stream on a draining server: %d frames, %d closings; want its reply and a close with 1001", len(frames), d.closings)
	}
	d.dropSubscriptions(d)
}
