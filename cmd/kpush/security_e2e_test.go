package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/golang-jwt/jwt/v5"
	"github.com/kpush/kpush/consumer"
	"github.com/kpush/kpush/gateway/auth"
	"github.com/kpush/kpush/gateway/client"
)

// writeTestCert writes a CA-signed certificate for 127.0.0.1 and returns the
// files and a pool trusting the CA.
func writeTestCert(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "e2e CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kpush"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
	pool = x509.NewCertPool()
	pool.AddCert(ca)
	return certFile, keyFile, pool
}

// kpush configured with wss, JWT auth and one public and one private route:
// anonymous clients get the public channels only, a token grants its own.
func TestWSSWithJWTAndPublicRoutes(t *testing.T) {
	const secret = "e2e-secret-e2e-secret-e2e-secret-e2e"
	k := startKafka(t)
	ticks := k.topic(t, "ticks", 1)
	orders := k.topic(t, "orders", 1)
	certFile, keyFile, pool := writeTestCert(t)
	app := startApp(t, k, []consumer.Route{
		{Topic: ticks, Channel: "ticks.{key}", Format: consumer.FormatJSON, Public: true},
		{Topic: orders, Channel: "user.{key}.orders", Format: consumer.FormatJSON},
	}, func(c *Config) {
		c.TLS.CertFile, c.TLS.KeyFile = certFile, keyFile
		c.Auth = auth.Config{Mode: auth.ModeJWT, HS256Secret: secret, Grants: []string{"user.{sub}.>"}}
	})
	url := strings.Replace(app.wsURL, "ws://", "wss://", 1)
	tlsOpts := func(h http.Header) *client.DialOptions {
		return &client.DialOptions{Header: h, TLS: &ws.Dialer{TLSConfig: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}}}
	}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "42", "exp": time.Now().Add(time.Hour).Unix(),
	}).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}

	anon := dialWith(t, url, tlsOpts(nil))
	user := dialWith(t, url, tlsOpts(http.Header{"Authorization": {"Bearer " + tok}}))
	anon.subscribe(t, "ticks.AAPL")
	if f := anon.request(t, &client.Request{Op: "subscribe", Channels: []string{"user.42.orders"}}); f.Code != "forbidden" {
		t.Fatalf("anonymous subscribe to a private route: %+v", f)
	}
	user.subscribe(t, "ticks.AAPL", "user.42.orders")
	if f := user.request(t, &client.Request{Op: "subscribe", Channels: []string{"user.43.orders"}}); f.Code != "forbidden" {
		t.Fatalf("another user's channel: %+v", f)
	}

	rt := k.produce(t, rec(ticks, 0, "AAPL", `{"px":1}`))[0]
	k.produce(t, rec(orders, 0, "42", `{"order":7}`))
	checkMsg(t, anon.next(t, 10*time.Second), "ticks.AAPL", rt)
	got := map[string]bool{}
	for i := 0; i < 2; i++ {
		f := user.next(t, 10*time.Second)
		got[f.Ch] = true
	}
	if !got["ticks.AAPL"] || !got["user.42.orders"] {
		t.Fatalf("user received %v", got)
	}
	anon.expectNoMsg(t)
	if n := app.metric(t, "kpush_rejected_total", `reason="forbidden"`); n != 2 {
		t.Fatalf("kpush_rejected_total{reason=forbidden} = %v, want 2", n)
	}
}

func TestSecurityConfigKeys(t *testing.T) {
	base := "listen: \"127.0.0.1:0\"\nadmin_listen: \"127.0.0.1:1\"\nroutes:\n  - topic: t\n    channel: \"t.{key}\"\n    public: true\n"
	cases := []struct {
		name, yaml, wantErr string
	}{
		{"defaults", "", ""},
		{"tls needs both files", "tls:\n  cert_file: a.pem\n", "tls.key_file"},
		{"tls version", "tls:\n  min_version: \"1.0\"\n", "tls.min_version"},
		{"jwt needs a key", "auth:\n  mode: jwt\n", "auth.mode"},
		{"jwt ok", "auth:\n  mode: jwt\n  hs256_secret: 0123456789abcdef0123456789abcdef\n  grants: [\"user.{sub}.>\"]\n", ""},
		{"bad grant", "auth:\n  mode: jwt\n  hs256_secret: 0123456789abcdef0123456789abcdef\n  grants: [\"a.>.b\"]\n", "auth.grants[0]"},
		{"unknown auth key", "auth:\n  secret: x\n", `unknown key "secret"`},
		{"negative per-ip", "gateway:\n  max_connections_per_ip: -1\n", "gateway.max_connections_per_ip"},
		{"tiny header limit", "gateway:\n  max_header_bytes: 100\n", "gateway.max_header_bytes"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := LoadConfig("test.yaml", []byte(base+tc.yaml))
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				rs, err := consumer.CompileRoutes(cfg.Routes)
				if err != nil {
					t.Fatal(err)
				}
				if !rs.Public("t.AAPL") || rs.Public("u.AAPL") {
					t.Fatal("public: true route not applied")
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one naming %s", err, tc.wantErr)
			}
		})
	}
}
