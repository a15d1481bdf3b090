package main

import (
	"fmt"
	"testing"
	"time"

	centrifuge "github.com/centrifugal/centrifuge-go"
	"github.com/kpush/kpush/cmd/internal/feed"
	"github.com/kpush/kpush/gateway"
)

// TestCentrifugoDeltaOnMarketFeed measures what delta: "fossil" saves on
// kpush-feed's records: the same simulated ticks (cmd/internal/feed, the
// generator kpush-feed runs) go to four unmodified centrifuge-go clients
// subscribed to every symbol: JSON and Protobuf, each without and with
// delta. Every client must get every tick exactly; the test logs the bytes
// each received (the whole WebSocket stream, replies and pings included).
func TestCentrifugoDeltaOnMarketFeed(t *testing.T) {
	srv, addr := startGateway(t, nil)

	syms := feed.DefaultSymbols
	type client struct {
		name  string
		count *cutProxy
		got   chan centrifuge.PublicationEvent
	}
	var clients []*client
	for _, v := range []struct {
		name  string
		proto bool
		delta centrifuge.DeltaType
	}{
		{"json", false, centrifuge.DeltaTypeNone},
		{"json+fossil", false, centrifuge.DeltaTypeFossil},
		{"protobuf", true, centrifuge.DeltaTypeNone},
		{"protobuf+fossil", true, centrifuge.DeltaTypeFossil},
	} {
		c := &client{name: v.name, count: startProxy(t, addr), got: make(chan centrifuge.PublicationEvent, 8192)}
		url := "ws://" + c.count.ln.Addr().String() + gateway.DefaultCentrifugoPath
		cl := centrifuge.NewJsonClient(url, centrifuge.Config{})
		if v.proto {
			cl = centrifuge.NewProtobufClient(url, centrifuge.Config{})
		}
		t.Cleanup(cl.Close)
		if err := cl.Connect(); err != nil {
			t.Fatal(err)
		}
		for _, sym := range syms {
			sub, err := cl.NewSubscription("ticks."+sym, centrifuge.SubscriptionConfig{Delta: v.delta})
			if err != nil {
				t.Fatal(err)
			}
			subscribed := make(chan struct{}, 1)
			sub.OnPublication(func(e centrifuge.PublicationEvent) { c.got <- e })
			sub.OnSubscribed(func(centrifuge.SubscribedEvent) { subscribed <- struct{}{} })
			if err := sub.Subscribe(); err != nil {
				t.Fatal(err)
			}
			select {
			case <-subscribed:
			case <-time.After(15 * time.Second):
				t.Fatalf("%s: not subscribed to %s", v.name, sym)
			}
		}
		clients = append(clients, c)
	}
	before := make([]int64, len(clients))
	for i, c := range clients {
		before[i] = c.count.down.Load() // the handshakes, connects and subscribes
	}
	const n = 4000
	sim := feed.NewSimulator(syms, 42)
	now := time.Unix(1764460800, 0)
	var want [][]byte
	var raw int64
	for i := int64(1); i <= n; i++ {
		tick := sim.Next(now.Add(time.Duration(i) * 10 * time.Millisecond))
		v := tick.Append(nil)
		want = append(want, v)
		raw += int64(len(v))
		srv.Publish(&gateway.Message{Channel: "ticks." + tick.Sym, Topic: "ticks", Partition: 0, Offset: i, Epoch: 1,
			Timestamp: time.Now().UnixMilli(), Data: v}, nil)
	}
	results := ""
	for i, c := range clients {
		for j := 0; j < n; j++ {
			select {
			case e := <-c.got:
				if e.Offset < 1 || e.Offset > n || string(e.Data) != string(want[e.Offset-1]) {
					t.Fatalf("%s: offset %d data %s", c.name, e.Offset, e.Data)
				}
			case <-time.After(20 * time.Second):
				t.Fatalf("%s: %d of %d ticks", c.name, j, n)
			}
		}
		results += fmt.Sprintf("\n  %-16s %8d bytes", c.name, c.count.down.Load()-before[i])
	}
	json, jsonDelta := clients[0].count.down.Load()-before[0], clients[1].count.down.Load()-before[1]
	pb, pbDelta := clients[2].count.down.Load()-before[2], clients[3].count.down.Load()-before[3]
	t.Logf("%d kpush-feed ticks on %d symbols (records %d bytes in all):%s\n  fossil saves %.1f%% (JSON), %.1f%% (Protobuf)",
		n, len(syms), raw, results, 100*float64(json-jsonDelta)/float64(json), 100*float64(pb-pbDelta)/float64(pb))
	if pbDelta >= pb {
		t.Errorf("Protobuf with delta received %d bytes, without %d", pbDelta, pb)
	}
}
