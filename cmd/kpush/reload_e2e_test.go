package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kpush/kpush/consumer"
	"github.com/kpush/kpush/gateway/auth"
	"github.com/kpush/kpush/gateway/client"
)

// harnessYAML is a configuration file equal to what startApp runs with,
// plus the given gateway keys, routes, config_check_interval and top-level
// lines, so that reloading it changes only those.
func harnessYAML(k *testKafka, gateway string, routes []consumer.Route, check time.Duration, top ...string) string {
	var rs []string
	for _, r := range routes {
		rs = append(rs, fmt.Sprintf("{topic: %s, channel: %q, public: %t, snapshot: %t}", r.Topic, r.Channel, r.Public, r.Snapshot))
	}
	return fmt.Sprintf(`listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
gateway: {drain_timeout: 1s%s}
kafka: {brokers: [%q], metadata_interval: 500ms, retry_backoff: 50ms, retry_backoff_max: 1s}
routes: [%s]
log: {level: warn, format: text}
config_check_interval: %s
%s`, gateway, k.brokers[0], strings.Join(rs, ", "), check, strings.Join(top, "\n"))
}

// startWatchedApp starts kpush in-process and has it watch path, written
// with content first.
func startWatchedApp(t *testing.T, k *testKafka, path, content string, routes []consumer.Route, check time.Duration) *testApp {
	t.Helper()
	writeFileAtomic(t, path, content)
	a := startApp(t, k, routes, func(c *Config) { c.ConfigCheckInterval = check })
	a.reloader.watch(path, []byte(content), nil)
	return a
}

// waitPartitions waits until the consumer reads n partitions and all of
// them have answered a fetch (so a record produced now is read).
func (a *testApp) waitPartitions(t *testing.T, n int) {
	t.Helper()
	waitFor(t, 20*time.Second, fmt.Sprintf("%d partitions read", n), func() bool {
		return a.metric(t, "kpush_consumer_partitions") == float64(n) && a.consumer.Ready()
	})
}

// A reload that adds a route on a topic already read applies it from the
// topic's current position (no replay, so no duplicates on the routes that
// stay); a newly routed topic starts at kafka.start (latest); a topic no
// longer routed stops being read.
func TestReloadRoutesOnSIGHUP(t *testing.T) {
	k := startKafka(t)
	ta := k.topic(t, "reload-a", 2)
	tb := k.topic(t, "reload-b", 1)
	path := filepath.Join(t.TempDir(), "kpush.yaml")
	routeA := consumer.Route{Topic: ta, Channel: "a.{key}"}
	routeA2 := consumer.Route{Topic: ta, Channel: "a2.{key}"}
	routeB := consumer.Route{Topic: tb, Channel: "b.{key}"}
	v1 := []consumer.Route{routeA}
	a := startWatchedApp(t, k, path, harnessYAML(k, "", v1, time.Hour), v1, time.Hour)
	a.waitPartitions(t, 2)

	c := dial(t, a.wsURL)
	c.subscribe(t, "a.k", "a2.k", "b.k")
	r1 := k.produce(t, rec(ta, 0, "k", `{"n":1}`))[0]
	checkMsg(t, c.next(t, 10*time.Second), "a.k", r1)

	reloads := 0
	sighup := func(routes ...consumer.Route) {
		t.Helper()
		writeFileAtomic(t, path, harnessYAML(k, "", routes, time.Hour))
		a.reloader.hup <- syscall.SIGHUP
		reloads++
		waitFor(t, 10*time.Second, "the reload to apply", func() bool {
			return a.metric(t, "kpush_config_reloads_total", `result="applied"`) == float64(reloads)
		})
	}

	// Add a second route on topic a and route topic b.
	sighup(routeA, routeA2, routeB)
	a.waitPartitions(t, 3)
	r2 := k.produce(t, rec(ta, 0, "k", `{"n":2}`))[0]
	checkMsg(t, c.next(t, 10*time.Second), "a.k", r2)
	checkMsg(t, c.next(t, 10*time.Second), "a2.k", r2) // r2, not r1: no replay
	r3 := k.produce(t, rec(tb, 0, "k", `{"n":3}`))[0]
	checkMsg(t, c.next(t, 10*time.Second), "b.k", r3)
	c.expectNoMsg(t)

	// Drop the second route and topic b.
	sighup(routeA)
	a.waitPartitions(t, 2)
	k.produce(t, rec(tb, 0, "k", `{"n":4}`))
	r5 := k.produce(t, rec(ta, 1, "k", `{"n":5}`))[0]
	checkMsg(t, c.next(t, 10*time.Second), "a.k", r5)

	// Route b again: it starts at its end (kafka.start latest), so record 4,
	// produced while b was not routed, is not delivered.
	sighup(routeA, routeB)
	a.waitPartitions(t, 3)
	r6 := k.produce(t, rec(tb, 0, "k", `{"n":6}`))[0]
	checkMsg(t, c.next(t, 10*time.Second), "b.k", r6)
	c.expectNoMsg(t)
	if got := a.metric(t, "kpush_config_reloads_total", `result="rejected"`); got != 0 {
		t.Fatalf("%v reloads rejected", got)
	}
}

// kubelet updates a ConfigMap volume by writing a new timestamped directory
// and swapping the ..data symlink; kpush.yaml is a symlink through ..data.
// The file's inode never changes, so only polling the path sees it.
type configMapDir struct {
	dir string
	n   int
}

func (d *configMapDir) write(t *testing.T, content string) {
	t.Helper()
	d.n++
	ts := fmt.Sprintf("..2025_01_01_00_00_%02d.%d", d.n, d.n)
	if err := os.Mkdir(filepath.Join(d.dir, ts), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d.dir, ts, "kpush.yaml"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(d.dir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(d.dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if d.n == 1 {
		if err := os.Symlink(filepath.Join("..data", "kpush.yaml"), filepath.Join(d.dir, "kpush.yaml")); err != nil {
			t.Fatal(err)
		}
	}
}

func TestReloadLimitsOnConfigMapUpdate(t *testing.T) {
	k := startKafka(t)
	topic := k.topic(t, "reload-cm", 1)
	routes := tickRoute(topic)
	cm := &configMapDir{dir: t.TempDir()}
	v1 := harnessYAML(k, ", max_subscriptions: 2", routes, 100*time.Millisecond)
	cm.write(t, v1)
	path := filepath.Join(cm.dir, "kpush.yaml")
	a := startApp(t, k, routes, func(c *Config) {
		c.ConfigCheckInterval = 100 * time.Millisecond
		c.Gateway.MaxSubscriptions = 2
	})
	a.reloader.watch(path, []byte(v1), nil)

	// Pings padded with JSON whitespace: 8 KB is over the 4096-byte
	// max_message_bytes and closes with 1009.
	paddedPing := func(n int) []byte { return []byte(`{"op":"ping",` + strings.Repeat(" ", n) + `"id":42}`) }
	big := dial(t, a.wsURL)
	if err := big.WriteText(paddedPing(8 << 10)); err != nil {
		t.Fatal(err)
	}
	if code := big.closeCode(t, 10*time.Second); code != 1009 {
		t.Fatalf("8 KB request closed with %d, want 1009", code)
	}
	c := dial(t, a.wsURL)
	if f := c.request(t, &client.Request{Op: "subscribe", Channels: []string{"ticks.a", "ticks.b", "ticks.c"}}); f.Code != "too_many_subscriptions" {
		t.Fatalf("3 subscriptions with max_subscriptions 2: %+v", f)
	}

	cm.write(t, harnessYAML(k, ", max_subscriptions: 3, max_message_bytes: 200000", routes, 100*time.Millisecond))
	waitFor(t, 10*time.Second, "the ConfigMap update to apply", func() bool {
		return a.metric(t, "kpush_config_reloads_total", `result="applied"`) == 1
	})
	c.subscribe(t, "ticks.a", "ticks.b", "ticks.c")
	if f := c.request(t, &client.Request{Op: "subscribe", Channels: []string{"ticks.d"}}); f.Code != "too_many_subscriptions" {
		t.Fatalf("4th subscription with max_subscriptions 3: %+v", f)
	}
	// 100 KB is now allowed: the workers' read buffers (64 KiB) grow.
	big = dial(t, a.wsURL)
	if err := big.WriteText(paddedPing(100 << 10)); err != nil {
		t.Fatal(err)
	}
	if f := big.next(t, 10*time.Second); f.Op != "pong" || f.ID != 42 {
		t.Fatalf("100 KB ping with max_message_bytes 200000: %+v, want pong 42", f)
	}
	r := k.produce(t, rec(topic, 0, "c", `{"after":"reload"}`))[0]
	checkMsg(t, c.next(t, 10*time.Second), "ticks.c", r)
}

// A reloaded route's settings reach every part that depends on routes: the
// gateway's public channels (auth) and the router's retention (snapshot).
func TestReloadRouteSettings(t *testing.T) {
	const secret = "reload-secret-reload-secret-reload-secret"
	k := startKafka(t)
	topic := k.topic(t, "reload-set", 1)
	path := filepath.Join(t.TempDir(), "kpush.yaml")
	v1 := []consumer.Route{{Topic: topic, Channel: "r.{key}"}}
	authYAML := "auth: {mode: jwt, hs256_secret: " + secret + "}"
	content := harnessYAML(k, "", v1, time.Hour, authYAML)
	writeFileAtomic(t, path, content)
	a := startApp(t, k, v1, func(c *Config) {
		c.ConfigCheckInterval = time.Hour
		c.Auth = auth.Config{Mode: auth.ModeJWT, HS256Secret: secret}
	})
	a.reloader.watch(path, []byte(content), nil)
	a.waitPartitions(t, 1) // so record 1 is read before the reload

	anon := dial(t, a.wsURL)
	if f := anon.request(t, &client.Request{Op: "subscribe", Channels: []string{"r.k"}}); f.Code != "forbidden" {
		t.Fatalf("anonymous subscribe to a route that is not public: %+v", f)
	}
	k.produce(t, rec(topic, 0, "k", `{"n":1}`))

	v2 := []consumer.Route{{Topic: topic, Channel: "r.{key}", Public: true, Snapshot: true}}
	writeFileAtomic(t, path, harnessYAML(k, "", v2, time.Hour, authYAML))
	a.reloader.hup <- syscall.SIGHUP
	waitFor(t, 10*time.Second, "the reload to apply", func() bool {
		return a.metric(t, "kpush_config_reloads_total", `result="applied"`) == 1
	})
	if got := a.metric(t, "kpush_config_restart_pending"); got != 0 {
		t.Fatalf("kpush_config_restart_pending = %v: the test file differs from the running config in more than routes", got)
	}
	anon.subscribe(t, "r.k") // public now
	r2 := k.produce(t, rec(topic, 0, "k", `{"n":2}`))[0]
	checkMsg(t, anon.next(t, 10*time.Second), "r.k", r2)
	// The reloaded route keeps snapshots: a new subscriber gets r2 first.
	late := dial(t, a.wsURL)
	if _, err := late.Send(&client.Request{Op: "subscribe", Channels: []string{"r.k"}, Snapshot: true}); err != nil {
		t.Fatal(err)
	}
	f := late.next(t, 10*time.Second)
	if !f.Snap {
		t.Fatalf("first frame after a snapshot subscribe: %+v, want the snapshot", f)
	}
	checkMsg(t, f, "r.k", r2)
}
