package gateway

import (
	"testing"
	"unsafe"
)

// TestSessionKeepsTheRoutersChannelName: a subscribed connection keeps the
// router's copy of the channel's name, not the one decoded from its
// request, so an idle subscriber pays no bytes of its own for it.
func TestSessionKeepsTheRoutersChannelName(t *testing.T) {
	s := newSessionServer(t, nil)
	a, b := newFakeLink(s, "192.0.2.1"), newFakeLink(s, "192.0.2.2")
	a.request(`{"op":"subscribe","id":1,"channels":["n.shared"]}`)
	b.request(`{"op":"subscribe","id":1,"channels":["n.other","n.shared"]}`)
	a.mu.Lock()
	sa := a.subs[0]
	a.mu.Unlock()
	b.mu.Lock()
	sb := b.subs[1]
	b.mu.Unlock()
	if sa != "n.shared" || sb != "n.shared" {
		t.Fatalf("subscriptions %q and %q", sa, sb)
	}
	if unsafe.StringData(sa) != unsafe.StringData(sb) {
		t.Fatal("two connections hold their own copies of one channel's name")
	}
	s.router.Unsubscribe(a, "n.shared")
	s.router.Unsubscribe(b, "n.other", "n.shared")
}
