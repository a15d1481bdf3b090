package main

import (
	"testing"

	"github.com/kpush/kpush/consumer"
	"github.com/kpush/kpush/gateway/client"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestRouteRemovedAndReaddedAtLatest: a topic unrouted and routed again
// (kafka.start latest) is not read in between. Its channels' snapshots and
// histories are dropped with the route, so a client that resumes from
// before the hole is not answered from memory across it: it gets the
// record produced while the topic was not routed, read back from Kafka.
func TestRouteRemovedAndReaddedAtLatest(t *testing.T) {
	k := startKafka(t)
	ta := k.topic(t, "stay", 1)
	tb := k.topic(t, "unrouted", 1)
	routeA := consumer.Route{Topic: ta, Channel: "a.{key}"}
	routeB := consumer.Route{Topic: tb, Channel: "b.{key}", Snapshot: true, History: consumer.History{MaxRecords: 100}}
	a := startApp(t, k, []consumer.Route{routeA, routeB}, nil)
	a.waitPartitions(t, 2)

	r0 := k.produce(t, rec(tb, 0, "k", `{"n":0}`))[0]
	a.waitConsumed(t, 1)
	c := dial(t, a.wsURL)
	id, err := c.Send(&client.Request{Op: "subscribe", Channels: []string{"b.k"}, Snapshot: true})
	if err != nil {
		t.Fatal(err)
	}
	msgs, _, reply := c.resumeReply(t, id, 1)
	if reply.Op != "ok" || !msgs[0].Snap || msgs[0].O != r0.Offset {
		t.Fatalf("snapshot before the reload: %+v then %+v", msgs[0], reply)
	}
	c.NetConn().Close()

	// Unroute b: its retained state goes with the route.
	if err := a.SetRoutes([]consumer.Route{routeA}); err != nil {
		t.Fatal(err)
	}
	a.waitPartitions(t, 1)
	if got := a.metric(t, "kpush_retained_evictions_total", `reason="route_removed"`); got != 1 {
		t.Fatalf("kpush_retained_evictions_total{reason=route_removed} = %v, want 1", got)
	}
	hole := k.produce(t, rec(tb, 0, "k", `{"n":1}`))[0] // not read

	// Route b again: it starts at the end, after the hole.
	if err := a.SetRoutes([]consumer.Route{routeA, routeB}); err != nil {
		t.Fatal(err)
	}
	a.waitPartitions(t, 2)
	c1 := dial(t, a.wsURL)
	if f := c1.request(t, &client.Request{Op: "subscribe", Channels: []string{"b.k"}, Snapshot: true}); f.Op != "ok" {
		t.Fatalf("subscribe: %+v", f)
	}
	c1.expectNoMsg(t) // the snapshot went with the route
	r2 := k.produce(t, rec(tb, 0, "k", `{"n":2}`))[0]
	a.waitConsumed(t, 2)

	c2 := dial(t, a.wsURL)
	id, err = c2.Send(&client.Request{Op: "subscribe", Channels: []string{"b.k"}, Since: since("b.k", 0, r0.Offset)})
	if err != nil {
		t.Fatal(err)
	}
	got, _, reply := c2.resumeReply(t, id, 2)
	if reply.Op != "ok" || !reply.Recovered["b.k"] {
		t.Fatalf("reply %+v, want ok with recovered b.k true", reply)
	}
	checkOffsets(t, got, "b.k", []*kgo.Record{hole, r2})
	if n := a.metric(t, "kpush_resumes_total", `source="kafka"`, `result="recovered"`); n != 1 {
		t.Fatalf("kpush_resumes_total{source=kafka,result=recovered} = %v, want 1 (the history must not answer across the hole)", n)
	}
	c2.expectNoMsg(t)
}
