package gateway

import (
	"fmt"
	"testing"
	"time"

	"github.com/kpush/kpush/gateway/client"
	"github.com/kpush/kpush/router"
)

// TestMaxRateEndToEnd: a client subscribed with max_rate 5 gets the first
// record at once, then at most five frames a second, always ending on the
// newest record, with every record either delivered or counted in
// "skipped"; an uncapped client of the same channel gets every record; and
// a client resuming from an offset the capped one saw gets exactly what it
// missed.
func TestMaxRateEndToEnd(t *testing.T) {
	srv := startPushServer(t, Config{}, nil)
	keep := &router.Retention{HistoryRecords: 1000, HistoryBytes: 1 << 20, HistoryAge: time.Minute}
	capped := dialPush(t, srv.url, nil)
	rate := 5.0
	if _, reply := capped.request(t, &client.Request{Op: "subscribe", Channels: []string{"q"}, MaxRate: &rate}); reply.Op != "ok" {
		t.Fatalf("subscribe with max_rate: %+v", reply)
	}
	plain := dialPush(t, srv.url, nil)
	if _, reply := plain.request(t, &client.Request{Op: "subscribe", Channels: []string{"q"}}); reply.Op != "ok" {
		t.Fatalf("subscribe: %+v", reply)
	}

	start := time.Now()
	srv.publish("q", 0, 1, keep, false)
	if f := capped.next(t); f.O != 1 || f.Skipped != 0 {
		t.Fatalf("first record: offset %d skipped %d, want 1 at once", f.O, f.Skipped)
	}
	const n = 400
	for o := int64(2); o <= n; o++ {
		srv.publish("q", 0, o, keep, false)
		time.Sleep(2 * time.Millisecond) // a steady stream, about 500 records a second
	}
	got := []*client.Frame{{O: 1}}
	for got[len(got)-1].O != n {
		got = append(got, capped.next(t))
	}
	elapsed := time.Since(start)
	var skipped int64
	for i, f := range got {
		if i > 0 && f.O <= got[i-1].O {
			t.Fatalf("offsets out of order: %d after %d", f.O, got[i-1].O)
		}
		if i > 0 && f.Skipped != f.O-got[i-1].O-1 {
			t.Fatalf("frame at %d after %d says skipped:%d", f.O, got[i-1].O, f.Skipped)
		}
		skipped += f.Skipped
	}
	if most := int(elapsed/(200*time.Millisecond)) + 2; len(got) > most {
		t.Fatalf("%d frames in %s at max_rate 5: more than %d", len(got), elapsed, most)
	}
	if int64(len(got))+skipped != n {
		t.Fatalf("%d delivered + %d skipped, want %d records", len(got), skipped, n)
	}
	t.Logf("max_rate 5: %d of %d records in %s", len(got), n, elapsed)

	for o := int64(1); o <= n; o++ {
		if f := plain.next(t); f.O != o || f.Skipped != 0 {
			t.Fatalf("uncapped client: offset %d skipped %d, want %d", f.O, f.Skipped, o)
		}
	}

	// Resuming from an offset the capped client saw gets what it missed.
	seen := got[len(got)/2].O
	again := dialPush(t, srv.url, nil)
	msgs, reply := again.request(t, &client.Request{Op: "subscribe", Channels: []string{"q"}, MaxRate: &rate,
		Since: map[string]map[string]int64{"q": {"0": seen}}})
	if !reply.Recovered["q"] {
		t.Fatalf("resume from %d: %+v", seen, reply)
	}
	if want := span(seen+1, n); fmt.Sprint(offsets(msgs)) != fmt.Sprint(want) {
		t.Fatalf("resume from %d replayed %v, want %v", seen, offsets(msgs), want)
	}
}

// TestMaxRateBadValue: a bad max_rate is answered with an error naming it,
// and the connection stays usable.
func TestMaxRateBadValue(t *testing.T) {
	srv := startPushServer(t, Config{}, nil)
	c := dialPush(t, srv.url, nil)
	for _, v := range []float64{0, -1, 5000} {
		rate := v
		_, reply := c.request(t, &client.Request{Op: "subscribe", Channels: []string{"q"}, MaxRate: &rate})
		if reply.Op != "error" || reply.Code != CodeBadRequest {
			t.Fatalf("max_rate %g: %+v, want a bad_request error", v, reply)
		}
		t.Logf("max_rate %g: %s", v, reply.Message)
	}
	c.sync(t)
}

// TestMaxRateRouteDefault: a route's max_rate caps subscribers that asked
// for no cap of their own; one that asked for a higher rate gets it.
func TestMaxRateRouteDefault(t *testing.T) {
	srv := startPushServer(t, Config{}, nil)
	def := dialPush(t, srv.url, nil)
	def.request(t, &client.Request{Op: "subscribe", Channels: []string{"q"}})
	fast := dialPush(t, srv.url, nil)
	rate := 1000.0
	fast.request(t, &client.Request{Op: "subscribe", Channels: []string{"q"}, MaxRate: &rate})
	const n = 50
	start := time.Now()
	for o := int64(1); o <= n; o++ {
		srv.Publish(&Message{Channel: "q", Offset: o, Data: []byte(`{}`), MaxRate: 2}, nil)
	}
	var got []*client.Frame
	for len(got) == 0 || got[len(got)-1].O != n {
		got = append(got, def.next(t))
	}
	if most := int(time.Since(start)/(500*time.Millisecond)) + 2; len(got) > most || got[0].O != 1 {
		t.Fatalf("route max_rate 2: %d frames (first %d) in %s, want the first at once and at most %d", len(got), got[0].O, time.Since(start), most)
	}
	if got[len(got)-1].Skipped == 0 {
		t.Fatal("the newest record does not say what it replaced")
	}
	// max_rate 1000 over the route's 2: its own cap applies, and it too
	// ends on the newest record.
	var fastGot []*client.Frame
	for len(fastGot) == 0 || fastGot[len(fastGot)-1].O != n {
		fastGot = append(fastGot, fast.next(t))
	}
	t.Logf("route max_rate 2: %d frames; subscription max_rate 1000: %d frames", len(got), len(fastGot))
}

// TestMaxRateTenChannelsOneTick: the capped channels of a connection whose
// intervals end together are released by one timer entry and written
// together: ten channels cost one write a tick, not ten.
func TestMaxRateTenChannelsOneTick(t *testing.T) {
	srv := startPushServer(t, Config{}, nil)
	c := dialPush(t, srv.url, nil)
	rate := 0.5 // one frame per 2 s: the second records surely wait
	var chs []string
	for i := range 10 {
		chs = append(chs, fmt.Sprintf("s%d", i))
	}
	c.request(t, &client.Request{Op: "subscribe", Channels: chs, MaxRate: &rate})
	for _, ch := range chs {
		srv.publish(ch, 0, 1, nil, false)
	}
	for range chs {
		if f := c.next(t); f.O != 1 {
			t.Fatalf("first record of %s: offset %d", f.Ch, f.O)
		}
	}
	w0 := srv.socketWrites.Load()
	for o := int64(2); o <= 3; o++ {
		for _, ch := range chs {
			srv.publish(ch, 0, o, nil, false)
		}
	}
	for range chs {
		if f := c.next(t); f.O != 3 || f.Skipped != 1 {
			t.Fatalf("released record of %s: offset %d skipped %d, want 3 and 1", f.Ch, f.O, f.Skipped)
		}
	}
	// The first records went out within a few ms of each other, so their
	// channels' next slots are on one 16 ms grid step, or two when they
	// straddled one.
	if w := srv.socketWrites.Load() - w0; w > 2 {
		t.Fatalf("10 capped channels released in %d socket writes, want 1 (2 at most)", w)
	}
}

// TestWriteDelayCoalesces: with gateway.write_delay, the records that
// become due for a connection within the delay go out in one write, all of
// them, in order.
func TestWriteDelayCoalesces(t *testing.T) {
	srv := startPushServer(t, Config{WriteDelay: 500 * time.Millisecond}, nil)
	c := dialPush(t, srv.url, nil)
	c.request(t, &client.Request{Op: "subscribe", Channels: []string{"q"}})
	w0 := srv.socketWrites.Load()
	const n = 20
	for o := int64(1); o <= n; o++ {
		srv.publish("q", 0, o, nil, false)
	}
	for o := int64(1); o <= n; o++ {
		if f := c.next(t); f.O != o {
			t.Fatalf("offset %d, want %d", f.O, o)
		}
	}
	// One write, or two if publishing twenty records took longer than
	// the delay on a loaded machine.
	if w := srv.socketWrites.Load() - w0; w > 2 {
		t.Fatalf("%d records in %d socket writes with write_delay 500ms, want 1", n, w)
	}
	// Replies are not delayed behind records: a ping is answered (and
	// takes the records queued before it along).
	srv.publish("q", 0, n+1, nil, false)
	if msgs := c.sync(t); len(msgs) != 1 || msgs[0].O != n+1 {
		t.Fatalf("before the pong: %v, want offset %d", offsets(msgs), n+1)
	}
}
