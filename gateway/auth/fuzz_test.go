package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"strings"
	"testing"
)

// FuzzPattern checks that no pattern or channel crashes the parser or the
// matcher, and that matching agrees with a plain reference implementation.
func FuzzPattern(f *testing.F) {
	for _, s := range [][2]string{
		{"ticks.*", "ticks.AAPL"}, {"user.42.>", "user.42.a.b"}, {"*", "x"}, {">", "a.b"},
		{"a..b", "a..b"}, {"user.{sub}", "user.42"}, {"*.*.>", "a.b"}, {"a.b", "a.b."},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, ch string) {
		p, err := ParsePattern(pattern)
		if err != nil {
			return
		}
		if p.String() != pattern {
			t.Fatalf("String() = %q, want %q", p.String(), pattern)
		}
		if got, want := p.Match(ch), refMatch(strings.Split(pattern, "."), strings.Split(ch, ".")); got != want {
			t.Fatalf("Match(%q, %q) = %v, reference says %v", pattern, ch, got, want)
		}
		if !strings.ContainsAny(pattern, "*>") && !p.Match(pattern) {
			t.Fatalf("literal pattern %q does not match itself", pattern)
		}
		if x, ok := ExpandSubject(pattern, ch); ok && x != pattern {
			t.Fatalf("ExpandSubject changed %q, which has no {sub}", pattern)
		}
	})
}

func refMatch(p, c []string) bool {
	for i, seg := range p {
		if seg == ">" {
			rest := strings.Join(c[i:], ".")
			return len(c) > i && rest != ""
		}
		if i >= len(c) || (seg == "*" && c[i] == "") || (seg != "*" && seg != c[i]) {
			return false
		}
	}
	return len(c) == len(p)
}

// FuzzParseJWKS checks that no document crashes the JWKS parser (it reads
// what an identity provider serves), and that every key it returns is one
// kpush can verify with.
func FuzzParseJWKS(f *testing.F) {
	for _, s := range []string{
		`{"keys":[]}`,
		`{"keys":[{"kty":"EC","kid":"e","crv":"P-256","x":"AA","y":"AA"}]}`,
		`{"keys":[{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"}]}`,
		`{"keys":[{"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"},{"kty":"oct","k":"c2VjcmV0"}]}`,
		`{"keys":[{"kty":"EC","crv":"P-384","x":"","y":""}]}`,
		`{"keys":null}`, `[]`, `{`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, strict := range []bool{true, false} {
			keys, _, err := parseJWKS(data, strict)
			if err != nil {
				if keys != nil {
					t.Fatalf("keys returned with error %v", err)
				}
				continue
			}
			if len(keys) == 0 {
				t.Fatal("no keys and no error")
			}
			for kid, k := range keys {
				switch k := k.(type) {
				case *rsa.PublicKey:
					if k.N.BitLen() < 2048 {
						t.Fatalf("kid %q: RSA key of %d bits accepted", kid, k.N.BitLen())
					}
				case *ecdsa.PublicKey:
					if k.Curve != elliptic.P256() {
						t.Fatalf("kid %q: EC key on %s accepted", kid, k.Curve.Params().Name)
					}
				default:
					t.Fatalf("kid %q: key of type %T", kid, k)
				}
			}
		}
	})
}
