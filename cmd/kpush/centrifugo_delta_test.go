package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	centrifuge "github.com/centrifugal/centrifuge-go"
	"github.com/kpush/kpush/cmd/internal/feed"
	"github.com/kpush/kpush/gateway"
	"github.com/kpush/kpush/router"
)

// byteCounter forwards TCP connections to target and counts the bytes the
// server sends back.
type byteCounter struct {
	ln   net.Listener
	down atomic.Int64
}

type countWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

func startByteCounter(t *testing.T, target string) *byteCounter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &byteCounter{ln: ln}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			wg.Add(2)
			go func() { defer wg.Done(); _, _ = io.Copy(up, c); up.Close(); c.Close() }()
			go func() { defer wg.Done(); _, _ = io.Copy(countWriter{c, &p.down}, up); c.Close(); up.Close() }()
		}
	}()
	return p
}

// TestCentrifugoDeltaOnMarketFeed measures what delta: "fossil" saves on
// kpush-feed's records: the same simulated ticks (cmd/internal/feed, the
// generator kpush-feed runs) go to four unmodified centrifuge-go clients
// subscribed to every symbol: JSON and Protobuf, each without and with
// delta. Every client must get every tick exactly; the test logs the bytes
// each received (the whole WebSocket stream, replies and pings included).
func TestCentrifugoDeltaOnMarketFeed(t *testing.T) {
	srv, err := gateway.New(gateway.Config{Listen: "127.0.0.1:0", DrainTimeout: 200 * time.Millisecond}, router.New(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	<-srv.Ready()

	syms := feed.DefaultSymbols
	type client struct {
		name  string
		count *byteCounter
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
		c := &client{name: v.name, count: startByteCounter(t, ln.Addr().String()), got: make(chan centrifuge.PublicationEvent, 8192)}
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
