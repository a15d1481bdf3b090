package gateway

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/kpush/kpush/gateway/auth"
	"github.com/kpush/kpush/gateway/wire"
	"github.com/prometheus/client_golang/prometheus"
)

// PublicChannels tells which channels anonymous clients may subscribe to
// when auth.mode is jwt (routes marked public: true). Public is called by
// workers for each channel of a subscribe request: it must be safe for
// concurrent use and must not block.
type PublicChannels interface {
	Public(channel string) bool
}

// SetPublicChannels sets the channels open to every client. Safe to call
// while serving (routes are reloaded).
func (s *Server) SetPublicChannels(p PublicChannels) { s.public.Store(&p) }

// isPublic reports whether ch is open to every client.
func (s *Server) isPublic(ch string) bool {
	p := s.public.Load()
	return p != nil && *p != nil && (*p).Public(ch)
}

// connSec is a connection's authentication and request-rate state.
type connSec struct {
	grant     atomic.Pointer[auth.Grant] // nil: anonymous
	expiresAt atomic.Int64               // coarse ms after which the conn closes with 4001; 0: never
	rate      rateLimiter                // touched only by the reading worker
}

// initSecurity loads the TLS certificate and the token verifier and
// registers their metrics. Called by New.
func (s *Server) initSecurity(reg prometheus.Registerer) error {
	s.perIP = newIPLimiter(s.cfg.MaxConnectionsPerIP)
	v, err := auth.New(s.cfg.Auth, reg, s.log)
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	s.verifier = v
	if !s.cfg.TLS.Enabled() {
		return nil
	}
	reloads := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kpush_tls_cert_reloads_total",
		Help: "TLS certificate loads from tls.cert_file and tls.key_file, by result (ok, failed).",
	}, []string{"result"})
	var notAfter atomic.Int64
	certs, err := newCertStore(s.cfg.TLS, s.log)
	if err != nil {
		return err
	}
	notAfter.Store(certs.NotAfter().Unix())
	certs.onReload = func(ok bool, na time.Time) {
		if !ok {
			reloads.WithLabelValues("failed").Inc()
			return
		}
		reloads.WithLabelValues("ok").Inc()
		notAfter.Store(na.Unix())
	}
	for _, c := range []prometheus.Collector{reloads, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "kpush_tls_cert_not_after_timestamp_seconds",
		Help: "Expiry (Unix seconds) of the TLS certificate being served.",
	}, func() float64 { return float64(notAfter.Load()) })} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("gateway: register metrics: %w", err)
		}
	}
	s.certs = certs
	s.tlsConfig = certs.serverConfig()
	return nil
}

// setGrant installs a verified grant on a connection.
func (c *session) setGrant(g *auth.Grant) {
	c.sec.grant.Store(g)
	var exp int64
	if g != nil && !g.Expires.IsZero() {
		exp = g.Expires.UnixMilli() + c.srv.verifier.ClockSkew().Milliseconds()
	}
	c.sec.expiresAt.Store(exp)
}

// allowRequest applies the request rate limit to a request (p) or, with
// p == nil, to a ping frame. It reports whether the request may be handled;
// if not, it has answered rate_limited, or closed the connection with 1008
// (alive false).
func (c *session) allowRequest(t transport, p []byte) (ok, alive bool) {
	lim := c.srv.lim()
	ok, over := c.sec.rate.allow(c.srv.clock.Load(), lim.MaxRequestsPerSecond, lim.RequestBurst)
	if ok {
		return true, true
	}
	c.srv.metrics.rejected.WithLabelValues("rate_limited").Inc()
	if over {
		// Replies already queued (the rate_limited errors among them) go
		// out before the close frame.
		c.closeWith(t, ws.StatusPolicyViolation, "request rate limit exceeded", false)
		return false, false
	}
	if p != nil {
		var id int64
		if req, err := ParseRequest(p, lim.MaxSubscriptions); err == nil {
			id = req.ID
		} else if pe, ok := err.(*ProtocolError); ok {
			id = pe.ID
		}
		c.srv.metrics.clientErrors.WithLabelValues(CodeRateLimited).Inc()
		c.send(t, errorFrame(id, CodeRateLimited, fmt.Sprintf("more than %d requests per second", lim.MaxRequestsPerSecond)))
	}
	return false, true
}

// authorize checks every channel of a subscribe request against the
// connection's grant and the public channels, and answers forbidden when one
// is not allowed. Nothing is subscribed then.
func (s *Server) authorize(t transport, req *Request) bool {
	if s.verifier == nil {
		return true
	}
	c := t.sess()
	g := c.sec.grant.Load()
	for _, ch := range req.Channels {
		if s.isPublic(ch) || g.Allows(ch) {
			continue
		}
		msg := fmt.Sprintf("channel %q is not granted by this connection's token", ch)
		if g == nil {
			msg = fmt.Sprintf("channel %q is not public; connect with a token that grants it", ch)
		}
		s.metrics.rejected.WithLabelValues("forbidden").Inc()
		s.metrics.clientErrors.WithLabelValues(CodeForbidden).Inc()
		c.send(t, errorFrame(req.ID, CodeForbidden, msg))
		return false
	}
	return true
}

// refresh replaces the connection's token with a newer one for the same
// subject, moving its expiry. Subscriptions the new token no longer allows
// are dropped and listed in the reply.
func (s *Server) refresh(t transport, req *Request) {
	c := t.sess()
	if s.verifier == nil {
		s.metrics.clientErrors.WithLabelValues(CodeBadRequest).Inc()
		c.send(t, errorFrame(req.ID, CodeBadRequest, "refresh needs auth.mode jwt; this server runs without authentication"))
		return
	}
	fail := func(code, msg string) {
		s.metrics.clientErrors.WithLabelValues(code).Inc()
		c.send(t, errorFrame(req.ID, code, msg))
	}
	// Verify, not VerifyWait: this runs on a worker, which must not wait
	// for auth.jwks_url. A token naming a kid the set lacks starts a
	// refetch and is refused; the client's retry finds the new key.
	g, err := s.verifier.Verify(req.Token)
	if err != nil {
		if errors.Is(err, auth.ErrTokenExpired) {
			fail(CodeInvalidToken, "token expired")
		} else {
			fail(CodeInvalidToken, "invalid token")
		}
		return
	}
	old := c.sec.grant.Load()
	if old != nil && old.Subject != g.Subject {
		fail(CodeForbidden, "a refreshed token must have the same subject")
		return
	}
	if old != nil && !old.Expires.IsZero() && !g.Expires.After(old.Expires) {
		fail(CodeBadRequest, "the new token does not expire later than the current one")
		return
	}
	c.setGrant(g)
	c.mu.Lock()
	kept := c.subs[:0]
	var revoked []string
	for _, ch := range c.subs {
		if s.isPublic(ch) || g.Allows(ch) {
			kept = append(kept, ch)
		} else {
			revoked = append(revoked, ch)
			c.out.dropResume(ch) // a read-back in flight delivers nothing
		}
	}
	clear(c.subs[len(kept):])
	c.subs = kept
	c.mu.Unlock()
	if len(revoked) > 0 {
		s.router.Unsubscribe(t, revoked...)
	}
	c.send(t, refreshedFrame(req.ID, revoked))
}

// refreshedFrame is the ok reply to refresh, listing dropped channels.
func refreshedFrame(id int64, revoked []string) []byte {
	b := make([]byte, 0, 64)
	b = append(b, `{"op":"ok","id":`...)
	b = fmt.Appendf(b, "%d", id)
	if len(revoked) > 0 {
		b = append(b, `,"revoked":[`...)
		for i, ch := range revoked {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, '"')
			b = append(b, ch...) // channel names need no escaping
			b = append(b, '"')
		}
		b = append(b, ']')
	}
	b = append(b, '}')
	return wire.ServerFrame(ws.OpText, b)
}

// closeRejectReason is the kpush_rejected_total reason for a close caused
// by a client breaking a frame limit (the close's own closeReason label),
// or "".
func closeRejectReason(code ws.StatusCode) string {
	switch code {
	case ws.StatusMessageTooBig, ws.StatusUnsupportedData, ws.StatusInvalidFramePayloadData:
		return closeReason(code)
	}
	return ""
}
