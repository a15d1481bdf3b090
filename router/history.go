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
// from <= X+1.
type history struct {
	buf   []histEntry // ring; grows up to the route's HistoryRecords
	head  int         // index of the oldest entry
	n     int         // entries in use
	bytes int         // sum of len(Data) of the entries
	from  []partFrom
}

type histEntry struct {
	f  *Frame
	at int64 // Unix ms when published, for HistoryAge
}

type partFrom struct {
	partition int32
	from      int64
}

func (h *history) fromFor(p int32) (int64, bool) {
	for _, pf := range h.from {
		if pf.partition == p {
			return pf.from, true
		}
	}
	return 0, false
}

func (h *history) setFrom(p int32, from int64) {
	for i := range h.from {
		if h.from[i].partition == p {
			h.from[i].from = from
			return
		}
	}
	h.from = append(h.from, partFrom{p, from})
}

// push appends f and evicts what the bounds no longer allow. It returns the
// change in frames and bytes held, for the router's gauges.
func (h *history) push(f *Frame, now int64, k *Retention) (dn, db int) {
	if _, ok := h.fromFor(f.Partition); !ok {
		h.setFrom(f.Partition, f.Offset)
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
	h.setFrom(e.f.Partition, e.f.Offset+1)
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

// History appends to dst, in offset order, the retained frames of partition
// p with an offset above after, and reports whether they are all of this
// channel's records after that offset that were published so far. When it
// reports false the frames are incomplete (older ones were evicted, or none
// were ever seen on p) and dst is returned unchanged.
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
	from, ok := h.fromFor(p)
	if !ok || from > after+1 {
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

// Trim drops history older than each route's HistoryAge, and forgets
// channels left with no subscriber and nothing retained. Publishing trims as
// it goes; Trim catches channels that went quiet. It takes each shard's
// write lock in turn.
func (r *Router) Trim(now time.Time) {
	ms := now.UnixMilli()
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		for name, c := range sh.channels {
			if c.hist != nil && c.keep != nil {
				n, b := c.hist.trimAge(ms, c.keep)
				r.histFrames.Add(int64(-n))
				r.histBytes.Add(int64(-b))
			}
			if c.idle() {
				delete(sh.channels, name)
				r.channels.Add(-1)
			}
		}
		sh.mu.Unlock()
	}
}
