package gateway

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus"
)

// Sources of a client address; the source label of
// kpush_handshake_client_addresses_total.
const (
	addrFromPeer      = "peer"           // the TCP peer itself
	addrFromProxy     = "proxy_protocol" // a PROXY protocol header
	addrFromForwarded = "forwarded"      // X-Forwarded-For from a trusted peer
)

// clientAddrs is the server's proxy configuration and its metrics; set by
// New, read-only while serving.
type clientAddrs struct {
	trusted   trustedNets
	ppVersion int                    // 0: proxy_protocol off
	headers   *prometheus.CounterVec // PROXY headers by result
	sources   *prometheus.CounterVec // WebSocket handshakes by address source
}

// initClientAddrs parses gateway.trusted_proxies and registers the metrics.
// Called by New.
func (s *Server) initClientAddrs(reg prometheus.Registerer) error {
	trusted, errs := parseTrustedProxies(s.cfg.TrustedProxies)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	a := &s.addrs
	a.trusted = trusted
	switch s.cfg.ProxyProtocol {
	case ProxyProtocolV1:
		a.ppVersion = 1
	case ProxyProtocolV2:
		a.ppVersion = 2
	}
	a.headers = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kpush_proxy_protocol_headers_total",
		Help: "PROXY protocol headers read from trusted peers, by result (ok, local, missing, malformed, truncated); all but ok and local close the connection.",
	}, []string{"result"})
	a.sources = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kpush_handshake_client_addresses_total",
		Help: "WebSocket handshakes admitted by the per-address limit, by where the client address came from (peer, proxy_protocol, forwarded).",
	}, []string{"source"})
	for _, c := range []prometheus.Collector{a.headers, a.sources} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("gateway: register metrics: %w", err)
		}
	}
	return nil
}

// clientAddr is one handshake's client address as it is worked out: the
// peer (or a PROXY header's source), then X-Forwarded-For if the peer is a
// trusted proxy.
type clientAddr struct {
	peer    netip.Addr // the TCP peer, unmapped
	addr    netip.Addr // the client so far
	source  string
	trusted bool   // addr is a trusted proxy: X-Forwarded-For counts
	xff     []byte // every X-Forwarded-For value, joined; only when trusted

	ip   string // the client address, set by admitClient
	held bool   // ip holds a per-address slot
}

// clientFrom starts working out the client address of an accepted
// connection. With gateway.proxy_protocol on, a trusted peer must open with
// a PROXY header, read here (before TLS, under the handshake deadline
// already set on raw). ok is false when that header is missing or
// malformed: the connection has been counted and must be closed.
func (s *Server) clientFrom(raw net.Conn) (ca *clientAddr, ok bool) {
	ca = &clientAddr{source: addrFromPeer}
	if ta, isTCP := raw.RemoteAddr().(*net.TCPAddr); isTCP {
		ca.peer = ta.AddrPort().Addr().Unmap().WithZone("")
	}
	ca.addr = ca.peer
	ca.trusted = s.addrs.trusted.contains(ca.peer)
	if !ca.trusted || s.addrs.ppVersion == 0 {
		return ca, true
	}
	h, err := readProxyHeader(raw, s.addrs.ppVersion)
	if err != nil {
		var pe *proxyError
		result := proxyMalformed
		if errors.As(err, &pe) {
			result = pe.result
		}
		s.addrs.headers.WithLabelValues(result).Inc()
		s.handshakeFailed(err)
		s.log.Debug("gateway: PROXY protocol header refused", "peer", ca.peer.String(), "err", err)
		return nil, false
	}
	if !h.src.IsValid() {
		s.addrs.headers.WithLabelValues(proxyLocal).Inc()
		return ca, true
	}
	s.addrs.headers.WithLabelValues(proxyOK).Inc()
	ca.addr, ca.source = h.src.Addr(), addrFromProxy
	ca.trusted = s.addrs.trusted.contains(ca.addr)
	return ca, true
}

// forwarded collects an X-Forwarded-For header value (the upgrader's
// OnHeader). From an untrusted peer it is ignored. The request's size is
// bounded by gateway.max_header_bytes, and so is what this keeps.
func (ca *clientAddr) forwarded(value []byte) {
	if !ca.trusted {
		return
	}
	if len(ca.xff) > 0 {
		ca.xff = append(ca.xff, ',')
	}
	ca.xff = append(ca.xff, value...)
}

// admitClient settles the client address once the headers are read and
// takes its per-address slot (the upgrader's OnBeforeUpgrade).
func (s *Server) admitClient(ca *clientAddr) error {
	if ca.trusted && len(ca.xff) > 0 {
		if a, ok := forwardedClient(ca.xff, s.addrs.trusted); ok {
			ca.addr, ca.source = a, addrFromForwarded
		}
	}
	ca.ip = ca.addr.String()
	if !ca.addr.IsValid() {
		ca.ip = "unknown" // not a TCP connection (tests over pipes)
	}
	if !s.perIP.acquire(ca.ip) {
		s.metrics.rejected.WithLabelValues("max_connections_per_ip").Inc()
		s.log.Debug("gateway: per-address limit reached", "client", ca.ip, "peer", ca.peer.String(), "source", ca.source)
		return ws.RejectConnectionError(ws.RejectionStatus(http.StatusTooManyRequests), ws.RejectionReason("too many connections from this address"))
	}
	ca.held = true
	s.addrs.sources.WithLabelValues(ca.source).Inc()
	return nil
}

// release gives back the per-address slot of a handshake that did not
// become a connection.
func (ca *clientAddr) release(l *ipLimiter) {
	if ca.held {
		ca.held = false
		l.release(ca.ip)
	}
}
