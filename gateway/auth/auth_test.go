package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const testSecret = "0123456789abcdef0123456789abcdef"

var (
	keysOnce sync.Once
	rsaKey   *rsa.PrivateKey
	rsaKey2  *rsa.PrivateKey
	ecKey    *ecdsa.PrivateKey
)

func testKeys(t *testing.T) {
	t.Helper()
	keysOnce.Do(func() {
		var err error
		if rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if rsaKey2, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if ecKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			panic(err)
		}
	})
}

func writePEM(t *testing.T, pub any) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func writeJWKS(t *testing.T) string {
	t.Helper()
	enc := base64.RawURLEncoding.EncodeToString
	pad := func(b []byte) []byte { return append(make([]byte, 32-len(b)), b...) }
	doc := map[string]any{"keys": []map[string]string{
		{"kty": "RSA", "kid": "r1", "use": "sig", "n": enc(rsaKey.N.Bytes()), "e": enc(big.NewInt(int64(rsaKey.E)).Bytes())},
		{"kty": "EC", "kid": "e1", "crv": "P-256", "x": enc(pad(ecKey.X.Bytes())), "y": enc(pad(ecKey.Y.Bytes()))},
		{"kty": "oct", "kid": "ignored", "k": "c2VjcmV0"},
	}}
	b, _ := json.Marshal(doc)
	f := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(f, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func sign(t *testing.T, m jwt.SigningMethod, key any, kid string, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func claims(mut func(jwt.MapClaims)) jwt.MapClaims {
	c := jwt.MapClaims{
		"sub":      "42",
		"iss":      "https://issuer.example",
		"aud":      "kpush",
		"exp":      time.Now().Add(time.Hour).Unix(),
		"channels": []string{"ticks.*", "news.>"},
	}
	if mut != nil {
		mut(c)
	}
	return c
}

func newVerifier(t *testing.T, cfg Config) *Verifier {
	t.Helper()
	cfg.Mode = ModeJWT
	cfg.Issuer, cfg.Audience = "https://issuer.example", "kpush"
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	v, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestVerify(t *testing.T) {
	testKeys(t)
	hs := newVerifier(t, Config{HS256Secret: testSecret, Grants: []string{"user.{sub}", "user.{sub}.>"}})
	rs := newVerifier(t, Config{PublicKeyFiles: []string{writePEM(t, &rsaKey.PublicKey)}})
	es := newVerifier(t, Config{PublicKeyFiles: []string{writePEM(t, &ecKey.PublicKey)}})
	jwks := newVerifier(t, Config{JWKSFile: writeJWKS(t)})
	hsKey := []byte(testSecret)

	cases := []struct {
		name  string
		v     *Verifier
		token string
		want  error // nil: valid
	}{
		{"hs256 valid", hs, sign(t, jwt.SigningMethodHS256, hsKey, "", claims(nil)), nil},
		{"rs256 valid", rs, sign(t, jwt.SigningMethodRS256, rsaKey, "", claims(nil)), nil},
		{"es256 valid", es, sign(t, jwt.SigningMethodES256, ecKey, "", claims(nil)), nil},
		{"jwks rsa by kid", jwks, sign(t, jwt.SigningMethodRS256, rsaKey, "r1", claims(nil)), nil},
		{"jwks ec by kid", jwks, sign(t, jwt.SigningMethodES256, ecKey, "e1", claims(nil)), nil},
		{"jwks without kid tries every key", jwks, sign(t, jwt.SigningMethodES256, ecKey, "", claims(nil)), nil},
		{"within clock skew after exp", hs, sign(t, jwt.SigningMethodHS256, hsKey, "", claims(func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-10 * time.Second).Unix() })), nil},
		{"missing token", hs, "", ErrTokenInvalid},
		{"garbage", hs, "not.a.jwt", ErrTokenInvalid},
		{"expired", hs, sign(t, jwt.SigningMethodHS256, hsKey, "", claims(func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Minute).Unix() })), ErrTokenExpired},
		{"no exp", hs, sign(t, jwt.SigningMethodHS256, hsKey, "", claims(func(c jwt.MapClaims) { delete(c, "exp") })), ErrTokenInvalid},
		{"not yet valid", hs, sign(t, jwt.SigningMethodHS256, hsKey, "", claims(func(c jwt.MapClaims) { c["nbf"] = time.Now().Add(time.Minute).Unix() })), ErrTokenInvalid},
		{"wrong audience", hs, sign(t, jwt.SigningMethodHS256, hsKey, "", claims(func(c jwt.MapClaims) { c["aud"] = "other" })), ErrTokenInvalid},
		{"wrong issuer", hs, sign(t, jwt.SigningMethodHS256, hsKey, "", claims(func(c jwt.MapClaims) { c["iss"] = "https://evil.example" })), ErrTokenInvalid},
		{"hs256 wrong secret", hs, sign(t, jwt.SigningMethodHS256, []byte("another-secret-another-secret-xx"), "", claims(nil)), ErrTokenInvalid},
		{"rs256 wrong key", rs, sign(t, jwt.SigningMethodRS256, rsaKey2, "", claims(nil)), ErrTokenInvalid},
		{"jwks unknown key", jwks, sign(t, jwt.SigningMethodRS256, rsaKey2, "r1", claims(nil)), ErrTokenInvalid},
		{"alg none", hs, sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "", claims(nil)), ErrTokenInvalid},
		{"hs256 where only rs256 is configured", rs, sign(t, jwt.SigningMethodHS256, hsKey, "", claims(nil)), ErrTokenInvalid},
		{"es256 where only rs256 is configured", rs, sign(t, jwt.SigningMethodES256, ecKey, "", claims(nil)), ErrTokenInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g, err := tc.v.Verify(tc.token)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if g.Subject != "42" || !g.Allows("ticks.AAPL") || !g.Allows("news.eu.fx") || g.Allows("orders.x") {
					t.Fatalf("grant %+v patterns %v", g, g.Patterns())
				}
				if g.Expires.IsZero() {
					t.Fatal("grant has no expiry")
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify error %v, want %v", err, tc.want)
			}
		})
	}
}

func TestGrantSubjectTemplates(t *testing.T) {
	v := newVerifier(t, Config{HS256Secret: testSecret, Grants: []string{"user.{sub}", "user.{sub}.>"}})
	key := []byte(testSecret)
	g, err := v.Verify(sign(t, jwt.SigningMethodHS256, key, "", claims(func(c jwt.MapClaims) {
		c["channels"] = "alerts.{sub} bad..pattern ticks.>"
	})))
	if err != nil {
		t.Fatal(err)
	}
	for ch, want := range map[string]bool{
		"user.42": true, "user.42.orders": true, "user.43": false, "user.420": false,
		"alerts.42": true, "ticks.a.b": true, "bad..pattern": false,
	} {
		if g.Allows(ch) != want {
			t.Errorf("Allows(%q) = %v, want %v (patterns %v)", ch, !want, want, g.Patterns())
		}
	}
	// A subject that is not one channel segment grants nothing through {sub}:
	// "*" or "a.>" must not widen the grant.
	for _, sub := range []string{"*", "a.>", "", "x y"} {
		g, err := v.Verify(sign(t, jwt.SigningMethodHS256, key, "", claims(func(c jwt.MapClaims) {
			c["sub"] = sub
			c["channels"] = []string{}
		})))
		if err != nil {
			t.Fatal(err)
		}
		if len(g.Patterns()) != 0 {
			t.Errorf("sub %q granted %v", sub, g.Patterns())
		}
	}
}

func TestPatternMatch(t *testing.T) {
	cases := []struct {
		pattern string
		match   []string
		noMatch []string
	}{
		{"ticks.*", []string{"ticks.AAPL", "ticks.x"}, []string{"ticks", "ticks.", "ticks.a.b", "tick.a", "ticksx.a"}},
		{"user.42.>", []string{"user.42.a", "user.42.a.b.c"}, []string{"user.42", "user.42.", "user.420.a", "user.4.a"}},
		{"a.b", []string{"a.b"}, []string{"a", "a.b.c", "a.bb", "ab"}},
		{"*", []string{"x", "AAPL"}, []string{"", "a.b", ".a"}},
		{">", []string{"x", "a.b.c"}, []string{""}},
		{"*.*.>", []string{"a.b.c"}, []string{"a.b", "a..c"}},
	}
	for _, tc := range cases {
		t.Run(tc.pattern, func(t *testing.T) {
			p, err := ParsePattern(tc.pattern)
			if err != nil {
				t.Fatal(err)
			}
			for _, ch := range tc.match {
				if !p.Match(ch) {
					t.Errorf("%q does not match %q", tc.pattern, ch)
				}
			}
			for _, ch := range tc.noMatch {
				if p.Match(ch) {
					t.Errorf("%q matches %q", tc.pattern, ch)
				}
			}
		})
	}
	for _, bad := range []string{"", "a..b", "a.>.b", "a b", "a.{sub}", "a*", strings.Repeat("a", 201)} {
		if _, err := ParsePattern(bad); err == nil {
			t.Errorf("ParsePattern(%q) accepted", bad)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
		key  string // expected in the error; "" for valid
	}{
		{"none", Config{}, ""},
		{"jwt without key", Config{Mode: "jwt"}, "auth.mode"},
		{"bad mode", Config{Mode: "basic"}, "auth.mode"},
		{"short secret", Config{Mode: "jwt", HS256Secret: "short"}, "auth.hs256_secret"},
		{"bad grant", Config{Mode: "jwt", HS256Secret: testSecret, Grants: []string{"user.>.x"}}, "auth.grants[0]"},
		{"skew", Config{Mode: "jwt", HS256Secret: testSecret, ClockSkew: time.Hour}, "auth.clock_skew"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
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
	if _, err := New(Config{Mode: "jwt", PublicKeyFiles: []string{"/nonexistent.pem"}, ClockSkew: time.Second, ChannelsClaim: "c"}, nil, nil); err == nil || !strings.Contains(err.Error(), "auth.public_key_files[0]") {
		t.Fatalf("New with a missing key file: %v", err)
	}
}
