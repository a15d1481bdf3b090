package main

import (
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kpush/kpush/consumer"
	"github.com/kpush/kpush/gateway/client"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
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

// TestHistoryNotAcrossOutOfRangeJump: the consumer falls behind, retention
// deletes records it had not read, and it jumps to the oldest one left (a
// new continuity epoch). A client that resumes from before the jump is not
// answered from memory across the hole: the read-back finds the records
// gone and answers recovered:false, with the channel's snapshot.
func TestHistoryNotAcrossOutOfRangeJump(t *testing.T) {
	if os.Getenv("KPUSH_TEST_KAFKA") != "" {
		t.Skip("holds fetches with a kfake control function")
	}
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	t.Cleanup(cluster.Close)
	k := &testKafka{brokers: cluster.ListenAddrs()}
	if k.cl, err = kgo.NewClient(kgo.SeedBrokers(k.brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ProducerLinger(0), kgo.MetadataMinAge(100*time.Millisecond)); err != nil {
		t.Fatalf("kafka client: %v", err)
	}
	t.Cleanup(k.cl.Close)
	// While hold is set, every fetch sleeps until release is closed.
	var hold atomic.Bool
	release := make(chan struct{})
	held := make(chan struct{}, 1)
	cluster.ControlKey(int16(kmsg.Fetch), func(kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		if hold.Load() {
			select {
			case held <- struct{}{}:
			default:
			}
			cluster.SleepControl(func() { <-release })
		}
		return nil, nil, false
	})

	tb := k.topic(t, "jump", 1)
	a := startApp(t, k, []consumer.Route{{Topic: tb, Channel: "b.{key}", Snapshot: true, History: consumer.History{MaxRecords: 100}}}, nil)
	a.waitPartitions(t, 1)
	r0 := k.produce(t, rec(tb, 0, "k", `{"n":0}`))[0]
	a.waitConsumed(t, 1)

	hold.Store(true)
	select {
	case <-held:
	case <-time.After(20 * time.Second):
		t.Fatal("the consumer did not fetch again")
	}
	recs := k.produce(t, ticks(tb, 0, "k", 1, 5)...) // offsets 1..5
	k.deleteRecords(t, tb, 0, recs[3].Offset)        // 1..3 deleted unread
	hold.Store(false)
	close(release)
	a.waitConsumed(t, 3) // r0, then 4 and 5 after the jump
	waitFor(t, 20*time.Second, "the jump to be counted", func() bool {
		return a.metric(t, "kpush_consumer_records_skipped_total", `reason="offset_out_of_range"`) >= 3
	})

	c := dial(t, a.wsURL)
	id, err := c.Send(&client.Request{Op: "subscribe", Channels: []string{"b.k"}, Since: since("b.k", 0, r0.Offset)})
	if err != nil {
		t.Fatal(err)
	}
	msgs, _, reply := c.resumeReply(t, id, 1)
	if reply.Op != "ok" || reply.Recovered["b.k"] {
		t.Fatalf("reply %+v, want ok with recovered b.k false (records 1..3 were never read)", reply)
	}
	if len(msgs) != 1 || !msgs[0].Snap || msgs[0].O != recs[4].Offset {
		t.Fatalf("got %d messages (first %+v), want only the snapshot at offset %d", len(msgs), msgs[0], recs[4].Offset)
	}
	if n := a.metric(t, "kpush_resumes_total", `source="memory"`); n != 0 {
		t.Fatalf("kpush_resumes_total{source=memory} = %v, want 0: the history must not answer across the jump", n)
	}
}

// TestReloadKeepsRetainedStateOfUnchangedRoutes: a reload that leaves a
// route as it was keeps its channels' snapshots; a route it changes loses
// them (route_removed), and a route it adds starts with none.
func TestReloadKeepsRetainedStateOfUnchangedRoutes(t *testing.T) {
	k := startKafka(t)
	ta := k.topic(t, "kept", 1)
	tb := k.topic(t, "changed", 1)
	routeA := consumer.Route{Topic: ta, Channel: "a.{key}", Snapshot: true}
	routeB := consumer.Route{Topic: tb, Channel: "b.{key}", Snapshot: true}
	a := startApp(t, k, []consumer.Route{routeA, routeB}, nil)
	a.waitPartitions(t, 2)
	ra := k.produce(t, rec(ta, 0, "k", `{"n":"a"}`))[0]
	k.produce(t, rec(tb, 0, "k", `{"n":"b"}`))
	a.waitConsumed(t, 2)

	routeB2 := routeB
	routeB2.History = consumer.History{MaxRecords: 10}
	routeC := consumer.Route{Topic: tb, Channel: "c.{key}", Snapshot: true}
	if err := a.SetRoutes([]consumer.Route{routeB2, routeC, routeA}); err != nil {
		t.Fatal(err)
	}
	if got := a.metric(t, "kpush_retained_evictions_total", `reason="route_removed"`); got != 1 {
		t.Fatalf("kpush_retained_evictions_total{reason=route_removed} = %v, want 1 (route b's channel)", got)
	}
	c := dial(t, a.wsURL)
	id, err := c.Send(&client.Request{Op: "subscribe", Channels: []string{"a.k"}, Snapshot: true})
	if err != nil {
		t.Fatal(err)
	}
	msgs, _, reply := c.resumeReply(t, id, 1)
	if reply.Op != "ok" || !msgs[0].Snap || msgs[0].O != ra.Offset {
		t.Fatalf("unchanged route after the reload: %+v then %+v, want its snapshot", msgs[0], reply)
	}
	for _, ch := range []string{"b.k", "c.k"} {
		if f := c.request(t, &client.Request{Op: "subscribe", Channels: []string{ch}, Snapshot: true}); f.Op != "ok" {
			t.Fatalf("subscribe %s: %+v", ch, f)
		}
	}
	c.expectNoMsg(t) // b changed and c is new: no snapshot for either
}
