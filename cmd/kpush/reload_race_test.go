package main

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/kpush/kpush/consumer"
	"github.com/kpush/kpush/gateway/auth"
	"github.com/kpush/kpush/gateway/client"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Routes reloaded in a loop while clients subscribe and records flow: under
// -race any write to a route another goroutine reads fails the test, and
// every client still gets the records published after its subscription.
func TestReloadRoutesWhileTrafficFlows(t *testing.T) {
	k := startKafka(t)
	topic := k.topic(t, "reload-race", 2)
	variants := [][]consumer.Route{
		{{Topic: topic, Channel: "rr.{key}", Public: true}},
		{{Topic: topic, Channel: "rr.{key}", Public: true, Snapshot: true, History: consumer.History{MaxRecords: 16}}},
		{{Topic: topic, Channel: "rr.{key}", Public: true, Slow: consumer.SlowConflate}, {Topic: topic, Channel: "rr2.{partition}", Public: true}},
	}
	// With authentication on, every anonymous subscribe reads the routes'
	// public flags and templates.
	a := startApp(t, k, variants[0], func(c *Config) {
		c.Auth = auth.Config{Mode: auth.ModeJWT, HS256Secret: "reload-race-secret-reload-race-secret"}
	})
	a.waitPartitions(t, 2)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	reloads := 0
	wg.Add(1)
	go func() { // reloader
		defer wg.Done()
		for i := 0; ctx.Err() == nil && i < 5000; i++ {
			if err := a.SetRoutes(variants[i%len(variants)]); err != nil {
				t.Errorf("reload %d: %v", i, err)
				return
			}
			reloads++
		}
	}()
	wg.Add(1)
	go func() { // producer
		defer wg.Done()
		for i := 0; ctx.Err() == nil && i < 200; i++ {
			r := &kgo.Record{Topic: topic, Key: []byte(fmt.Sprintf("k%d", i%4)), Value: []byte(fmt.Sprintf(`{"n":%d}`, i))}
			if err := k.cl.ProduceSync(ctx, r).FirstErr(); err != nil && ctx.Err() == nil {
				t.Errorf("produce: %v", err)
				return
			}
		}
	}()
	// Clients come and go, subscribing with and without snapshots, while
	// the reloads run.
	for i := 0; i < 10; i++ {
		c := dial(t, a.wsURL)
		for j := 0; j < 20; j++ {
			ch := fmt.Sprintf("rr.k%d", j%4)
			op := "subscribe"
			if j%2 == 1 {
				op, ch = "unsubscribe", fmt.Sprintf("rr.k%d", (j-1)%4)
			}
			req := &client.Request{Op: op, Channels: []string{ch}}
			if op == "subscribe" {
				req.Snapshot = i%2 == 0
			}
			if _, err := c.Send(req); err != nil {
				t.Fatalf("%s %s: %v", op, ch, err)
			}
		}
		// Every request is answered; records may come in between.
		for acks := 0; acks < 20; {
			f := c.next(t, 10*time.Second)
			switch f.Op {
			case "ok":
				acks++
			case "msg":
			default:
				t.Fatalf("answer to a subscribe or unsubscribe: %+v", f)
			}
		}
		c.Close()
	}
	cancel()
	wg.Wait()
	if t.Failed() {
		return
	}
	if reloads == 0 {
		t.Fatal("no reload ran")
	}
	// Traffic still flows on the last routes.
	if err := a.SetRoutes(variants[0]); err != nil {
		t.Fatal(err)
	}
	c := dial(t, a.wsURL)
	c.subscribe(t, "rr.final")
	r := k.produce(t, rec(topic, 0, "final", `{"last":true}`))[0]
	checkMsg(t, c.next(t, 10*time.Second), "rr.final", r)
}
