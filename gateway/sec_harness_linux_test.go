package gateway

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/kpush/kpush/gateway/client"
	"github.com/prometheus/client_golang/prometheus"
)

// A gateway for the security tests (serveGateway).

type secGateway struct {
	srv  *Server
	reg  *prometheus.Registry
	addr string
	url  string // ws:// or wss://
}

func startSecGateway(t testing.TB, mutate func(*Config)) *secGateway {
	t.Helper()
	return startSecGatewayLog(t, nil, mutate)
}

// startSecGatewayLog is startSecGateway with a logger.
func startSecGatewayLog(t testing.TB, log *slog.Logger, mutate func(*Config)) *secGateway {
	t.Helper()
	g := serveGateway(t, secConfig(mutate), serveOptions{log: log})
	return &secGateway{srv: g.srv, reg: g.reg, addr: g.addr, url: g.url}
}

// secConfig is the security tests' configuration: a short drain, four
// workers, and what mutate changes.
func secConfig(mutate func(*Config)) Config {
	cfg := Config{DrainTimeout: 200 * time.Millisecond, Workers: 4}
	if mutate != nil {
		mutate(&cfg)
	}
	return cfg
}

// rejected reads kpush_rejected_total{reason} from the registry.
func (g *secGateway) rejected(reason string) float64 {
	return g.metric("kpush_rejected_total", "reason", reason)
}

// gauge reads an unlabelled gauge.
func (g *secGateway) gauge(name string) float64 {
	mfs, err := g.reg.Gather()
	if err != nil {
		panic(err)
	}
	// A gauge may have a sample per protocol (kpush_connections): sum them.
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			var sum float64
			for _, m := range mf.GetMetric() {
				sum += m.GetGauge().GetValue()
			}
			return sum
		}
	}
	return -1
}

// metric sums a metric's samples whose label has the given value.
func (g *secGateway) metric(name, label, value string) float64 {
	mfs, err := g.reg.Gather()
	if err != nil {
		panic(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
				}
			}
		}
	}
	return sum
}

// publish sends one JSON record to channel ch.
func (g *secGateway) publish(ch string, data string) int {
	return g.srv.Publish(&Message{Channel: ch, Data: []byte(data), Timestamp: time.Now().UnixMilli()}, nil)
}

// testClient reads frames into a channel.
type testClient struct {
	*client.Conn
	frames chan *client.Frame
	errc   chan error
}

func dialClient(t testing.TB, url string, o *client.DialOptions) (*testClient, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, url, o)
	if err != nil {
		return nil, err
	}
	tc := &testClient{Conn: c, frames: make(chan *client.Frame, 1024), errc: make(chan error, 1)}
	go func() {
		for {
			f, err := c.Read()
			if err != nil {
				tc.errc <- err
				close(tc.frames)
				return
			}
			tc.frames <- f
		}
	}()
	t.Cleanup(func() { c.NetConn().Close() })
	return tc, nil
}

func mustDial(t testing.TB, url string, o *client.DialOptions) *testClient {
	t.Helper()
	c, err := dialClient(t, url, o)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	return c
}

func (c *testClient) next(t testing.TB) *client.Frame {
	t.Helper()
	select {
	case f, ok := <-c.frames:
		if !ok {
			t.Fatalf("connection ended: %v", <-c.errc)
		}
		return f
	case <-time.After(10 * time.Second):
		t.Fatal("no frame within 10s")
	}
	return nil
}

// request sends r and returns the reply to it.
func (c *testClient) request(t testing.TB, r *client.Request) *client.Frame {
	t.Helper()
	id, err := c.Send(r)
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	for {
		f := c.next(t)
		if f.Op != "msg" && f.ID == id {
			return f
		}
	}
}

func (c *testClient) subscribe(t testing.TB, chs ...string) *client.Frame {
	t.Helper()
	return c.request(t, &client.Request{Op: "subscribe", Channels: chs})
}

// closeCode waits for the server's close frame.
func (c *testClient) closeCode(t testing.TB) int {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case _, ok := <-c.frames:
			if ok {
				continue
			}
			err := <-c.errc
			var ce client.CloseError
			if errors.As(err, &ce) {
				return int(ce.Code)
			}
			t.Fatalf("connection ended without a close frame: %v", err)
		case <-timeout:
			t.Fatal("not closed within 10s")
		}
	}
}

// expectMsg waits for a msg frame on ch.
func (c *testClient) expectMsg(t testing.TB, ch string) *client.Frame {
	t.Helper()
	for {
		f := c.next(t)
		if f.Op == "msg" && f.Ch == ch {
			return f
		}
	}
}

// witness is a well-behaved client subscribed to one channel; check proves it
// still receives.
type witness struct {
	g  *secGateway
	c  *testClient
	ch string
	n  int
}

func newWitness(t testing.TB, g *secGateway, o *client.DialOptions) *witness {
	t.Helper()
	w := &witness{g: g, c: mustDial(t, g.url, o), ch: "witness.feed"}
	if f := w.c.subscribe(t, w.ch); f.Op != "ok" {
		t.Fatalf("witness subscribe: %+v", f)
	}
	return w
}

func (w *witness) check(t testing.TB) {
	t.Helper()
	w.n++
	if got := w.g.publish(w.ch, `{"n":1}`); got < 1 {
		t.Fatalf("publish reached %d connections; the witness is gone", got)
	}
	w.c.expectMsg(t, w.ch)
}

// testPKI is a CA and the files of a server certificate it signed.
type testPKI struct {
	caKey  *ecdsa.PrivateKey
	caCert *x509.Certificate
	pool   *x509.CertPool
	dir    string
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kpush test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testPKI{caKey: key, caCert: cert, pool: pool, dir: t.TempDir()}
}

// issue writes a server certificate for 127.0.0.1 with the given serial to
// cert.pem and key.pem (replacing them the way a secret rotation does: new
// files renamed into place) and returns their paths.
func (p *testPKI) issue(t testing.TB, serial int64) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: "kpush test server"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(p.dir, "cert.pem"), filepath.Join(p.dir, "key.pem")
	write := func(path string, b []byte) {
		tmp := path + ".new"
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
	write(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	return certFile, keyFile
}

func (p *testPKI) clientTLS() *client.DialOptions {
	return &client.DialOptions{TLS: &ws.Dialer{TLSConfig: &tls.Config{RootCAs: p.pool, ServerName: "127.0.0.1"}}}
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func x509PoolFromPEM(t testing.TB, b []byte) *x509.CertPool {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatal("no certificate in CA file")
	}
	return pool
}
