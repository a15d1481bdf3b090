package gateway

import (
	"bytes"
	"net/url"
	"strings"
)

// Where a client's token comes from, in order of preference:
//
//   - "Authorization: Bearer <token>": not logged in URLs, but browsers'
//     WebSocket API cannot set it; for services and native apps.
//   - a Sec-WebSocket-Protocol entry "kpush.bearer.<token>", offered with
//     "kpush.v1" (which the server selects and echoes; the token is never
//     echoed): browsers can send it and it stays out of URLs, at the cost of
//     putting a credential in a header that proxies do not treat as one.
//   - the "token" query parameter: works everywhere, but URLs end up in
//     access logs, proxy logs and browser history; use short-lived tokens.

// Subprotocol names.
const (
	ProtocolV1           = "kpush.v1"
	ProtocolBearerPrefix = "kpush.bearer."
)

// handshakeToken collects a token from the upgrade request's parts.
type handshakeToken struct {
	header, protocol, query string
}

func (h *handshakeToken) token() string {
	switch {
	case h.header != "":
		return h.header
	case h.protocol != "":
		return h.protocol
	}
	return h.query
}

// bearerToken returns the token of an "Authorization: Bearer <token>" value.
func bearerToken(v []byte) (string, bool) {
	v = bytes.TrimSpace(v)
	const scheme = "bearer "
	if len(v) <= len(scheme) || !asciiEqualFold(v[:len(scheme)], scheme) {
		return "", false
	}
	tok := bytes.TrimSpace(v[len(scheme):])
	if len(tok) == 0 {
		return "", false
	}
	return string(tok), true
}

// selectProtocol reads a Sec-WebSocket-Protocol value: it picks out a
// kpush.bearer.<token> entry and selects kpush.v1 when offered.
func selectProtocol(v []byte) (selected, token string) {
	for _, p := range strings.Split(string(v), ",") {
		p = strings.TrimSpace(p)
		switch {
		case p == ProtocolV1:
			selected = ProtocolV1
		case strings.HasPrefix(p, ProtocolBearerPrefix) && len(p) > len(ProtocolBearerPrefix):
			token = p[len(ProtocolBearerPrefix):]
		}
	}
	return selected, token
}

// queryToken returns the token query parameter of a request URI.
func queryToken(uri []byte) string {
	q := bytes.IndexByte(uri, '?')
	if q < 0 {
		return ""
	}
	vals, err := url.ParseQuery(string(uri[q+1:]))
	if err != nil {
		return ""
	}
	return vals.Get("token")
}
