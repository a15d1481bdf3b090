package gateway

import (
	"strconv"
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

// TestSSEStreamFindsItsChannels: an event stream finds a record's channel
// in its list by searching a short list (no map: an idle stream of one
// channel paid 208 bytes for one) and through an index for a long one,
// with the same answer, a channel listed twice at its last place.
func TestSSEStreamFindsItsChannels(t *testing.T) {
	for _, n := range []int{1, 3, sseIndexFrom - 2, sseIndexFrom, 40} {
		var list []string
		for i := range n {
			list = append(list, "s."+strconv.Itoa(i))
		}
		list = append(list, "s.0") // twice: the index keeps its last place
		st := newSSEStream(list)
		if (st.index != nil) != (len(list) >= sseIndexFrom) {
			t.Fatalf("%d channels: indexed %v", len(list), st.index != nil)
		}
		for i := range n {
			st.advance("s."+strconv.Itoa(i), 0, int64(i))
		}
		st.advance("s.none", 0, 1)
		if len(st.pos) != n {
			t.Fatalf("%d channels: %d positions, want %d", len(list), len(st.pos), n)
		}
		for _, p := range st.pos {
			want := int(p.offset)
			if want == 0 {
				want = len(list) - 1
			}
			if p.ch != want {
				t.Fatalf("%d channels: s.%d at index %d, want %d", len(list), p.offset, p.ch, want)
			}
		}
	}
}
