package gateway

import (
	"crypto/tls"
	"github.com/kpush/kpush/gateway/internal/netpoll"
	"net"
	"syscall"
)

// tlsState is a conn's TLS session after the handshake.
type tlsState struct {
	tc   *tls.Conn
	link *netpoll.TLSLink
	// drained is set by the reading worker when the last read found the
	// socket empty; if false, crypto/tls may hold buffered records that
	// epoll cannot see, so the conn is queued for another read instead of
	// being re-armed.
	drained bool
}

// read reads into b: plaintext through TLS, or raw bytes. It returns
// syscall.EAGAIN when nothing more is available.
func (c *conn) read(b []byte) (int, error) {
	if c.tlsLink() == nil {
		return netpoll.Read(int(c.fd), b)
	}
	n, err := c.tlsLink().tc.Read(b)
	c.tlsLink().drained = err == syscall.EAGAIN
	if c.tlsLink().link.Pending() {
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
	link := c.tlsLink().link
	for round := 0; round < 4; round++ {
		c.mu.Lock()
		if c.flags&flagClosed != 0 {
			c.abandonFlushLocked()
			return
		}
		var oldest int64
		if !link.Pending() {
			if len(c.out.frames) == 0 {
				c.endFlushLocked()
				return
			}
			// Gather plaintext; frames are immutable, but the bytes are
			// copied because TLS records span frames.
			plain := w.rbuf[:0]
			for i, f := range c.out.frames {
				if c.out.conflated != nil && (i > 0 || c.out.head == 0) {
					f = c.out.markSkipped(i) // "skipped":N, before it is copied
				}
				b := c.wireLocked(i, f)
				if i == 0 {
					b = b[c.out.head:]
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
			c.out.consume(len(plain))
			c.mu.Unlock()
			// Only this worker writes (flagFlushing); the reading worker
			// may add an alert concurrently, which crypto/tls serialises.
			if _, err := c.tlsLink().tc.Write(plain); err != nil {
				c.mu.Lock()
				c.flags &^= flagFlushing
				c.mu.Unlock()
				c.abort()
				return
			}
		} else {
			c.mu.Unlock()
		}
		c.srv.socketWrites.Add(1)
		if err := link.WriteOut(); err != nil {
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
func (s *Server) startTLS(nc net.Conn) (*tls.Conn, *netpoll.TLSLink, error) {
	link := netpoll.NewTLSLink(nc)
	tc := tls.Server(link, s.tlsConfig)
	if err := tc.Handshake(); err != nil {
		return nil, nil, err
	}
	return tc, link, nil
}
