package gateway

import (
	"math"

	"github.com/kpush/kpush/router"
)

// Frequency caps (max_rate). A capped channel sends a connection at most
// one frame every 1/max_rate seconds: a frame arriving when the channel's
// last one went out at least that long ago is queued at once (the first
// record after a quiet period is not delayed); one arriving sooner waits,
// outside the queue, as the channel's pending frame, and a newer one
// replaces it. When the interval has passed, the connection's timer
// (the server's timing wheel, one entry per connection however many of its
// channels wait) releases every due pending frame in one go, and a flush
// writes them together. The released frame carries "skipped":N, the number
// of the channel's records it replaced, as on slow: conflate routes.
//
// Positions stay truthful: a frame is a record with its own partition and
// offset, and a skipped record is one the client never saw, so a client
// resuming from the last offset it saw gets the records after it.
//
// A connection holds at most one pending frame per capped channel it
// subscribes to, beyond its queue bounds (as conflation's one frame per
// channel): publishing never waits for it. The state is guarded by the
// connection's mu, like the rest of outbound.

// capSet is a connection's frequency caps, behind a pointer so that a
// connection without caps pays one word for them.
type capSet struct{ list []chanCap }

// chanCap is a connection's frequency cap on one channel. A connection's
// caps are a slice searched linearly: a connection holds at most
// max_subscriptions of them (100 by default), usually a handful, and a
// contiguous slice costs less per record than a map (a market-mix profile
// put the map's lookups and iteration at 17 % of kpush's CPU).
type chanCap struct {
	ch      string        // the channel
	every   int64         // ms between two frames of the channel
	own     bool          // set by the subscription's max_rate; else the route's
	next    int64         // monoMillis from which the channel may send again
	pending *router.Frame // the newest frame waiting for next, or nil
	skipped int64         // records pending replaced, not yet counted in conflated
}

// nextSlot is when a channel that sent at now may send again: now plus its
// interval, rounded up to a grid of a sixteenth of the interval (1 to 16
// ms) counted from the process's start (monoMillis). Rounding up never lets a channel pass
// its rate, and it lines up the channels of a connection (and of all
// connections) whose intervals end within one grid step, so that one timer
// entry and one write carry all of them.
func nextSlot(now, every int64) int64 {
	g := min(max(every/16, 1), 16)
	t := now + every
	return (t + g - 1) / g * g
}

// capInterval is the ms between two frames at rate frames a second
// (MinMaxRate..MaxMaxRate), at least 1.
func capInterval(rate float64) int64 {
	return max(1, int64(math.Round(1000/rate)))
}

// setCap caps ch at rate frames a second for this connection (a
// subscribe's max_rate): it overrides the route's default, and a later
// subscribe's max_rate replaces it.
func (o *outbound) setCap(ch string, rate float64) {
	cp := o.findCap(ch)
	if cp == nil {
		cp = o.addCap(ch)
	}
	cp.every, cp.own = capInterval(rate), true
}

// findCap returns ch's cap, or nil. The pointer is valid until caps change.
func (o *outbound) findCap(ch string) *chanCap {
	if o.caps == nil {
		return nil
	}
	l := o.caps.list
	for i := range l {
		if l[i].ch == ch {
			return &l[i]
		}
	}
	return nil
}

// addCap adds an uncapped entry for ch and returns it.
func (o *outbound) addCap(ch string) *chanCap {
	if o.caps == nil {
		o.caps = &capSet{}
	}
	o.caps.list = append(o.caps.list, chanCap{ch: ch})
	return &o.caps.list[len(o.caps.list)-1]
}

// dropCap forgets ch's cap and its pending frame (on unsubscribe).
func (o *outbound) dropCap(ch string) {
	if o.caps == nil {
		return
	}
	l := o.caps.list
	for i := range l {
		if l[i].ch == ch {
			last := len(l) - 1
			l[i] = l[last]
			l[last] = chanCap{}
			o.caps.list = l[:last]
			break
		}
	}
	if len(o.caps.list) == 0 {
		o.caps = nil
	}
}

// capOf returns the cap that applies to f: the subscription's, else its
// route's (f.MaxRate, which a reload may change), or nil.
func (o *outbound) capOf(f *router.Frame) *chanCap {
	cp := o.findCap(f.Channel)
	switch {
	case cp != nil && cp.own:
		return cp
	case f.MaxRate > 0:
		if cp == nil {
			cp = o.addCap(f.Channel)
		}
		cp.every = capInterval(f.MaxRate)
		return cp
	case cp != nil && cp.pending == nil:
		// The route's cap was removed (reload): the channel is uncapped.
		o.dropCap(f.Channel)
		return nil
	}
	// Uncapped now, with a frame still pending under the old cap: it is
	// replaced by f at once, so the channel's order holds.
	return cp
}

// throttle queues f now if its channel may send, or makes it the channel's
// pending frame (pushDeferred: the caller arms the timer for cp.next).
func (o *outbound) throttle(cp *chanCap, f *router.Frame, now int64, b queueBounds, pc *policyCounters) pushResult {
	if cp.pending == nil && now >= cp.next {
		cp.next = nextSlot(now, cp.every)
		return o.push(f, b, pc)
	}
	if cp.pending != nil {
		cp.skipped++
		pc.conflated.Inc()
	}
	cp.pending = f
	if f.MaxRate == 0 && !cp.own {
		// The cap is gone (see capOf): release at once.
		cp.next = now
	}
	return pushDeferred
}

// capDue is when ch's pending frame may go out, or 0 when it has none.
func (o *outbound) capDue(ch string) int64 {
	if cp := o.findCap(ch); cp != nil && cp.pending != nil {
		return cp.next
	}
	return 0
}

// releaseDue queues the pending frame of every capped channel whose
// interval has passed by now. It returns whether it queued anything, false
// in ok when a frame did not fit and its route does not conflate (the
// connection must be closed as a slow consumer), and when the next pending
// frame falls due (0: none pending).
func (o *outbound) releaseDue(now int64, b queueBounds, pc *policyCounters) (queued, ok bool, next int64) {
	ok = true
	if o.caps == nil {
		return false, true, 0
	}
	// Backwards: dropCap moves the last cap into the dropped one's place.
	for i := len(o.caps.list) - 1; i >= 0; i-- {
		cp := &o.caps.list[i]
		ch := cp.ch
		if cp.pending == nil {
			continue
		}
		if now < cp.next {
			if next == 0 || cp.next < next {
				next = cp.next
			}
			continue
		}
		f := cp.pending
		cp.pending = nil
		cp.next = nextSlot(now, cp.every)
		switch o.push(f, b, pc) {
		case pushRefused:
			ok = false
		case pushQueued, pushReplaced:
			queued = true
			if cp.skipped > 0 {
				// f reports the records it replaced while it waited, and
				// no other frame does: an earlier frame of ch still queued
				// keeps its own mark. Counted in kpush_conflated_total by
				// throttle already.
				o.addMark(f, cp.skipped)
			}
		}
		cp.skipped = 0
		if !cp.own && f.MaxRate == 0 {
			o.dropCap(ch)
		}
	}
	return queued, ok, next
}
