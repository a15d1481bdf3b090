package gateway

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/kpush/kpush/gateway/client"
)

func startTLSGateway(t testing.TB, p *testPKI, mutate func(*Config)) *secGateway {
	t.Helper()
	certFile, keyFile := p.issue(t, 100)
	return startSecGateway(t, func(c *Config) {
		c.TLS = TLSConfig{CertFile: certFile, KeyFile: keyFile, ReloadInterval: 20 * time.Millisecond}
		if mutate != nil {
			mutate(c)
		}
	})
}

// peerSerial opens a TLS connection that verifies the chain against the
// test CA and returns the serial of the certificate the server presented.
func peerSerial(t testing.TB, addr string, p *testPKI) int64 {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: p.pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatalf("tls dial: %v", err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}

func TestWSSDeliveryAndCertificateReload(t *testing.T) {
	p := newTestPKI(t)
	g := startTLSGateway(t, p, nil)

	// A client that verifies the chain subscribes and receives.
	a := mustDial(t, g.url, p.clientTLS())
	if f := a.subscribe(t, "ticks.AAPL"); f.Op != "ok" {
		t.Fatalf("subscribe over wss: %+v", f)
	}
	if n := g.publish("ticks.AAPL", `{"px":1}`); n != 1 {
		t.Fatalf("publish reached %d", n)
	}
	if f := a.expectMsg(t, "ticks.AAPL"); string(f.Data) != `{"px":1}` {
		t.Fatalf("msg data %s", f.Data)
	}
	// Many frames at once cross several TLS records and writes.
	big := `"` + strings.Repeat("x", 3000) + `"`
	for i := 0; i < 200; i++ {
		g.publish("ticks.AAPL", big)
	}
	for i := 0; i < 200; i++ {
		if f := a.expectMsg(t, "ticks.AAPL"); string(f.Data) != big {
			t.Fatalf("frame %d corrupted: %d bytes", i, len(f.Data))
		}
	}

	// A client that does not trust the CA is refused by its own check.
	if _, err := dialClient(t, g.url, &client.DialOptions{TLS: &ws.Dialer{TLSConfig: &tls.Config{ServerName: "127.0.0.1"}}}); err == nil {
		t.Fatal("a client without the test CA verified the server")
	}
	// Plain ws on a wss port fails the handshake.
	if _, err := dialClient(t, "ws://"+g.addr+"/ws", nil); err == nil {
		t.Fatal("plain ws upgrade succeeded on the TLS listener")
	}

	// Plain HTTP on the same port is served over TLS too (the demo page;
	// this gateway has no handler, so 404).
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.pool, ServerName: "127.0.0.1"}}}
	if resp, err := hc.Get("https://" + g.addr + "/"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("https GET /: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	hc.CloseIdleConnections()

	if s := peerSerial(t, g.addr, p); s != 100 {
		t.Fatalf("serving serial %d, want 100", s)
	}
	// Rotate: new files with serial 101. New handshakes get it once the
	// poll notices; the established connection stays up and keeps receiving.
	p.issue(t, 101)
	secWaitUntil(t, 10*time.Second, "the new certificate to be served", func() bool { return peerSerial(t, g.addr, p) == 101 })
	g.publish("ticks.AAPL", `{"px":2}`)
	if f := a.expectMsg(t, "ticks.AAPL"); string(f.Data) != `{"px":2}` {
		t.Fatalf("after reload: msg data %s", f.Data)
	}
	if f := a.request(t, &client.Request{Op: "ping"}); f.Op != "pong" {
		t.Fatalf("after reload: %+v", f)
	}
	b := mustDial(t, g.url, p.clientTLS())
	if f := b.subscribe(t, "ticks.AAPL"); f.Op != "ok" {
		t.Fatalf("subscribe after reload: %+v", f)
	}
	if got := g.metric("kpush_tls_cert_reloads_total", "result", "ok"); got < 1 {
		t.Fatalf("kpush_tls_cert_reloads_total{result=ok} = %v, want >= 1", got)
	}

	// A broken pair keeps the current certificate in service.
	if err := os.WriteFile(p.dir+"/cert.pem", []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	secWaitUntil(t, 10*time.Second, "the failed reload to be counted", func() bool {
		return g.metric("kpush_tls_cert_reloads_total", "result", "failed") >= 1
	})
	if s := peerSerial(t, g.addr, p); s != 101 {
		t.Fatalf("after a failed reload serving serial %d, want 101", s)
	}
	if g.srv.Connections() != 2 {
		t.Fatalf("%d connections, want the 2 established ones", g.srv.Connections())
	}
}

func TestTLSConfigValidate(t *testing.T) {
	cases := []struct {
		cfg TLSConfig
		key string
	}{
		{TLSConfig{CertFile: "c.pem"}, "tls.key_file"},
		{TLSConfig{MinVersion: "1.1"}, "tls.min_version"},
		{TLSConfig{ReloadInterval: time.Microsecond}, "tls.reload_interval"},
	}
	for _, tc := range cases {
		tc.cfg.SetDefaults()
		if err := tc.cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.key) {
			t.Errorf("%+v: error %v, want one naming %s", tc.cfg, err, tc.key)
		}
	}
	if _, err := New(Config{TLS: TLSConfig{CertFile: "/nonexistent/c.pem", KeyFile: "/nonexistent/k.pem"}}, nil, nil, nil); err == nil {
		t.Fatal("New accepted a missing certificate")
	}
}

// The helper process for TestIdleConnectionCost: it opens the connections
// so that their client-side memory is not in the measured process.
func TestHelperIdleClients(t *testing.T) {
	addr := os.Getenv("KPUSH_HELPER_ADDR")
	if addr == "" {
		t.Skip("helper process for TestIdleConnectionCost")
	}
	n, _ := strconv.Atoi(os.Getenv("KPUSH_HELPER_N"))
	var o *client.DialOptions
	url := "ws://" + addr + "/ws"
	if ca := os.Getenv("KPUSH_HELPER_CA"); ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			t.Fatal(err)
		}
		cfg := &tls.Config{ServerName: "127.0.0.1", RootCAs: nil}
		cfg.RootCAs = x509PoolFromPEM(t, pem)
		o = &client.DialOptions{TLS: &ws.Dialer{TLSConfig: cfg}}
		url = "wss://" + addr + "/ws"
	}
	conns := make([]*client.Conn, 0, n)
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := client.Dial(ctx, url, o)
		cancel()
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		// One request each, so every connection has read and written
		// through its TLS session before it goes idle.
		if _, err := c.Send(&client.Request{Op: "subscribe", Channels: []string{fmt.Sprintf("idle.%d", i%50)}}); err != nil {
			t.Fatal(err)
		}
		if f, err := c.Read(); err != nil || f.Op != "ok" {
			t.Fatalf("subscribe %d: %v %+v", i, err, f)
		}
		conns = append(conns, c)
	}
	fmt.Println("ready")
	bufio.NewReader(os.Stdin).ReadString('\n') // hold until the parent is done
	for _, c := range conns {
		c.NetConn().Close()
	}
}

// TestIdleConnectionCost opens idle connections from a helper process and
// checks that the server holds no goroutine per connection, plain or TLS. It
// logs the heap each idle connection costs the server (README.md quotes the
// figure; KPUSH_IDLE_CONNS raises the count for that measurement).
func TestIdleConnectionCost(t *testing.T) {
	n := 200
	if v, err := strconv.Atoi(os.Getenv("KPUSH_IDLE_CONNS")); err == nil && v > 0 && v <= 10000 {
		n = v
	}
	p := newTestPKI(t)
	caFile := p.dir + "/ca.pem"
	if err := os.WriteFile(caFile, pemCert(p.caCert.Raw), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"ws", "wss"} {
		t.Run(mode, func(t *testing.T) {
			var g *secGateway
			env := []string{"KPUSH_HELPER_N=" + strconv.Itoa(n)}
			if mode == "wss" {
				g = startTLSGateway(t, p, func(c *Config) { c.MaxSubscriptions = 10 })
				env = append(env, "KPUSH_HELPER_CA="+caFile)
			} else {
				g = startSecGateway(t, nil)
			}
			env = append(env, "KPUSH_HELPER_ADDR="+g.addr)
			heap0, gr0 := settledHeap()
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperIdleClients$", "-test.v")
			cmd.Env = append(os.Environ(), env...)
			stdin, _ := cmd.StdinPipe()
			stdout, _ := cmd.StdoutPipe()
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { stdin.Close(); cmd.Wait() })
			sc := bufio.NewScanner(stdout)
			for sc.Scan() && sc.Text() != "ready" {
			}
			secWaitUntil(t, 30*time.Second, "every helper connection to register", func() bool { return g.srv.Connections() == n })
			heap1, gr1 := settledHeap()
			per := float64(int64(heap1)-int64(heap0)) / float64(n)
			t.Logf("%s: %d idle connections: %+d goroutines, heap %+.0f bytes per connection", mode, n, gr1-gr0, per)
			if gr1-gr0 > 2 {
				t.Fatalf("%d idle %s connections added %d goroutines; idle connections must hold none", n, mode, gr1-gr0)
			}
			stdin.Close()
			secWaitUntil(t, 30*time.Second, "the helper's connections to close", func() bool { return g.srv.Connections() == 0 })
		})
	}
}

// settledHeap returns the live heap after a collection and the goroutine
// count.
func settledHeap() (uint64, int) {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc, runtime.NumGoroutine()
}
