package router

import (
	"errors"
	"fmt"
	"time"
)

// Retained state. What the router keeps of a channel after handing a frame
// to its subscribers (its last frame and its history) is bounded three ways:
//
//   - by age: a channel that has had no subscriber and no record for
//     Config.MaxAge loses it (Trim);
//   - by route: DropRetention drops it for every channel of a route that
//     was removed or changed on reload;
//   - by a budget: the estimated bytes of every channel's retained state
//     stay under Config.MaxRetainedBytes, evicting the least recently used
//     channels (published to, or subscribed to) first.
//
// Eviction only forgets: a snapshot request then finds no snapshot and a
// resume falls back to a Kafka read-back, because a history that lost its
// frames is rebuilt from its next frame and claims completeness only from
// there (see history). It never turns an answer into a wrong one.
//
// The least-recently-used order is kept per shard, under the shard's lock,
// so a publish never takes a global lock. A publish that brings the total
// over the budget evicts from its own shard's list; Trim evicts from every
// shard when the total is still over it. The total can pass the budget by
// at most the growth of channels alone in their shard's list, until the
// next Trim.

// Config is the `router` section: bounds on retained state.
type Config struct {
	// MaxRetainedBytes bounds the memory of all snapshots and histories
	// together (frames plus an estimate of their bookkeeping).
	MaxRetainedBytes int64 `yaml:"max_retained_bytes"`
	// MaxAge is how long a channel with no subscriber and no record keeps
	// its snapshot and history.
	MaxAge time.Duration `yaml:"max_age"`
}

// Defaults of Config.
const (
	DefaultMaxRetainedBytes = 256 << 20
	DefaultMaxAge           = 24 * time.Hour
)

// SetDefaults fills every zero value with its default.
func (c *Config) SetDefaults() {
	if c.MaxRetainedBytes == 0 {
		c.MaxRetainedBytes = DefaultMaxRetainedBytes
	}
	if c.MaxAge == 0 {
		c.MaxAge = DefaultMaxAge
	}
}

// Validate reports every invalid key, named as in the YAML file.
func (c *Config) Validate() error {
	var errs []error
	if c.MaxRetainedBytes < 0 {
		errs = append(errs, fmt.Errorf("router.max_retained_bytes: %d is negative", c.MaxRetainedBytes))
	}
	if c.MaxAge < 0 {
		errs = append(errs, fmt.Errorf("router.max_age: %s is negative", c.MaxAge))
	}
	return errors.Join(errs...)
}

// SetConfig applies cfg (defaults filled in); it may be called while the
// router runs. A lower budget is enforced by the next Trim.
func (r *Router) SetConfig(cfg Config) error {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	r.cfg.Store(&cfg)
	return nil
}

// Config returns the configuration in force.
func (r *Router) Config() Config { return *r.cfg.Load() }

// EvictReason says why a channel's retained state was dropped.
type EvictReason int

// The reasons, indexes into Stats.Evicted.
const (
	EvictMaxAge       EvictReason = iota // no subscriber and no record for MaxAge
	EvictRouteRemoved                    // DropRetention
	EvictBudget                          // MaxRetainedBytes
	NumEvictReasons
)

// String is the reason's metric label.
func (e EvictReason) String() string {
	switch e {
	case EvictMaxAge:
		return "max_age"
	case EvictRouteRemoved:
		return "route_removed"
	case EvictBudget:
		return "budget"
	}
	return "unknown"
}

func (r *Router) evictedCounts() (out [NumEvictReasons]uint64) {
	for i := range out {
		out[i] = r.evicted[i].Load()
	}
	return out
}

// Estimated heap bytes of the parts of a channel's retained state, beyond
// the bytes of frame data: measured with TestRetainedBudgetHoldsHeap, and
// rounded up so that the estimate stays above the real heap.
const (
	channelCost = 320 // channel struct, its index entry and name header
	frameCost   = 160 // a Frame struct (160 B since Frame.Topic), and the rounding of its Data
	historyCost = 96  // a history struct
	entryCost   = 16  // one ring slot
	rangeCost   = 32  // one partition range
	lazyCost    = 48  // a Lazy (Frame.Deflated) and its slice header
)

// zCost bounds the memory of f's compressed form (Frame.Deflated): a Lazy,
// and a form that is only kept when smaller than Data. It is counted while
// f is retained whether or not the form has been made yet, so a deflate
// client that takes retained frames later cannot grow the retained memory
// past the estimate.
func zCost(f *Frame) int {
	if f.Deflated == nil {
		return 0
	}
	return lazyCost + len(f.Data)
}

// retainedSize estimates what c's retained state holds. Caller holds the
// shard lock.
func (c *channel) retainedSize() int64 {
	if c.last == nil && c.hist == nil {
		return 0
	}
	n := int64(channelCost + len(c.name))
	if c.last != nil {
		n += frameCost + int64(len(c.last.Data)+zCost(c.last))
	}
	if h := c.hist; h != nil {
		n += historyCost + int64(len(h.buf))*entryCost + int64(len(h.parts))*rangeCost
		n += int64(h.n)*frameCost + int64(h.bytes+h.zbytes)
	}
	return n
}

// accountLocked brings c's share of the retained bytes up to date and makes
// it the most recently used of its shard (or takes it off the list when it
// retains nothing). Caller holds sh.mu for writing.
func (r *Router) accountLocked(sh *shard, c *channel) {
	r.resizeLocked(sh, c, true)
}

// resizeLocked is accountLocked that moves c to the most recently used end
// only when used is set (a channel new to the list always goes there).
func (r *Router) resizeLocked(sh *shard, c *channel, used bool) {
	size := c.retainedSize()
	listed := c.size > 0
	delta := size - c.size
	c.size = size
	sh.retained += delta
	r.retained.Add(delta)
	switch {
	case listed && size == 0:
		sh.unlink(c)
	case listed && used:
		sh.unlink(c)
		sh.pushBack(c)
	case !listed && size > 0:
		sh.pushBack(c)
	}
}

// unlink takes c off the LRU list; caller holds sh.mu.
func (sh *shard) unlink(c *channel) {
	if c.prev != nil {
		c.prev.next = c.next
	} else {
		sh.lruHead = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	} else {
		sh.lruTail = c.prev
	}
	c.prev, c.next = nil, nil
}

// pushBack puts c at the most recently used end; caller holds sh.mu.
func (sh *shard) pushBack(c *channel) {
	c.prev, c.next = sh.lruTail, nil
	if sh.lruTail != nil {
		sh.lruTail.next = c
	} else {
		sh.lruHead = c
	}
	sh.lruTail = c
}

// dropRetainedLocked forgets c's last frame and history, and c itself when
// nobody is subscribed. Caller holds sh.mu for writing.
func (r *Router) dropRetainedLocked(sh *shard, c *channel, why EvictReason) {
	if h := c.hist; h != nil {
		r.histFrames.Add(int64(-h.n))
		r.histBytes.Add(int64(-h.bytes))
	}
	c.last, c.hist, c.keep = nil, nil, nil
	r.accountLocked(sh, c)
	r.evicted[why].Add(1)
	if len(c.sinks) == 0 && sh.channels[c.name] == c {
		delete(sh.channels, c.name)
		r.channels.Add(-1)
	}
}

// forgetLocked deletes an idle channel (no subscriber, no frame retained),
// with the bookkeeping of its empty history. Caller holds sh.mu for writing.
func (r *Router) forgetLocked(sh *shard, c *channel) {
	c.hist = nil
	r.resizeLocked(sh, c, false)
	delete(sh.channels, c.name)
	r.channels.Add(-1)
}

// enforceBudgetLocked evicts sh's least recently used channels while the
// router is over its budget. Caller holds sh.mu for writing.
func (r *Router) enforceBudgetLocked(sh *shard) {
	limit := r.cfg.Load().MaxRetainedBytes
	for r.retained.Load() > limit && sh.lruHead != nil {
		r.dropRetainedLocked(sh, sh.lruHead, EvictBudget)
	}
}

// streamKey names one partition stream of a route.
type streamKey struct {
	keep *Retention
	p    int32
}

// stream is what the router knows of one partition stream of a route, from
// the frames of all its channels: the epoch of the latest frame, the newest
// offset, and shadow, the newest offset seen before the log last went
// backwards (-1 if it never did). Unlike a channel's history, it survives
// the channel's eviction.
type stream struct {
	epoch  uint64
	last   int64
	shadow int64
}

// noteStream records f in its partition stream on keep's route, whatever
// channel f belongs to: a channel whose history ended on an older epoch has
// missed the break, and positions up to shadow are ambiguous for all.
func (r *Router) noteStream(keep *Retention, f *Frame) {
	k := streamKey{keep, f.Partition}
	r.streamMu.Lock()
	st, ok := r.streams[k]
	if !ok {
		st = stream{shadow: -1}
	} else if f.Offset <= st.last {
		st.shadow = max(st.shadow, st.last)
	}
	st.epoch, st.last = f.Epoch, f.Offset
	r.streams[k] = st
	r.streamMu.Unlock()
}

// streamOf returns keep's partition stream p.
func (r *Router) streamOf(keep *Retention, p int32) (stream, bool) {
	if keep == nil {
		return stream{}, false
	}
	r.streamMu.Lock()
	st, ok := r.streams[streamKey{keep, p}]
	r.streamMu.Unlock()
	return st, ok
}

func (r *Router) isGone(keep *Retention) bool {
	r.goneMu.RLock()
	_, gone := r.gone[keep]
	r.goneMu.RUnlock()
	return gone
}

// DropRetention drops the snapshot and history of every channel last
// published with one of keeps, the retentions of routes removed or changed
// by a reload, and makes later publishes with them retain nothing. It scans
// every channel, in batches like Trim.
func (r *Router) DropRetention(keeps ...*Retention) {
	if len(keeps) == 0 {
		return
	}
	drop := make(map[*Retention]struct{}, len(keeps))
	r.goneMu.Lock()
	for _, k := range keeps {
		if k != nil {
			r.gone[k] = struct{}{}
			drop[k] = struct{}{}
		}
	}
	r.goneN.Store(int32(len(r.gone)))
	r.goneMu.Unlock()
	r.streamMu.Lock()
	for k := range r.streams {
		if _, ok := drop[k.keep]; ok {
			delete(r.streams, k)
		}
	}
	r.streamMu.Unlock()
	r.eachChannel(func(sh *shard, c *channel) {
		if _, ok := drop[c.keep]; ok && c.size > 0 {
			r.dropRetainedLocked(sh, c, EvictRouteRemoved)
		}
	})
}

// trimBatch is how many channels Trim and DropRetention visit per hold of a
// shard's lock, so publishing to the shard waits for one batch at most.
const trimBatch = 256

// eachChannel calls f for every channel, holding its shard's write lock for
// at most trimBatch channels at a time. f may delete the channel it is
// given. Channels added or deleted by others between batches may or may
// not be visited.
func (r *Router) eachChannel(f func(sh *shard, c *channel)) {
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		n := 0
		for _, c := range sh.channels {
			f(sh, c)
			if n++; n%trimBatch == 0 {
				// The map may change while unlocked; Go's map iteration
				// allows it (what was added may be skipped, what was
				// deleted is not visited).
				sh.mu.Unlock()
				sh.mu.Lock()
			}
		}
		sh.mu.Unlock()
	}
}

// Trim drops history older than each route's HistoryAge, the retained
// state of channels with no subscriber and no record for MaxAge, and least
// recently used state while over MaxRetainedBytes; and it forgets channels
// left with no subscriber and nothing retained. Publishing trims as it goes;
// Trim catches channels that went quiet. It holds a shard's write lock for
// at most trimBatch channels at a time.
func (r *Router) Trim(now time.Time) {
	ms := now.UnixMilli()
	cfg := r.cfg.Load()
	stale := ms - cfg.MaxAge.Milliseconds()
	r.eachChannel(func(sh *shard, c *channel) {
		if len(c.sinks) == 0 && c.size > 0 && c.used < stale {
			r.dropRetainedLocked(sh, c, EvictMaxAge)
			return
		}
		if c.hist != nil && c.keep != nil {
			n, b := c.hist.trimAge(ms, c.keep)
			if n > 0 || b > 0 {
				r.histFrames.Add(int64(-n))
				r.histBytes.Add(int64(-b))
				r.resizeLocked(sh, c, false) // trimming is no use
			}
		}
		if c.idle() {
			r.forgetLocked(sh, c)
		}
	})
	if r.retained.Load() > cfg.MaxRetainedBytes {
		for i := range r.shards {
			sh := &r.shards[i]
			for done := false; !done; {
				sh.mu.Lock()
				for n := 0; n < trimBatch; n++ {
					if r.retained.Load() <= cfg.MaxRetainedBytes || sh.lruHead == nil {
						done = true
						break
					}
					r.dropRetainedLocked(sh, sh.lruHead, EvictBudget)
				}
				sh.mu.Unlock()
			}
		}
	}
}
