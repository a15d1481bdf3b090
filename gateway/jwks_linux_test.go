package gateway

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/kpush/kpush/gateway/client"
)

// keyProvider is a local identity provider: an https JWKS endpoint whose
// keys the test rotates while clients connect.
type keyProvider struct {
	srv  *httptest.Server
	hits atomic.Int64
	mu   sync.Mutex
	keys map[string]*ecdsa.PublicKey // guarded by mu
}

func newKeyProvider(t *testing.T) (*keyProvider, string) {
	t.Helper()
	p := &keyProvider{keys: map[string]*ecdsa.PublicKey{}}
	p.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.hits.Add(1)
		enc := base64.RawURLEncoding.EncodeToString
		pad := func(b []byte) []byte { return append(make([]byte, 32-len(b)), b...) }
		var list []map[string]string
		p.mu.Lock()
		for kid, k := range p.keys {
			list = append(list, map[string]string{"kty": "EC", "kid": kid, "use": "sig", "crv": "P-256", "x": enc(pad(k.X.Bytes())), "y": enc(pad(k.Y.Bytes()))})
		}
		p.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": list})
	}))
	t.Cleanup(p.srv.Close)
	ca := filepath.Join(t.TempDir(), "idp-ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p, ca
}

func (p *keyProvider) publish(kid string, k *ecdsa.PrivateKey) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if k == nil {
		delete(p.keys, kid)
		return
	}
	p.keys[kid] = &k.PublicKey
}

func idpToken(t testing.TB, k *ecdsa.PrivateKey, kid string, exp time.Duration) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{
		"sub": "42", "aud": "kpush", "exp": time.Now().Add(exp).Unix(), "channels": []string{"ticks.*"},
	})
	tok.Header["kid"] = kid
	s, err := tok.SignedString(k)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func newP256(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// The provider rotates its signing key while clients keep connecting: the
// new key's tokens are accepted after one refetch, the withdrawn key's
// tokens are refused from the first handshake or refresh after the set that
// lacks it is fetched, and a provider that goes away leaves the last good
// keys in service.
func TestJWKSRotationWhileClientsConnect(t *testing.T) {
	p, ca := newKeyProvider(t)
	k1, k2 := newP256(t), newP256(t)
	p.publish("k1", k1)
	g := startAuthGateway(t, func(c *Config) {
		c.Auth.JWKSURL = p.srv.URL + "/realms/kpush/protocol/openid-connect/certs"
		c.Auth.JWKSCAFile = ca
		c.Auth.JWKSRefreshInterval = time.Hour
		c.Auth.JWKSMinRefreshInterval = 100 * time.Millisecond
	})
	if n := p.hits.Load(); n != 1 {
		t.Fatalf("%d fetches at start, want 1", n)
	}
	old := mustDial(t, g.url, bearer(idpToken(t, k1, "k1", time.Hour)))
	if f := old.subscribe(t, "ticks.A"); f.Op != "ok" {
		t.Fatalf("subscribe with a k1 token: %+v", f)
	}

	// Clients signed with k1 keep connecting through the whole rotation.
	type attempt struct {
		start time.Time
		err   error
	}
	var (
		mu       sync.Mutex
		attempts []attempt
		stop     = make(chan struct{})
		wg       sync.WaitGroup
	)
	k1Token := idpToken(t, k1, "k1", time.Hour)
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				start := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				c, err := client.Dial(ctx, g.url, bearer(k1Token))
				cancel()
				if err == nil {
					c.NetConn().Close()
				}
				mu.Lock()
				attempts = append(attempts, attempt{start, err})
				mu.Unlock()
			}
		}()
	}

	// Rotation, step 1: k2 is published and used. One refetch.
	p.publish("k2", k2)
	fresh := mustDial(t, g.url, bearer(idpToken(t, k2, "k2", time.Hour)))
	if n := p.hits.Load(); n != 2 {
		t.Fatalf("%d fetches after the first k2 handshake, want 2", n)
	}
	if f := fresh.subscribe(t, "ticks.B"); f.Op != "ok" {
		t.Fatalf("subscribe with a k2 token: %+v", f)
	}

	// Step 2: k1 is withdrawn. A token naming a kid nobody published makes
	// the next refetch (once the rate limit allows one).
	p.publish("k1", nil)
	stray := newP256(t)
	secWaitUntil(t, 20*time.Second, "a refetch that drops k1", func() bool {
		_, err := dialClient(t, g.url, bearer(idpToken(t, stray, "stray", time.Hour)))
		return err != nil && p.hits.Load() >= 3
	})
	dropped := time.Now()
	_, err := dialClient(t, g.url, bearer(k1Token))
	if err == nil || handshakeStatus(t, err) != http.StatusUnauthorized {
		t.Fatalf("k1 handshake after the withdrawal: %v, want 401", err)
	}
	// The connection made with k1 stays (its token was good when it was
	// presented), but a refresh with a newer k1 token is refused.
	if f := old.request(t, &client.Request{Op: "refresh", Token: idpToken(t, k1, "k1", 2*time.Hour)}); f.Op != "error" || f.Code != CodeInvalidToken {
		t.Fatalf("refresh with a withdrawn key: %+v, want invalid_token", f)
	}
	if f := fresh.request(t, &client.Request{Op: "refresh", Token: idpToken(t, k2, "k2", 2*time.Hour)}); f.Op != "ok" {
		t.Fatalf("refresh with the current key: %+v", f)
	}
	close(stop)
	wg.Wait()
	var okBefore, okAfter, after int
	for _, a := range attempts {
		switch {
		case a.start.Before(dropped) && a.err == nil:
			okBefore++
		case a.start.After(dropped):
			after++
			if a.err == nil {
				okAfter++
			}
		}
	}
	if okBefore == 0 || okAfter != 0 {
		t.Fatalf("k1 clients during the rotation: %d accepted before k1 was dropped, %d of %d accepted after (want >0 and 0)", okBefore, okAfter, after)
	}

	// Step 3: the provider goes away. The last good keys stay in service:
	// k2 clients still connect, and the failure is counted.
	p.srv.Close()
	secWaitUntil(t, 20*time.Second, "a failed fetch to be counted", func() bool {
		_, _ = dialClient(t, g.url, bearer(idpToken(t, newP256(t), "other", time.Hour)))
		return g.metric("kpush_auth_jwks_fetches_total", "result", "unreachable") >= 1
	})
	still := mustDial(t, g.url, bearer(idpToken(t, k2, "k2", time.Hour)))
	if f := still.subscribe(t, "ticks.C"); f.Op != "ok" {
		t.Fatalf("subscribe with k2 while the provider is down: %+v", f)
	}
	if g.publish("ticks.B", `{"p":1}`) != 1 {
		t.Fatal("publish reached no subscriber")
	}
	if f := fresh.expectMsg(t, "ticks.B"); string(f.Data) != `{"p":1}` {
		t.Fatalf("k2 client got %s", f.Data)
	}
	if g.srv.Draining() {
		t.Fatal("the gateway drains because the identity provider is down")
	}
}

// A handshake whose token names an unknown kid waits for the refetch no
// longer than jwks_fetch_timeout, however slowly the provider answers.
func TestJWKSUnknownKidWaitIsBounded(t *testing.T) {
	var slow atomic.Bool
	k1 := newP256(t)
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if slow.Load() {
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		enc := base64.RawURLEncoding.EncodeToString
		pad := func(b []byte) []byte { return append(make([]byte, 32-len(b)), b...) }
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": []map[string]string{
			{"kty": "EC", "kid": "k1", "crv": "P-256", "x": enc(pad(k1.X.Bytes())), "y": enc(pad(k1.Y.Bytes()))},
		}})
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	g := startAuthGateway(t, func(c *Config) {
		c.Auth.JWKSURL = srv.URL + "/certs"
		c.Auth.JWKSRefreshInterval = time.Hour
		c.Auth.JWKSMinRefreshInterval = time.Hour
		c.Auth.JWKSFetchTimeout = 300 * time.Millisecond
		c.HandshakeTimeout = 10 * time.Second
	})
	slow.Store(true)
	t0 := time.Now()
	_, err := dialClient(t, g.url, bearer(idpToken(t, newP256(t), "new", time.Hour)))
	if err == nil || handshakeStatus(t, err) != http.StatusUnauthorized {
		t.Fatalf("unknown kid with a provider that does not answer: %v, want 401", err)
	}
	if d := time.Since(t0); d >= 10*time.Second {
		t.Fatalf("the handshake waited %s, as long as handshake_timeout", d)
	}
	// Known keys are not held up by the stuck fetch.
	if _, err := dialClient(t, g.url, bearer(idpToken(t, k1, "k1", time.Hour))); err != nil {
		t.Fatalf("k1 while a refetch hangs: %v", err)
	}
}

// A refresh runs on a worker and never waits for the identity provider: a
// token signed by a key kpush has not fetched yet is refused at once and
// starts the refetch, so the client's retry is accepted.
func TestJWKSRefreshWithNewKeyRetries(t *testing.T) {
	p, ca := newKeyProvider(t)
	k1, k2 := newP256(t), newP256(t)
	p.publish("k1", k1)
	g := startAuthGateway(t, func(c *Config) {
		c.Auth.JWKSURL = p.srv.URL + "/certs"
		c.Auth.JWKSCAFile = ca
		c.Auth.JWKSRefreshInterval = time.Hour
		c.Auth.JWKSMinRefreshInterval = time.Hour
	})
	c := mustDial(t, g.url, bearer(idpToken(t, k1, "k1", time.Hour)))
	p.publish("k2", k2)
	newer := idpToken(t, k2, "k2", 2*time.Hour)
	if f := c.request(t, &client.Request{Op: "refresh", Token: newer}); f.Op != "error" || f.Code != CodeInvalidToken {
		t.Fatalf("refresh with a key not fetched yet: %+v, want invalid_token", f)
	}
	secWaitUntil(t, 20*time.Second, "the refetch the refresh started", func() bool { return p.hits.Load() == 2 })
	secWaitUntil(t, 20*time.Second, "the retried refresh to be accepted", func() bool {
		return c.request(t, &client.Request{Op: "refresh", Token: newer}).Op == "ok"
	})
	if n := p.hits.Load(); n != 2 {
		t.Fatalf("%d fetches, want 2 (start + the one refetch)", n)
	}
}
