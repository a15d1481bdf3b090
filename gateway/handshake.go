package gateway

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"sync"
)

// The WebSocket port also answers plain HTTP (the demo page, the JS client).
// The handshake peeks at the request line: a request for gateway.path goes to
// gobwas/ws's zero-copy upgrader, anything else to net/http.

var peekPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

var errRequestLine = errors.New("gateway: request line too long or malformed")

// peekedConn is a net.Conn whose first bytes come from a reader that has
// already buffered them.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// release returns the reader to its pool. Only the WebSocket path calls it,
// once the upgrade is done; connections handed to net/http keep theirs.
func (c *peekedConn) release() {
	c.r.Reset(nil)
	peekPool.Put(c.r)
	c.r = nil
}

// peekRequest reads the request line without consuming it and reports
// whether it asks for wsPath. The returned conn replays the peeked bytes.
func peekRequest(c net.Conn, wsPath string) (*peekedConn, bool, error) {
	br := peekPool.Get().(*bufio.Reader)
	br.Reset(c)
	pc := &peekedConn{Conn: c, r: br}
	var line []byte
	for n := 1; ; n = br.Buffered() + 1 {
		_, err := br.Peek(n) // wait for at least n bytes...
		b, _ := br.Peek(br.Buffered())
		if i := bytes.IndexByte(b, '\n'); i >= 0 { // ...and look at all that came
			line = b[:i]
			break
		}
		if err != nil {
			pc.release()
			return nil, false, err
		}
		if br.Buffered() >= br.Size() {
			pc.release()
			return nil, false, errRequestLine
		}
	}
	// "GET /path?query HTTP/1.1"
	sp := bytes.IndexByte(line, ' ')
	if sp < 0 {
		return pc, false, nil
	}
	uri := line[sp+1:]
	if sp2 := bytes.IndexByte(uri, ' '); sp2 >= 0 {
		uri = uri[:sp2]
	}
	if q := bytes.IndexByte(uri, '?'); q >= 0 {
		uri = uri[:q]
	}
	return pc, string(uri) == wsPath, nil
}

// chanListener feeds connections the handshake classified as plain HTTP to
// an http.Server.
type chanListener struct {
	conns chan net.Conn
	done  chan struct{}
	addr  net.Addr
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error   { return nil }
func (l *chanListener) Addr() net.Addr { return l.addr }

func remoteIP(c net.Conn) string {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP.String()
	}
	return c.RemoteAddr().String()
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		if lower(b[i]) != lower(s[i]) {
			return false
		}
	}
	return true
}

func asciiEqualFoldString(a, b string) bool { return asciiEqualFold([]byte(a), b) }

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}
