package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/kpush/kpush/gateway"
	"github.com/kpush/kpush/gateway/client"
	"github.com/twmb/franz-go/pkg/kgo"
	"gopkg.in/yaml.v3"
)

// The test nginx (testdata/nginx-ingress.conf.tmpl) must proxy the way the
// shipped Ingress makes ingress-nginx proxy: same read, send and connect
// timeouts as the annotations, and no response buffering (event streams).
func TestNginxConfigMatchesIngress(t *testing.T) {
	raw, err := os.ReadFile("../../deployments/kubernetes/base/ingress.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var ing struct {
		Metadata struct {
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"metadata"`
	}
	if err := yaml.Unmarshal(raw, &ing); err != nil {
		t.Fatalf("ingress.yaml: %v", err)
	}
	conf, err := os.ReadFile("testdata/nginx-ingress.conf.tmpl")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"read", "send", "connect"} {
		key := "nginx.ingress.kubernetes.io/proxy-" + name + "-timeout"
		want, ok := ing.Metadata.Annotations[key]
		if !ok {
			t.Errorf("ingress.yaml has no %s annotation", key)
			continue
		}
		// ingress-nginx writes the annotation's seconds as "<n>s".
		m := regexp.MustCompile(`(?m)^\s*proxy_`+name+`_timeout\s+(\S+);`).FindAllSubmatch(conf, -1)
		if len(m) != 1 {
			t.Errorf("test nginx config sets proxy_%s_timeout %d times, want once", name, len(m))
			continue
		}
		if got := string(m[0][1]); got != want+"s" {
			t.Errorf("test nginx config: proxy_%s_timeout %s; ingress.yaml %s: %q (want %ss)", name, got, key, want, want)
		}
	}
	// Event streams pass unbuffered in both.
	if v := ing.Metadata.Annotations["nginx.ingress.kubernetes.io/proxy-buffering"]; v != "off" ||
		len(regexp.MustCompile(`(?m)^\s*proxy_buffering\s+off;`).FindAll(conf, -1)) != 1 {
		t.Errorf("proxy buffering: ingress.yaml %q, test nginx config must say proxy_buffering off once, as the annotation must", v)
	}
	// And kpush's pings keep a quiet tunnel inside the read timeout.
	var cfg gateway.Config
	cfg.SetDefaults()
	var readSec int
	fmt.Sscan(ing.Metadata.Annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"], &readSec)
	if time.Duration(readSec)*time.Second <= cfg.PingInterval {
		t.Errorf("proxy-read-timeout %ds is not above gateway.ping_interval %s: nginx would cut quiet clients", readSec, cfg.PingInterval)
	}
}

// dialStatus dials url and returns the HTTP status of a refused handshake,
// or 101 for an upgrade (the connection is closed at the end of the test).
func dialStatus(t *testing.T, url string, o *client.DialOptions) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, url, o)
	if err == nil {
		t.Cleanup(func() { c.NetConn().Close() })
		return http.StatusSwitchingProtocols
	}
	var se ws.StatusError
	if !errors.As(err, &se) {
		t.Fatalf("dial %s: %v (not an HTTP answer)", url, err)
	}
	return int(se)
}

// Through nginx configured like ingress-nginx: records arrive byte-exact,
// and kpush, trusting nginx's address, sees each client's own address: the
// per-address limit counts clients, not the proxy, and what a client puts
// in X-Forwarded-For itself changes nothing.
func TestThroughNginx(t *testing.T) {
	k := startKafka(t)
	topic := k.topic(t, "ngx", 2)
	app := startApp(t, k, tickRoute(topic), func(c *Config) {
		c.Gateway.TrustedProxies = []string{"127.0.0.1/32"}
		c.Gateway.MaxConnectionsPerIP = 2
	})
	ngx := startNginx(t, "240s", app.gwLn.Addr().String())

	a := dialWith(t, ngx.wsURL(), fromIP("127.0.0.2"))
	a.subscribe(t, "ticks.AAPL", "ticks.MSFT")
	big := fmt.Sprintf(`{"sym":"MSFT","blob":%q}`, strings.Repeat("x", 200<<10)) // larger than nginx's buffers
	recs := k.produce(t,
		rec(topic, 0, "AAPL", `{"sym":"AAPL","price":189.5}`),
		rec(topic, 1, "MSFT", big),
		rec(topic, 0, "AAPL", `{"sym":"AAPL","price":"\u00e9\u20ac"}`),
	)
	// Partitions are delivered independently: match frames by offset.
	got := map[[2]int64]*client.Frame{}
	for range recs {
		f := a.next(t, 10*time.Second)
		got[[2]int64{int64(f.P), f.O}] = f
	}
	for _, r := range recs {
		f := got[[2]int64{int64(r.Partition), r.Offset}]
		if f == nil {
			t.Fatalf("record at partition %d offset %d not received (got %v)", r.Partition, r.Offset, got)
		}
		checkMsg(t, f, "ticks."+string(r.Key), r)
		if string(f.Data) != string(r.Value) {
			t.Fatalf("record at partition %d offset %d came through nginx changed (%d bytes, want %d)", r.Partition, r.Offset, len(f.Data), len(r.Value))
		}
	}

	// Per-address limit 2: 127.0.0.2 holds a; one more, then 429 (nginx
	// passes kpush's answer on). 127.0.0.3 has its own two.
	if st := dialStatus(t, ngx.wsURL(), fromIP("127.0.0.2")); st != http.StatusSwitchingProtocols {
		t.Fatalf("second client from 127.0.0.2: HTTP %d, want 101", st)
	}
	if st := dialStatus(t, ngx.wsURL(), fromIP("127.0.0.2")); st != http.StatusTooManyRequests {
		t.Fatalf("third client from 127.0.0.2: HTTP %d, want 429", st)
	}
	for i := 0; i < 2; i++ {
		if st := dialStatus(t, ngx.wsURL(), fromIP("127.0.0.3")); st != http.StatusSwitchingProtocols {
			t.Fatalf("client %d from 127.0.0.3: HTTP %d, want 101", i+1, st)
		}
	}
	// 127.0.0.3 claims to be someone else: nginx replaces the header.
	spoof := fromIP("127.0.0.3")
	spoof.Header = http.Header{"X-Forwarded-For": {"198.51.100.77"}}
	if st := dialStatus(t, ngx.wsURL(), spoof); st != http.StatusTooManyRequests {
		t.Fatalf("127.0.0.3 with its own X-Forwarded-For: HTTP %d, want 429", st)
	}
	if n := app.metric(t, "kpush_handshake_client_addresses_total", `source="forwarded"`); n != 4 {
		t.Fatalf("%v handshakes with a forwarded client address, want 4", n)
	}
	if n := app.metric(t, "kpush_rejected_total", `reason="max_connections_per_ip"`); n != 2 {
		t.Fatalf("%v per-address rejections, want 2", n)
	}

	// The stream is still intact after all that.
	r := k.produce(t, rec(topic, 0, "AAPL", `{"sym":"AAPL","price":190}`))[0]
	checkMsg(t, a.next(t, 10*time.Second), "ticks.AAPL", r)
}

// Two kpush processes behind one nginx (B as the backup upstream). SIGTERM
// to A: the client gets A's 1001 through nginx, reconnects to the same
// nginx address, lands on B and resumes there: every record exactly once
// and in order, those produced while it moved included.
func TestThroughNginxDrainAndResume(t *testing.T) {
	k := startKafka(t)
	topic := k.topic(t, "ngxmove", 1)
	conf := fmt.Sprintf(`
listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
gateway: {drain_timeout: 1s, trusted_proxies: ["127.0.0.1/32"], max_connections_per_ip: 5}
kafka: {brokers: [%q], metadata_interval: 500ms}
routes: [{topic: %s, channel: "move.{key}", history: {max_records: 100}}]
log: {level: info, format: json}
`, k.brokers[0], topic)
	a := startKpushProcess(t, conf)
	b := startKpushProcess(t, conf)
	for _, p := range []*kpushProcess{a, b} {
		waitFor(t, 30*time.Second, "readyz 200", func() bool { return httpStatus(p.adminURL+"/readyz") == http.StatusOK })
	}
	hostport := func(u string) string { return strings.TrimSuffix(strings.TrimPrefix(u, "ws://"), "/ws") }
	ngx := startNginx(t, "240s", hostport(a.wsURL), hostport(b.wsURL))

	var (
		mu        sync.Mutex // guards the fields below, written by the client's goroutine
		seqs      []string
		offsets   []int64
		closeErrs []error
		verdicts  []bool
	)
	cl, err := client.NewClient(client.Options{
		URLs: []string{ngx.wsURL()},
		Dial: fromIP("127.0.0.2"),
		OnMessage: func(f *client.Frame) {
			mu.Lock()
			seqs = append(seqs, string(f.Data))
			offsets = append(offsets, f.O)
			mu.Unlock()
		},
		OnDisconnect: func(err error) {
			mu.Lock()
			closeErrs = append(closeErrs, err)
			mu.Unlock()
		},
		OnRecovered: func(ch string, ok bool) {
			mu.Lock()
			verdicts = append(verdicts, ok)
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Subscribe("move.x"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	t.Cleanup(func() { cancel(); <-runDone })
	go func() {
		defer close(runDone)
		_ = cl.Run(ctx)
	}()
	received := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(seqs)
	}
	waitFor(t, 30*time.Second, "the client subscribed on A through nginx", func() bool {
		return metricAt(t, a.adminURL, "kpush_subscriptions") == 1
	})
	if n := metricAt(t, a.adminURL, "kpush_handshake_client_addresses_total", `source="forwarded"`); n != 1 {
		t.Fatalf("A counted %v forwarded client addresses, want 1", n)
	}
	var want []*kgo.Record
	produce := func(from, to int) {
		for i := from; i < to; i++ {
			want = append(want, k.produce(t, rec(topic, 0, "x", fmt.Sprintf(`{"s":%d}`, i)))...)
		}
	}
	produce(0, 5)
	waitFor(t, 20*time.Second, "5 records through nginx from A", func() bool { return received() == 5 })

	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	produce(5, 10) // while the client moves
	waitFor(t, 30*time.Second, "the client resumed on B through nginx", func() bool {
		return metricAt(t, b.adminURL, "kpush_subscriptions") == 1
	})
	produce(10, 12)
	waitFor(t, 30*time.Second, "all 12 records", func() bool { return received() >= 12 })

	mu.Lock()
	defer mu.Unlock()
	var ce client.CloseError
	if len(closeErrs) == 0 || !errors.As(closeErrs[0], &ce) || ce.Code != 1001 {
		t.Fatalf("the connection to A ended with %v, want close 1001 through nginx", closeErrs)
	}
	if len(verdicts) != 1 || !verdicts[0] {
		t.Fatalf("resume verdicts %v, want one recovered:true", verdicts)
	}
	if len(seqs) != len(want) {
		t.Fatalf("%d records, want %d: %v", len(seqs), len(want), seqs)
	}
	for i, r := range want {
		if seqs[i] != string(r.Value) || offsets[i] != r.Offset {
			t.Fatalf("record %d: %s at offset %d, want %s at %d (all: %v)", i, seqs[i], offsets[i], r.Value, r.Offset, seqs)
		}
	}
	if st := cl.Stats(); st.Duplicates != 0 || st.Connects != 2 {
		t.Fatalf("client stats %+v, want 2 connects and no duplicates", st)
	}
	if n := metricAt(t, b.adminURL, "kpush_handshake_client_addresses_total", `source="forwarded"`); n != 1 {
		t.Fatalf("B counted %v forwarded client addresses, want 1", n)
	}
	select {
	case <-a.exited:
		if a.err != nil {
			t.Fatalf("A exited with %v after draining, want 0", a.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("A did not exit after SIGTERM")
	}
}

// What `nginx -s reload` (ingress-nginx reloads on every Ingress or
// endpoint change) does to a kpush client: the old nginx worker keeps the
// upgraded connection, which goes on carrying records, while new
// connections go to the new worker; once worker_shutdown_timeout passes the
// old worker cuts it without a WebSocket close frame (the client sees 1006,
// kpush sees the socket close) and the client must reconnect and resume.
func TestNginxReloadKeepsConnectionsUntilShutdownTimeout(t *testing.T) {
	// Long enough for the checks after the reload on a loaded machine.
	const shutdownTimeout = 8 * time.Second
	k := startKafka(t)
	topic := k.topic(t, "ngxreload", 1)
	app := startApp(t, k, tickRoute(topic), func(c *Config) {
		c.Gateway.TrustedProxies = []string{"127.0.0.1/32"}
		// Pings must not end the connection first.
		c.Gateway.PingInterval = time.Second
	})
	ngx := startNginx(t, shutdownTimeout.String(), app.gwLn.Addr().String())
	old := dialWith(t, ngx.wsURL(), fromIP("127.0.0.2"))
	old.subscribe(t, "ticks.A")
	r1 := k.produce(t, rec(topic, 0, "A", `{"n":1}`))[0]
	checkMsg(t, old.next(t, 10*time.Second), "ticks.A", r1)

	oldWorker := ngx.waitErrorLog(t, regexp.MustCompile(`start worker process (\d+)`))[1]
	reloaded := time.Now()
	reloadNginx(t, ngx)
	// The old worker stops accepting right after it logs this (same event
	// loop turn): connections made from now on go to the new worker.
	ngx.waitErrorLog(t, regexp.MustCompile(oldWorker+"#"+oldWorker+`: gracefully shutting down`))
	fresh := dialWith(t, ngx.wsURL(), fromIP("127.0.0.3"))
	fresh.subscribe(t, "ticks.A")

	// The old connection still carries records after the reload.
	r2 := k.produce(t, rec(topic, 0, "A", `{"n":2}`))[0]
	checkMsg(t, old.next(t, 10*time.Second), "ticks.A", r2)
	checkMsg(t, fresh.next(t, 10*time.Second), "ticks.A", r2)

	// Then the old worker's shutdown timeout ends it, with no close frame.
	_, err := old.waitClose(shutdownTimeout + 30*time.Second)
	cutAfter := time.Since(reloaded)
	if err == nil {
		t.Fatal("the old worker's connection ended with a WebSocket close frame; nginx sends none")
	}
	if !strings.Contains(err.Error(), "without a close frame") {
		t.Fatalf("old connection: %v, want it cut without a close frame", err)
	}
	t.Logf("nginx reload: the pre-reload connection kept delivering, then was cut without a close frame %s after the reload (worker_shutdown_timeout %s)",
		cutAfter.Round(100*time.Millisecond), shutdownTimeout)
	waitFor(t, 20*time.Second, "kpush to see the cut connection close", func() bool {
		return app.metric(t, "kpush_connections") == 1
	})
	// The connection made after the reload is unaffected.
	r3 := k.produce(t, rec(topic, 0, "A", `{"n":3}`))[0]
	checkMsg(t, fresh.next(t, 10*time.Second), "ticks.A", r3)
}

// Through HAProxy in TCP mode with send-proxy-v2 (what an AWS NLB with
// proxy protocol v2 does), and with send-proxy (version 1): kpush takes
// each client's address from the PROXY header; records arrive exact and the
// per-address limit counts clients.
func TestThroughHAProxyProxyProtocol(t *testing.T) {
	for _, tc := range []struct{ version, sendProxy string }{
		{gateway.ProxyProtocolV2, "send-proxy-v2"},
		{gateway.ProxyProtocolV1, "send-proxy"},
	} {
		t.Run(tc.sendProxy, func(t *testing.T) { testThroughHAProxy(t, tc.version, tc.sendProxy) })
	}
}

func testThroughHAProxy(t *testing.T, version, sendProxy string) {
	k := startKafka(t)
	topic := k.topic(t, "hap", 1)
	app := startApp(t, k, tickRoute(topic), func(c *Config) {
		c.Gateway.TrustedProxies = []string{"127.0.0.1/32"}
		c.Gateway.ProxyProtocol = version
		c.Gateway.MaxConnectionsPerIP = 2
	})
	hap := startHAProxy(t, app.gwLn.Addr().String(), sendProxy)

	a := dialWith(t, hap.wsURL(), fromIP("127.0.0.2"))
	a.subscribe(t, "ticks.X")
	recs := k.produce(t,
		rec(topic, 0, "X", `{"n":1}`),
		rec(topic, 0, "X", fmt.Sprintf(`{"blob":%q}`, strings.Repeat("y", 100<<10))),
		rec(topic, 0, "X", `{"n":3}`),
	)
	for _, r := range recs {
		f := a.next(t, 10*time.Second)
		checkMsg(t, f, "ticks.X", r)
		if string(f.Data) != string(r.Value) {
			t.Fatalf("record at offset %d changed through HAProxy", r.Offset)
		}
	}

	if st := dialStatus(t, hap.wsURL(), fromIP("127.0.0.2")); st != http.StatusSwitchingProtocols {
		t.Fatalf("second client from 127.0.0.2: HTTP %d, want 101", st)
	}
	if st := dialStatus(t, hap.wsURL(), fromIP("127.0.0.2")); st != http.StatusTooManyRequests {
		t.Fatalf("third client from 127.0.0.2: HTTP %d, want 429", st)
	}
	if st := dialStatus(t, hap.wsURL(), fromIP("127.0.0.3")); st != http.StatusSwitchingProtocols {
		t.Fatalf("client from 127.0.0.3: HTTP %d, want 101", st)
	}
	// A client that reaches kpush directly (an untrusted peer) sends no
	// header and is served as itself.
	if st := dialStatus(t, app.wsURL, fromIP("127.0.0.5")); st != http.StatusSwitchingProtocols {
		t.Fatalf("direct client from 127.0.0.5: HTTP %d, want 101", st)
	}
	if n := app.metric(t, "kpush_handshake_client_addresses_total", `source="proxy_protocol"`); n != 3 {
		t.Fatalf("%v handshakes with a PROXY protocol address, want 3", n)
	}
	if n := app.metric(t, "kpush_rejected_total", `reason="max_connections_per_ip"`); n != 1 {
		t.Fatalf("%v per-address rejections, want 1", n)
	}
	for _, bad := range []string{"missing", "malformed"} {
		if n := app.metric(t, "kpush_proxy_protocol_headers_total", `result="`+bad+`"`); n != 0 {
			t.Fatalf("%v PROXY headers %s from HAProxy, want 0", n, bad)
		}
	}
	r := k.produce(t, rec(topic, 0, "X", `{"n":4}`))[0]
	checkMsg(t, a.next(t, 10*time.Second), "ticks.X", r)
}

// The proxy keys as written in a configuration file: `off` unquoted is the
// string, and each mistake names its key.
func TestProxyConfigKeys(t *testing.T) {
	base := "listen: \"127.0.0.1:0\"\nadmin_listen: \"127.0.0.1:1\"\nroutes:\n  - topic: t\n    channel: \"t.{key}\"\n"
	cases := []struct {
		name, yaml, wantErr string
		want                string // proxy_protocol after loading
	}{
		{"defaults", "", "", "off"},
		{"off unquoted", "gateway:\n  proxy_protocol: off\n", "", "off"},
		{"v2 with trusted proxies", "gateway:\n  proxy_protocol: v2\n  trusted_proxies: [10.0.0.0/8, \"fd00::/8\", 192.0.2.1]\n", "", "v2"},
		{"v2 alone", "gateway:\n  proxy_protocol: v2\n", "gateway.proxy_protocol: v2 needs gateway.trusted_proxies", ""},
		{"unknown version", "gateway:\n  proxy_protocol: v3\n  trusted_proxies: [10.0.0.0/8]\n", "gateway.proxy_protocol", ""},
		{"host bits", "gateway:\n  trusted_proxies: [10.1.2.3/8]\n", "gateway.trusted_proxies[0]", ""},
		{"hostname", "gateway:\n  trusted_proxies: [10.0.0.0/8, ingress.local]\n", "gateway.trusted_proxies[1]", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := LoadConfig("test.yaml", []byte(base+tc.yaml))
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if cfg.Gateway.ProxyProtocol != tc.want {
					t.Fatalf("proxy_protocol %q, want %q", cfg.Gateway.ProxyProtocol, tc.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one naming %s", err, tc.wantErr)
			}
		})
	}
}
