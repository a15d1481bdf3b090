package gateway

import (
	"strconv"

	"github.com/kpush/kpush/router"
)

// Slow consumers. Every connection's queue is bounded by max_queue_messages
// and max_queue_bytes (live frames held for a resume included). When a frame
// does not fit, the policy of its route decides:
//
//   - disconnect: the connection is closed with 4008 "slow consumer";
//   - conflate: the queue is compacted to the newest pending frame of each
//     conflatable channel, and the frame replaces its channel's pending one
//     (or joins the queue if its channel has none). The next frame of the
//     channel written to the socket carries "skipped":N, the number of its
//     records dropped before it.
//
// Either way a slow connection never holds more than its bounds plus one
// pending frame per conflatable channel it subscribes to, and publishing to
// it never waits: other connections do not notice it.
//
// Frames gathered into a write in progress (the first inflight frames of the
// queue) are never dropped or rewritten.

// fitsLocked reports whether n more frames of size bytes fit the bounds.
// Caller holds c.mu.
func (c *conn) fitsLocked(n, size int) bool {
	lim := c.srv.lim()
	return len(c.queue)+c.held+n <= lim.MaxQueueMessages && c.queuedBytes+size <= lim.MaxQueueBytes
}

// protectedLocked is how many frames at the head of the queue are on their
// way to the socket. Caller holds c.mu.
func (c *conn) protectedLocked() int {
	if c.head > 0 {
		return max(c.inflight, 1)
	}
	return c.inflight
}

// queueLocked appends f within the bounds, applying the slow-consumer policy
// of f's route when they are reached. It returns false when the connection
// must be closed as a slow consumer. Caller holds c.mu.
func (c *conn) queueLocked(f *router.Frame) bool {
	if !c.fitsLocked(1, len(f.Data)) {
		c.compactLocked()
		if !c.fitsLocked(1, len(f.Data)) {
			if !f.Conflate {
				return false
			}
			if i := c.pendingOfLocked(f.Channel); i >= 0 {
				old := c.queue[i]
				c.queue[i] = f
				c.queuedBytes += len(f.Data) - len(old.Data)
				c.skippedLocked(f.Channel, 1)
				c.flags |= flagRecent
				return true
			}
			// The channel has nothing pending: f joins the queue beyond
			// the bounds, one frame per channel at most.
		}
	}
	c.queue = append(c.queue, f)
	c.queuedBytes += len(f.Data)
	c.flags |= flagRecent
	c.scheduleLocked()
	return true
}

// compactLocked drops every pending conflatable frame that has a newer
// pending frame of the same channel. Caller holds c.mu.
func (c *conn) compactLocked() {
	keep := c.protectedLocked()
	if len(c.queue)-keep < 2 {
		return
	}
	if c.seen == nil {
		c.seen = make(map[string]struct{})
	}
	// Walk newest first, marking dropped frames nil, then close the holes.
	dropped := 0
	for i := len(c.queue) - 1; i >= keep; i-- {
		f := c.queue[i]
		if !f.Conflate {
			continue
		}
		if _, ok := c.seen[f.Channel]; ok {
			c.queuedBytes -= len(f.Data)
			c.skippedLocked(f.Channel, 1)
			c.queue[i] = nil
			dropped++
			continue
		}
		c.seen[f.Channel] = struct{}{}
	}
	clear(c.seen)
	if dropped == 0 {
		return
	}
	c.srv.metrics.slowConsumers.WithLabelValues("conflate").Inc()
	j := keep
	for i := keep; i < len(c.queue); i++ {
		if c.queue[i] != nil {
			c.queue[j] = c.queue[i]
			j++
		}
	}
	clear(c.queue[j:])
	c.queue = c.queue[:j]
}

// pendingOfLocked returns the index of ch's pending conflatable frame, or -1.
// Caller holds c.mu.
func (c *conn) pendingOfLocked(ch string) int {
	keep := c.protectedLocked()
	for i := len(c.queue) - 1; i >= keep; i-- {
		if f := c.queue[i]; f.Conflate && f.Channel == ch {
			return i
		}
	}
	return -1
}

// skippedLocked counts n records of ch dropped by conflation; the next
// frame of ch written carries the total. Caller holds c.mu.
func (c *conn) skippedLocked(ch string, n int64) {
	if c.conflated == nil {
		c.conflated = make(map[string]int64)
	}
	c.conflated[ch] += n
	c.srv.metrics.conflated.Add(float64(n))
}

// markSkippedLocked rewrites queue[i] to carry "skipped":N when records of
// its channel were dropped before it. flush calls it while gathering, for
// frames not yet on the wire. Caller holds c.mu.
func (c *conn) markSkippedLocked(i int) *router.Frame {
	f := c.queue[i]
	n := c.conflated[f.Channel]
	if n == 0 || f.Payload == nil {
		return f
	}
	delete(c.conflated, f.Channel)
	m := markFrame(f, `"skipped":`+strconv.FormatInt(n, 10))
	c.queue[i] = m
	c.queuedBytes += len(m.Data) - len(f.Data)
	return m
}
