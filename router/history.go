package router

import "time"

// Retention says what the router keeps of a channel's frames after handing
// them to the subscribers. One value is shared by every channel of a route;
// it must not change once frames have been published with it.
type Retention struct {
	// Last keeps the most recent frame, sent to subscribers that ask for a
	// snapshot.
	Last bool
	// HistoryRecords keeps up to this many recent frames per channel, for
	// clients that resume; 0 keeps none. HistoryBytes bounds the bytes of
	// their Data and HistoryAge the time since they were published (both
	// are needed when HistoryRecords is set).
	HistoryRecords int
	HistoryBytes   int
	HistoryAge     time.Duration
}

func (k *Retention) keepsAnything() bool {
	return k != nil && (k.Last || k.HistoryRecords > 0)
}

// history is one channel's ring of recent frames, in publish order (which is
// offset order within each partition). It is guarded by the owning shard's
// mu, like the rest of the channel.
//
// Completeness: a channel's records are spread over a partition between
// other channels' records, so their offsets are not contiguous and a gap
// cannot be seen from the offsets alone. For every partition the ring
// records from: the lowest offset from which every frame of this channel on
// that partition is still in the ring. It is the offset of the first frame
// seen on the partition, then moves past each frame evicted. A client that
// has everything up to offset X can be served from memory exactly when
// from <= X+1, and the partition's stream has not broken since.
//
// Continuity: from holds only while the consumer read every offset of the
// partition after it, which the frames' continuity epoch tells (Frame.Epoch).
// A frame whose epoch differs from the range's, or whose offset is not above
// the last one seen (the log went backwards), starts a new range at its own
// offset: the partition's older frames are dropped from the ring, so no
// position ever names two different frames and no answer spans a hole. When
// the log went backwards, positions up to the newest offset of the old log
// are ambiguous (a client may hold them from either log) and are never
// served from memory.
type history struct {
	buf   []histEntry // ring; grows up to the route's HistoryRecords
	head  int         // index of the oldest entry
	n     int         // entries in use
	bytes int         // sum of len(Data) of the entries
	// zbytes bounds what the entries' compressed forms may hold
	// (zCost of each): made lazily after the frame is retained, they are
	// counted in the retained bytes from the start.
	zbytes int
	parts  []partRange
}

type histEntry struct {
	f  *Frame
	at int64 // Unix ms when published, for HistoryAge
}

// partRange is the continuous range the ring holds for one partition.
type partRange struct {
	partition int32
	from      int64  // every frame of the channel at or above from is held
	last      int64  // offset of the newest frame seen
	epoch     uint64 // continuity epoch of the frames since from
	// shadow is the newest offset seen before the log went backwards (a
	// reset or truncation), -1 if it never did: a position at or below it
	// may name a record of the old log, so it is never served.
	shadow int64
}

func (h *history) rangeFor(p int32) *partRange {
	for i := range h.parts {
		if h.parts[i].partition == p {
			return &h.parts[i]
		}
	}
	return nil
}

// fromFor returns the partition's from, when the ring has a range for it.
func (h *history) fromFor(p int32) (int64, bool) {
	if pr := h.rangeFor(p); pr != nil {
		return pr.from, true
	}
	return 0, false
}

// dropPartition removes every entry of partition p from the ring, keeping
// the others in order, and returns how many frames and bytes went.
func (h *history) dropPartition(p int32) (n, b int) {
	kept := 0
	for i := 0; i < h.n; i++ {
		e := h.buf[(h.head+i)%len(h.buf)]
		if e.f.Partition == p {
			n++
			b += len(e.f.Data)
			h.zbytes -= zCost(e.f)
			continue
		}
		h.buf[(h.head+kept)%len(h.buf)] = e
		kept++
	}
	for i := kept; i < h.n; i++ {
		h.buf[(h.head+i)%len(h.buf)] = histEntry{}
	}
	h.n = kept
	h.bytes -= b
	return n, b
}

// push appends f and evicts what the bounds no longer allow. It returns the
// change in frames and bytes held, for the router's gauges.
func (h *history) push(f *Frame, now int64, k *Retention) (dn, db int) {
	switch pr := h.rangeFor(f.Partition); {
	case pr == nil:
		h.parts = append(h.parts, partRange{f.Partition, f.Offset, f.Offset, f.Epoch, -1})
	case pr.epoch != f.Epoch || f.Offset <= pr.last:
		// A possible hole, or the log went backwards: the range restarts
		// here and the partition's older frames can serve nobody.
		n, b := h.dropPartition(f.Partition)
		dn, db = -n, -b
		shadow := pr.shadow
		if f.Offset <= pr.last {
			shadow = max(shadow, pr.last)
		}
		*pr = partRange{f.Partition, f.Offset, f.Offset, f.Epoch, shadow}
	default:
		pr.last = f.Offset
	}
	if h.n == len(h.buf) {
		if len(h.buf) < k.HistoryRecords {
			h.grow(min(max(8, 2*len(h.buf)), k.HistoryRecords))
		} else {
			db -= h.evict()
			dn--
		}
	}
	h.buf[(h.head+h.n)%len(h.buf)] = histEntry{f: f, at: now}
	h.n++
	h.bytes += len(f.Data)
	h.zbytes += zCost(f)
	dn++
	db += len(f.Data)
	for h.n > 0 && (h.n > k.HistoryRecords || h.bytes > k.HistoryBytes) {
		db -= h.evict()
		dn--
	}
	en, eb := h.trimAge(now, k)
	return dn - en, db - eb
}

func (h *history) grow(size int) {
	buf := make([]histEntry, size)
	for i := 0; i < h.n; i++ {
		buf[i] = h.buf[(h.head+i)%len(h.buf)]
	}
	h.buf, h.head = buf, 0
}

// evict drops the oldest entry and returns its size.
func (h *history) evict() int {
	e := h.buf[h.head]
	h.buf[h.head] = histEntry{}
	h.head = (h.head + 1) % len(h.buf)
	h.n--
	h.bytes -= len(e.f.Data)
	h.zbytes -= zCost(e.f)
	if pr := h.rangeFor(e.f.Partition); pr != nil && pr.from <= e.f.Offset {
		pr.from = e.f.Offset + 1
	}
	return len(e.f.Data)
}

// trimAge evicts entries older than the route's HistoryAge and returns how
// many frames and bytes went.
func (h *history) trimAge(now int64, k *Retention) (n, b int) {
	if k.HistoryAge <= 0 {
		return 0, 0
	}
	oldest := now - k.HistoryAge.Milliseconds()
	for h.n > 0 && h.buf[h.head].at < oldest {
		b += h.evict()
		n++
	}
	if h.n == 0 && len(h.buf) > 0 {
		h.buf, h.head = nil, 0 // a quiet channel gives its ring back
	}
	return n, b
}

// View is what the router retains of one channel, as seen by a Subscribe
// callback under the shard lock. It is valid only during the callback.
type View struct {
	r *Router
	c *channel
}

// Last returns the channel's retained last frame, or nil.
func (v View) Last() *Frame { return v.c.last }

// Name returns the channel's name, the router's own copy: a subscriber that
// keeps it shares its bytes with the router and the channel's other
// subscribers instead of holding a copy of its own.
func (v View) Name() string { return v.c.name }

// Newest returns the channel's most recent retained frame (its last, or the
// newest of its history), or nil when it retains none.
func (v View) Newest() *Frame {
	if v.c.last != nil {
		return v.c.last
	}
	if h := v.c.hist; h != nil && h.n > 0 {
		return h.buf[(h.head+h.n-1)%len(h.buf)].f
	}
	return nil
}

// Partitions reports from how many partitions the channel's records came
// while the router retained them: 0 (none retained yet), 1, or 2 for more
// than one. Records of routes that retain nothing are not seen.
func (v View) Partitions() int { return int(v.c.parts) }

// History appends to dst, in offset order, the retained frames of partition
// p with an offset above after, and reports whether they are all of this
// channel's records after that offset that were published so far. When it
// reports false the frames are incomplete (older ones were evicted, none
// were ever seen on p, or the partition's stream broke: see history) and dst
// is returned unchanged.
func (v View) History(dst []*Frame, p int32, after int64) ([]*Frame, bool) {
	h := v.c.hist
	if h == nil {
		return dst, false
	}
	if v.c.keep != nil {
		n, b := h.trimAge(time.Now().UnixMilli(), v.c.keep)
		v.r.histFrames.Add(int64(-n))
		v.r.histBytes.Add(int64(-b))
	}
	pr := h.rangeFor(p)
	if pr == nil || pr.from > after+1 || after <= pr.shadow {
		return dst, false
	}
	if st, ok := v.r.streamOf(v.c.keep, p); ok && (st.epoch != pr.epoch || after <= st.shadow) {
		// The partition's stream broke after this channel's last frame
		// (records of the channel may have been skipped since), or the
		// position may name a record of the log before it went back.
		return dst, false
	}
	for i := 0; i < h.n; i++ {
		f := h.buf[(h.head+i)%len(h.buf)].f
		if f.Partition == p && f.Offset > after {
			dst = append(dst, f)
		}
	}
	return dst, true
}
