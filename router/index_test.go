package router

import (
	"math/rand/v2"
	"testing"
)

// TestSubscriberIndexAcrossItsThreshold: a channel searches its subscriber
// list while it is short and indexes it from indexFrom subscribers; either
// way a duplicate subscribe is refused, every subscriber gets each record
// once, and unsubscribing in any order removes exactly the one named, down
// to none (the index dropped again once under half the threshold).
func TestSubscriberIndexAcrossItsThreshold(t *testing.T) {
	r := New()
	rng := rand.New(rand.NewPCG(14, 3))
	const n = 3 * indexFrom
	sinks := make([]*nopSink, n)
	for i := range sinks {
		sinks[i] = &nopSink{}
		if !r.Subscribe(sinks[i], "idx.a", nil) {
			t.Fatalf("subscriber %d refused", i)
		}
		if r.Subscribe(sinks[i], "idx.a", nil) {
			t.Fatalf("subscriber %d subscribed twice (%d subscribers)", i, i+1)
		}
		if c := r.shardFor("idx.a").channels["idx.a"]; (c.index != nil) != (i+1 >= indexFrom) {
			t.Fatalf("with %d subscribers indexed %v", i+1, c.index != nil)
		}
	}
	if got := r.Publish(&Frame{Channel: "idx.a"}, nil); got != n {
		t.Fatalf("published to %d, want %d", got, n)
	}
	live := make(map[*nopSink]bool, n)
	for _, s := range sinks {
		live[s] = true
	}
	left := make(map[*nopSink]int) // records a departed sink had when it left
	rng.Shuffle(len(sinks), func(i, j int) { sinks[i], sinks[j] = sinks[j], sinks[i] })
	for k, s := range sinks {
		if r.Unsubscribe(s, "idx.a") != 1 {
			t.Fatalf("unsubscribe %d removed nothing", k)
		}
		if r.Unsubscribe(s, "idx.a") != 0 {
			t.Fatalf("unsubscribe %d removed a subscription twice", k)
		}
		delete(live, s)
		left[s] = s.n
		if c := r.shardFor("idx.a").channels["idx.a"]; c != nil && c.index != nil && len(c.sinks) < indexFrom/2 {
			t.Fatalf("still indexed with %d subscribers", len(c.sinks))
		}
		if k%7 != 0 && len(live) > 3 {
			continue
		}
		before := make(map[*nopSink]int, len(live))
		for x := range live {
			before[x] = x.n
		}
		if got := r.Publish(&Frame{Channel: "idx.a"}, nil); got != len(live) {
			t.Fatalf("after %d unsubscribes published to %d, want %d", k+1, got, len(live))
		}
		for x, m := range before {
			if x.n != m+1 {
				t.Fatalf("after %d unsubscribes a subscriber got %d records, want 1", k+1, x.n-m)
			}
		}
	}
	for s, m := range left {
		if s.n != m {
			t.Fatalf("a sink got %d records after it unsubscribed", s.n-m)
		}
	}
	if r.Subscribers("idx.a") != 0 || r.Stats().Subscriptions != 0 {
		t.Fatalf("%d subscribers left", r.Subscribers("idx.a"))
	}
}
