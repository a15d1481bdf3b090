package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/pem"
	"errors"
	"fmt"
	"os"

	"github.com/golang-jwt/jwt/v5"
)

// keySet is the keys in service at one moment, with the parser that accepts
// their algorithms. It is immutable: a change to any source builds a new one.
type keySet struct {
	secret  []byte
	rsa     []*rsa.PublicKey
	ec      []*ecdsa.PublicKey
	byKid   map[string]any
	methods []string
	parser  *jwt.Parser
}

// rebuildLocked builds the key set from every source and puts it in
// service. Caller holds v.mu.
func (v *Verifier) rebuildLocked() *keySet {
	ks := &keySet{byKid: map[string]any{}}
	if v.cfg.HS256Secret != "" {
		ks.secret = []byte(v.cfg.HS256Secret)
	}
	for _, kf := range v.files {
		for _, k := range kf.keys {
			ks.add("", k)
		}
		for kid, k := range kf.kids {
			ks.add(kid, k)
		}
	}
	for kid, k := range v.remoteSet {
		ks.add(kid, k)
	}
	if ks.secret != nil {
		ks.methods = append(ks.methods, "HS256")
	}
	// With jwks_url both public-key algorithms stay accepted even while the
	// set has no key of one kind (or no key yet): a token naming a kid that
	// is not in the set must reach keyFor, which asks for a refetch.
	if len(ks.rsa) > 0 || v.remote != nil {
		ks.methods = append(ks.methods, "RS256")
	}
	if len(ks.ec) > 0 || v.remote != nil {
		ks.methods = append(ks.methods, "ES256")
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(ks.methods),
		jwt.WithLeeway(v.cfg.ClockSkew),
		jwt.WithExpirationRequired(),
	}
	if v.cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(v.cfg.Issuer))
	}
	if v.cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(v.cfg.Audience))
	}
	ks.parser = jwt.NewParser(opts...)
	v.keys.Store(ks)
	return ks
}

func (ks *keySet) add(kid string, k any) {
	switch k := k.(type) {
	case *rsa.PublicKey:
		ks.rsa = append(ks.rsa, k)
	case *ecdsa.PublicKey:
		ks.ec = append(ks.ec, k)
	}
	if kid != "" {
		ks.byKid[kid] = k
	}
}

// parse verifies a token against the set. unknownKid reports that the token
// names a kid the set lacks, so a refetch of jwks_url might find its key.
func (ks *keySet) parse(token string) (claims jwt.MapClaims, unknownKid bool, err error) {
	claims = jwt.MapClaims{}
	_, err = ks.parser.ParseWithClaims(token, claims, func(t *jwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		switch t.Method.(type) {
		case *jwt.SigningMethodHMAC:
			return ks.secret, nil
		case *jwt.SigningMethodRSA:
			return keyFor(ks.byKid, ks.rsa, kid, "RS256", &unknownKid)
		case *jwt.SigningMethodECDSA:
			return keyFor(ks.byKid, ks.ec, kid, "ES256", &unknownKid)
		}
		return nil, fmt.Errorf("algorithm %s is not accepted", t.Method.Alg())
	})
	if err != nil {
		return nil, unknownKid, err
	}
	return claims, false, nil
}

// keyFile is one of public_key_files or jwks_file, with the keys it last
// loaded. Guarded by Verifier.mu once New has returned.
type keyFile struct {
	name    string // the config key, without "auth."
	path    string
	jwks    bool
	sum     [32]byte // hash of the content the keys came from
	loaded  bool
	failing bool           // the last reload failed (logged once per run of failures)
	keys    []any          // PEM keys (no kid)
	kids    map[string]any // JWKS keys by kid
}

// load reads the file and, when its content changed, parses and keeps its
// keys. It reports whether new keys were loaded; on an error the previous
// keys stay.
func (kf *keyFile) load() (bool, error) {
	data, err := os.ReadFile(kf.path)
	if err != nil {
		return false, fmt.Errorf("auth.%s: %w", kf.name, err)
	}
	sum := sha256.Sum256(data)
	if kf.loaded && sum == kf.sum {
		return false, nil
	}
	if kf.jwks {
		kids, _, err := parseJWKS(data, true)
		if err != nil {
			return false, fmt.Errorf("auth.%s: %s: %w", kf.name, kf.path, err)
		}
		kf.kids = kids
	} else {
		keys, err := parsePEMKeys(data)
		if err != nil {
			return false, fmt.Errorf("auth.%s: %s: %w", kf.name, kf.path, err)
		}
		kf.keys = keys
	}
	kf.sum, kf.loaded = sum, true
	return true, nil
}

// parsePEMKeys returns every RSA or P-256 EC public key in PEM data
// (PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE blocks).
func parsePEMKeys(data []byte) ([]any, error) {
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

// keyFor returns the key a token names by kid, or, for a token whose kid is
// not in the set (or that names none), every key of its algorithm to try;
// unknownKid is set when a named kid was not found, so the caller can ask
// for a refetch.
func keyFor[K any](byKid map[string]any, keys []K, kid, alg string, unknownKid *bool) (any, error) {
	if k, ok := byKid[kid].(K); ok {
		return k, nil
	}
	*unknownKid = kid != ""
	if len(keys) == 0 {
		return nil, fmt.Errorf("no %s key", alg)
	}
	set := jwt.VerificationKeySet{}
	for _, k := range keys {
		set.Keys = append(set.Keys, k)
	}
	return set, nil
}
