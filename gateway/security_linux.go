package gateway

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/gobwas/ws"
	"github.com/kpush/kpush/gateway/auth"
	"github.com/prometheus/client_golang/prometheus"
)

// upgradeAuth is the per-handshake state of the upgrade hooks.
type upgradeAuth struct {
	// deadline ends the handshake (gateway.handshake_timeout); a token
	// whose kid needs a refetch of auth.jwks_url waits no longer.
	deadline time.Time
	// headErr is checkHead's verdict on the request head, returned as soon
	// as the upgrader has parsed the request line.
	headErr error
	tok     handshakeToken
	grant   *auth.Grant
	// slot is set once the handshake holds a max_connections slot.
	slot bool
	// client is the client address being worked out (clientaddr_linux.go).
	client *clientAddr
	// cf: the request is for gateway.centrifugo_path; cfProto: it asks
	// for Centrifugo's Protobuf format (centrifugo_proto.go).
	cf, cfProto bool
}

// upgrader returns the gobwas/ws upgrader for one handshake: it checks the
// origin, collects the token from its three transports and verifies it once
// the headers are read.
func (s *Server) upgrader(ua *upgradeAuth) ws.Upgrader {
	return ws.Upgrader{
		OnRequest: func(uri []byte) error {
			if ua.headErr != nil {
				return ua.headErr
			}
			ua.tok.query = queryToken(uri)
			ua.cfProto = ua.cfProto || ua.cf && cfFormatProtobuf(uri)
			return nil
		},
		OnHeader: func(key, value []byte) error {
			switch {
			case asciiEqualFold(key, "Origin"):
				if !s.originAllowed(string(value)) {
					s.metrics.rejected.WithLabelValues("origin").Inc()
					return ws.RejectConnectionError(ws.RejectionStatus(http.StatusForbidden), ws.RejectionReason("origin not allowed"))
				}
			case asciiEqualFold(key, "X-Forwarded-For"):
				ua.client.forwarded(value)
			case asciiEqualFold(key, "Authorization"):
				if tok, ok := bearerToken(value); ok {
					ua.tok.header = tok
				}
			}
			return nil
		},
		ProtocolCustom: func(v []byte) (string, bool) {
			sel, tok := selectProtocol(v)
			if tok != "" {
				ua.tok.protocol = tok
			}
			if ua.cf && cfWantsProtobuf(v) {
				sel, ua.cfProto = cfProtobufSubprotocol, true
			}
			return sel, true
		},
		OnBeforeUpgrade: func() (ws.HandshakeHeader, error) {
			if err := s.admitClient(ua.client); err != nil {
				return nil, err
			}
			tok := ua.tok.token()
			if s.verifier == nil || tok == "" {
				return nil, s.reserveSlot(ua) // no auth, or an anonymous client
			}
			ctx, cancel := context.WithDeadline(context.Background(), ua.deadline)
			g, err := s.verifier.VerifyWait(ctx, tok)
			cancel()
			if err != nil {
				reason, msg := "invalid_token", "invalid token"
				if errors.Is(err, auth.ErrTokenExpired) {
					reason, msg = "token_expired", "token expired"
				}
				s.metrics.rejected.WithLabelValues(reason).Inc()
				s.log.Debug("gateway: token refused", "err", err)
				return nil, ws.RejectConnectionError(
					ws.RejectionStatus(http.StatusUnauthorized),
					ws.RejectionReason(msg),
					ws.RejectionHeader(ws.HandshakeHeaderString("WWW-Authenticate: Bearer error=\"invalid_token\"\r\n")),
				)
			}
			ua.grant = g
			return nil, s.reserveSlot(ua)
		},
	}
}

// reserveSlot takes a max_connections slot for a handshake about to answer
// 101. It runs after every other check, so a handshake refused for another
// reason never holds a slot, and before the answer, so handshakes running at
// once cannot together pass the limit.
func (s *Server) reserveSlot(ua *upgradeAuth) error {
	if n := s.slots.Add(1); n > int64(s.lim().MaxConnections) {
		s.slots.Add(-1)
		s.metrics.rejected.WithLabelValues("max_connections").Inc()
		return ws.RejectConnectionError(ws.RejectionStatus(http.StatusServiceUnavailable), ws.RejectionReason("connection limit reached"))
	}
	ua.slot = true
	return nil
}

// handshakeFailed counts a handshake that ended in an error before upgrade.
func (s *Server) handshakeFailed(err error) {
	s.handshakeFailedAs(s.metrics.handshakes, err)
}

// handshakeFailedAs is handshakeFailed counting in hs (a protocol's
// kpush_handshakes_total).
func (s *Server) handshakeFailedAs(hs *prometheus.CounterVec, err error) {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		s.metrics.rejected.WithLabelValues("handshake_timeout").Inc()
	}
	hs.WithLabelValues("failed").Inc()
}

// releaseSecurityLocked gives back what a closed connection holds beyond
// its descriptor. Caller holds c.mu; called once, from releaseIfIdleLocked.
func (c *conn) releaseSecurityLocked() {
	c.srv.slots.Add(-1)
	c.srv.perIP.release(c.ip)
	if c.tlsLink() != nil {
		c.tlsLink().link.Release()
	}
}
