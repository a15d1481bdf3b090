package auth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
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

// Verifier checks tokens. Build it with New and keep Run running while it
// is used, which keeps its keys current; it is safe for concurrent use.
type Verifier struct {
	cfg  Config
	log  *slog.Logger
	keys atomic.Pointer[keySet] // replaced whole when a source changes

	mu        sync.Mutex     // guards files, remoteSet and rebuilding keys
	files     []*keyFile     // public_key_files, then jwks_file
	remoteSet map[string]any // the last good set from jwks_url, by kid
	remote    *remoteKeys    // nil without jwks_url

	fileReloads *prometheus.CounterVec // nil without key files
}

// New reads the configured key files, fetches jwks_url once and returns a
// Verifier. cfg must have passed Validate. A key file that cannot be used is
// an error; a failed first fetch is only logged and retried by Run, so an
// identity provider that is down does not keep kpush from starting (tokens
// it signed are refused until a fetch succeeds). In mode none New returns
// nil, nil: there is nothing to verify. Metrics go to reg (a private
// registry when nil).
func New(cfg Config, reg prometheus.Registerer, log *slog.Logger) (*Verifier, error) {
	if cfg.Mode != ModeJWT {
		return nil, nil
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	v := &Verifier{cfg: cfg, log: log}
	for i, f := range cfg.PublicKeyFiles {
		v.files = append(v.files, &keyFile{name: fmt.Sprintf("public_key_files[%d]", i), path: f})
	}
	if cfg.JWKSFile != "" {
		v.files = append(v.files, &keyFile{name: "jwks_file", path: cfg.JWKSFile, jwks: true})
	}
	for _, kf := range v.files {
		if _, err := kf.load(); err != nil {
			return nil, err
		}
	}
	if len(v.files) > 0 {
		v.fileReloads = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kpush_auth_key_file_reloads_total",
			Help: "Changed auth.public_key_files and auth.jwks_file loads, by result (ok, failed).",
		}, []string{"result"})
		v.fileReloads.WithLabelValues("ok")
		v.fileReloads.WithLabelValues("failed")
		if err := reg.Register(v.fileReloads); err != nil {
			return nil, fmt.Errorf("auth: register metrics: %w", err)
		}
	}
	if cfg.JWKSURL != "" {
		r, err := newRemoteKeys(cfg, reg, log, v.setRemote)
		if err != nil {
			return nil, err
		}
		v.remote = r
	}
	v.mu.Lock()
	ks := v.rebuildLocked()
	v.mu.Unlock()
	if len(ks.methods) == 0 {
		return nil, errors.New("auth: mode jwt has no usable key")
	}
	if v.remote != nil {
		v.remote.fetchFirst()
	}
	return v, nil
}

// Run keeps the keys current until ctx ends: it checks the key files every
// reload_interval and refreshes the jwks_url set. A file or a fetch that
// fails leaves the keys it last gave in service.
func (v *Verifier) Run(ctx context.Context) {
	var wg sync.WaitGroup
	if v.remote != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v.remote.run(ctx)
		}()
	}
	if len(v.files) > 0 {
		v.watchFiles(ctx)
	}
	wg.Wait()
}

// setRemote installs a new set fetched from jwks_url.
func (v *Verifier) setRemote(keys map[string]any) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.remoteSet = keys
	v.rebuildLocked()
}

// watchFiles re-reads the key files every reload_interval until ctx ends.
func (v *Verifier) watchFiles(ctx context.Context) {
	t := time.NewTicker(v.cfg.ReloadInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		v.reloadFiles()
	}
}

// reloadFiles loads the files whose content changed and installs their
// keys. A file that fails keeps its previous keys; it is logged once per
// run of failures.
func (v *Verifier) reloadFiles() {
	v.mu.Lock()
	defer v.mu.Unlock()
	changed := false
	for _, kf := range v.files {
		ok, err := kf.load()
		switch {
		case err != nil:
			if !kf.failing {
				v.log.Warn("auth: key file reload failed; keeping its previous keys", "err", err)
				v.fileReloads.WithLabelValues("failed").Inc()
			}
			kf.failing = true
		case ok:
			kf.failing = false
			changed = true
			v.fileReloads.WithLabelValues("ok").Inc()
			v.log.Info("auth: key file reloaded", "key", "auth."+kf.name, "path", kf.path)
		default:
			kf.failing = false
		}
	}
	if changed {
		v.rebuildLocked()
	}
}

// Verify checks a token's signature and claims and returns what it grants.
// Its error wraps ErrTokenExpired or ErrTokenInvalid. Verify never waits: a
// token naming a kid that the jwks_url set lacks starts a refetch (rate
// limited) and is refused; VerifyWait waits for that refetch.
func (v *Verifier) Verify(token string) (*Grant, error) {
	return v.verify(nil, token)
}

// VerifyWait is Verify, except that a token naming a kid the jwks_url set
// lacks waits for the refetch it starts or joins, until ctx ends or
// jwks_fetch_timeout has passed, and is then checked against the new set.
// When the rate limit refuses a refetch, it does not wait.
func (v *Verifier) VerifyWait(ctx context.Context, token string) (*Grant, error) {
	return v.verify(ctx, token)
}

func (v *Verifier) verify(ctx context.Context, token string) (*Grant, error) {
	ks := v.keys.Load()
	claims, unknownKid, err := ks.parse(token)
	if err != nil && unknownKid && v.remote != nil {
		done := v.remote.refetch()
		if done != nil && ctx != nil {
			wait, cancel := context.WithTimeout(ctx, v.cfg.JWKSFetchTimeout)
			select {
			case <-done:
				claims, _, err = v.keys.Load().parse(token)
			case <-wait.Done():
			}
			cancel()
		}
	}
	if err != nil {
		if errors.Is(err, jwt.ErrTokenExpired) {
			return nil, fmt.Errorf("auth: %w", ErrTokenExpired)
		}
		return nil, fmt.Errorf("auth: %w: %w", ErrTokenInvalid, err)
	}
	return v.grant(claims), nil
}

// grant turns a verified token's claims into what it allows.
func (v *Verifier) grant(claims jwt.MapClaims) *Grant {
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
	return g
}

// ClockSkew is the configured tolerance on exp and nbf.
func (v *Verifier) ClockSkew() time.Duration { return v.cfg.ClockSkew }
