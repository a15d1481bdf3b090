package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/kpush/kpush/consumer"
	"github.com/kpush/kpush/gateway/auth"
	"github.com/kpush/kpush/gateway/client"
)

// The identity provider is shared by every pod, so its outage must not take
// pods out of the Service: kpush keeps verifying with the last good keys and
// stays ready; and a pod that starts while the provider is down starts and is
// ready too, refusing the provider's tokens until a fetch succeeds.
func TestIdentityProviderOutageKeepsPodsReady(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	enc := base64.RawURLEncoding.EncodeToString
	pad := func(b []byte) []byte { return append(make([]byte, 32-len(b)), b...) }
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": []map[string]string{
			{"kty": "EC", "kid": "k1", "use": "sig", "crv": "P-256", "x": enc(pad(key.X.Bytes())), "y": enc(pad(key.Y.Bytes()))},
		}})
	}))
	t.Cleanup(idp.Close)
	tok := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{"sub": "42", "exp": time.Now().Add(time.Hour).Unix()})
	tok.Header["kid"] = "k1"
	signed, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	bearer := &client.DialOptions{Header: http.Header{"Authorization": {"Bearer " + signed}}}

	k := startKafka(t)
	orders := k.topic(t, "orders", 1)
	// Each app gets its own routes: validation fills in their defaults.
	routes := func() []consumer.Route {
		return []consumer.Route{{Topic: orders, Channel: "user.{key}.orders", Format: consumer.FormatJSON}}
	}
	withIDP := func(url string) func(*Config) {
		return func(c *Config) {
			c.Auth = auth.Config{Mode: auth.ModeJWT, JWKSURL: url, Grants: []string{"user.{sub}.>"},
				JWKSRefreshInterval: 200 * time.Millisecond, JWKSMinRefreshInterval: 100 * time.Millisecond,
				JWKSFetchTimeout: time.Second}
		}
	}
	app := startApp(t, k, routes(), withIDP(idp.URL+"/certs"))
	before := dialWith(t, app.wsURL, bearer)
	before.subscribe(t, "user.42.orders")

	idp.Close()
	waitFor(t, 20*time.Second, "failed fetches to be counted", func() bool {
		return app.metric(t, "kpush_auth_jwks_fetches_total", `result="unreachable"`) >= 2
	})
	if s := httpStatus(app.adminURL + "/readyz"); s != http.StatusOK {
		t.Fatalf("/readyz = %d while the identity provider is down, want 200", s)
	}
	during := dialWith(t, app.wsURL, bearer)
	during.subscribe(t, "user.42.orders")
	r := k.produce(t, rec(orders, 0, "42", `{"order":1}`))[0]
	checkMsg(t, before.next(t, 10*time.Second), "user.42.orders", r)
	checkMsg(t, during.next(t, 10*time.Second), "user.42.orders", r)

	// A pod started during the outage: ready, but the provider's tokens
	// are refused until it has fetched the keys.
	late := startApp(t, k, routes(), withIDP(idp.URL+"/certs"))
	if n := late.metric(t, "kpush_auth_jwks_keys"); n != 0 {
		t.Fatalf("kpush_auth_jwks_keys = %v with no fetch ever made", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if c, err := client.Dial(ctx, late.wsURL, bearer); err == nil {
		c.NetConn().Close()
		t.Fatal("a token was accepted by a pod that never fetched the provider's keys")
	}
}
