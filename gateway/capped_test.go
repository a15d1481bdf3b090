package gateway

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kpush/kpush/router"
)

// Unit tests of frequency caps (capped.go) and the server's timer wheel
// (wheel.go), without a socket.

// capRec is a live record of ch at offset o whose route caps it at
// routeRate (0: no route cap).
func capRec(ch string, o int64, routeRate float64) *router.Frame {
	f := rec(ch, o, false)
	f.MaxRate = routeRate
	return f
}

func TestCapConflatesToTheNewest(t *testing.T) {
	pc := newPolicyCounters()
	var o outbound
	b := queueBounds{messages: 100, bytes: 1 << 20}
	o.setCap("a", 4) // one frame every 250 ms
	if r := o.enqueue(capRec("a", 1, 0), 1000, b, pc); r != pushQueued {
		t.Fatalf("first frame: %v, want queued at once", r)
	}
	for i, now := range []int64{1010, 1100, 1200} {
		if r := o.enqueue(capRec("a", int64(2+i), 0), now, b, pc); r != pushDeferred {
			t.Fatalf("frame %d inside the interval: %v, want deferred", 2+i, r)
		}
	}
	// 1000 + 250, up to the 15 ms grid of a 250 ms interval.
	if due := o.capDue("a"); due != 1260 {
		t.Fatalf("pending frame due at %d, want 1260", due)
	}
	if queued, ok, next := o.releaseDue(1259, b, pc); queued || !ok || next != 1260 {
		t.Fatalf("release before the interval: queued %v ok %v next %d", queued, ok, next)
	}
	queued, ok, next := o.releaseDue(1260, b, pc)
	if !queued || !ok || next != 0 {
		t.Fatalf("release at the interval: queued %v ok %v next %d", queued, ok, next)
	}
	// a@1 was never written: the mark belongs to a@4, not to it.
	if m := o.markSkipped(0); strings.Contains(string(m.Payload), "skipped") {
		t.Fatalf("the frame before the skipped records was marked: %s", m.Payload)
	}
	if m := o.markSkipped(1); !strings.Contains(string(m.Payload), `"skipped":2,`) || m.Offset != 4 {
		t.Fatalf("released frame %s at offset %d, want a@4 with skipped:2", m.Payload, m.Offset)
	}
	if got, want := describe(&o), "a@1 a@4+skipped"; got != want {
		t.Fatalf("queue %q, want %q", got, want)
	}
	if count(t, pc.conflated) != 2 {
		t.Fatalf("kpush_conflated_total %v, want 2", count(t, pc.conflated))
	}
	checkBytes(t, &o)
	// After a quiet period the next frame goes out at once.
	if r := o.enqueue(capRec("a", 5, 0), 1600, b, pc); r != pushQueued {
		t.Fatalf("frame after a quiet period: %v, want queued at once", r)
	}
}

// TestCapBoundsTheRate streams a record every millisecond for ten seconds
// at max_rate 4, releasing whenever the timer would: at most 4 frames a
// second (plus the first) reach the queue, the last one is the newest
// record, and every record is either delivered or counted as skipped.
func TestCapBoundsTheRate(t *testing.T) {
	pc := newPolicyCounters()
	var o outbound
	b := queueBounds{messages: 1 << 20, bytes: 1 << 30}
	o.setCap("a", 4)
	var due int64
	var sent []int64 // when each frame reached the queue
	note := func(now int64) {
		for len(sent) < len(o.frames) {
			sent = append(sent, now)
		}
	}
	const start, end = 10_000, 20_000
	for now := int64(start); now < end; now++ {
		if due != 0 && now >= due {
			_, _, due = o.releaseDue(now, b, pc)
			note(now)
		}
		if o.enqueue(capRec("a", now, 0), now, b, pc) == pushDeferred && due == 0 {
			due = o.capDue("a")
		}
		note(now)
	}
	for due != 0 {
		now := due
		_, _, due = o.releaseDue(now, b, pc)
		note(now)
	}
	// At most one frame per 250 ms; the grid delays each by under 15 ms.
	if n, most, least := len(o.frames), (end-start)/250+1, (end-start)/265; n > most || n < least {
		t.Fatalf("%d frames in 10 s at max_rate 4, want %d to %d", n, least, most)
	}
	var skipped int64
	for i := range o.frames {
		f := o.markSkipped(i)
		if i > 0 && sent[i]-sent[i-1] < 250 {
			t.Fatalf("frames queued at %d and %d ms: closer than 250 ms", sent[i-1], sent[i])
		}
		var wf struct{ Skipped int64 }
		if err := json.Unmarshal(f.Payload, &wf); err != nil {
			t.Fatal(err)
		}
		skipped += wf.Skipped
	}
	if last := o.frames[len(o.frames)-1]; last.Offset != end-1 {
		t.Fatalf("last frame delivered is offset %d, want the newest, %d", last.Offset, end-1)
	}
	if total := int64(len(o.frames)) + skipped; total != end-start {
		t.Fatalf("%d delivered + %d skipped = %d, want every one of %d records", len(o.frames), skipped, total, end-start)
	}
}

func TestCapRouteDefaultAndOverride(t *testing.T) {
	pc := newPolicyCounters()
	b := queueBounds{messages: 100, bytes: 1 << 20}

	t.Run("route default", func(t *testing.T) {
		var o outbound
		o.enqueue(capRec("a", 1, 2), 0, b, pc)
		if r := o.enqueue(capRec("a", 2, 2), 100, b, pc); r != pushDeferred || o.capDue("a") != 512 {
			t.Fatalf("route max_rate 2: %v due %d, want deferred to 512 (500 on a 16 ms grid)", r, o.capDue("a"))
		}
	})
	t.Run("subscription overrides", func(t *testing.T) {
		var o outbound
		o.setCap("a", 10)
		o.enqueue(capRec("a", 1, 2), 0, b, pc)
		if r := o.enqueue(capRec("a", 2, 2), 110, b, pc); r != pushQueued {
			t.Fatalf("max_rate 10 over a route's 2: %v at 110 ms, want queued", r)
		}
	})
	t.Run("route cap removed by a reload", func(t *testing.T) {
		var o outbound
		o.enqueue(capRec("a", 1, 2), 0, b, pc)
		o.enqueue(capRec("a", 2, 2), 10, b, pc) // pending
		if r := o.enqueue(capRec("a", 3, 0), 20, b, pc); r != pushDeferred || o.capDue("a") != 20 {
			t.Fatalf("uncapped frame behind a pending one: %v due %d, want released at once (20)", r, o.capDue("a"))
		}
		o.releaseDue(20, b, pc)
		if o.caps != nil {
			t.Fatal("the cap outlived its route's")
		}
		if r := o.enqueue(capRec("a", 4, 0), 21, b, pc); r != pushQueued {
			t.Fatalf("uncapped channel: %v, want queued", r)
		}
		if got, want := describe(&o), "a@1 a@3 a@4"; got != want {
			t.Fatalf("queue %q, want %q", got, want)
		}
	})
	t.Run("unsubscribe drops the pending frame", func(t *testing.T) {
		var o outbound
		o.setCap("a", 1)
		o.enqueue(capRec("a", 1, 0), 0, b, pc)
		o.enqueue(capRec("a", 2, 0), 1, b, pc)
		o.dropCap("a")
		if queued, _, next := o.releaseDue(5000, b, pc); queued || next != 0 || len(o.frames) != 1 {
			t.Fatalf("after unsubscribe: queued %v next %d, %d frames", queued, next, len(o.frames))
		}
	})
}

// TestCapReleaseRespectsBounds: a released frame that does not fit closes a
// connection whose route does not conflate, as a live one would.
func TestCapReleaseRespectsBounds(t *testing.T) {
	pc := newPolicyCounters()
	var o outbound
	b := queueBounds{messages: 2, bytes: 1 << 20}
	o.setCap("a", 1)
	o.enqueue(capRec("a", 1, 0), 0, b, pc)
	o.enqueue(capRec("b", 1, 0), 0, b, pc) // the queue is full now
	o.enqueue(capRec("a", 2, 0), 10, b, pc)
	if _, ok, _ := o.releaseDue(2000, b, pc); ok {
		t.Fatal("a released frame beyond the bounds was accepted on a disconnect route")
	}
}

func TestCapGridAligns(t *testing.T) {
	// Channels of one connection whose intervals end within a grid step
	// fall due together; none is ever early.
	for _, tc := range []struct{ now, every, want int64 }{
		{1000, 250, 1260}, {1003, 250, 1260}, {1010, 250, 1260}, {1011, 250, 1275},
		{0, 1, 1}, {7, 1, 8}, {100, 1000, 1104},
	} {
		if got := nextSlot(tc.now, tc.every); got != tc.want || got < tc.now+tc.every {
			t.Errorf("nextSlot(%d, %d) = %d, want %d", tc.now, tc.every, got, tc.want)
		}
	}
}

func TestCapValidation(t *testing.T) {
	for _, tc := range []struct {
		req string
		ok  bool
	}{
		{`{"op":"subscribe","id":1,"channels":["a"],"max_rate":4}`, true},
		{`{"op":"subscribe","id":1,"channels":["a"],"max_rate":0.5}`, true},
		{`{"op":"subscribe","id":1,"channels":["a"],"max_rate":0}`, false},
		{`{"op":"subscribe","id":1,"channels":["a"],"max_rate":-3}`, false},
		{`{"op":"subscribe","id":1,"channels":["a"],"max_rate":1e9}`, false},
		{`{"op":"subscribe","id":1,"channels":["a"],"max_rate":"4"}`, false},
		{`{"op":"unsubscribe","id":1,"channels":["a"],"max_rate":4}`, false},
	} {
		_, err := ParseRequest([]byte(tc.req), 10)
		if (err == nil) != tc.ok {
			t.Errorf("%s: err %v, want ok %v", tc.req, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "max_rate") {
			t.Errorf("%s: error %q does not name max_rate", tc.req, err)
		}
	}
}

func TestTimerWheel(t *testing.T) {
	type item struct{ n int }
	w := newTimerWheel[item]()
	a, b, c := &item{1}, &item{2}, &item{3}
	w.Add(a, 1005)
	w.Add(b, 1005+wheelSlots) // same slot, one turn later
	w.Add(c, 1003)
	out, next := w.take(1000, nil)
	if len(out) != 0 || next != 1003 {
		t.Fatalf("take(1000): %d entries, next %d; want none, next 1003", len(out), next)
	}
	out, next = w.take(1005, nil)
	if len(out) != 2 || out[0].item != c || out[1].item != a || next != 1005+wheelSlots {
		t.Fatalf("take(1005): %v next %d", out, next)
	}
	// An entry due in a slot already emptied goes to the next one.
	w.Add(a, 1004)
	if out, _ = w.take(1006, nil); len(out) != 1 || out[0].item != a {
		t.Fatalf("an entry added in the past was lost: %v", out)
	}
	if out, next = w.take(1005+wheelSlots, nil); len(out) != 1 || out[0].item != b || next != 0 {
		t.Fatalf("take a turn later: %v next %d", out, next)
	}

	// The running wheel fires a real deadline.
	w = newTimerWheel[item]()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var fired atomic.Int32
	go func() {
		defer close(done)
		w.run(ctx, func(*item, int64) { fired.Add(1) })
	}()
	w.Add(a, monoMillis()+5)
	deadline := time.Now().Add(10 * time.Second)
	for fired.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
	if fired.Load() != 1 {
		t.Fatalf("fired %d times, want once", fired.Load())
	}
}

func TestWriteDelayValidation(t *testing.T) {
	for _, d := range []time.Duration{-time.Millisecond, 2 * time.Second, 1500 * time.Microsecond} {
		cfg := Config{WriteDelay: d}
		cfg.SetDefaults()
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "gateway.write_delay") {
			t.Errorf("write_delay %s: %v, want an error naming gateway.write_delay", d, err)
		}
	}
}

// writeOut emulates the writer (conn_linux.go flush): it gathers frames as
// the writer does, marking them (markSkipped), and writes them all. It
// returns the payloads written.
func writeOut(t *testing.T, c *session) []string {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for i := range c.out.frames {
		out = append(out, string(payloadOf(t, c.out.markSkipped(i).Data)))
	}
	c.out.consume(c.out.bytes)
	return out
}

// TestCapMarksEachReleasedFrame: a capped channel that releases again
// before its last released frame was written (a connection slower than
// the cap) gives each released frame its own "skipped":N, the records it
// replaced, and none to a later one.
func TestCapMarksEachReleasedFrame(t *testing.T) {
	s := newSessionServer(t, nil)
	c := newFakeLink(s, "192.0.2.1")
	// One frame every 100 s: the test's clock never passes the interval,
	// so only the releases below send a waiting frame.
	c.request(`{"op":"subscribe","id":1,"channels":["m.a"],"max_rate":0.01}`)
	if got := writeOut(t, &c.session); len(got) != 1 || got[0] != `{"op":"ok","id":1}` {
		t.Fatalf("subscribe answered %q", got)
	}
	pub := func(o int64) { s.Publish(&Message{Channel: "m.a", Offset: o, Data: []byte(`1`)}, nil) }
	release := func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		due := c.out.capDue("m.a")
		if due == 0 {
			t.Fatal("nothing waits for the cap")
		}
		c.releaseDueLocked(c, due, false)
	}
	pub(1) // the first record goes at once
	pub(2) // replaced by 3 while it waits
	pub(3)
	release() // queues 3; 1 is not written yet
	pub(4)    // replaced by 5
	pub(5)
	release() // queues 5; neither 1 nor 3 is written yet
	got := writeOut(t, &c.session)
	want := []string{
		`{"op":"msg","ch":"m.a","p":0,"o":1,"ts":0,"data":1}`,
		`{"op":"msg","ch":"m.a","p":0,"o":3,"ts":0,"skipped":1,"data":1}`,
		`{"op":"msg","ch":"m.a","p":0,"o":5,"ts":0,"skipped":1,"data":1}`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("written\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if n := count(t, s.policy.conflated); n != 2 {
		t.Fatalf("kpush_conflated_total %v, want 2", n)
	}
	s.router.Unsubscribe(c, "m.a")
}

// TestSkipMarksAreExact drives one connection's queue with capped and
// conflated channels, a writer that stalls, writes part of a frame or
// gathers only a few frames, and caps released late, and reads what the
// client receives: every frame's "skipped":N is exactly the number of its
// channel's records published between the channel's previous frame the
// client got and this one, and once drained every channel ends at its
// newest record. Seeded: the same runs every time.
func TestSkipMarksAreExact(t *testing.T) {
	for seed := uint64(1); seed <= 40; seed++ {
		t.Run(strconv.FormatUint(seed, 10), func(t *testing.T) { skipMarkRun(t, seed) })
	}
}

func skipMarkRun(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 14))
	pc := newPolicyCounters()
	var o outbound
	b := queueBounds{messages: 2 + rng.IntN(6), bytes: 1 << 20}
	chans := []string{"c.own", "c.route", "c.both", "c.free"}
	o.setCap("c.own", 20) // 50 ms
	o.setCap("c.both", 8) // 125 ms, over the route's 40
	routeRate := map[string]float64{"c.route": 10, "c.both": 40}
	pub := map[string]int64{}  // last offset published per channel
	seen := map[string]int64{} // last offset the client got per channel
	var stream []byte          // bytes the client received
	var due int64              // the connection's timer: 0 when not armed
	var publish func()         // publishes the next record of a random channel
	arm := func(at int64) {
		if at != 0 && (due == 0 || at < due) {
			due = at
		}
	}
	// read parses the complete frames the client received.
	read := func() {
		for len(stream) >= 2 {
			n, h := int(stream[1]), 2
			if n == 126 {
				if len(stream) < 4 {
					return
				}
				n, h = int(binary.BigEndian.Uint16(stream[2:])), 4
			}
			if len(stream) < h+n {
				return
			}
			var m struct {
				Ch      string
				O       int64
				Skipped int64
			}
			if err := json.Unmarshal(stream[h:h+n], &m); err != nil {
				t.Fatalf("frame %q: %v", stream[h:h+n], err)
			}
			if want := m.O - seen[m.Ch] - 1; m.Skipped != want {
				t.Fatalf("%s@%d after %s@%d carries skipped:%d, want %d", m.Ch, m.O, m.Ch, seen[m.Ch], m.Skipped, want)
			}
			seen[m.Ch] = m.O
			stream = stream[h+n:]
		}
	}
	// write is one writer round: gather up to k frames, marking them,
	// write some of their bytes.
	write := func(k int, all bool) {
		var out []byte
		for i := range o.frames {
			if i == k {
				break
			}
			if i > 0 || o.head == 0 {
				o.markSkipped(i)
			}
			w := o.wire(o.frames[i])
			if i == 0 {
				w = w[o.head:]
			}
			out = append(out, w...)
		}
		o.inflight = int32(min(k, len(o.frames)))
		n := len(out)
		if !all && n > 0 {
			n = rng.IntN(n + 1)
		}
		// Frames arrive while the write is in progress.
		for range rng.IntN(3) {
			publish()
		}
		o.inflight = 0
		stream = append(stream, out[:n]...)
		o.consume(n)
		read()
	}
	now := int64(1000)
	publish = func() {
		ch := chans[rng.IntN(len(chans))]
		pub[ch]++
		f := rec(ch, pub[ch], true)
		f.MaxRate = routeRate[ch]
		switch o.enqueue(f, now, b, pc) {
		case pushRefused:
			t.Fatalf("%s@%d refused on a conflate route", ch, pub[ch])
		case pushDeferred:
			arm(o.capDue(ch))
		}
	}
	for step := 0; step < 3000; step++ {
		now += int64(rng.IntN(8))
		if due != 0 && now >= due+int64(rng.IntN(3))*40 { // the timer fires, sometimes late
			due = 0
			_, ok, next := o.releaseDue(now, b, pc)
			if !ok {
				t.Fatal("a released frame was refused on a conflate route")
			}
			arm(next)
		}
		switch r := rng.IntN(10); {
		case r < 6:
			publish()
		case r < 8 && step%400 < 300: // the writer stalls a quarter of the time
			write(1+rng.IntN(4), false)
		}
		checkBytes(t, &o)
	}
	// Drain: release what waits, write everything.
	for due != 0 || len(o.frames) > 0 {
		if due != 0 {
			now = max(now, due)
			due = 0
			_, _, next := o.releaseDue(now, b, pc)
			arm(next)
		}
		write(len(o.frames), true)
	}
	for _, ch := range chans {
		if seen[ch] != pub[ch] {
			t.Fatalf("%s: the client ended at offset %d, want the newest, %d", ch, seen[ch], pub[ch])
		}
	}
	if len(o.conflated) != 0 {
		t.Fatalf("%d skip marks left behind", len(o.conflated))
	}
}
