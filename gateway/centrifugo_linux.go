package gateway

import (
	"bytes"

	"github.com/gobwas/ws"
)

// centrifugoRequested reports whether the peeked request line asks for
// gateway.centrifugo_path.
func (s *Server) centrifugoRequested(pc *peekedConn) bool {
	if s.cfg.CentrifugoPath == sseOff {
		return false
	}
	b, _ := pc.r.Peek(pc.r.Buffered())
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		b = b[:i]
	}
	sp := bytes.IndexByte(b, ' ')
	if sp < 0 {
		return false
	}
	uri := b[sp+1:]
	if i := bytes.IndexByte(uri, ' '); i >= 0 {
		uri = uri[:i]
	}
	if i := bytes.IndexByte(uri, '?'); i >= 0 {
		uri = uri[:i]
	}
	return string(uri) == s.cfg.CentrifugoPath
}

// tokenExpiredCode is the close code of a connection whose token expired
// without a refresh: Centrifugo's "expired" disconnect (3005, after which
// the SDKs reconnect and, answered 109 for the old token, ask the
// application for a new one) on the Centrifugo endpoint, 4001 otherwise.
func (c *conn) tokenExpiredCode() ws.StatusCode {
	if c.cfState() != nil {
		return cfCloseExpired
	}
	return CloseTokenExpired
}
