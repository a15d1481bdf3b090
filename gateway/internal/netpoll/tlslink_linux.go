package netpoll

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// TLS on the epoll path.
//
// crypto/tls drives a net.Conn; kpush's connections are bare descriptors
// read and written by workers when epoll says so. TLSLink bridges the two:
// during the handshake (TLS and the WebSocket upgrade, in the handshake
// goroutine under its deadline) it delegates to the Go net.Conn; once the
// connection is detached it reads the raw descriptor and never blocks:
//
//   - Read returns syscall.EAGAIN when the socket is empty. EAGAIN is a
//     net.Error whose Temporary() is true, and crypto/tls only makes read
//     errors sticky when they are not temporary (readRecordOrCCS), keeping
//     a partial record in its raw input for the next call.
//   - Write never touches the socket: it appends ciphertext to a pending
//     buffer that the connection's flush writes out. tls.Conn makes write
//     errors sticky, so the link never returns one.
//
// An idle TLS connection therefore holds no goroutine, like a plain one; it
// does hold crypto/tls's own state (see README.md for the measured size).
type TLSLink struct {
	net.Conn     // the Go connection until Detach; nil after
	fd       int // -1 until Detach

	mu  sync.Mutex // guards out, off
	out []byte     // ciphertext waiting to be written
	off int        // bytes of out already written
}

func (l *TLSLink) Read(p []byte) (int, error) {
	if l.fd < 0 {
		return l.Conn.Read(p)
	}
	n, err := Read(l.fd, p)
	switch {
	case err == syscall.EAGAIN:
		return 0, err
	case err != nil:
		// Wrapped so crypto/tls sees a permanent error: ECONNRESET is
		// Temporary() as a bare Errno.
		return 0, os.NewSyscallError("read", err)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

func (l *TLSLink) Write(p []byte) (int, error) {
	if l.fd < 0 {
		return l.Conn.Write(p)
	}
	l.mu.Lock()
	if l.out == nil {
		l.out = getOutBuf()
	}
	l.out = append(l.out, p...)
	l.mu.Unlock()
	return len(p), nil
}

// HandshakeConn is the Go connection under the link during the handshake
// (lingerClose shuts its write side).
func (l *TLSLink) HandshakeConn() net.Conn { return l.Conn }

// NewTLSLink returns a link over the Go connection nc, for the handshake.
func NewTLSLink(nc net.Conn) *TLSLink { return &TLSLink{Conn: nc, fd: -1} }

// Detach moves the link onto the bare descriptor fd (taken from the Go
// connection by Detach); the Go connection is no longer used.
func (l *TLSLink) Detach(fd int) { l.fd, l.Conn = fd, nil }

// Close is only reached before Detach (crypto/tls closing a failed
// handshake); after it the descriptor belongs to the caller.
func (l *TLSLink) Close() error {
	if l.fd < 0 {
		return l.Conn.Close()
	}
	return nil
}

func (l *TLSLink) SetDeadline(t time.Time) error {
	if l.fd < 0 {
		return l.Conn.SetDeadline(t)
	}
	return nil
}

func (l *TLSLink) SetReadDeadline(t time.Time) error {
	if l.fd < 0 {
		return l.Conn.SetReadDeadline(t)
	}
	return nil
}

func (l *TLSLink) SetWriteDeadline(t time.Time) error {
	if l.fd < 0 {
		return l.Conn.SetWriteDeadline(t)
	}
	return nil
}

// Pending reports whether ciphertext waits to be written.
func (l *TLSLink) Pending() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.off < len(l.out)
}

// WriteOut writes pending ciphertext to the descriptor. It returns the
// write error (EAGAIN when the socket is full); the buffer goes back to its
// pool once everything is written.
func (l *TLSLink) WriteOut() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.off < len(l.out) {
		n, err := syscall.Write(l.fd, l.out[l.off:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		l.off += n
	}
	putOutBuf(l.out)
	l.out, l.off = nil, 0
	return nil
}

// Release gives the pending buffer back; the connection is gone.
func (l *TLSLink) Release() {
	l.mu.Lock()
	if l.out != nil {
		putOutBuf(l.out)
	}
	l.out, l.off = nil, 0
	l.mu.Unlock()
}

// Ciphertext buffers are pooled: a connection holds one only while it has
// bytes to write.
var outBufPool = sync.Pool{New: func() any { b := make([]byte, 0, 32<<10); return &b }}

func getOutBuf() []byte { return (*outBufPool.Get().(*[]byte))[:0] }

func putOutBuf(b []byte) {
	if cap(b) > 256<<10 {
		return // let an unusually large one go
	}
	b = b[:0]
	outBufPool.Put(&b)
}
