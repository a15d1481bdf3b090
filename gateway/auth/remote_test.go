package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
)

// idp is a local identity provider's JWKS endpoint whose keys and failure
// mode the test changes while the verifier uses it.
type idp struct {
	srv  *httptest.Server
	hits atomic.Int64 // GETs answered (whatever the answer)

	mu           sync.Mutex
	keys         map[string]any // kid -> *ecdsa.PublicKey or *rsa.PublicKey
	mode         string         // "", "status", "garbage", "huge", "hang", "unusable"
	cacheControl string
	etag         string // when set, sent, and a matching If-None-Match gets 304
}

func newIDP(t testing.TB, tlsServer bool) *idp {
	t.Helper()
	p := &idp{keys: map[string]any{}}
	h := http.HandlerFunc(p.serve)
	if tlsServer {
		p.srv = httptest.NewTLSServer(h)
	} else {
		p.srv = httptest.NewServer(h)
	}
	t.Cleanup(p.srv.Close)
	return p
}

func (p *idp) url() string { return p.srv.URL + "/realms/kpush/protocol/openid-connect/certs" }

func (p *idp) set(f func(p *idp)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f(p)
}

func (p *idp) serve(w http.ResponseWriter, r *http.Request) {
	p.hits.Add(1)
	p.mu.Lock()
	mode, cc, etag := p.mode, p.cacheControl, p.etag
	doc := jwksDoc(p.keys)
	p.mu.Unlock()
	switch mode {
	case "status":
		http.Error(w, "realm unavailable", http.StatusServiceUnavailable)
		return
	case "garbage":
		w.Write([]byte("<html>login</html>"))
		return
	case "huge":
		w.Write([]byte(`{"keys":[],"pad":"` + strings.Repeat("x", maxJWKSBytes) + `"}`))
		return
	case "unusable":
		w.Write([]byte(`{"keys":[{"kty":"EC","kid":"p384","crv":"P-384","x":"AA","y":"AA"}]}`))
		return
	case "hang":
		<-r.Context().Done()
		return
	}
	if cc != "" {
		w.Header().Set("Cache-Control", cc)
	}
	if etag != "" {
		w.Header().Set("ETag", etag)
		if r.Header.Get("If-None-Match") == etag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(doc)
}

func jwksDoc(keys map[string]any) []byte {
	enc := base64.RawURLEncoding.EncodeToString
	pad := func(b []byte) []byte { return append(make([]byte, 32-len(b)), b...) }
	var list []map[string]string
	for kid, k := range keys {
		switch k := k.(type) {
		case *ecdsa.PublicKey:
			list = append(list, map[string]string{"kty": "EC", "kid": kid, "use": "sig", "alg": "ES256", "crv": "P-256", "x": enc(pad(k.X.Bytes())), "y": enc(pad(k.Y.Bytes()))})
		case *rsa.PublicKey:
			list = append(list, map[string]string{"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": enc(k.N.Bytes()), "e": enc(big.NewInt(int64(k.E)).Bytes())})
		}
	}
	// An encryption key, as Keycloak publishes next to its signing keys.
	list = append(list, map[string]string{"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"})
	b, _ := json.Marshal(map[string]any{"keys": list})
	return b
}

// ecKeys are P-256 keys for the rotation tests (cheap to make).
func newECKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// jwksVerifier builds a Verifier on the idp's URL and runs it until the
// test ends.
func jwksVerifier(t testing.TB, p *idp, mut func(*Config)) (*Verifier, *prometheus.Registry) {
	t.Helper()
	cfg := Config{
		Mode:                   ModeJWT,
		JWKSURL:                p.url(),
		Issuer:                 "https://issuer.example",
		Audience:               "kpush",
		JWKSRefreshInterval:    time.Hour,
		JWKSMinRefreshInterval: time.Hour,
		JWKSFetchTimeout:       10 * time.Second,
	}
	if mut != nil {
		mut(&cfg)
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	v, err := New(cfg, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		v.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return v, reg
}

func counter(t testing.TB, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label == "" {
				return m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("metric %s{%s=%q} not found", name, label, value)
	return 0
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func esToken(t *testing.T, k *ecdsa.PrivateKey, kid string) string {
	return sign(t, jwt.SigningMethodES256, k, kid, claims(nil))
}

func TestJWKSURLRotation(t *testing.T) {
	testKeys(t)
	p := newIDP(t, false)
	k1 := newECKey(t)
	p.set(func(p *idp) { p.keys["k1"] = &k1.PublicKey })
	v, reg := jwksVerifier(t, p, func(c *Config) {
		c.JWKSRefreshInterval = time.Hour
		c.JWKSMinRefreshInterval = 100 * time.Millisecond
	})
	if n := p.hits.Load(); n != 1 {
		t.Fatalf("%d fetches at start, want 1", n)
	}
	if _, err := v.Verify(esToken(t, k1, "k1")); err != nil {
		t.Fatalf("k1 token after the first fetch: %v", err)
	}
	if got := counter(t, reg, "kpush_auth_jwks_keys", "", ""); got != 1 {
		t.Fatalf("kpush_auth_jwks_keys = %v, want 1", got)
	}

	// The provider adds k2, an RSA key (the set had only EC keys so far),
	// and starts signing with it: the first k2 token makes one refetch and
	// is accepted.
	p.set(func(p *idp) { p.keys["k2"] = &rsaKey.PublicKey })
	k2Token := func() string { return sign(t, jwt.SigningMethodRS256, rsaKey, "k2", claims(nil)) }
	ctx := context.Background()
	if _, err := v.VerifyWait(ctx, k2Token()); err != nil {
		t.Fatalf("k2 token after the rotation: %v", err)
	}
	if n := p.hits.Load(); n != 2 {
		t.Fatalf("%d fetches after the new kid, want 2 (one refetch)", n)
	}
	if _, err := v.Verify(k2Token()); err != nil {
		t.Fatalf("k2 token once the set has it: %v", err)
	}
	if n := p.hits.Load(); n != 2 {
		t.Fatalf("a known kid fetched again (%d fetches)", n)
	}

	// k1 is withdrawn. Tokens still naming it are refused from the first
	// verification after a refetch; a token naming another unknown kid
	// makes that refetch here.
	p.set(func(p *idp) { delete(p.keys, "k1") })
	waitFor(t, "the rate limit to allow another refetch", func() bool {
		_, err := v.VerifyWait(ctx, esToken(t, newECKey(t), "k3"))
		return err != nil && p.hits.Load() == 3
	})
	if _, err := v.Verify(esToken(t, k1, "k1")); !errors.Is(err, ErrTokenInvalid) {
		t.Fatalf("k1 token after k1 was withdrawn: %v, want invalid", err)
	}
	if _, err := v.Verify(k2Token()); err != nil {
		t.Fatalf("k2 token after k1 was withdrawn: %v", err)
	}
	if got := counter(t, reg, "kpush_auth_jwks_fetches_total", "result", "ok"); got != 3 {
		t.Fatalf("fetches ok = %v, want 3", got)
	}
	if got := counter(t, reg, "kpush_auth_jwks_unknown_kid_total", "outcome", "refetch"); got < 2 {
		t.Fatalf("unknown kid refetches = %v, want at least 2", got)
	}
}

func TestJWKSURLRefreshIntervalDropsRemovedKey(t *testing.T) {
	p := newIDP(t, false)
	k1, k2 := newECKey(t), newECKey(t)
	p.set(func(p *idp) { p.keys["k1"], p.keys["k2"] = &k1.PublicKey, &k2.PublicKey })
	v, reg := jwksVerifier(t, p, func(c *Config) {
		c.JWKSRefreshInterval = 150 * time.Millisecond
		c.JWKSMinRefreshInterval = 100 * time.Millisecond
	})
	if _, err := v.Verify(esToken(t, k1, "k1")); err != nil {
		t.Fatal(err)
	}
	p.set(func(p *idp) { delete(p.keys, "k1") })
	start := p.hits.Load()
	waitFor(t, "a scheduled refresh", func() bool { return p.hits.Load() > start })
	waitFor(t, "k1 to be refused", func() bool {
		_, err := v.Verify(esToken(t, k1, "k1"))
		return errors.Is(err, ErrTokenInvalid)
	})
	if _, err := v.Verify(esToken(t, k2, "k2")); err != nil {
		t.Fatalf("k2 after the refresh: %v", err)
	}
	if age := counter(t, reg, "kpush_auth_jwks_age_seconds", "", ""); age < 0 || age > 10 {
		t.Fatalf("kpush_auth_jwks_age_seconds = %v while refreshing every 150ms", age)
	}
}

// A provider that cannot be reached or answers nonsense does not take the
// keys away: the last good set stays in service, and each kind of failure is
// counted by its result.
func TestJWKSURLFailureKeepsLastGoodKeys(t *testing.T) {
	cases := []struct {
		mode   string
		result string
	}{
		{"status", fetchBadStatus},
		{"garbage", fetchBadDocument},
		{"huge", fetchBadDocument},
		{"unusable", fetchBadDocument},
		{"hang", fetchUnreachable},
		{"closed", fetchUnreachable},
	}
	for _, tc := range cases {
		t.Run(tc.mode, func(t *testing.T) {
			p := newIDP(t, false)
			k1 := newECKey(t)
			p.set(func(p *idp) { p.keys["k1"] = &k1.PublicKey })
			v, reg := jwksVerifier(t, p, func(c *Config) {
				c.JWKSRefreshInterval = 100 * time.Millisecond
				c.JWKSMinRefreshInterval = 100 * time.Millisecond
				c.JWKSFetchTimeout = 300 * time.Millisecond
			})
			if tc.mode == "closed" {
				p.srv.Close()
			} else {
				p.set(func(p *idp) { p.mode = tc.mode })
			}
			waitFor(t, "two failed fetches", func() bool {
				return counter(t, reg, "kpush_auth_jwks_fetches_total", "result", tc.result) >= 2
			})
			if _, err := v.Verify(esToken(t, k1, "k1")); err != nil {
				t.Fatalf("k1 token while the provider fails (%s): %v", tc.mode, err)
			}
			// The age keeps growing from the last good fetch.
			waitFor(t, "the key set's age to pass 300ms", func() bool {
				return counter(t, reg, "kpush_auth_jwks_age_seconds", "", "") >= 0.3
			})
			// An unknown kid still fails, and quickly: at most one wait
			// for the bounded fetch.
			t0 := time.Now()
			if _, err := v.VerifyWait(context.Background(), esToken(t, newECKey(t), "kx")); !errors.Is(err, ErrTokenInvalid) {
				t.Fatalf("unknown kid while the provider fails: %v", err)
			}
			if d := time.Since(t0); d > 15*time.Second {
				t.Fatalf("unknown kid waited %s", d)
			}
			if tc.mode == "closed" {
				return
			}
			// The provider recovers: the age drops back.
			p.set(func(p *idp) { p.mode = "" })
			waitFor(t, "a good fetch again", func() bool {
				return counter(t, reg, "kpush_auth_jwks_age_seconds", "", "") < 0.3
			})
		})
	}
}

// A flood of tokens naming kids nobody published makes at most one refetch
// per jwks_min_refresh_interval, however many arrive and however they
// overlap.
func TestJWKSURLUnknownKidFloodIsRateLimited(t *testing.T) {
	p := newIDP(t, false)
	k1 := newECKey(t)
	p.set(func(p *idp) { p.keys["k1"] = &k1.PublicKey })
	v, reg := jwksVerifier(t, p, func(c *Config) {
		c.JWKSRefreshInterval = time.Hour
		c.JWKSMinRefreshInterval = time.Hour
	})
	forged := newECKey(t)
	tokens := make([]string, 50)
	for i := range tokens {
		tokens[i] = esToken(t, forged, fmt.Sprintf("forged-%d", i))
	}
	var wg sync.WaitGroup
	var accepted atomic.Int64
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				if _, err := v.VerifyWait(context.Background(), tokens[(w*25+i)%len(tokens)]); err == nil {
					accepted.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if accepted.Load() != 0 {
		t.Fatalf("%d forged tokens accepted", accepted.Load())
	}
	if n := p.hits.Load(); n != 2 {
		t.Fatalf("%d fetches for 200 unknown-kid tokens, want 2 (start + one refetch)", n)
	}
	limited := counter(t, reg, "kpush_auth_jwks_unknown_kid_total", "outcome", "rate_limited")
	joined := counter(t, reg, "kpush_auth_jwks_unknown_kid_total", "outcome", "joined")
	refetched := counter(t, reg, "kpush_auth_jwks_unknown_kid_total", "outcome", "refetch")
	if refetched != 1 || limited+joined+refetched != 200 {
		t.Fatalf("unknown kids: refetch %v joined %v rate_limited %v, want 1 refetch of 200", refetched, joined, limited)
	}
	if _, err := v.Verify(esToken(t, k1, "k1")); err != nil {
		t.Fatalf("a good token after the flood: %v", err)
	}
}

// https with the provider's certificate trusted through jwks_ca_file; the
// same provider without it is not trusted, and kpush starts anyway, refusing
// its tokens.
func TestJWKSURLHTTPS(t *testing.T) {
	p := newIDP(t, true)
	k1 := newECKey(t)
	p.set(func(p *idp) { p.keys["k1"] = &k1.PublicKey })
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	v, _ := jwksVerifier(t, p, func(c *Config) { c.JWKSCAFile = ca })
	if _, err := v.Verify(esToken(t, k1, "k1")); err != nil {
		t.Fatalf("token from an https provider trusted by jwks_ca_file: %v", err)
	}

	untrusted, reg := jwksVerifier(t, p, nil)
	if got := counter(t, reg, "kpush_auth_jwks_fetches_total", "result", fetchUnreachable); got != 1 {
		t.Fatalf("fetch from an untrusted certificate: unreachable = %v, want 1", got)
	}
	if _, err := untrusted.Verify(esToken(t, k1, "k1")); !errors.Is(err, ErrTokenInvalid) {
		t.Fatalf("token while no key set was ever fetched: %v", err)
	}
}

// The response's ETag makes later fetches conditional; a 304 keeps the set
// and counts as confirming it.
func TestJWKSURLNotModified(t *testing.T) {
	p := newIDP(t, false)
	k1 := newECKey(t)
	p.set(func(p *idp) {
		p.keys["k1"] = &k1.PublicKey
		p.etag = `"v1"`
		p.cacheControl = "max-age=0" // refetch as often as the floor allows
	})
	v, reg := jwksVerifier(t, p, func(c *Config) {
		c.JWKSRefreshInterval = time.Hour
		c.JWKSMinRefreshInterval = 100 * time.Millisecond
	})
	waitFor(t, "two 304 answers", func() bool {
		return counter(t, reg, "kpush_auth_jwks_fetches_total", "result", fetchNotModified) >= 2
	})
	if _, err := v.Verify(esToken(t, k1, "k1")); err != nil {
		t.Fatalf("k1 after 304s: %v", err)
	}
	if got := counter(t, reg, "kpush_auth_jwks_fetches_total", "result", fetchOK); got != 1 {
		t.Fatalf("full fetches = %v, want 1", got)
	}
}

func TestCacheDelay(t *testing.T) {
	const lo, hi = time.Minute, 15 * time.Minute
	cases := []struct {
		name   string
		header http.Header
		min    time.Duration
		max    time.Duration
	}{
		{"no header", http.Header{}, hi - (hi-lo)/10, hi},
		{"max-age within bounds", http.Header{"Cache-Control": {"public, max-age=300"}}, 5*time.Minute - 24*time.Second, 5 * time.Minute},
		{"max-age below the floor", http.Header{"Cache-Control": {"max-age=5"}}, lo, lo},
		{"max-age above the ceiling", http.Header{"Cache-Control": {"max-age=86400"}}, hi - (hi-lo)/10, hi},
		{"age subtracted", http.Header{"Cache-Control": {"max-age=600"}, "Age": {"300"}}, 5*time.Minute - 24*time.Second, 5 * time.Minute},
		{"no-cache", http.Header{"Cache-Control": {"no-cache"}}, lo, lo},
		{"no-store", http.Header{"Cache-Control": {"no-store, max-age=600"}}, lo, lo},
		{"bad max-age ignored", http.Header{"Cache-Control": {"max-age=soon"}}, hi - (hi-lo)/10, hi},
		{"negative max-age ignored", http.Header{"Cache-Control": {"max-age=-5"}}, hi - (hi-lo)/10, hi},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for i := 0; i < 50; i++ {
				if d := cacheDelay(tc.header, lo, hi); d < tc.min || d > tc.max {
					t.Fatalf("cacheDelay = %s, want within [%s, %s]", d, tc.min, tc.max)
				}
			}
		})
	}
}

func TestJWKSURLConfig(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
		key  string // expected in the error; "" for valid
	}{
		{"https", Config{JWKSURL: "https://idp.example/realms/r/protocol/openid-connect/certs"}, ""},
		{"http loopback", Config{JWKSURL: "http://127.0.0.1:8081/certs"}, ""},
		{"http localhost", Config{JWKSURL: "http://localhost/certs"}, ""},
		{"http ipv6 loopback", Config{JWKSURL: "http://[::1]:80/certs"}, ""},
		{"http remote", Config{JWKSURL: "http://idp.example/certs"}, "auth.jwks_url"},
		{"http private address", Config{JWKSURL: "http://10.0.0.7/certs"}, "auth.jwks_url"},
		{"other scheme", Config{JWKSURL: "ftp://idp.example/certs"}, "auth.jwks_url"},
		{"no host", Config{JWKSURL: "https:///certs"}, "auth.jwks_url"},
		{"not a url", Config{JWKSURL: "://x"}, "auth.jwks_url"},
		{"ca without url", Config{HS256Secret: testSecret, JWKSCAFile: "/ca.pem"}, "auth.jwks_ca_file"},
		{"min above interval", Config{JWKSURL: "https://idp.example/c", JWKSRefreshInterval: time.Minute, JWKSMinRefreshInterval: time.Hour}, "auth.jwks_min_refresh_interval"},
		{"interval too long", Config{JWKSURL: "https://idp.example/c", JWKSRefreshInterval: 48 * time.Hour}, "auth.jwks_refresh_interval"},
		{"fetch timeout too long", Config{JWKSURL: "https://idp.example/c", JWKSFetchTimeout: time.Minute}, "auth.jwks_fetch_timeout"},
		{"reload interval", Config{HS256Secret: testSecret, ReloadInterval: time.Millisecond}, "auth.reload_interval"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Mode = ModeJWT
			tc.cfg.SetDefaults()
			err := tc.cfg.Validate()
			if tc.key == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.key) {
				t.Fatalf("error %v, want one naming %s", err, tc.key)
			}
		})
	}
}

// A redirect to plain http off loopback is not followed: keys fetched in
// the clear could have been replaced on the way.
func TestJWKSURLRedirectMayNotDowngrade(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://idp.example/certs", http.StatusFound)
	}))
	t.Cleanup(srv.Close)
	cfg := Config{Mode: ModeJWT, JWKSURL: srv.URL + "/certs", JWKSFetchTimeout: 2 * time.Second}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	if _, err := New(cfg, reg, nil); err != nil {
		t.Fatal(err)
	}
	if got := counter(t, reg, "kpush_auth_jwks_fetches_total", "result", fetchUnreachable); got != 1 {
		t.Fatalf("redirect to plain http: unreachable = %v, want 1", got)
	}
}

// public_key_files and jwks_file are re-read when their content changes
// (a Kubernetes Secret update); a broken rewrite keeps the previous keys.
func TestKeyFilesReload(t *testing.T) {
	testKeys(t)
	dir := t.TempDir()
	pemFile, jwksFile := filepath.Join(dir, "key.pem"), filepath.Join(dir, "jwks.json")
	writePub := func(pub any) {
		t.Helper()
		data, err := os.ReadFile(writePEM(t, pub))
		if err != nil {
			t.Fatal(err)
		}
		// Rename over the old file, as the kubelet's atomic writer does.
		tmp := pemFile + ".tmp"
		if err := os.WriteFile(tmp, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, pemFile); err != nil {
			t.Fatal(err)
		}
	}
	writeSet := func(keys map[string]any) {
		t.Helper()
		if err := os.WriteFile(jwksFile, jwksDoc(keys), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	e1, e2 := newECKey(t), newECKey(t)
	writePub(&rsaKey.PublicKey)
	writeSet(map[string]any{"e1": &e1.PublicKey})
	reg := prometheus.NewRegistry()
	cfg := Config{Mode: ModeJWT, PublicKeyFiles: []string{pemFile}, JWKSFile: jwksFile,
		Issuer: "https://issuer.example", Audience: "kpush", ReloadInterval: 20 * time.Millisecond}
	cfg.SetDefaults()
	v, err := New(cfg, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); v.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	rs1 := sign(t, jwt.SigningMethodRS256, rsaKey, "", claims(nil))
	rs2 := sign(t, jwt.SigningMethodRS256, rsaKey2, "", claims(nil))
	for _, tok := range []string{rs1, esToken(t, e1, "e1")} {
		if _, err := v.Verify(tok); err != nil {
			t.Fatalf("before the rotation: %v", err)
		}
	}
	writePub(&rsaKey2.PublicKey)
	writeSet(map[string]any{"e2": &e2.PublicKey})
	waitFor(t, "the rotated files to be loaded", func() bool {
		_, err1 := v.Verify(rs2)
		_, err2 := v.Verify(esToken(t, e2, "e2"))
		return err1 == nil && err2 == nil
	})
	if _, err := v.Verify(rs1); !errors.Is(err, ErrTokenInvalid) {
		t.Fatalf("the replaced PEM key still verifies: %v", err)
	}
	if _, err := v.Verify(esToken(t, e1, "e1")); !errors.Is(err, ErrTokenInvalid) {
		t.Fatalf("the replaced JWKS key still verifies: %v", err)
	}
	if got := counter(t, reg, "kpush_auth_key_file_reloads_total", "result", "ok"); got != 2 {
		t.Fatalf("file reloads ok = %v, want 2", got)
	}

	// A half-written or wrong file: the keys stay, the failure is counted
	// once, and a good file later is loaded again.
	if err := os.WriteFile(jwksFile, []byte(`{"keys":[{"kty":"EC","kid":"x","crv":"P-256","x":"AA"`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pemFile, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the broken files to be counted", func() bool {
		return counter(t, reg, "kpush_auth_key_file_reloads_total", "result", "failed") >= 1
	})
	for _, tok := range []string{rs2, esToken(t, e2, "e2")} {
		if _, err := v.Verify(tok); err != nil {
			t.Fatalf("after a broken rewrite: %v", err)
		}
	}
	writeSet(map[string]any{"e1": &e1.PublicKey})
	waitFor(t, "the repaired jwks_file", func() bool {
		_, err := v.Verify(esToken(t, e1, "e1"))
		return err == nil
	})
	if _, err := v.Verify(rs2); err != nil {
		t.Fatalf("the PEM file is still broken, so its last good key stays: %v", err)
	}
}
