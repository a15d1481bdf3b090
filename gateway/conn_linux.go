package gateway

import (
	"sync/atomic"
	"syscall"
	"unicode/utf8"

	"github.com/gobwas/ws"
	"github.com/kpush/kpush/gateway/internal/netpoll"
	"github.com/kpush/kpush/gateway/wire"
	"github.com/kpush/kpush/router"
)

// conn is one upgraded WebSocket connection: its session (session.go:
// subscriptions, grant, outbound queue, under mu) and its transport, below.
// While idle it holds its descriptor, its subscriptions and a few counters:
// no goroutine and no buffer. Reading happens on a worker when epoll
// reports the socket readable; writing happens on a worker when frames are
// queued. It is the session's transport: conn passes itself to the
// session's methods.
type conn struct {
	session

	fd  int32  // the descriptor; -1 once released
	gen uint32 // distinguishes this conn from earlier users of the same fd

	lastSeen atomic.Int64 // coarse ms of the last frame read from the client
	pingDue  atomic.Int64 // coarse ms at which the next server ping is due

	// alt is nil for a plain-ws protocol v1 connection (most of them);
	// otherwise its TLS state, event stream or Centrifugo session. Set
	// before the conn is registered.
	alt *altProto

	closeAt int64 // guarded by mu; coarse ms after which a closing conn is cut
	timerAt int64 // guarded by mu; when (monoMillis) its entry in the server's timer wheel is due, 0: none

	// rd is the read state, touched only by the worker running onReadable
	// (epoll's one-shot arming guarantees there is at most one); nil while
	// no frame or message is partly read, so an idle conn does not carry it.
	rd *readState
}

// altProto is what a connection has beyond plain-ws protocol v1, behind
// one pointer so that such a connection (most of them, idle) pays 8 bytes
// for all of it and stays in the 240-byte size class (TestConnSize).
type altProto struct {
	tls *tlsState  // wss and https event streams
	sse *sseStream // an event stream's position (sse_linux.go); guarded by the conn's mu
	cf  *cfSession // a Centrifugo client protocol session (centrifugo_session.go)
}

// ext returns c.alt, made on first use; only before the conn is registered.
func (c *conn) ext() *altProto {
	if c.alt == nil {
		c.alt = &altProto{}
	}
	return c.alt
}

// setTLS records the connection's TLS state; only before it is registered.
func (c *conn) setTLS(t *tlsState) { c.ext().tls = t }

// tlsLink returns the TLS state, nil for a plain connection.
func (c *conn) tlsLink() *tlsState {
	if c.alt == nil {
		return nil
	}
	return c.alt.tls
}

// sseState returns the event stream state, nil unless c is an event stream.
func (c *conn) sseState() *sseStream {
	if c.alt == nil {
		return nil
	}
	return c.alt.sse
}

// cfState returns the Centrifugo session, nil unless c speaks Centrifugo's
// protocol.
func (c *conn) cfState() *cfSession {
	if c.alt == nil {
		return nil
	}
	return c.alt.cf
}

// wireLocked returns the bytes to write for f, the i-th queued frame: the
// frame re-encoded for an event stream or a Centrifugo session (which never
// get the shared permessage-deflate form), else f as this connection's
// extensions want it. Caller holds c.mu.
func (c *conn) wireLocked(i int, f *router.Frame) []byte {
	switch {
	case c.sseState() != nil:
		nf := c.sseFrameLocked(i, f)
		c.out.replaced(f, nf) // its skip mark follows it
		return nf.Data
	case c.cfState() != nil:
		nf := c.cfFrameLocked(c.cfState(), i, f)
		c.out.replaced(f, nf)
		return nf.Data
	default:
		if c.out.zshared {
			c.srv.deflateShared(f) // made already unless f came from history (deflate.go)
		}
		return c.out.wire(f)
	}
}

// readState is what a connection's reader carries between reads.
type readState struct {
	partial []byte    // bytes of an incomplete frame carried to the next read
	msg     []byte    // fragments of a message being assembled
	msgOp   ws.OpCode // opcode of the message in msg
	msgZ    bool      // the message in msg is compressed (permessage-deflate)
}

// readState returns c's read state, making it. Reader only.
func (c *conn) readState() *readState {
	if c.rd == nil {
		c.rd = &readState{}
	}
	return c.rd
}

var (
	_ router.Sink = (*conn)(nil)
	_ transport   = (*conn)(nil)
)

// Enqueue queues a shared frame for writing (session.deliver). It is called
// by the router with a shard lock held, so it only appends and schedules.
func (c *conn) Enqueue(f *router.Frame) bool { return c.deliver(c, f) }

// send, allowRequest and closeWith are the session's methods of the same
// names with c as the transport, for the connection's own code (reading,
// the ticker, event streams, Centrifugo).

func (c *conn) sess() *session                         { return &c.session }
func (c *conn) send(b []byte)                          { c.session.send(c, b) }
func (c *conn) allowRequest(p []byte) (ok, alive bool) { return c.session.allowRequest(c, p) }
func (c *conn) closeWith(code ws.StatusCode, reason string, dropPending bool) {
	c.session.closeWith(c, code, reason, dropPending)
}

// wakeLocked schedules a flush: at once, or with write_delay for a live
// record (delayed). Caller holds c.mu.
func (c *conn) wakeLocked(delayed bool) {
	if delayed {
		c.scheduleDelayedLocked()
	} else {
		c.scheduleLocked()
	}
}

// closingLocked starts the close grace period, flushes the queued close
// frame and, when unsubscribe, leaves the router to a worker (see
// session.dropSubscriptions). Caller holds c.mu.
func (c *conn) closingLocked(unsubscribe bool) {
	c.closeAt = c.srv.clock.Load() + closeGraceMS
	c.scheduleLocked()
	if unsubscribe {
		c.srv.work.Push(netpoll.Task[conn]{C: c, Kind: netpoll.Closing})
	}
}

// scheduleDelayedLocked schedules a flush for a record: at once, or with
// gateway.write_delay, when the delay ends, so that the records due within
// it go out in one write. A flush already scheduled or running, or a full
// socket, takes the record anyway. Caller holds c.mu.
func (c *conn) scheduleDelayedLocked() {
	d := c.srv.cfg.WriteDelay.Milliseconds()
	if d == 0 || c.flags&(flagFlushing|flagWaitOut) != 0 {
		c.scheduleLocked()
		return
	}
	if c.flags&flagDelayed != 0 {
		return
	}
	c.flags |= flagDelayed
	c.armLocked(monoMillis() + d)
}

// armLocked makes the server's timer wheel call onTimer at due (monoMillis)
// unless it will already by then: a connection has one live entry however
// many of its channels wait. Caller holds c.mu.
func (c *conn) armLocked(due int64) {
	if due == 0 || c.timerAt != 0 && c.timerAt <= due {
		return
	}
	c.timerAt = due
	c.srv.timers.Add(c, due)
}

// onTimer runs on the timer wheel's goroutine when the connection's entry
// falls due: it ends a write delay and has the session release its capped
// channels' frames whose interval has passed, all in one flush
// (session.releaseDueLocked).
func (c *conn) onTimer(now int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.timerAt == 0 || c.timerAt > now {
		return // an entry superseded by an earlier one
	}
	c.timerAt = 0
	delayed := c.flags&flagDelayed != 0
	c.flags &^= flagDelayed
	if c.flags&(flagClosing|flagClosed) != 0 {
		return
	}
	c.releaseDueLocked(c, now, delayed)
}

// scheduleLocked hands the conn to a worker for flushing unless one is
// already on it or the socket is full. Caller holds c.mu.
func (c *conn) scheduleLocked() {
	if c.flags&(flagFlushing|flagWaitOut) != 0 {
		return
	}
	c.flags |= flagFlushing
	c.srv.work.Push(netpoll.Task[conn]{C: c, Kind: netpoll.Flush})
}

// flush writes as much of the queue as the socket takes, with one writev per
// round. It runs on a worker; flagFlushing makes it exclusive.
func (c *conn) flush(w *worker) {
	if c.tlsLink() != nil {
		c.flushTLS(w)
		return
	}
	for round := 0; round < 4; round++ {
		c.mu.Lock()
		if c.flags&flagClosed != 0 {
			c.abandonFlushLocked()
			return
		}
		if len(c.out.frames) == 0 {
			c.endFlushLocked()
			return
		}
		// Gather iovecs under the lock; frames are immutable, so they
		// can be written after it is released.
		iov := w.iov[:0]
		var oldest int64
		for i, f := range c.out.frames {
			if len(iov) == netpoll.MaxIovecs {
				break
			}
			if c.out.conflated != nil && (i > 0 || c.out.head == 0) {
				f = c.out.markSkipped(i) // "skipped":N, before it is on the wire
			}
			b := c.wireLocked(i, f)
			if i == 0 {
				b = b[c.out.head:]
			}
			if len(b) == 0 {
				continue
			}
			if f.Timestamp > 0 && (oldest == 0 || f.Timestamp < oldest) {
				oldest = f.Timestamp
			}
			iov = append(iov, syscall.Iovec{})
			netpoll.SetIovec(&iov[len(iov)-1], b)
		}
		w.iov = iov
		c.out.inflight = int32(len(iov))
		c.mu.Unlock()

		n, err := netpoll.Writev(int(c.fd), iov)
		c.srv.socketWrites.Add(1)
		clear(w.iov[:len(iov)]) // drop references to frame memory

		c.mu.Lock()
		c.out.inflight = 0
		if err != nil {
			c.writeFailedLocked(err)
			return
		}
		c.out.consume(n)
		c.mu.Unlock()
		if oldest > 0 {
			w.observeLatency(oldest)
		}
	}
	c.requeueFlush()
}

// endFlushLocked ends a flush that has nothing left to write; a closing
// connection is then half-closed (shutWrite). Caller holds c.mu, which is
// released.
func (c *conn) endFlushLocked() {
	c.flags &^= flagFlushing
	closing := c.flags&flagClosing != 0
	c.mu.Unlock()
	if closing {
		c.shutWrite()
	}
}

// abandonFlushLocked ends a flush on a closed connection and releases its
// descriptor if no worker still uses it. Caller holds c.mu, which is
// released.
func (c *conn) abandonFlushLocked() {
	c.flags &^= flagFlushing
	c.releaseIfIdleLocked()
	c.mu.Unlock()
}

// requeueFlush sends a connection that still has frames after its rounds to
// the back of the work queue, so one busy connection does not hold a worker.
func (c *conn) requeueFlush() {
	c.mu.Lock()
	if c.flags&flagClosed == 0 {
		c.srv.work.Push(netpoll.Task[conn]{C: c, Kind: netpoll.Flush})
	} else {
		c.flags &^= flagFlushing
		c.releaseIfIdleLocked()
	}
	c.mu.Unlock()
}

// writeFailedLocked handles a failed socket write: a full socket buffer
// waits for EPOLLOUT, any other error drops the connection. Caller holds
// c.mu, which is released.
func (c *conn) writeFailedLocked(err error) {
	if netpoll.IsWouldBlock(err) {
		c.flags = c.flags&^flagFlushing | flagWaitOut
		if c.flags&flagClosed == 0 {
			if err := c.srv.writePoller.Rearm(int(c.fd), c.gen); err != nil {
				c.flags &^= flagWaitOut
				c.mu.Unlock()
				c.pollerFailed("rearm for writing", err)
				return
			}
		}
		c.mu.Unlock()
		return
	}
	c.flags &^= flagFlushing
	c.mu.Unlock()
	c.abort()
}

// pollerFailed drops a connection whose descriptor epoll would no longer
// report: it would never be read or written again. It takes the normal
// close path (unsubscribed, released), counted in
// kpush_connection_closes_total{reason="poller_error"} and logged. Caller
// holds neither c.mu nor a router lock.
func (c *conn) pollerFailed(op string, err error) {
	c.srv.metrics.closes.WithLabelValues("poller_error").Inc()
	c.srv.log.Warn("gateway: dropping a connection epoll cannot watch", "op", op, "ip", c.ip, "err", err)
	c.abort()
}

// onWritable is called when the socket drained after a full buffer.
func (c *conn) onWritable() {
	c.mu.Lock()
	c.flags &^= flagWaitOut
	if c.flags&flagClosed == 0 {
		c.flags |= flagFlushing
		c.mu.Unlock()
		c.srv.work.Push(netpoll.Task[conn]{C: c, Kind: netpoll.Flush})
		return
	}
	c.releaseIfIdleLocked()
	c.mu.Unlock()
}

// onReadable reads what the socket holds and handles every complete frame.
func (c *conn) onReadable(w *worker) {
	c.mu.Lock()
	if c.flags&(flagClosed|flagReading) != 0 {
		c.mu.Unlock()
		return
	}
	c.flags |= flagReading
	c.mu.Unlock()

	alive := c.readFrames(w)

	var rearmErr error
	c.mu.Lock()
	c.flags &^= flagReading
	if alive && c.flags&flagClosed == 0 {
		if c.tlsLink() != nil && !c.tlsLink().drained {
			// crypto/tls may hold records epoll cannot see: read again.
			c.srv.work.Push(netpoll.Task[conn]{C: c, Kind: netpoll.Readable})
		} else {
			rearmErr = c.srv.readPoller.Rearm(int(c.fd), c.gen)
		}
	}
	c.releaseIfIdleLocked()
	c.mu.Unlock()
	switch {
	case rearmErr != nil:
		c.pollerFailed("rearm for reading", rearmErr)
	case !alive:
		c.abort()
	}
}

// readFrames reads up to a bounded amount and handles each frame. It
// returns false when the connection must be dropped without a close
// handshake (EOF, socket error).
func (c *conn) readFrames(w *worker) bool {
	if c.sseState() != nil {
		return c.sseDiscard(w)
	}
	maxPayload := c.srv.lim().MaxMessageBytes
	if size := readBufferSize(maxPayload); len(w.rbuf) < size {
		w.rbuf = make([]byte, size) // max_message_bytes was raised by a reload
	}
	buf := w.rbuf
	// Bytes carried over (an incomplete frame, or frames that arrived with
	// the upgrade request) are parsed before the socket is read: a client
	// that sent its first frames right behind the request may send nothing
	// more until they are answered.
	n := 0
	if c.rd != nil {
		n = copy(buf, c.rd.partial)
		c.rd.partial = nil
	}
	for budget := 4; ; budget-- {
		used := 0
		for used < n {
			f, k, err := wire.ParseClientFrameExt(buf[used:n], maxPayload, c.out.deflate)
			if err != nil {
				code := ws.StatusProtocolError
				if err == wire.ErrFrameTooLarge {
					code = ws.StatusMessageTooBig
				}
				c.srv.metrics.clientErrors.WithLabelValues(closeReason(code)).Inc()
				c.closeWith(code, err.Error(), true)
				return true
			}
			if k == 0 {
				break
			}
			used += k
			if !c.handleFrame(f) {
				return true // closing; the close frame is queued
			}
		}
		n = copy(buf, buf[used:n])
		if budget == 0 {
			break
		}
		m, err := c.read(buf[n:])
		if err != nil {
			if netpoll.IsWouldBlock(err) {
				break
			}
			return false
		}
		if m == 0 {
			return false // peer closed
		}
		n += m
		c.lastSeen.Store(c.srv.clock.Load())
	}
	if n > 0 {
		c.readState().partial = append([]byte(nil), buf[:n]...)
	} else if c.rd != nil && c.rd.msg == nil {
		c.rd = nil // nothing carried: an idle conn holds no read state
	}
	return true
}

// handleFrame acts on one frame. It returns false once the connection is
// closing.
func (c *conn) handleFrame(f wire.ClientFrame) bool {
	if c.rd != nil && c.rd.msg != nil && (f.Op == ws.OpText || f.Op == ws.OpBinary) {
		// RFC 6455 §5.4: only control frames may be interleaved with the
		// fragments of a message.
		c.srv.metrics.clientErrors.WithLabelValues(closeReason(ws.StatusProtocolError)).Inc()
		c.closeWith(ws.StatusProtocolError, "data frame inside a fragmented message", true)
		return false
	}
	switch f.Op {
	case ws.OpPing:
		if ok, alive := c.allowRequest(nil); !ok {
			return alive
		}
		c.send(wire.ServerFrame(ws.OpPong, f.Payload))
		return true
	case ws.OpPong:
		return true
	case ws.OpClose:
		c.mu.Lock()
		weClosed := c.flags&flagClosing != 0
		c.mu.Unlock()
		if weClosed {
			// The client answered our close frame: the closing handshake
			// is complete and nothing more will come, so release now.
			c.abort()
			return false
		}
		code, fail, why := wire.CheckCloseBody(f.Payload)
		if fail != 0 {
			c.srv.metrics.clientErrors.WithLabelValues(closeReason(fail)).Inc()
			c.closeWith(fail, why, true)
			return false
		}
		// Echo the status as RFC 6455 asks, then release.
		c.closeWith(code, "", true)
		return false
	case ws.OpBinary:
		if cf := c.cfState(); cf != nil && cf.proto {
			if !f.Fin {
				rd := c.readState()
				rd.msg = append(make([]byte, 0, len(f.Payload)*2), f.Payload...)
				rd.msgOp = ws.OpBinary
				rd.msgZ = f.Compressed
				return true
			}
			return c.srv.handleCentrifugoProto(c, c.cfState(), f.Payload, f.Compressed)
		}
		c.srv.metrics.clientErrors.WithLabelValues("binary_frame").Inc()
		c.closeWith(ws.StatusUnsupportedData, "binary frames are not part of protocol v1", true)
		return false
	case ws.OpText:
		if !f.Fin {
			rd := c.readState()
			rd.msg = append(make([]byte, 0, len(f.Payload)*2), f.Payload...)
			rd.msgOp = ws.OpText
			rd.msgZ = f.Compressed
			return true
		}
		if f.Compressed {
			return c.handleCompressed(f.Payload)
		}
		return c.handleText(f.Payload)
	case ws.OpContinuation:
		rd := c.rd
		if rd == nil || rd.msg == nil {
			c.closeWith(ws.StatusProtocolError, wire.ErrFrameBadResume.Error(), true)
			return false
		}
		if len(rd.msg)+len(f.Payload) > c.srv.lim().MaxMessageBytes {
			rd.msg = nil
			c.srv.metrics.clientErrors.WithLabelValues("message_too_big").Inc()
			c.closeWith(ws.StatusMessageTooBig, wire.ErrFrameTooLarge.Error(), true)
			return false
		}
		rd.msg = append(rd.msg, f.Payload...)
		if !f.Fin {
			return true
		}
		msg := rd.msg
		rd.msg = nil
		if rd.msgOp == ws.OpBinary {
			z := rd.msgZ
			rd.msgZ = false
			return c.srv.handleCentrifugoProto(c, c.cfState(), msg, z) // only Protobuf sessions start binary messages
		}
		if rd.msgZ {
			rd.msgZ = false
			return c.handleCompressed(msg)
		}
		return c.handleText(msg)
	}
	return true
}

// handleCompressed inflates a text message the client compressed
// (permessage-deflate) and handles it; the inflated size is bounded by
// max_message_bytes like any message.
func (c *conn) handleCompressed(p []byte) bool {
	m, err := inflateMessage(p, c.srv.lim().MaxMessageBytes)
	switch {
	case err == errInflatedTooLarge:
		c.srv.metrics.clientErrors.WithLabelValues("message_too_big").Inc()
		c.closeWith(ws.StatusMessageTooBig, err.Error(), true)
		return false
	case err != nil:
		c.srv.metrics.clientErrors.WithLabelValues("bad_deflate").Inc()
		c.closeWith(ws.StatusInvalidFramePayloadData, "compressed message does not inflate", true)
		return false
	}
	return c.handleText(m)
}

func (c *conn) handleText(p []byte) bool {
	if !utf8.Valid(p) {
		c.srv.metrics.clientErrors.WithLabelValues("invalid_utf8").Inc()
		c.closeWith(ws.StatusInvalidFramePayloadData, "text frame is not valid UTF-8", true)
		return false
	}
	if c.cfState() != nil {
		return c.srv.handleCentrifugo(c, c.cfState(), p)
	}
	c.srv.handleRequest(c, p)
	return true
}

// abort drops the connection without a close handshake. It must not be
// called under a router lock.
func (c *conn) abort() {
	c.mu.Lock()
	already := c.flags&flagClosed != 0
	c.flags |= flagClosed | flagClosing
	subs := c.subs
	c.subs = nil
	c.releaseIfIdleLocked()
	c.mu.Unlock()
	if !already && len(subs) > 0 {
		c.srv.router.Unsubscribe(c, subs...)
	}
}

// shutWrite half-closes a connection whose close frame has been written:
// the write side is shut (the client sees FIN after the close frame) while
// reading goes on until the client's close frame or EOF, or until the close
// grace period ends (the ticker cuts it). Closing the socket at once
// instead would make the kernel answer any client bytes still in flight
// with a reset, which can destroy the close frame before the client reads
// it.
func (c *conn) shutWrite() {
	c.mu.Lock()
	if c.flags&flagClosed == 0 && c.fd >= 0 {
		if err := syscall.Shutdown(int(c.fd), syscall.SHUT_WR); err != nil {
			c.flags |= flagClosed // the peer is gone already
		}
	}
	c.releaseIfIdleLocked()
	c.mu.Unlock()
}

// releaseIfIdleLocked closes the descriptor once the connection is closed and
// no worker is using it, so a descriptor number is never reused while a
// worker might still read or write it. Caller holds c.mu.
func (c *conn) releaseIfIdleLocked() {
	if c.flags&flagClosed == 0 || c.flags&(flagReading|flagFlushing) != 0 || c.fd < 0 {
		return
	}
	fd := int(c.fd)
	c.srv.readPoller.Remove(fd)
	c.srv.writePoller.Remove(fd)
	c.srv.conns.Remove(fd, c)
	netpoll.Close(fd)
	c.releaseSecurityLocked()
	if c.sseState() != nil {
		c.srv.metrics.sseConns.Add(-1)
	}
	if c.cfState() != nil {
		c.srv.metrics.cfConns.Add(-1)
	}
	c.fd = -1
	c.out.frames = nil
	c.out.bytes = 0
	c.out.resume = nil
	c.out.heldCount = 0
	c.out.conflated = nil
	c.out.caps = nil
	if c.out.zshared { // once: c.fd is -1 from here on
		c.srv.deflateConns.Add(-1)
	}
	c.rd = nil
}
