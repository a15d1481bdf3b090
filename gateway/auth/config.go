package auth

import (
	"errors"
	"fmt"
	"time"
)

// Modes of authentication.
const (
	ModeNone = "none" // every client may subscribe to every channel
	ModeJWT  = "jwt"  // tokens grant channels; anonymous clients get public ones
)

// Config is the `auth` section of kpush's configuration. Zero values mean
// "use the default"; call SetDefaults, then Validate.
type Config struct {
	// Mode is none or jwt.
	Mode string `yaml:"mode"`
	// HS256Secret enables HS256 tokens signed with this shared secret
	// (at least 32 bytes; use ${ENV} expansion to keep it out of the file).
	HS256Secret string `yaml:"hs256_secret"`
	// PublicKeyFiles are PEM files with RSA (RS256) or P-256 EC (ES256)
	// public keys.
	PublicKeyFiles []string `yaml:"public_key_files"`
	// JWKSFile is a JSON Web Key Set file with RSA and P-256 EC keys; a
	// token's "kid" header picks its key.
	JWKSFile string `yaml:"jwks_file"`
	// Issuer and Audience, when set, must match the token's iss and aud.
	Issuer   string `yaml:"issuer"`
	Audience string `yaml:"audience"`
	// ClockSkew is how far exp and nbf may be off. A connection whose token
	// expired is closed once this much time has passed after exp.
	ClockSkew time.Duration `yaml:"clock_skew"`
	// ChannelsClaim names the claim listing the channel patterns a token
	// grants: a JSON array of strings, or one space-separated string.
	ChannelsClaim string `yaml:"channels_claim"`
	// Grants are patterns every valid token gets in addition to its claim;
	// {sub} stands for the token's subject (e.g. "user.{sub}.>").
	Grants []string `yaml:"grants"`
}

// SetDefaults fills zero fields with their defaults.
func (c *Config) SetDefaults() {
	if c.Mode == "" {
		c.Mode = ModeNone
	}
	if c.ClockSkew == 0 {
		c.ClockSkew = 30 * time.Second
	}
	if c.ChannelsClaim == "" {
		c.ChannelsClaim = "channels"
	}
}

// Validate reports every invalid key, named as in the YAML file. Key files
// are read by New, which names the key of a file it cannot use.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("auth.%s: %s", key, fmt.Sprintf(format, args...)))
	}
	switch c.Mode {
	case ModeNone:
	case ModeJWT:
		if c.HS256Secret == "" && len(c.PublicKeyFiles) == 0 && c.JWKSFile == "" {
			bad("mode", "jwt needs a key: hs256_secret, public_key_files or jwks_file")
		}
	default:
		bad("mode", "%q must be none or jwt", c.Mode)
	}
	if c.HS256Secret != "" && len(c.HS256Secret) < 32 {
		bad("hs256_secret", "is %d bytes; HS256 needs at least 32", len(c.HS256Secret))
	}
	for i, f := range c.PublicKeyFiles {
		if f == "" {
			bad(fmt.Sprintf("public_key_files[%d]", i), "empty path")
		}
	}
	if c.ClockSkew < 0 || c.ClockSkew > 5*time.Minute {
		bad("clock_skew", "%s must be between 0 and 5m", c.ClockSkew)
	}
	if c.ChannelsClaim == "" {
		bad("channels_claim", "must name a claim")
	}
	for i, g := range c.Grants {
		if err := ValidateTemplate(g); err != nil {
			bad(fmt.Sprintf("grants[%d]", i), "%v", err)
		}
	}
	return errors.Join(errs...)
}
