package gateway

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"
)

// The real client address behind proxies.
//
// A connection's peer is whatever opened the TCP connection: behind an
// ingress or a load balancer, the proxy. Two settings let kpush see through
// proxies it trusts, and only those:
//
//   - gateway.trusted_proxies lists the networks of those proxies. From a
//     trusted peer the client address is taken from X-Forwarded-For: walking
//     the list from the right (the hop nearest kpush), the first address
//     that is not itself trusted. From any other peer the header is ignored,
//     so a client cannot choose its own address.
//   - gateway.proxy_protocol (v1 or v2) makes a trusted peer send a PROXY
//     protocol header before anything else, TLS included (proxyproto.go);
//     its source address then stands in for the peer.
//
// The result is what the per-address limit counts, what logs show and what
// the handshake metrics are counted for.

// Values of gateway.proxy_protocol.
const (
	ProxyProtocolOff = "off"
	ProxyProtocolV1  = "v1"
	ProxyProtocolV2  = "v2"
)

// trustedNets is the parsed gateway.trusted_proxies. A nil or empty list
// trusts nobody.
type trustedNets []netip.Prefix

// parseTrustedProxies parses CIDRs ("10.0.0.0/8", "fd00::/8") and single
// addresses (taken as /32 or /128). A CIDR with host bits set is refused: it
// is usually a typo for a narrower or wider network than meant.
func parseTrustedProxies(list []string) (trustedNets, []error) {
	var nets trustedNets
	var errs []error
	for i, s := range list {
		s = strings.TrimSpace(s)
		key := fmt.Sprintf("gateway.trusted_proxies[%d]", i)
		if !strings.Contains(s, "/") {
			a, err := netip.ParseAddr(s)
			if err != nil || a.Zone() != "" {
				errs = append(errs, fmt.Errorf("%s: %q is neither a CIDR (10.0.0.0/8) nor an IP address", key, s))
				continue
			}
			a = a.Unmap()
			nets = append(nets, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %q is not a CIDR: %v", key, s, err))
			continue
		}
		if p.Masked() != p {
			errs = append(errs, fmt.Errorf("%s: %q has host bits set; write the network as %s", key, s, p.Masked()))
			continue
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			// ::ffff:10.0.0.0/104 means 10.0.0.0/8; peers are matched unmapped.
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		nets = append(nets, p)
	}
	return nets, errs
}

// contains reports whether a is inside one of the trusted networks.
func (t trustedNets) contains(a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	a = a.Unmap().WithZone("")
	for _, p := range t {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// parseHop parses one X-Forwarded-For entry: an address, optionally with a
// port ("192.0.2.1:4711", "[2001:db8::1]:4711") or in brackets. A zone is
// dropped: it means nothing on this host.
func parseHop(b []byte) (netip.Addr, bool) {
	a, ok := parseHopZoned(b)
	return a.WithZone(""), ok
}

func parseHopZoned(b []byte) (netip.Addr, bool) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return netip.Addr{}, false
	}
	s := string(b)
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap(), true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap(), true
	}
	if len(s) > 2 && s[0] == '[' && s[len(s)-1] == ']' {
		if a, err := netip.ParseAddr(s[1 : len(s)-1]); err == nil {
			return a.Unmap(), true
		}
	}
	return netip.Addr{}, false
}

// forwardedClient returns the client address named by an X-Forwarded-For
// list (every X-Forwarded-For header of the request joined by commas, in
// order) received from a trusted peer: the rightmost address that is not
// trusted. If every address is trusted, the leftmost one is the client. An
// entry that is not an address ends the walk: everything left of it may be
// whatever a client sent, so the nearest trusted hop passed so far is the
// client, or ok is false when there is none (the peer stands).
func forwardedClient(xff []byte, trusted trustedNets) (client netip.Addr, ok bool) {
	for len(xff) > 0 {
		var hop []byte
		if i := bytes.LastIndexByte(xff, ','); i >= 0 {
			hop, xff = xff[i+1:], xff[:i]
		} else {
			hop, xff = xff, nil
		}
		if len(bytes.TrimSpace(hop)) == 0 {
			continue // "a, , b" or a trailing comma: empty list elements are allowed
		}
		a, valid := parseHop(hop)
		if !valid {
			return client, client.IsValid()
		}
		client = a
		if !trusted.contains(a) {
			return client, true
		}
	}
	return client, client.IsValid()
}

// validateClientAddr checks gateway.trusted_proxies and
// gateway.proxy_protocol.
func (c *Config) validateClientAddr() []error {
	_, errs := parseTrustedProxies(c.TrustedProxies)
	switch c.ProxyProtocol {
	case "", ProxyProtocolOff, ProxyProtocolV1, ProxyProtocolV2:
	default:
		errs = append(errs, fmt.Errorf("gateway.proxy_protocol: %q is not v1, v2 or off", c.ProxyProtocol))
	}
	if (c.ProxyProtocol == ProxyProtocolV1 || c.ProxyProtocol == ProxyProtocolV2) && len(c.TrustedProxies) == 0 {
		errs = append(errs, fmt.Errorf("gateway.proxy_protocol: %s needs gateway.trusted_proxies: the header is read only from trusted peers, and none are listed", c.ProxyProtocol))
	}
	return errs
}
