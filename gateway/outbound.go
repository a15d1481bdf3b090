package gateway

import (
	"bytes"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/gobwas/ws"
	"github.com/kpush/kpush/gateway/wire"
	"github.com/kpush/kpush/router"
	"github.com/prometheus/client_golang/prometheus"
)

// outbound is one connection's queue of frames on their way to its socket,
// with its bounds, the slow-consumer policy that applies when a frame does
// not fit, and the per-channel state of the resume seam (resume_seam.go
// explains the seam). It knows nothing of sockets: the connection's
// transport (conn_linux.go) writes from the front of frames and reports
// what was written with consume, and unit tests drive it directly
// (outbound_test.go).
//
// It is not safe for concurrent use: its session's mu guards it, and every
// method assumes the caller holds that lock.
//
// Slow consumers. The queue is bounded by max_queue_messages and
// max_queue_bytes (live frames held for a resume included). When a frame
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
type outbound struct {
	frames    []*router.Frame            // frames waiting to be written
	bytes     int                        // bytes of frames (and of held frames) not yet written
	head      int                        // bytes of frames[0] already written
	inflight  int32                      // frames at the front handed to a write in progress (at most netpoll.MaxIovecs)
	deflate   bool                       // the connection negotiated permessage-deflate (set before it is registered, then fixed)
	zshared   bool                       // a plain-ws connection with deflate: it writes records' shared compressed form (set before it is registered, then fixed)
	heldCount int                        // live frames held aside for resumes: the sum of every chanResume.held's length
	conflated map[*router.Frame]skipMark // queued frame → records of its channel dropped just before it (skip marks)
	resume    map[string]*chanResume     // channels replaying or with floors
	caps      *capSet                    // frequency-capped channels (capped.go); nil: none
}

// compactScratch holds the maps compact uses to find each channel's newest
// frame: a scratch map per connection would cost every idle connection a
// word, and compaction only runs on a full queue.
var compactScratch = sync.Pool{New: func() any { return make(map[string]*router.Frame) }}

// wire is what goes on the socket for f: its shared compressed form on a
// connection that writes it, once made, else Data. It never compresses: a
// queued frame's form is made before the frame is written (deliver,
// conn.wireLocked), so what wire returns for a frame being written does
// not change under consume.
func (o *outbound) wire(f *router.Frame) []byte {
	if o.zshared && f.Deflated != nil {
		if z := f.Deflated.Made(); z != nil {
			return z
		}
	}
	return f.Data
}

// queueBounds are a connection's queue limits (Limits.MaxQueueMessages and
// MaxQueueBytes).
type queueBounds struct {
	messages int
	bytes    int
}

// policyCounters count what the slow-consumer policy and the resume seam
// did, on the gateway's metrics (kpush_slow_consumers_total{action},
// kpush_conflated_total, kpush_snapshots_total).
type policyCounters struct {
	compactions prometheus.Counter // slow_consumers{action="conflate"}: compactions that dropped frames
	abandoned   prometheus.Counter // slow_consumers{action="abandon_resume"}
	conflated   prometheus.Counter // records dropped by conflation
	snapshots   prometheus.Counter // snapshots sent after a resume that could not be complete
}

// pushResult says what enqueue did with a frame.
type pushResult uint8

const (
	pushRefused  pushResult = iota // no room and the route does not conflate: close as a slow consumer
	pushQueued                     // appended: a flush must be scheduled
	pushReplaced                   // replaced its channel's pending frame (conflation)
	pushAside                      // held for a resume, or dropped as already delivered
	pushDeferred                   // waits for its channel's cap (capped.go): the timer must be armed
)

// fits reports whether n more frames of size bytes fit the bounds.
func (o *outbound) fits(b queueBounds, n, size int) bool {
	return len(o.frames)+o.heldCount+n <= b.messages && o.bytes+size <= b.bytes
}

// protected is how many frames at the head of the queue are on their way to
// the socket.
func (o *outbound) protected() int {
	if o.head > 0 {
		return max(int(o.inflight), 1)
	}
	return int(o.inflight)
}

// add appends f without checking the bounds (replies checked them, close
// and ping frames have their own rules).
func (o *outbound) add(f *router.Frame) {
	o.frames = append(o.frames, f)
	o.bytes += len(f.Data)
}

// enqueue takes a live frame: through its channel's resume state first,
// then its channel's frequency cap, then into the queue within the bounds.
// now (monoMillis) matters only to capped channels.
func (o *outbound) enqueue(f *router.Frame, now int64, b queueBounds, pc *policyCounters) pushResult {
	if o.resume != nil {
		if st := o.resume[f.Channel]; st != nil {
			if st.below(f) {
				return pushAside
			}
			if st.replaying {
				return o.hold(st, f, b, pc)
			}
			if len(st.floors) == 0 {
				delete(o.resume, f.Channel)
			}
		}
	}
	if cp := o.capOf(f); cp != nil {
		return o.throttle(cp, f, now, b, pc)
	}
	return o.push(f, b, pc)
}

// push appends f within the bounds, applying the slow-consumer policy of
// f's route when they are reached.
func (o *outbound) push(f *router.Frame, b queueBounds, pc *policyCounters) pushResult {
	if !o.fits(b, 1, len(f.Data)) {
		o.compact(pc)
		if !o.fits(b, 1, len(f.Data)) {
			if !f.Conflate {
				return pushRefused
			}
			if i := o.pendingOf(f.Channel); i >= 0 {
				old := o.frames[i]
				o.frames[i] = f
				o.bytes += len(f.Data) - len(old.Data)
				o.dropInto(old, f, pc)
				return pushReplaced
			}
			// The channel has nothing pending: f joins the queue beyond
			// the bounds, one frame per channel at most.
		}
	}
	o.add(f)
	return pushQueued
}

// compact drops every pending conflatable frame that has a newer pending
// frame of the same channel.
func (o *outbound) compact(pc *policyCounters) {
	keep := o.protected()
	if len(o.frames)-keep < 2 {
		return
	}
	seen := compactScratch.Get().(map[string]*router.Frame)
	defer compactScratch.Put(seen)
	// Walk newest first, marking dropped frames nil, then close the holes.
	dropped := 0
	for i := len(o.frames) - 1; i >= keep; i-- {
		f := o.frames[i]
		if !f.Conflate {
			continue
		}
		if newest := seen[f.Channel]; newest != nil {
			o.bytes -= len(f.Data)
			o.dropInto(f, newest, pc)
			o.frames[i] = nil
			dropped++
			continue
		}
		seen[f.Channel] = f
	}
	clear(seen)
	if dropped == 0 {
		return
	}
	pc.compactions.Inc()
	j := keep
	for i := keep; i < len(o.frames); i++ {
		if o.frames[i] != nil {
			o.frames[j] = o.frames[i]
			j++
		}
	}
	clear(o.frames[j:])
	o.frames = o.frames[:j]
}

// pendingOf returns the index of ch's pending conflatable frame, or -1.
func (o *outbound) pendingOf(ch string) int {
	keep := o.protected()
	for i := len(o.frames) - 1; i >= keep; i-- {
		if f := o.frames[i]; f.Conflate && f.Channel == ch {
			return i
		}
	}
	return -1
}

// Skip marks. A frame's mark is the number of records of its channel
// dropped between the channel's previous frame in the queue (or on the
// wire) and it; it goes out as "skipped":N when the frame is written
// (markSkipped). Marks are kept per queued frame, not per channel: two
// frames of a channel may both wait in the queue with records dropped
// before each (a capped channel releasing again before its last frame was
// written), and each reports its own.
//
// A frame is marked when a writer gathers it, which is not always when it
// is written: a write that the socket takes only in part leaves the
// gathered frames after it in the queue, marked, and conflation may still
// drop them or drop older frames before them. So a marked frame keeps its
// mark until it is written: dropped, its count passes on to the next frame
// of its channel; given more, it is marked again from its unmarked form.

// skipMark is a queued frame's mark.
type skipMark struct {
	n     int64         // records dropped just before the frame
	shown int64         // how many of them the frame's bytes report (0: none, it is unmarked)
	base  *router.Frame // the frame's unmarked form when the queue holds another (marked, or a transport's form); else nil
}

// addMark counts n more records dropped just before the queued frame by.
func (o *outbound) addMark(by *router.Frame, n int64) {
	if o.conflated == nil {
		o.conflated = make(map[*router.Frame]skipMark)
	}
	m := o.conflated[by]
	m.n += n
	o.conflated[by] = m
}

// dropInto counts a queued frame dropped by conflation, with the records
// dropped before it, against by, the next frame of its channel queued.
func (o *outbound) dropInto(dropped, by *router.Frame, pc *policyCounters) {
	n := int64(1)
	if m, ok := o.conflated[dropped]; ok {
		n += m.n
		delete(o.conflated, dropped)
	}
	o.addMark(by, n)
	pc.conflated.Inc()
}

// forget drops the mark of a frame that left the queue (written, or
// dropped with the rest of the queue on close).
func (o *outbound) forget(f *router.Frame) {
	if len(o.conflated) > 0 {
		delete(o.conflated, f)
	}
}

// replaced moves f's mark to nf, the form a transport put in f's place in
// the queue (an event stream's or Centrifugo's, conn_linux.go wireLocked).
func (o *outbound) replaced(f, nf *router.Frame) {
	if f == nf || len(o.conflated) == 0 {
		return
	}
	if m, ok := o.conflated[f]; ok {
		delete(o.conflated, f)
		if m.shown == 0 {
			m.base = f
		}
		o.conflated[nf] = m
	}
}

// markSkipped rewrites frames[i] to carry "skipped":N when records of its
// channel were dropped just before it. Writers call it while gathering,
// for frames not yet on the wire.
func (o *outbound) markSkipped(i int) *router.Frame {
	f := o.frames[i]
	if len(o.conflated) == 0 {
		return f
	}
	mk, ok := o.conflated[f]
	if !ok || mk.n == mk.shown {
		return f
	}
	base := f
	if mk.base != nil {
		base = mk.base
	}
	if base.Channel == "" || base.Payload == nil {
		delete(o.conflated, f)
		return f
	}
	m := markFrame(base, `"skipped":`+strconv.FormatInt(mk.n, 10))
	delete(o.conflated, f)
	o.conflated[m] = skipMark{n: mk.n, shown: mk.n, base: base}
	o.frames[i] = m
	o.bytes += len(m.Data) - len(f.Data)
	return m
}

// consume drops n written bytes from the front of the queue. The bounds
// count frames by len(Data); a frame written in its compressed form leaves
// them whole once it is written.
func (o *outbound) consume(n int) {
	i := 0
	for i < len(o.frames) {
		f := o.frames[i]
		w := len(o.wire(f))
		plain := w == len(f.Data)
		rest := w - o.head
		if n < rest {
			o.head += n
			if plain {
				o.bytes -= n
			}
			break
		}
		n -= rest
		if plain {
			o.bytes -= rest
		} else {
			o.bytes -= len(f.Data)
		}
		o.head = 0
		o.forget(f)
		i++
	}
	if i > 0 {
		k := copy(o.frames, o.frames[i:])
		clear(o.frames[k:])
		o.frames = o.frames[:k]
	}
}

// dropPending drops every frame not yet on its way to the socket, keeping
// what a write in progress is writing and the rest of a frame already
// partly on the wire: the stream must stay whole.
func (o *outbound) dropPending() {
	keep := o.protected()
	for _, f := range o.frames[keep:] {
		o.bytes -= len(f.Data)
		o.forget(f)
	}
	clear(o.frames[keep:])
	o.frames = o.frames[:keep]
}

// The resume seam's per-channel state (resume_seam.go explains the seam).

// partPos is a position in one partition: the client has every record up to
// and including offset after.
type partPos struct {
	p     int32
	after int64
}

// chanResume is a connection's resume state for one channel. It is guarded
// by the conn's mu.
type chanResume struct {
	replaying bool            // a read-back runs; live frames are held
	held      []*router.Frame // live frames held meanwhile, in arrival order
	lossy     bool            // conflation dropped held frames
	last      *router.Frame   // the channel's last frame when the subscription began
	floors    []partPos       // drop live frames at or below these offsets
	parts     []partPos       // the client's positions, while replaying
}

// below reports whether f is at or below its partition's floor, and forgets
// the floor once a frame passes it, or once the partition's log was
// replaced (f.Reset): the floor is a position in the old log, and the new
// log's records under it were never delivered.
func (st *chanResume) below(f *router.Frame) bool {
	for i := range st.floors {
		if st.floors[i].p != f.Partition {
			continue
		}
		if f.Offset <= st.floors[i].after && !f.Reset {
			return true
		}
		st.floors = slices.Delete(st.floors, i, i+1)
		return false
	}
	return false
}

func (st *chanResume) raise(p int32, o int64) {
	for i := range st.floors {
		if st.floors[i].p == p {
			st.floors[i].after = max(st.floors[i].after, o)
			return
		}
	}
	st.floors = append(st.floors, partPos{p, o})
}

// startReplay registers ch as replaying from the client's positions parts:
// from now on its live frames are held (hold). last is the channel's last
// frame, for a snapshot if the resume cannot be complete.
func (o *outbound) startReplay(ch string, parts []partPos, last *router.Frame) *chanResume {
	st := &chanResume{replaying: true, last: last, parts: parts}
	if o.resume == nil {
		o.resume = make(map[string]*chanResume)
	}
	o.resume[ch] = st
	return st
}

// hold keeps a live frame aside while its channel is read back. Held frames
// count against the queue bounds; when they overflow them, the resume of
// the channel gives up (see abandonReplay) rather than the connection.
func (o *outbound) hold(st *chanResume, f *router.Frame, b queueBounds, pc *policyCounters) pushResult {
	if !o.fits(b, 1, len(f.Data)) {
		o.compact(pc)
	}
	if !o.fits(b, 1, len(f.Data)) {
		if !f.Conflate {
			o.abandonReplay(st, pc)
			if st.below(f) {
				return pushAside
			}
			return o.push(f, b, pc)
		}
		// Keep only the newest held frame; the resume can no longer be
		// complete.
		pc.conflated.Add(float64(len(st.held)))
		o.releaseHeld(st)
		st.lossy = true
	}
	st.held = append(st.held, f)
	o.heldCount++
	o.bytes += len(f.Data)
	return pushAside
}

// abandonReplay gives up a channel's resume whose held live frames no
// longer fit the connection's bounds: they are dropped, the live stream goes
// straight to the queue from now on (above the client's positions), and the
// read-back, when it ends, answers recovered:false with nothing replayed
// and no snapshot (it would be older than live frames already sent).
func (o *outbound) abandonReplay(st *chanResume, pc *policyCounters) {
	o.releaseHeld(st)
	st.lossy = true
	st.replaying = false
	st.floors = append(st.floors[:0], st.parts...)
	pc.abandoned.Inc()
}

// releaseHeld drops st's held frames.
func (o *outbound) releaseHeld(st *chanResume) {
	for _, h := range st.held {
		o.bytes -= len(h.Data)
	}
	o.heldCount -= len(st.held)
	clear(st.held)
	st.held = st.held[:0]
}

// dropResume forgets ch's resume state (on unsubscribe, revocation or
// close).
func (o *outbound) dropResume(ch string) {
	if st := o.resume[ch]; st != nil {
		o.releaseHeld(st)
		delete(o.resume, ch)
	}
}

// finishResume queues what resumes ch: the replayed frames (when ok), or
// the snapshot for a failed resume, then the live frames held meanwhile,
// and leaves the floors in place. st is nil when nothing was held (served
// from memory). It returns whether the resume was complete, and whether it
// queued anything (a flush must then be scheduled).
func (o *outbound) finishResume(ch string, st *chanResume, frames []*router.Frame, parts []partPos, ok bool, last *router.Frame, b queueBounds, pc *policyCounters) (complete, queued bool) {
	if st == nil {
		st = &chanResume{}
	}
	if st.lossy {
		ok = false
	}
	if ok {
		n := 0
		for _, f := range frames {
			n += len(f.Data)
		}
		ok = o.fits(b, len(frames), n)
	}
	st.floors = append(st.floors[:0], parts...)
	if !ok {
		frames = frames[:0]
		if last != nil && !st.lossy && newerThan(last, parts) {
			frames = append(frames, markFrame(last, `"snap":true`))
			pc.snapshots.Inc()
		}
	}
	for _, f := range frames {
		o.add(unmeasured(f))
		st.raise(f.Partition, f.Offset)
	}
	held := st.held
	st.held, st.replaying = nil, false
	o.heldCount -= len(held)
	for _, h := range held {
		if st.below(h) {
			o.bytes -= len(h.Data)
			continue
		}
		o.frames = append(o.frames, h) // its bytes are counted already
	}
	if len(st.floors) > 0 {
		if o.resume == nil {
			o.resume = make(map[string]*chanResume)
		}
		o.resume[ch] = st
	} else {
		delete(o.resume, ch)
	}
	return ok, len(frames) > 0 || len(held) > 0
}

// unmeasured returns f for a frame sent from history, a read-back or a
// snapshot: a copy without Timestamp, so that the delivery latency metric
// (Kafka timestamp to socket write) measures live records only. Data is
// shared.
func unmeasured(f *router.Frame) *router.Frame {
	if f.Timestamp == 0 {
		return f
	}
	cp := *f
	cp.Timestamp = 0
	return &cp
}

// newerThan reports whether f is past the client's position in its
// partition (or in a partition the client has no position for).
func newerThan(f *router.Frame, parts []partPos) bool {
	for _, pp := range parts {
		if pp.p == f.Partition {
			return f.Offset > pp.after
		}
	}
	return true
}

// markFrame returns a copy of a msg frame with one more member, e.g.
// `"snap":true` or `"skipped":3`, where EncodeMessage puts it (markAt), so
// that a marked frame is byte for byte the frame EncodeMessage makes of the
// same record with Snapshot or Skipped set.
func markFrame(f *router.Frame, member string) *router.Frame {
	p := f.Payload
	at := markAt(p, len(f.Channel), member)
	n := len(p) + 1 + len(member)
	h := wire.ServerHeaderLen(n)
	b := make([]byte, h, h+n)
	wire.PutServerHeader(b, ws.OpText, n)
	b = append(b, p[:at]...)
	b = append(b, ',')
	b = append(b, member...)
	b = append(b, p[at:]...)
	return &router.Frame{
		Channel:   f.Channel,
		Topic:     f.Topic,
		Partition: f.Partition,
		Offset:    f.Offset,
		Timestamp: f.Timestamp,
		Epoch:     f.Epoch,
		Reset:     f.Reset,
		Data:      b,
		Payload:   b[h:],
		Conflate:  f.Conflate,
		MaxRate:   f.MaxRate,
	}
}

// markAt is where a marker member goes in the payload p of a msg frame of
// a channel chLen bytes long: in EncodeMessage's order, right after the
// "ts" member, and a "skipped" after a "snap" there already. Channel names
// hold no quotes and "p" and "o" are numbers, so the first `,"ts":` after
// the channel is the record's. A payload without one (not EncodeMessage's)
// takes the member right after "op".
func markAt(p []byte, chLen int, member string) int {
	const ts, snap = `,"ts":`, `,"snap":true`
	from := min(len(`{"op":"msg","ch":"`)+chLen, len(p))
	i := bytes.Index(p[from:], []byte(ts))
	if i < 0 {
		return len(`{"op":"msg"`)
	}
	i += from + len(ts)
	if i < len(p) && p[i] == '-' {
		i++
	}
	for i < len(p) && p[i] >= '0' && p[i] <= '9' {
		i++
	}
	if strings.HasPrefix(member, `"skipped":`) && bytes.HasPrefix(p[i:], []byte(snap)) {
		i += len(snap)
	}
	return i
}
