package gateway

import (
	"sync"

	"github.com/gobwas/ws"
	"github.com/kpush/kpush/gateway/wire"
	"github.com/kpush/kpush/router"
)

// session is one client connection's protocol state, apart from its
// socket: subscriptions, grant and request rate, the outbound queue with its
// bounds, slow-consumer policy and resume state, and whether it is closing.
// It is the same on every system and unit tests drive it without a socket
// (session_test.go). The connection's transport half (on Linux, conn in
// conn_linux.go, which embeds it) moves its bytes; the session reaches it
// only through the transport interface below, passed in by the caller, so
// that an idle connection carries no pointer back to itself.
//
// Requests are answered in requests.go (subscribe, unsubscribe) and
// security.go (rate, grants, refresh); resumes in resume_seam.go.
type session struct {
	srv *Server
	ip  string  // the client's address (clientaddr_linux.go)
	sec connSec // token grant, expiry and request rate (security.go)

	mu sync.Mutex
	// flags is guarded by mu. The session sets and reads flagClosing,
	// flagRecent and flagDelayed and reads flagClosed; the other bits are
	// the transport's (conn_linux.go). They share one byte so that an idle
	// connection stays in the 240-byte size class (TestConnSize).
	flags connFlags
	out   outbound // guarded by mu; frames on their way to the socket (outbound.go)
	subs  []string // guarded by mu; channels subscribed to
}

// transport is what a session needs of its connection's transport half.
// conn (conn_linux.go) is the one implementation; session_test.go has a
// recording fake. The Locked methods are called with the session's mu held:
// they must not block, take a router lock or call back into the session.
type transport interface {
	// Sink is what the router holds as the channel's subscriber: the
	// connection itself. Its Enqueue hands the frame to deliver.
	router.Sink
	// sess returns the connection's session.
	sess() *session
	// wakeLocked has the writer flush the queue: at once, or, for live
	// records (delayed), once gateway.write_delay has passed.
	wakeLocked(delayed bool)
	// armLocked has releaseDueLocked called at due (monoMillis) unless it
	// will be already by then.
	armLocked(due int64)
	// closingLocked is called once the session has queued its close
	// frame: the transport writes it and cuts the connection if the client
	// does not take it within the close grace period, and, when
	// unsubscribe, has dropSubscriptions run where no router lock is held.
	closingLocked(unsubscribe bool)
}

// closeGraceMS is how long a closing connection may take to accept its close
// frame before it is cut.
const closeGraceMS = 2000

// deliver queues a shared frame for writing: it is the body of the
// transport's Enqueue. It is called by the router with a shard lock held,
// so it only appends and schedules; it never writes. Frames of a channel
// being resumed go through its resume state first (resume_seam.go); a full
// queue applies the route's slow-consumer policy (outbound.go). A
// connection that writes the shared compressed form makes it first, if no
// connection has (deflate.go): before it takes mu, so its writer does not
// wait on a compression; zshared is fixed before the router can reach c.
func (c *session) deliver(t transport, f *router.Frame) bool {
	if f.Deflated != nil && c.out.zshared {
		c.srv.deflateShared(f)
	}
	c.mu.Lock()
	if c.flags&(flagClosing|flagClosed) != 0 {
		c.mu.Unlock()
		return false
	}
	ok := c.queueLocked(t, f)
	queued := c.out.bytes
	c.mu.Unlock()
	if !ok {
		c.srv.metrics.slowConsumers.WithLabelValues("disconnect").Inc()
		c.srv.log.Debug("closing slow consumer", "ip", c.ip, "queued_bytes", queued)
		c.closeWith(t, CloseSlowConsumer, "slow consumer", true)
	}
	return ok
}

// queueLocked passes a live frame to the outbound queue (its channel's
// resume state, then the bounds and the route's slow-consumer policy) and
// schedules a flush when it was queued. It returns false when the
// connection must be closed as a slow consumer. Caller holds c.mu.
func (c *session) queueLocked(t transport, f *router.Frame) bool {
	var now int64
	if f.MaxRate > 0 || c.out.caps != nil {
		now = monoMillis() // capped channels only: the coarse clock is 100 ms
	}
	switch c.out.enqueue(f, now, c.bounds(), &c.srv.policy) {
	case pushRefused:
		return false
	case pushQueued:
		c.flags |= flagRecent
		t.wakeLocked(true)
	case pushReplaced:
		c.flags |= flagRecent
	case pushDeferred:
		t.armLocked(c.out.capDue(f.Channel))
	}
	return true
}

// releaseDueLocked releases the pending frames of capped channels whose
// interval has passed (the transport's timer fired at now), flushes them,
// and the records of an ended write delay (delayed), in one write, and
// re-arms for the next capped frame. Caller holds c.mu; the session is not
// closing.
func (c *session) releaseDueLocked(t transport, now int64, delayed bool) {
	queued, ok, next := c.out.releaseDue(now, c.bounds(), &c.srv.policy)
	if !ok {
		c.srv.metrics.slowConsumers.WithLabelValues("disconnect").Inc()
		c.srv.log.Debug("closing slow consumer", "ip", c.ip, "queued_bytes", c.out.bytes)
		c.closeLocked(t, CloseSlowConsumer, "slow consumer", true)
		return
	}
	if queued {
		c.flags |= flagRecent
	}
	if (queued || delayed) && len(c.out.frames) > 0 {
		t.wakeLocked(false)
	}
	t.armLocked(next)
}

// send queues a frame private to this connection (a reply or a control
// frame). Replies count against the same bounds as records
// (max_queue_bytes, max_queue_messages): a client that keeps sending
// requests without reading the replies is closed as a slow consumer (4008)
// once they are reached.
func (c *session) send(t transport, b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sendLocked(t, b)
}

// sendLocked is send with c.mu held.
func (c *session) sendLocked(t transport, b []byte) {
	if c.flags&(flagClosing|flagClosed) != 0 {
		return
	}
	if !c.out.fits(c.bounds(), 1, len(b)) {
		c.srv.metrics.slowConsumers.WithLabelValues("disconnect").Inc()
		c.srv.log.Debug("closing slow consumer: replies not read", "ip", c.ip, "queued_bytes", c.out.bytes)
		c.closeLocked(t, CloseSlowConsumer, "slow consumer", true)
		return
	}
	c.out.add(&router.Frame{Data: b})
	c.flags |= flagRecent
	t.wakeLocked(false)
}

// bounds returns the connection's queue limits, as they are now.
func (c *session) bounds() queueBounds {
	lim := c.srv.lim()
	return queueBounds{messages: lim.MaxQueueMessages, bytes: lim.MaxQueueBytes}
}

// closeWith queues a close frame and marks the connection closing; the
// transport releases the descriptor once the frame is written or when the
// close deadline passes. dropPending discards frames not yet started.
func (c *session) closeWith(t transport, code ws.StatusCode, reason string, dropPending bool) {
	c.mu.Lock()
	c.closeLocked(t, code, reason, dropPending)
	c.mu.Unlock()
}

// closeLocked is closeWith with c.mu held.
func (c *session) closeLocked(t transport, code ws.StatusCode, reason string, dropPending bool) {
	if c.flags&(flagClosing|flagClosed) != 0 {
		return
	}
	c.flags |= flagClosing
	c.out.caps = nil // pending capped frames are never written now
	for ch := range c.out.resume {
		c.out.dropResume(ch)
	}
	if dropPending {
		c.out.dropPending()
	}
	c.out.add(&router.Frame{Data: wire.CloseFrame(code, reason)})
	c.srv.metrics.closes.WithLabelValues(closeReason(code)).Inc()
	if r := closeRejectReason(code); r != "" {
		c.srv.metrics.rejected.WithLabelValues(r).Inc()
	}
	// closeWith may run inside Enqueue, under a router shard lock, so the
	// router is left to the transport (see dropSubscriptions).
	t.closingLocked(len(c.subs) > 0)
}

// dropSubscriptions removes a closing connection from the router. The
// transport runs it where no router lock is held (on Linux, a worker).
// Subscribe adds nothing once the session is closing, so this sees the
// final list.
func (c *session) dropSubscriptions(t transport) {
	c.mu.Lock()
	subs := c.subs
	c.subs = nil
	c.mu.Unlock()
	if len(subs) > 0 {
		c.srv.router.Unsubscribe(t, subs...)
	}
}

// closing reports whether the connection is closing or closed.
func (c *session) closing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flags&(flagClosing|flagClosed) != 0
}

type connFlags uint8

const (
	flagFlushing connFlags = 1 << iota // transport: a flush is queued or running
	flagWaitOut                        // transport: socket buffer full; waiting for EPOLLOUT
	flagReading                        // transport: a worker is running onReadable
	flagClosing                        // session: a close frame is queued; no more frames
	flagClosed                         // transport: descriptor released or about to be
	flagRecent                         // session: something was queued since the last sweep
	flagDelayed                        // records wait for write_delay: the timer schedules the flush
)
