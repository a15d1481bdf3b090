package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
)

// jwk is one JSON Web Key (RFC 7517) of the kinds kpush verifies with.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	// RSA
	N string `json:"n"`
	E string `json:"e"`
	// EC
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

// parseJWKS returns the RSA and P-256 EC public keys of a JWKS document,
// keyed by kid (keys without a kid get a generated one). Keys for
// encryption and kinds kpush does not verify with are skipped. A key of a
// verifiable kind that cannot be used (a short RSA modulus, another curve)
// is an error when strict (a file the operator wrote), and is skipped and
// reported in skipped otherwise (an identity provider's set, which may
// carry keys for other clients). A set with no usable key is an error.
func parseJWKS(data []byte, strict bool) (keys map[string]any, skipped []error, err error) {
	var doc struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, nil, fmt.Errorf("not a JWKS document: %w", err)
	}
	keys = make(map[string]any)
	var errs []error
	for i, k := range doc.Keys {
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		var key any
		var err error
		switch k.Kty {
		case "RSA":
			key, err = k.rsa()
		case "EC":
			key, err = k.ec()
		default:
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("keys[%d] (kid %q): %w", i, k.Kid, err))
			continue
		}
		kid := k.Kid
		if kid == "" {
			kid = fmt.Sprintf("#%d", i)
		}
		keys[kid] = key
	}
	if strict && len(errs) > 0 {
		return nil, nil, errors.Join(errs...)
	}
	if len(keys) == 0 {
		if len(errs) > 0 {
			return nil, nil, fmt.Errorf("no usable signing key in the set: %w", errors.Join(errs...))
		}
		return nil, nil, errors.New("no RSA or P-256 EC signing key in the set")
	}
	return keys, errs, nil
}

func b64(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(s)
}

func (k *jwk) rsa() (*rsa.PublicKey, error) {
	n, err := b64(k.N)
	if err != nil || len(n) == 0 {
		return nil, errors.New("bad RSA modulus n")
	}
	e, err := b64(k.E)
	if err != nil || len(e) == 0 || len(e) > 4 {
		return nil, errors.New("bad RSA exponent e")
	}
	exp := 0
	for _, b := range e {
		exp = exp<<8 | int(b)
	}
	pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: exp}
	if pub.N.BitLen() < 2048 {
		return nil, fmt.Errorf("RSA key of %d bits; at least 2048 are needed", pub.N.BitLen())
	}
	if exp < 3 || exp%2 == 0 {
		return nil, errors.New("bad RSA exponent e")
	}
	return pub, nil
}

func (k *jwk) ec() (*ecdsa.PublicKey, error) {
	if k.Crv != "P-256" {
		return nil, fmt.Errorf("curve %q; only P-256 (ES256) is supported", k.Crv)
	}
	x, err1 := b64(k.X)
	y, err2 := b64(k.Y)
	if err1 != nil || err2 != nil || len(x) != 32 || len(y) != 32 {
		return nil, errors.New("bad EC coordinates x, y")
	}
	// Check the point through the uncompressed encoding, which rejects
	// points off the curve.
	raw := append(append([]byte{4}, x...), y...)
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), raw)
	if err != nil {
		return nil, fmt.Errorf("EC point: %w", err)
	}
	return pub, nil
}
