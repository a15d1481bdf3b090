package auth

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
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
	// JWKSURL is an identity provider's JSON Web Key Set endpoint (Keycloak:
	// <issuer>/protocol/openid-connect/certs). It must be https; plain http
	// is accepted only for a loopback host. The set is fetched at start,
	// refreshed every JWKSRefreshInterval (sooner when the response's
	// Cache-Control max-age says so, but never more often than
	// JWKSMinRefreshInterval), and refetched when a token names a kid the
	// set lacks, at most once per JWKSMinRefreshInterval. A failed fetch
	// keeps the last good set.
	JWKSURL string `yaml:"jwks_url"`
	// JWKSCAFile is a PEM bundle of CA certificates trusted for JWKSURL in
	// addition to the system's (an identity provider behind a private CA).
	JWKSCAFile string `yaml:"jwks_ca_file"`
	// JWKSRefreshInterval is the longest time a fetched key set is used
	// before it is fetched again.
	JWKSRefreshInterval time.Duration `yaml:"jwks_refresh_interval"`
	// JWKSMinRefreshInterval is the shortest time between two fetches asked
	// for by Cache-Control, and between two refetches for unknown kids.
	JWKSMinRefreshInterval time.Duration `yaml:"jwks_min_refresh_interval"`
	// JWKSFetchTimeout bounds one fetch, and how long a handshake whose
	// token names an unknown kid waits for the refetch.
	JWKSFetchTimeout time.Duration `yaml:"jwks_fetch_timeout"`
	// ReloadInterval is how often public_key_files and jwks_file are
	// checked for new content (Kubernetes secret rotation).
	ReloadInterval time.Duration `yaml:"reload_interval"`
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
	if c.JWKSRefreshInterval == 0 {
		c.JWKSRefreshInterval = 15 * time.Minute
	}
	if c.JWKSMinRefreshInterval == 0 {
		c.JWKSMinRefreshInterval = min(time.Minute, c.JWKSRefreshInterval)
	}
	if c.JWKSFetchTimeout == 0 {
		c.JWKSFetchTimeout = 5 * time.Second
	}
	if c.ReloadInterval == 0 {
		c.ReloadInterval = 10 * time.Second
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
		if c.HS256Secret == "" && len(c.PublicKeyFiles) == 0 && c.JWKSFile == "" && c.JWKSURL == "" {
			bad("mode", "jwt needs a key: hs256_secret, public_key_files, jwks_file or jwks_url")
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
	if c.JWKSURL != "" {
		if err := checkJWKSURL(c.JWKSURL); err != nil {
			bad("jwks_url", "%v", err)
		}
	}
	if c.JWKSCAFile != "" && c.JWKSURL == "" {
		bad("jwks_ca_file", "is set but jwks_url is not")
	}
	if c.JWKSRefreshInterval < 100*time.Millisecond || c.JWKSRefreshInterval > 24*time.Hour {
		bad("jwks_refresh_interval", "%s must be between 100ms and 24h", c.JWKSRefreshInterval)
	}
	if c.JWKSMinRefreshInterval < 100*time.Millisecond || c.JWKSMinRefreshInterval > c.JWKSRefreshInterval {
		bad("jwks_min_refresh_interval", "%s must be between 100ms and jwks_refresh_interval (%s)", c.JWKSMinRefreshInterval, c.JWKSRefreshInterval)
	}
	if c.JWKSFetchTimeout < 10*time.Millisecond || c.JWKSFetchTimeout > 30*time.Second {
		bad("jwks_fetch_timeout", "%s must be between 10ms and 30s", c.JWKSFetchTimeout)
	}
	if c.ReloadInterval < 10*time.Millisecond {
		bad("reload_interval", "%s is below 10ms", c.ReloadInterval)
	}
	for i, g := range c.Grants {
		if err := ValidateTemplate(g); err != nil {
			bad(fmt.Sprintf("grants[%d]", i), "%v", err)
		}
	}
	return errors.Join(errs...)
}

// checkJWKSURL accepts https URLs, and http ones whose host is loopback
// (a sidecar or a test server): keys fetched in the clear from anywhere else
// could be replaced on the way.
func checkJWKSURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%q is not a URL: %v", raw, err)
	}
	if u.Host == "" || u.Hostname() == "" {
		return fmt.Errorf("%q has no host", raw)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if isLoopbackHost(u.Hostname()) {
			return nil
		}
		return fmt.Errorf("%q is plain http to a host that is not loopback; use https", raw)
	}
	return fmt.Errorf("%q must be an https URL", raw)
}

func isLoopbackHost(h string) bool {
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}
