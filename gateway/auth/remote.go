package auth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// maxJWKSBytes bounds a JWKS response; a larger one is refused whole (an
// identity provider's set is a few KiB).
const maxJWKSBytes = 1 << 20

// Results of a jwks_url fetch, the values of kpush_auth_jwks_fetches_total's
// result label.
const (
	fetchOK          = "ok"           // a new set is in service
	fetchNotModified = "not_modified" // 304 to If-None-Match: the set is current
	fetchUnreachable = "unreachable"  // no answer: connect, TLS, timeout or read failure
	fetchBadStatus   = "bad_status"   // an HTTP status other than 200 or 304
	fetchBadDocument = "bad_document" // too large, not JSON, or no usable key
)

// remoteKeys keeps the key set of jwks_url: fetched at start, refreshed on
// a schedule (jwks_refresh_interval, or the response's max-age within
// bounds), and refetched on demand when a token names an unknown kid, at
// most once per jwks_min_refresh_interval. A failed fetch leaves the last
// good set in service and is retried with backoff.
//
// Concurrency: fetches run on one goroutine (New's first fetch, then run);
// refetch is safe for concurrent use and never blocks.
type remoteKeys struct {
	cfg     Config
	log     *slog.Logger
	client  *http.Client
	install func(map[string]any) // puts a fetched set in service

	// Owned by the fetching goroutine.
	etag     string        // of the set in service, for If-None-Match
	kids     []string      // of the set in service, sorted, for the change log
	failures int           // consecutive failed fetches
	next     time.Duration // until the next scheduled fetch

	mu      sync.Mutex    // guards lastKid, pending
	lastKid time.Time     // when the last unknown-kid refetch was asked for
	pending chan struct{} // closed when the asked-for refetch is done; nil: none asked
	wake    chan struct{} // cap 1: tells run a refetch is asked for

	started time.Time
	goodAt  atomic.Int64 // Unix ns of the last fetch that confirmed the set; 0: none yet
	nkeys   atomic.Int64

	fetches    *prometheus.CounterVec
	unknownKid *prometheus.CounterVec
}

func newRemoteKeys(cfg Config, reg prometheus.Registerer, log *slog.Logger, install func(map[string]any)) (*remoteKeys, error) {
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	if cfg.JWKSCAFile != "" {
		pemData, err := os.ReadFile(cfg.JWKSCAFile)
		if err != nil {
			return nil, fmt.Errorf("auth.jwks_ca_file: %w", err)
		}
		if !roots.AppendCertsFromPEM(pemData) {
			return nil, fmt.Errorf("auth.jwks_ca_file: %s: no PEM certificate found", cfg.JWKSCAFile)
		}
	}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		TLSClientConfig:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   cfg.JWKSFetchTimeout,
		ResponseHeaderTimeout: cfg.JWKSFetchTimeout,
		MaxIdleConns:          1,
		IdleConnTimeout:       90 * time.Second,
	}
	r := &remoteKeys{
		cfg: cfg,
		log: log,
		client: &http.Client{
			Transport: tr,
			Timeout:   cfg.JWKSFetchTimeout,
			CheckRedirect: func(req *http.Request, via []*http.Request) error {
				if len(via) >= 3 {
					return errors.New("more than 3 redirects")
				}
				// A redirect may not leave https (or loopback http).
				return checkJWKSURL(req.URL.String())
			},
		},
		install: install,
		next:    cfg.JWKSRefreshInterval,
		wake:    make(chan struct{}, 1),
		started: time.Now(),
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kpush_auth_jwks_fetches_total",
			Help: "Fetches of auth.jwks_url, by result (ok, not_modified, unreachable, bad_status, bad_document).",
		}, []string{"result"}),
		unknownKid: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kpush_auth_jwks_unknown_kid_total",
			Help: "Tokens naming a kid missing from the jwks_url set, by what followed: refetch (a fetch was asked for), joined (one was already asked for), rate_limited (too soon after the last).",
		}, []string{"outcome"}),
	}
	for _, res := range []string{fetchOK, fetchNotModified, fetchUnreachable, fetchBadStatus, fetchBadDocument} {
		r.fetches.WithLabelValues(res)
	}
	for _, o := range []string{"refetch", "joined", "rate_limited"} {
		r.unknownKid.WithLabelValues(o)
	}
	for _, c := range []prometheus.Collector{
		r.fetches, r.unknownKid,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kpush_auth_jwks_age_seconds",
			Help: "Seconds since a fetch of auth.jwks_url last confirmed the key set in service (since start while none has).",
		}, func() float64 { return r.age().Seconds() }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kpush_auth_jwks_keys",
			Help: "Signing keys in service from auth.jwks_url.",
		}, func() float64 { return float64(r.nkeys.Load()) }),
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("auth: register metrics: %w", err)
		}
	}
	return r, nil
}

// age is how long ago a fetch last confirmed the set, or the time since
// start when none has.
func (r *remoteKeys) age() time.Duration {
	if at := r.goodAt.Load(); at != 0 {
		return time.Since(time.Unix(0, at))
	}
	return time.Since(r.started)
}

// fetchFirst is the fetch at start, bounded by jwks_fetch_timeout.
func (r *remoteKeys) fetchFirst() {
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.JWKSFetchTimeout)
	defer cancel()
	r.fetchOnce(ctx)
}

// run refreshes the set on schedule and on refetch requests until ctx ends.
func (r *remoteKeys) run(ctx context.Context) {
	timer := time.NewTimer(r.next)
	defer timer.Stop()
	defer func() {
		// Nobody will fetch any more: let waiters go now.
		r.mu.Lock()
		if r.pending != nil {
			close(r.pending)
			r.pending = nil
		}
		r.mu.Unlock()
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-r.wake:
		}
		// The fetch about to start answers the refetch asked for so far,
		// whichever of the timer and the wake came first.
		r.mu.Lock()
		answers := r.pending
		select {
		case <-r.wake:
		default:
		}
		r.mu.Unlock()

		fctx, cancel := context.WithTimeout(ctx, r.cfg.JWKSFetchTimeout)
		r.fetchOnce(fctx)
		cancel()

		if answers != nil {
			r.mu.Lock()
			close(answers)
			if r.pending == answers {
				r.pending = nil
			}
			r.mu.Unlock()
		}
		timer.Reset(r.next)
	}
}

// refetch asks for a fetch because a token named a kid the set lacks. It
// returns a channel closed once that fetch is done, or nil when the rate
// limit (one per jwks_min_refresh_interval) refuses. It never blocks.
func (r *remoteKeys) refetch() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending != nil {
		r.unknownKid.WithLabelValues("joined").Inc()
		return r.pending
	}
	now := time.Now()
	if !r.lastKid.IsZero() && now.Sub(r.lastKid) < r.cfg.JWKSMinRefreshInterval {
		r.unknownKid.WithLabelValues("rate_limited").Inc()
		return nil
	}
	r.lastKid = now
	r.pending = make(chan struct{})
	select {
	case r.wake <- struct{}{}:
	default:
	}
	r.unknownKid.WithLabelValues("refetch").Inc()
	return r.pending
}

// fetchOnce fetches the set, installs it when it is good, counts the result
// and sets when the next scheduled fetch is due.
func (r *remoteKeys) fetchOnce(ctx context.Context) {
	result, err := r.fetch(ctx)
	r.fetches.WithLabelValues(result).Inc()
	if err != nil {
		r.failures++
		if r.failures == 1 {
			r.log.Warn("auth: jwks_url fetch failed; keeping the last good key set", "url", r.cfg.JWKSURL,
				"result", result, "err", err, "keys", r.nkeys.Load())
		} else {
			r.log.Debug("auth: jwks_url fetch failed again", "url", r.cfg.JWKSURL, "result", result, "err", err, "failures", r.failures)
		}
		r.next = retryDelay(r.failures, r.cfg.JWKSMinRefreshInterval)
		return
	}
	if r.failures > 0 {
		r.log.Info("auth: jwks_url fetch succeeded again", "url", r.cfg.JWKSURL, "after_failures", r.failures)
	}
	r.failures = 0
	r.goodAt.Store(time.Now().UnixNano())
}

// fetch is one GET of jwks_url. On success it has installed the set and set
// r.next from the response's caching headers.
func (r *remoteKeys) fetch(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.cfg.JWKSURL, nil)
	if err != nil {
		return fetchUnreachable, fmt.Errorf("auth: jwks_url: %w", err)
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	if r.etag != "" {
		req.Header.Set("If-None-Match", r.etag)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return fetchUnreachable, fmt.Errorf("auth: jwks_url: %w", err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotModified && r.etag != "":
		r.next = cacheDelay(resp.Header, r.cfg.JWKSMinRefreshInterval, r.cfg.JWKSRefreshInterval)
		return fetchNotModified, nil
	case resp.StatusCode != http.StatusOK:
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return fetchBadStatus, fmt.Errorf("auth: jwks_url: HTTP status %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return fetchUnreachable, fmt.Errorf("auth: jwks_url: reading the response: %w", err)
	}
	if len(body) > maxJWKSBytes {
		return fetchBadDocument, fmt.Errorf("auth: jwks_url: response larger than %d bytes", maxJWKSBytes)
	}
	keys, skipped, err := parseJWKS(body, false)
	if err != nil {
		return fetchBadDocument, fmt.Errorf("auth: jwks_url: %w", err)
	}
	kids := slices.Sorted(maps.Keys(keys))
	if !slices.Equal(kids, r.kids) {
		if len(skipped) > 0 {
			r.log.Warn("auth: jwks_url set has keys kpush cannot use; skipped", "err", errors.Join(skipped...))
		}
		r.log.Info("auth: jwks_url key set changed", "kids", kids, "previous", r.kids)
	}
	r.install(keys)
	r.kids = kids
	r.nkeys.Store(int64(len(keys)))
	r.etag = resp.Header.Get("ETag")
	r.next = cacheDelay(resp.Header, r.cfg.JWKSMinRefreshInterval, r.cfg.JWKSRefreshInterval)
	return fetchOK, nil
}

// cacheDelay is when a fetched set should be fetched again: the response's
// Cache-Control max-age (less its Age), kept within [lo, hi]; hi when the
// response says nothing. no-cache and no-store mean lo. A small random part
// is taken off so that pods started together do not fetch together.
func cacheDelay(h http.Header, lo, hi time.Duration) time.Duration {
	d := hi
	for _, v := range h.Values("Cache-Control") {
		for _, dir := range strings.Split(v, ",") {
			dir = strings.ToLower(strings.TrimSpace(dir))
			switch {
			case dir == "no-cache" || dir == "no-store":
				d = lo
			case strings.HasPrefix(dir, "max-age="):
				secs, err := strconv.ParseInt(strings.Trim(dir[len("max-age="):], `"`), 10, 64)
				if err != nil || secs < 0 {
					continue
				}
				if age, err := strconv.ParseInt(h.Get("Age"), 10, 64); err == nil && age > 0 {
					secs -= age
				}
				if secs < int64(hi/time.Second) {
					d = min(d, time.Duration(max(secs, 0))*time.Second)
				}
			}
		}
	}
	d = max(lo, min(d, hi))
	if spread := (d - lo) / 10; spread > 0 {
		d -= rand.N(spread)
	}
	return d
}

// retryDelay is the wait before retrying after n consecutive failures:
// doubling from 1s, capped at jwks_min_refresh_interval.
func retryDelay(n int, limit time.Duration) time.Duration {
	d := time.Second << min(n-1, 20)
	return min(d, limit)
}
