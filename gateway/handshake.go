package gateway

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gobwas/ws"
)

// The WebSocket port also answers plain HTTP (the demo page, the JS client).
// The handshake peeks at the request line: a request for gateway.path goes to
// gobwas/ws's zero-copy upgrader, anything else to net/http.

var peekPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

var errRequestLine = errors.New("gateway: request line longer than 4 KiB")

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

// readHead reads the request head (request line and headers, through the
// blank line) from r, at most limit bytes of it. It returns the head and the
// bytes read past it, which belong to the WebSocket stream: a client may
// send its first frames without waiting for the 101.
func readHead(r io.Reader, limit int) (head, rest []byte, err error) {
	buf := make([]byte, 0, min(limit, 4096))
	scanned := 0
	for {
		if i := headEnd(buf, scanned); i >= 0 {
			return buf[:i], buf[i:], nil
		}
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, nil, err
		}
		if len(buf) >= limit {
			return nil, nil, errHeaderTooLarge
		}
		scanned = max(0, len(buf)-3)
		if len(buf) == cap(buf) {
			buf = append(make([]byte, 0, min(2*cap(buf), limit)), buf...)
		}
		var n int
		n, err = r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
	}
}

// headEnd returns the length of the head in b (through "\r\n\r\n", or
// "\n\n", which the upgrader also accepts), or -1. The search starts at
// from.
func headEnd(b []byte, from int) int {
	for i := from; i < len(b); i++ {
		if b[i] != '\n' {
			continue
		}
		switch {
		case i+1 < len(b) && b[i+1] == '\n':
			return i + 2
		case i+2 < len(b) && b[i+1] == '\r' && b[i+2] == '\n':
			return i + 3
		}
	}
	return -1
}

// checkHead applies the checks on an upgrade request that gobwas/ws leaves
// out: exactly one Host header (RFC 9112 §3.2: a request with more than one
// gets 400), and a Sec-WebSocket-Key that is the base64 encoding of 16 bytes
// (RFC 6455 §4.1; gobwas/ws checks only its length). It returns the
// refusal to answer with, or nil.
func checkHead(head []byte) error {
	hosts, keys := 0, 0
	lines := head
	if i := bytes.IndexByte(lines, '\n'); i >= 0 {
		lines = lines[i+1:] // past the request line
	}
	for len(lines) > 0 {
		line := lines
		if i := bytes.IndexByte(lines, '\n'); i >= 0 {
			line, lines = lines[:i], lines[i+1:]
		} else {
			lines = nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon < 0 {
			continue // the blank line; the upgrader refuses malformed ones
		}
		name, value := bytes.TrimSpace(line[:colon]), bytes.TrimSpace(line[colon+1:])
		switch {
		case asciiEqualFold(name, "Host"):
			hosts++
		case asciiEqualFold(name, "Sec-WebSocket-Key"):
			keys++
			if k, err := base64.StdEncoding.DecodeString(string(value)); err != nil || len(k) != 16 {
				return ws.RejectConnectionError(ws.RejectionStatus(http.StatusBadRequest),
					ws.RejectionReason("Sec-WebSocket-Key must be the base64 encoding of 16 bytes"))
			}
		}
	}
	if hosts > 1 {
		return ws.RejectConnectionError(ws.RejectionStatus(http.StatusBadRequest), ws.RejectionReason("more than one Host header"))
	}
	if keys > 1 {
		return ws.RejectConnectionError(ws.RejectionStatus(http.StatusBadRequest), ws.RejectionReason("more than one Sec-WebSocket-Key header"))
	}
	return nil
}

// headConn is what the upgrader reads and writes: the request head read by
// readHead, and the connection for the answer.
type headConn struct {
	r io.Reader
	w io.Writer
}

func (h headConn) Read(p []byte) (int, error)  { return h.r.Read(p) }
func (h headConn) Write(p []byte) (int, error) { return h.w.Write(p) }

// Lingering close of a refused handshake.
const (
	lingerTime  = 500 * time.Millisecond
	lingerBytes = 64 << 10
)

// lingerClose closes a connection after writing an answer to it. Closing a
// socket that still has unread input makes the kernel send a reset, which can
// destroy the answer before the client reads it; so the write side is shut
// first (the client sees the answer, then EOF) and what the client still
// sends is read and discarded, for at most lingerTime and lingerBytes.
func lingerClose(c net.Conn) {
	raw := c
	for unwrapped := false; !unwrapped; {
		switch x := raw.(type) {
		case *peekedConn:
			raw = x.Conn
		case *tls.Conn:
			raw = x.NetConn()
		case interface{ HandshakeConn() net.Conn }:
			raw = x.HandshakeConn()
		default:
			unwrapped = true
		}
	}
	if tc, ok := raw.(*net.TCPConn); ok && tc.CloseWrite() == nil {
		_ = tc.SetReadDeadline(time.Now().Add(lingerTime))
		_, _ = io.CopyN(io.Discard, tc, lingerBytes)
	}
	_ = c.Close()
	if raw != c {
		_ = raw.Close()
	}
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
