//go:build linux

package gateway

import (
	"context"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/kpush/kpush/router"
)

// Resume: {"op":"subscribe","channels":[ch],"since":{ch:{"2":1234}}} asks for
// every record of ch after offset 1234 of partition 2, then the live stream,
// with no gap and no duplicate. Positions are Kafka's, so any instance can
// serve them.
//
// The seam. Everything starts inside router.Subscribe's callback, which runs
// under the channel's shard write lock after the connection is registered
// and before any later frame of the channel can be published:
//
//  1. For each partition named in since, the channel's in-memory history
//     says whether it holds every record after the position. If it does for
//     all of them, those frames are queued right there: every live frame
//     published afterwards is newer than all of them, so history and live
//     meet exactly.
//  2. Otherwise the channel is marked replaying on the connection and a
//     read-back job is queued for the resume pool. From this moment every
//     live frame of the channel is held aside for this connection (bounded
//     by the connection's queue limits) instead of being written. The job
//     reads each missing partition back from Kafka from the position up to
//     the partition's end at the time of reading, which is at or past the
//     offset of the first held live frame: the consumer can only have
//     published records that were already in Kafka.
//  3. When the read-back ends, under the connection's lock: the read-back
//     frames are queued, then the held live frames, then the ok reply. Each
//     partition gets a floor, the highest offset the client now has (its
//     position, raised by every replayed frame); a live frame at or below its
//     floor is dropped, held or not. That removes the overlap between the
//     read-back and the held frames, and also the records an instance whose
//     consumer lags behind the client's position would send again. A floor
//     is forgotten once a live frame passes it, since offsets only grow.
//
// So for every (channel, partition) the client sees offsets strictly
// increasing, and the ok reply with "recovered" comes after every replayed
// record of its request. Live records of other channels, and of channels
// served from memory, may come before the ok.
//
// A resume that cannot be complete (records deleted from Kafka, a replay
// limit, more records than the connection's queue holds, no replayer, the
// resume pool full) sends no replayed records for that channel and answers
// recovered:false; if the route keeps snapshots and the channel's last
// record is newer than the client's position, it is sent first, marked
// "snap":true, so a last-value client is current again at once.

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
}

// below reports whether f is at or below its partition's floor, and forgets
// the floor once a frame passes it.
func (st *chanResume) below(f *router.Frame) bool {
	for i := range st.floors {
		if st.floors[i].p != f.Partition {
			continue
		}
		if f.Offset <= st.floors[i].after {
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

// resumeFilterLocked applies f's channel's resume state. It reports whether
// f was taken care of (dropped as already delivered, or held), and, if so,
// whether the connection kept up. Caller holds c.mu.
func (c *conn) resumeFilterLocked(f *router.Frame) (handled, ok bool) {
	st := c.resume[f.Channel]
	if st == nil {
		return false, true
	}
	if st.below(f) {
		return true, true
	}
	if !st.replaying {
		if len(st.floors) == 0 {
			delete(c.resume, f.Channel)
		}
		return false, true
	}
	return true, c.holdLocked(st, f)
}

// holdLocked keeps a live frame aside while its channel is read back. Held
// frames count against the queue bounds. It returns false when the
// connection must be closed as a slow consumer. Caller holds c.mu.
func (c *conn) holdLocked(st *chanResume, f *router.Frame) bool {
	if !c.fitsLocked(1, len(f.Data)) {
		c.compactLocked()
	}
	if !c.fitsLocked(1, len(f.Data)) {
		if !f.Conflate {
			return false
		}
		// Keep only the newest held frame; the resume can no longer be
		// complete.
		c.srv.metrics.conflated.Add(float64(len(st.held)))
		c.releaseHeldLocked(st)
		st.lossy = true
	}
	st.held = append(st.held, f)
	c.held++
	c.queuedBytes += len(f.Data)
	return true
}

// releaseHeldLocked drops st's held frames. Caller holds c.mu.
func (c *conn) releaseHeldLocked(st *chanResume) {
	for _, h := range st.held {
		c.queuedBytes -= len(h.Data)
	}
	c.held -= len(st.held)
	clear(st.held)
	st.held = st.held[:0]
}

// dropResumeLocked forgets ch's resume state (on unsubscribe). Caller holds
// c.mu.
func (c *conn) dropResumeLocked(ch string) {
	if st := c.resume[ch]; st != nil {
		c.releaseHeldLocked(st)
		delete(c.resume, ch)
	}
}

// finishResumeLocked queues what resumes ch: the replayed frames (when ok),
// or the snapshot for a failed resume, then the live frames held meanwhile,
// and leaves the floors in place. st is nil when nothing was held (served
// from memory). It returns whether the resume was complete. Caller holds
// c.mu.
func (c *conn) finishResumeLocked(ch string, st *chanResume, frames []*router.Frame, parts []partPos, ok bool, last *router.Frame) bool {
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
		ok = c.fitsLocked(len(frames), n)
	}
	st.floors = append(st.floors[:0], parts...)
	if !ok {
		frames = frames[:0]
		if last != nil && !st.lossy && newerThan(last, parts) {
			frames = append(frames, markFrame(last, `"snap":true`))
			c.srv.metrics.snapshots.Inc()
		}
	}
	for _, f := range frames {
		c.queue = append(c.queue, unmeasured(f))
		c.queuedBytes += len(f.Data)
		st.raise(f.Partition, f.Offset)
	}
	held := st.held
	st.held, st.replaying = nil, false
	c.held -= len(held)
	for _, h := range held {
		if st.below(h) {
			c.queuedBytes -= len(h.Data)
			continue
		}
		c.queue = append(c.queue, h) // its bytes are counted already
	}
	if len(st.floors) > 0 {
		if c.resume == nil {
			c.resume = make(map[string]*chanResume)
		}
		c.resume[ch] = st
	} else {
		delete(c.resume, ch)
	}
	if len(frames) > 0 || len(held) > 0 {
		c.flags |= flagRecent
		c.scheduleLocked()
	}
	return ok
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

// parsePositions turns a request's since entry into positions sorted by
// partition. ParseRequest has checked the partition numbers.
func parsePositions(m map[string]int64) []partPos {
	out := make([]partPos, 0, len(m))
	for k, o := range m {
		p, err := strconv.ParseInt(k, 10, 32)
		if err != nil {
			continue
		}
		out = append(out, partPos{int32(p), o})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].p < out[j].p })
	return out
}

// resumeJob is one subscribe request's read-back from Kafka.
type resumeJob struct {
	c         *conn
	id        int64 // request id, for the ok reply
	deadline  time.Time
	recovered map[string]bool // verdicts so far (channels served from memory)
	chans     []*resumeChan
}

// resumeChan is one channel of a resumeJob.
type resumeChan struct {
	ch    string
	st    *chanResume     // the conn's state for ch while it replays
	parts []partPos       // every position the client gave for ch
	kafka []partPos       // those the history could not serve
	mem   []*router.Frame // frames the history served, for the other partitions
	out   []*router.Frame // frames read back
	ok    bool
}

// resumeChannel prepares the resume of one channel inside the router's
// Subscribe callback (shard lock held): it serves the channel from the
// history, or registers it for a read-back and returns the job entry.
// recovered receives the verdict of a channel served at once.
func (s *Server) resumeChannel(c *conn, ch string, parts []partPos, v router.View, recovered map[string]bool) *resumeChan {
	var mem []*router.Frame
	var kafka []partPos
	for _, pp := range parts {
		var ok bool
		if mem, ok = v.History(mem, pp.p, pp.after); !ok {
			kafka = append(kafka, pp)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.flags&(flagClosing|flagClosed) != 0 {
		return nil
	}
	if len(kafka) == 0 {
		ok := c.finishResumeLocked(ch, nil, mem, parts, true, v.Last())
		recovered[ch] = ok
		s.countResume("memory", ok, len(mem))
		return nil
	}
	st := &chanResume{replaying: true, last: v.Last()}
	if c.resume == nil {
		c.resume = make(map[string]*chanResume)
	}
	c.resume[ch] = st
	return &resumeChan{ch: ch, st: st, parts: parts, kafka: kafka, mem: mem}
}

func (s *Server) countResume(source string, ok bool, records int) {
	result := "recovered"
	if !ok {
		result = "not_recovered"
	}
	s.metrics.resumes.WithLabelValues(source, result).Inc()
	if ok && records > 0 {
		s.metrics.resumeRecords.WithLabelValues(source).Add(float64(records))
	}
}

// submitResume hands a job to the resume pool without blocking; with no
// replayer or a full queue the job fails at once.
func (s *Server) submitResume(j *resumeJob) {
	if s.replayer != nil {
		select {
		case s.resumeQ <- j:
			s.resumePending.Add(1)
			return
		default:
			s.metrics.rejected.WithLabelValues("resume_queue_full").Inc()
		}
	}
	s.completeResume(j)
}

// runResumes is one goroutine of the resume pool: it reads jobs back from
// Kafka until ctx ends.
func (s *Server) runResumes(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case j := <-s.resumeQ:
			s.runResume(ctx, j)
			s.resumePending.Add(-1)
		}
	}
}

func (s *Server) runResume(ctx context.Context, j *resumeJob) {
	ctx, cancel := context.WithDeadline(ctx, j.deadline)
	defer cancel()
	lim := s.lim()
	maxMsgs, maxBytes := lim.MaxQueueMessages, lim.MaxQueueBytes
	for _, rc := range j.chans {
		if j.c.closing() || ctx.Err() != nil {
			break
		}
		rc.ok = true
		n, bytes := len(rc.mem), 0
		for _, f := range rc.mem {
			bytes += len(f.Data)
		}
		for _, pp := range rc.kafka {
			next := pp.after
			complete, err := s.replayer.Replay(ctx, rc.ch, pp.p, pp.after, func(m *Message) bool {
				if m.Channel != rc.ch || m.Partition != pp.p || m.Offset <= next {
					return true // not asked for; never sent out of order
				}
				f := EncodeMessage(m)
				n++
				bytes += len(f.Data)
				if n > maxMsgs || bytes > maxBytes {
					return false // more than the connection's queue may hold
				}
				next = m.Offset
				rc.out = append(rc.out, f)
				return true
			})
			if err != nil && ctx.Err() == nil {
				// Debug: clients cause these at will; kafka errors are
				// counted in kpush_consumer_replays_total{result="error"}
				// and the live readers warn about the broker.
				s.log.Debug("gateway: resume read-back failed", "channel", rc.ch, "partition", pp.p, "after", pp.after, "err", err)
			}
			if err != nil || !complete {
				rc.ok = false
				break
			}
		}
	}
	s.completeResume(j)
}

// completeResume delivers a finished job: per channel the replayed frames
// (or the failure's snapshot), the held live frames, then the ok reply.
func (s *Server) completeResume(j *resumeJob) {
	c := j.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.flags&(flagClosing|flagClosed) != 0 {
		return
	}
	for _, rc := range j.chans {
		if c.resume[rc.ch] != rc.st {
			j.recovered[rc.ch] = false // unsubscribed meanwhile
			continue
		}
		frames := append(rc.mem, rc.out...)
		ok := c.finishResumeLocked(rc.ch, rc.st, frames, rc.parts, rc.ok, rc.st.last)
		j.recovered[rc.ch] = ok
		s.countResume("kafka", ok, len(frames))
	}
	c.sendLocked(okFrame(j.id, j.recovered))
}

// closing reports whether the connection is closing or closed.
func (c *conn) closing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flags&(flagClosing|flagClosed) != 0
}
