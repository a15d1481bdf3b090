package router

import (
	"sync"
	"sync/atomic"
	"time"
)

// numShards splits the channel index; a power of two so the shard is a mask.
const numShards = 64

// Frame is one record, encoded once for every subscriber of its channel.
// A published Frame is shared and must never be modified.
type Frame struct {
	Channel string
	// Topic is the Kafka topic the record came from ("" when not from
	// Kafka); with Partition and Offset it names the record.
	Topic     string
	Partition int32
	Offset    int64
	Timestamp int64 // Kafka record timestamp, Unix milliseconds
	// Epoch is the continuity epoch of the partition stream: frames of one
	// partition with equal Epochs were published with every record of the
	// partition between them read; a changed Epoch marks a possible hole.
	// 0 means unknown (treated as its own epoch).
	Epoch uint64
	// Reset marks the first frame of the channel after its partition's log
	// was replaced (a recreated topic, a truncated log): offsets at or
	// below positions from before it name other records.
	Reset bool

	// Data is the complete wire form (a WebSocket frame, header included),
	// written to every subscriber as it is.
	Data []byte
	// Deflated holds Data compressed with permessage-deflate (RFC 7692, no
	// context takeover: a complete frame with RSV1 set), made at most once,
	// by the first sink that negotiated the extension and takes the frame,
	// and shared by every such sink after it (Lazy). nil when the frame may
	// not be compressed (compression off, no sink negotiated it when it was
	// encoded, or too small to gain); its form is nil when compressing did
	// not make it smaller. Sinks that did not negotiate it write Data, and a
	// frame no such sink takes is never compressed.
	Deflated *Lazy
	// Payload is the message body inside Data, kept for sinks that must
	// re-encode it (for example to mark it as a snapshot or as conflated).
	Payload []byte
	// Conflate allows a sink that falls behind to drop this frame in favour
	// of a newer one of the same channel (and to say how many it dropped).
	Conflate bool
	// MaxRate is the frequency cap of the frame's route, in frames a second
	// per channel and subscriber (0: none); a sink applies it to
	// subscriptions that asked for no cap of their own.
	MaxRate float64
}

// Sink receives frames for the channels it subscribed to.
//
// Enqueue is called from publishing goroutines, with a router shard lock held:
// it must not block and must not call back into the Router. It reports
// whether the frame was accepted; a false return is counted as a queue-full
// event and the sink applies its own overflow policy.
type Sink interface {
	Enqueue(f *Frame) bool
}

// Stats are the router's running counts.
type Stats struct {
	Subscriptions int64 // current (channel, sink) pairs
	Channels      int64 // channels with a subscriber or retained state
	Published     uint64
	Deliveries    uint64
	QueueFull     uint64
	// HistoryFrames and HistoryBytes are what channel histories hold now.
	HistoryFrames int64
	HistoryBytes  int64
	// RetainedBytes is the estimated memory of every channel's snapshot
	// and history (frames and their bookkeeping), what MaxRetainedBytes
	// bounds.
	RetainedBytes int64
	// Evicted counts channels whose retained state was dropped, by reason.
	Evicted [NumEvictReasons]uint64
}

// Router is the channel → subscribers index. The zero value is not usable;
// call New.
type Router struct {
	shards [numShards]shard

	subscriptions atomic.Int64
	channels      atomic.Int64
	published     atomic.Uint64
	deliveries    atomic.Uint64
	queueFull     atomic.Uint64
	histFrames    atomic.Int64
	histBytes     atomic.Int64

	cfg      atomic.Pointer[Config] // replaced whole by SetConfig
	retained atomic.Int64           // sum of the shards' retained
	evicted  [NumEvictReasons]atomic.Uint64

	streamMu sync.Mutex
	streams  map[streamKey]stream // guarded by streamMu; see noteStream

	goneMu sync.RWMutex
	gone   map[*Retention]struct{} // guarded by goneMu; see DropRetention
	goneN  atomic.Int32            // len(gone), read without goneMu

	encoder Encoder // set once before the first Deliver (SetEncoder)
}

type shard struct {
	mu       sync.RWMutex
	channels map[string]*channel // guarded by mu
	// The channels that retain something, least recently used first, and
	// their estimated bytes; guarded by mu.
	lruHead, lruTail *channel
	retained         int64
	_                [24]byte // keep neighbouring shard locks off one cache line
}

// channel holds one channel's subscribers. sinks is iterated by Publish under
// the shard read lock; removal swaps with the last. index maps a sink to its
// place in sinks once the channel has indexFrom subscribers (nil below
// that: a short list is searched, which costs an idle subscriber nothing;
// the map cost about 62 bytes a subscription). Every field is guarded by
// the owning shard's mu.
type channel struct {
	name  string
	sinks []Sink
	index map[Sink]int
	last  *Frame     // most recent frame, kept when the route's Retention.Last
	hist  *history   // recent frames, kept when the route has a history
	keep  *Retention // retention of the route that last published here
	// part and parts say where the retained records came from: parts is
	// 0 (none yet), 1 (all from partition part) or 2 (more than one
	// partition), since the channel was created.
	part  int32
	parts uint8

	// Retained-state bookkeeping (retain.go).
	used       int64    // Unix ms of the last record, subscribe, or subscriber leaving
	size       int64    // estimated bytes retained; 0 when not in the LRU list
	prev, next *channel // shard's LRU list
}

// indexFrom is how many subscribers a channel has when it starts indexing
// them (channel.index).
const indexFrom = 64

// find returns s's place in c.sinks.
func (c *channel) find(s Sink) (int, bool) {
	if c.index != nil {
		i, ok := c.index[s]
		return i, ok
	}
	for i, x := range c.sinks {
		if x == s {
			return i, true
		}
	}
	return 0, false
}

// idle reports whether nothing is subscribed or retained; caller holds the
// shard lock.
func (c *channel) idle() bool {
	return len(c.sinks) == 0 && c.last == nil && (c.hist == nil || c.hist.n == 0)
}

// New returns an empty Router with the default Config.
func New() *Router {
	r := &Router{streams: make(map[streamKey]stream), gone: make(map[*Retention]struct{})}
	for i := range r.shards {
		r.shards[i].channels = make(map[string]*channel)
	}
	var cfg Config
	cfg.SetDefaults()
	r.cfg.Store(&cfg)
	return r
}

// shardFor picks the shard by FNV-1a over the channel name.
func (r *Router) shardFor(ch string) *shard {
	h := uint32(2166136261)
	for i := 0; i < len(ch); i++ {
		h ^= uint32(ch[i])
		h *= 16777619
	}
	return &r.shards[h&(numShards-1)]
}

// Subscribe adds s to channel ch. It reports false if s was already
// subscribed (and then does not call before).
//
// If before is non-nil it is called with the shard lock held, after the sink
// is registered but before any later frame can be published to the channel,
// with a View of what the channel retains (its last frame, its history); it
// must not block and must not call the Router. The gateway uses it to queue
// a snapshot or replayed history ahead of live frames: whatever it queues
// meets the live stream with no gap and no overlap.
func (r *Router) Subscribe(s Sink, ch string, before func(v View)) bool {
	sh := r.shardFor(ch)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	c := sh.channels[ch]
	if c == nil {
		c = &channel{name: ch}
		sh.channels[ch] = c
		r.channels.Add(1)
	}
	if _, ok := c.find(s); ok {
		return false
	}
	c.sinks = append(c.sinks, s)
	switch {
	case c.index != nil:
		c.index[s] = len(c.sinks) - 1
	case len(c.sinks) >= indexFrom:
		c.index = make(map[Sink]int, len(c.sinks))
		for i, x := range c.sinks {
			c.index[x] = i
		}
	}
	r.subscriptions.Add(1)
	if before != nil {
		before(View{r: r, c: c})
	}
	if c.size > 0 {
		c.used = time.Now().UnixMilli()
		r.accountLocked(sh, c) // what History trimmed; and it was used
	}
	return true
}

// Unsubscribe removes s from each of the given channels. Channels s is not
// subscribed to are ignored. It returns how many subscriptions were removed.
func (r *Router) Unsubscribe(s Sink, chs ...string) int {
	removed := 0
	for _, ch := range chs {
		sh := r.shardFor(ch)
		sh.mu.Lock()
		if r.removeLocked(sh, s, ch) {
			removed++
		}
		sh.mu.Unlock()
	}
	return removed
}

// removeLocked removes s from ch; caller holds sh.mu for writing.
func (r *Router) removeLocked(sh *shard, s Sink, ch string) bool {
	c := sh.channels[ch]
	if c == nil {
		return false
	}
	i, ok := c.find(s)
	if !ok {
		return false
	}
	last := len(c.sinks) - 1
	if i != last {
		moved := c.sinks[last]
		c.sinks[i] = moved
		if c.index != nil {
			c.index[moved] = i
		}
	}
	c.sinks[last] = nil
	c.sinks = c.sinks[:last]
	if c.index != nil {
		delete(c.index, s)
		if len(c.sinks) < indexFrom/2 {
			c.index = nil // searched again; half the threshold, so it does not flap
		}
	}
	r.subscriptions.Add(-1)
	if c.idle() {
		r.forgetLocked(sh, c)
	} else if len(c.sinks) == 0 {
		c.used = time.Now().UnixMilli() // max_age counts from here
	}
	return true
}

// Publish hands f to every subscriber of f.Channel and returns how many
// accepted it. keep (nil for nothing) says what to retain of the channel:
// the frame as its last one, and in its history; both are kept even when
// nobody is subscribed. Publishing a frame of one partition must follow
// every earlier frame of that partition (offset order).
func (r *Router) Publish(f *Frame, keep *Retention) int {
	sh := r.shardFor(f.Channel)
	if keep.keepsAnything() {
		now := time.Now().UnixMilli()
		// The write lock orders this frame against concurrent subscribes
		// reading what is retained; fan-out itself still runs once, below.
		sh.mu.Lock()
		if r.goneN.Load() > 0 && r.isGone(keep) {
			// The route was removed (DropRetention): a delivery still in
			// flight publishes without retaining anything.
			c := sh.channels[f.Channel]
			n := 0
			if c != nil {
				n = r.fanout(c, f)
			} else {
				r.published.Add(1)
			}
			sh.mu.Unlock()
			return n
		}
		c := sh.channels[f.Channel]
		if c == nil {
			c = &channel{name: f.Channel}
			sh.channels[f.Channel] = c
			r.channels.Add(1)
		}
		c.keep = keep
		if c.parts == 0 {
			c.part, c.parts = f.Partition, 1
		} else if c.part != f.Partition {
			c.parts = 2
		}
		if keep.Last {
			c.last = f
		}
		if keep.HistoryRecords > 0 {
			r.noteStream(keep, f)
			if c.hist == nil {
				c.hist = &history{}
			}
			dn, db := c.hist.push(f, now, keep)
			r.histFrames.Add(int64(dn))
			r.histBytes.Add(int64(db))
		}
		c.used = now
		r.accountLocked(sh, c)
		r.enforceBudgetLocked(sh)
		n := r.fanout(c, f) // c may have lost its retained state, not its sinks
		sh.mu.Unlock()
		return n
	}
	sh.mu.RLock()
	c := sh.channels[f.Channel]
	n := 0
	if c != nil {
		n = r.fanout(c, f)
	} else {
		r.published.Add(1)
	}
	sh.mu.RUnlock()
	return n
}

// fanout enqueues f to every sink of c; caller holds the shard lock.
func (r *Router) fanout(c *channel, f *Frame) int {
	r.published.Add(1)
	n, full := 0, 0
	for _, s := range c.sinks {
		if s.Enqueue(f) {
			n++
		} else {
			full++
		}
	}
	if n > 0 {
		r.deliveries.Add(uint64(n))
	}
	if full > 0 {
		r.queueFull.Add(uint64(full))
	}
	return n
}

// Last returns the retained last frame of ch, or nil.
func (r *Router) Last(ch string) *Frame {
	sh := r.shardFor(ch)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	if c := sh.channels[ch]; c != nil {
		return c.last
	}
	return nil
}

// Subscribers returns the number of sinks subscribed to ch.
func (r *Router) Subscribers(ch string) int {
	sh := r.shardFor(ch)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	if c := sh.channels[ch]; c != nil {
		return len(c.sinks)
	}
	return 0
}

// Stats returns the running counts.
func (r *Router) Stats() Stats {
	return Stats{
		Subscriptions: r.subscriptions.Load(),
		Channels:      r.channels.Load(),
		Published:     r.published.Load(),
		Deliveries:    r.deliveries.Load(),
		QueueFull:     r.queueFull.Load(),
		HistoryFrames: r.histFrames.Load(),
		HistoryBytes:  r.histBytes.Load(),
		RetainedBytes: r.retained.Load(),
		Evicted:       r.evictedCounts(),
	}
}
