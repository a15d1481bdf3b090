//go:build linux

package gateway

import (
	"crypto/tls"
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
// read and written by workers when epoll says so. tlsLink bridges the two:
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
type tlsLink struct {
	net.Conn     // the Go connection until detach; nil after
	fd       int // -1 until detach

	mu  sync.Mutex // guards out, off
	out []byte     // ciphertext waiting to be written
	off int        // bytes of out already written
}

func (l *tlsLink) Read(p []byte) (int, error) {
	if l.fd < 0 {
		return l.Conn.Read(p)
	}
	n, err := readFD(l.fd, p)
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

func (l *tlsLink) Write(p []byte) (int, error) {
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

// handshakeConn is the Go connection under the link during the handshake
// (lingerClose shuts its write side).
func (l *tlsLink) handshakeConn() net.Conn { return l.Conn }

// Close is only reached before detach (crypto/tls closing a failed
// handshake); after it the descriptor belongs to the conn.
func (l *tlsLink) Close() error {
	if l.fd < 0 {
		return l.Conn.Close()
	}
	return nil
}

func (l *tlsLink) SetDeadline(t time.Time) error {
	if l.fd < 0 {
		return l.Conn.SetDeadline(t)
	}
	return nil
}

func (l *tlsLink) SetReadDeadline(t time.Time) error {
	if l.fd < 0 {
		return l.Conn.SetReadDeadline(t)
	}
	return nil
}

func (l *tlsLink) SetWriteDeadline(t time.Time) error {
	if l.fd < 0 {
		return l.Conn.SetWriteDeadline(t)
	}
	return nil
}

// pending reports whether ciphertext waits to be written.
func (l *tlsLink) pending() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.off < len(l.out)
}

// writeOut writes pending ciphertext to the descriptor. It returns the
// write error (EAGAIN when the socket is full); the buffer goes back to its
// pool once everything is written.
func (l *tlsLink) writeOut() error {
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

func (l *tlsLink) release() {
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

// tlsState is a conn's TLS session after the handshake.
type tlsState struct {
	tc   *tls.Conn
	link *tlsLink
	// drained is set by the reading worker when the last read found the
	// socket empty; if false, crypto/tls may hold buffered records that
	// epoll cannot see, so the conn is queued for another read instead of
	// being re-armed.
	drained bool
}

// read reads into b: plaintext through TLS, or raw bytes. It returns
// syscall.EAGAIN when nothing more is available.
func (c *conn) read(b []byte) (int, error) {
	if c.tls == nil {
		return readFD(c.fd, b)
	}
	n, err := c.tls.tc.Read(b)
	c.tls.drained = err == syscall.EAGAIN
	if c.tls.link.pending() {
		// Reading made crypto/tls answer something (an alert, a key
		// update): have it flushed.
		c.mu.Lock()
		c.scheduleLocked()
		c.mu.Unlock()
	}
	if n > 0 {
		// Data and an error together (a close_notify read ahead): hand
		// over the data; the error comes back on the next call.
		return n, nil
	}
	return n, err
}

// flushTLS is flush for a TLS connection: queued frames are encrypted into
// the link's pending buffer (up to one worker buffer per round, so pending
// ciphertext stays bounded) and written with one write per round.
func (c *conn) flushTLS(w *worker) {
	link := c.tls.link
	for round := 0; round < 4; round++ {
		c.mu.Lock()
		if c.flags&flagClosed != 0 {
			c.abandonFlushLocked()
			return
		}
		var oldest int64
		if !link.pending() {
			if len(c.queue) == 0 {
				c.endFlushLocked()
				return
			}
			// Gather plaintext; frames are immutable, but the bytes are
			// copied because TLS records span frames.
			plain := w.rbuf[:0]
			for i, f := range c.queue {
				if f.Conflate && c.conflated != nil && (i > 0 || c.head == 0) {
					f = c.markSkippedLocked(i) // "skipped":N, before it is copied
				}
				b := f.Data
				if i == 0 {
					b = b[c.head:]
				}
				room := cap(plain) - len(plain)
				if room == 0 {
					break
				}
				if len(b) > room {
					b = b[:room]
				}
				plain = append(plain, b...)
				if f.Timestamp > 0 && (oldest == 0 || f.Timestamp < oldest) {
					oldest = f.Timestamp
				}
			}
			c.consumeLocked(len(plain))
			c.mu.Unlock()
			// Only this worker writes (flagFlushing); the reading worker
			// may add an alert concurrently, which crypto/tls serialises.
			if _, err := c.tls.tc.Write(plain); err != nil {
				c.mu.Lock()
				c.flags &^= flagFlushing
				c.mu.Unlock()
				c.abort()
				return
			}
		} else {
			c.mu.Unlock()
		}
		if err := link.writeOut(); err != nil {
			c.mu.Lock()
			c.writeFailedLocked(err)
			return
		}
		if oldest > 0 {
			w.observeLatency(oldest)
		}
	}
	c.requeueFlush()
}

// startTLS runs the TLS handshake on an accepted connection, under the
// deadline already set on nc.
func (s *Server) startTLS(nc net.Conn) (*tls.Conn, *tlsLink, error) {
	link := &tlsLink{Conn: nc, fd: -1}
	tc := tls.Server(link, s.tlsConfig)
	if err := tc.Handshake(); err != nil {
		return nil, nil, err
	}
	return tc, link, nil
}
