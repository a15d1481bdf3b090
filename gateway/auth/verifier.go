package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Errors Verify wraps, so callers can tell why a token was refused.
var (
	ErrTokenExpired = errors.New("token expired")
	ErrTokenInvalid = errors.New("invalid token")
)

// Grant is what a verified token allows. It is immutable.
type Grant struct {
	// Subject is the token's sub claim ("" when it has none).
	Subject string
	// Expires is the token's exp; the zero time when the token has none.
	Expires  time.Time
	patterns []Pattern
}

// Allows reports whether the grant covers channel ch.
func (g *Grant) Allows(ch string) bool {
	if g == nil {
		return false
	}
	for i := range g.patterns {
		if g.patterns[i].Match(ch) {
			return true
		}
	}
	return false
}

// Patterns returns the grant's patterns as text.
func (g *Grant) Patterns() []string {
	out := make([]string, len(g.patterns))
	for i, p := range g.patterns {
		out[i] = p.String()
	}
	return out
}

// Verifier checks tokens. Build it with New; it is safe for concurrent use.
type Verifier struct {
	cfg    Config
	parser *jwt.Parser
	secret []byte
	rsa    []*rsa.PublicKey
	ec     []*ecdsa.PublicKey
	byKid  map[string]any
}

// New reads the configured keys and returns a Verifier. cfg must have passed
// Validate. In mode none it returns nil, nil: there is nothing to verify.
func New(cfg Config) (*Verifier, error) {
	if cfg.Mode != ModeJWT {
		return nil, nil
	}
	v := &Verifier{cfg: cfg, byKid: map[string]any{}}
	if cfg.HS256Secret != "" {
		v.secret = []byte(cfg.HS256Secret)
	}
	for i, f := range cfg.PublicKeyFiles {
		keys, err := readPEMKeys(f)
		if err != nil {
			return nil, fmt.Errorf("auth.public_key_files[%d]: %s: %w", i, f, err)
		}
		for _, k := range keys {
			v.addKey("", k)
		}
	}
	if cfg.JWKSFile != "" {
		data, err := os.ReadFile(cfg.JWKSFile)
		if err != nil {
			return nil, fmt.Errorf("auth.jwks_file: %w", err)
		}
		keys, err := parseJWKS(data)
		if err != nil {
			return nil, fmt.Errorf("auth.jwks_file: %s: %w", cfg.JWKSFile, err)
		}
		for kid, k := range keys {
			v.addKey(kid, k)
		}
	}
	var methods []string
	if v.secret != nil {
		methods = append(methods, "HS256")
	}
	if len(v.rsa) > 0 {
		methods = append(methods, "RS256")
	}
	if len(v.ec) > 0 {
		methods = append(methods, "ES256")
	}
	if len(methods) == 0 {
		return nil, errors.New("auth: mode jwt has no usable key")
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(methods),
		jwt.WithLeeway(cfg.ClockSkew),
		jwt.WithExpirationRequired(),
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	v.parser = jwt.NewParser(opts...)
	return v, nil
}

func (v *Verifier) addKey(kid string, k any) {
	switch k := k.(type) {
	case *rsa.PublicKey:
		v.rsa = append(v.rsa, k)
	case *ecdsa.PublicKey:
		v.ec = append(v.ec, k)
	}
	if kid != "" {
		v.byKid[kid] = k
	}
}

// readPEMKeys returns every RSA or P-256 EC public key in a PEM file
// (PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE blocks).
func readPEMKeys(path string) ([]any, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var keys []any
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		one := pem.EncodeToMemory(block)
		switch block.Type {
		case "PUBLIC KEY", "RSA PUBLIC KEY", "CERTIFICATE":
		default:
			return nil, fmt.Errorf("PEM block %q is not a public key", block.Type)
		}
		if k, err := jwt.ParseRSAPublicKeyFromPEM(one); err == nil {
			if k.N.BitLen() < 2048 {
				return nil, fmt.Errorf("RSA key of %d bits; at least 2048 are needed", k.N.BitLen())
			}
			keys = append(keys, k)
			continue
		}
		k, err := jwt.ParseECPublicKeyFromPEM(one)
		if err != nil {
			return nil, fmt.Errorf("PEM block %q holds neither an RSA nor an EC public key", block.Type)
		}
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("EC key on %s; only P-256 (ES256) is supported", k.Curve.Params().Name)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errors.New("no PEM public key found")
	}
	return keys, nil
}

// keyFor picks the keys a token may be verified with, by algorithm and kid.
func (v *Verifier) keyFor(t *jwt.Token) (any, error) {
	kid, _ := t.Header["kid"].(string)
	switch t.Method.(type) {
	case *jwt.SigningMethodHMAC:
		return v.secret, nil
	case *jwt.SigningMethodRSA:
		if k, ok := v.byKid[kid].(*rsa.PublicKey); ok {
			return k, nil
		}
		set := jwt.VerificationKeySet{}
		for _, k := range v.rsa {
			set.Keys = append(set.Keys, k)
		}
		return set, nil
	case *jwt.SigningMethodECDSA:
		if k, ok := v.byKid[kid].(*ecdsa.PublicKey); ok {
			return k, nil
		}
		set := jwt.VerificationKeySet{}
		for _, k := range v.ec {
			set.Keys = append(set.Keys, k)
		}
		return set, nil
	}
	return nil, fmt.Errorf("algorithm %s is not accepted", t.Method.Alg())
}

// Verify checks a token's signature and claims and returns what it grants.
// Its error wraps ErrTokenExpired or ErrTokenInvalid.
func (v *Verifier) Verify(token string) (*Grant, error) {
	claims := jwt.MapClaims{}
	if _, err := v.parser.ParseWithClaims(token, claims, v.keyFor); err != nil {
		if errors.Is(err, jwt.ErrTokenExpired) {
			return nil, fmt.Errorf("auth: %w", ErrTokenExpired)
		}
		return nil, fmt.Errorf("auth: %w: %w", ErrTokenInvalid, err)
	}
	g := &Grant{}
	g.Subject, _ = claims["sub"].(string)
	if exp, err := claims.GetExpirationTime(); err == nil && exp != nil {
		g.Expires = exp.Time
	}
	add := func(s string) {
		s, ok := ExpandSubject(s, g.Subject)
		if !ok {
			return
		}
		if p, err := ParsePattern(s); err == nil {
			g.patterns = append(g.patterns, p)
		}
	}
	switch list := claims[v.cfg.ChannelsClaim].(type) {
	case []any:
		for _, x := range list {
			if s, ok := x.(string); ok {
				add(s)
			}
		}
	case string:
		for _, s := range strings.Fields(list) {
			add(s)
		}
	}
	for _, s := range v.cfg.Grants {
		add(s)
	}
	return g, nil
}

// ClockSkew is the configured tolerance on exp and nbf.
func (v *Verifier) ClockSkew() time.Duration { return v.cfg.ClockSkew }
