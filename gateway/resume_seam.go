package gateway

import (
	"context"
	"sort"
	"strconv"
	"sync"
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
//     by the connection's queue limits: past them the channel's resume is
//     given up, see abandonReplayLocked) instead of being written. The job
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
// limit, more records than the connection's queue holds for the whole
// request, live frames held meanwhile overflowing the queue, resume_timeout
// reached counting from the request, no replayer, the resume queue full or
// this client address holding its share of it) sends no replayed records for that channel and answers
// recovered:false; if the route keeps snapshots and the channel's last
// record is newer than the client's position, it is sent first, marked
// "snap":true, so a last-value client is current again at once.

// finishResumeLocked queues what resumes ch (outbound.finishResume) and
// schedules a flush for it. It returns whether the resume was complete.
// reserve is the size of the request's ok reply, which follows: the resume
// leaves room for it in the queue's bounds, so a read-back that fills the
// queue answers recovered:false rather than have its own ok reply close the
// connection as a slow consumer. Caller holds c.mu.
func (c *session) finishResumeLocked(t transport, ch string, st *chanResume, frames []*router.Frame, parts []partPos, ok bool, last *router.Frame, reserve int) bool {
	b := c.bounds()
	b.messages--
	b.bytes -= reserve
	ok, queued := c.out.finishResume(ch, st, frames, parts, ok, last, b, &c.srv.policy)
	if queued {
		c.flags |= flagRecent
		t.wakeLocked(false)
	}
	return ok
}

// okReserve is the longest the ok reply to a resume of channels can be
// (every verdict false, the longer word).
func okReserve(id int64, channels map[string]bool) int {
	all := make(map[string]bool, len(channels))
	for ch := range channels {
		all[ch] = false
	}
	return len(okFrame(id, all))
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
//
// It ends exactly once, under the connection's lock (finished): when the
// read-back is done, or when its timer fires at the deadline, wherever the
// job is then (waiting in the queue or reading), whichever comes first.
type resumeJob struct {
	t         transport // the connection resuming
	id        int64     // request id, for the ok reply
	deadline  time.Time
	recovered map[string]bool // verdicts so far (channels served from memory)
	reserve   int             // okReserve of the request
	chans     []*resumeChan
	timer     *time.Timer // fires expireResume at the deadline
	finished  bool        // guarded by c.mu; the ok reply was sent
}

// resumeChan is one channel of a resumeJob.
type resumeChan struct {
	ch    string
	st    *chanResume     // the session's state for ch while it replays
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
func (s *Server) resumeChannel(t transport, ch string, parts []partPos, v router.View, recovered map[string]bool, reserve int) *resumeChan {
	var mem []*router.Frame
	var kafka []partPos
	for _, pp := range parts {
		var ok bool
		if mem, ok = v.History(mem, pp.p, pp.after); !ok {
			kafka = append(kafka, pp)
		}
	}
	c := t.sess()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.flags&(flagClosing|flagClosed) != 0 {
		return nil
	}
	if len(kafka) == 0 {
		ok := c.finishResumeLocked(t, ch, nil, mem, parts, true, v.Last(), reserve)
		recovered[ch] = ok
		s.countResume("memory", ok, len(mem))
		return nil
	}
	st := c.out.startReplay(ch, parts, v.Last())
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
// replayer, a full queue, or a client address already holding its share of
// the queue (see resumeShares), the job fails at once.
func (s *Server) submitResume(j *resumeJob) {
	if s.replayer == nil {
		s.completeResume(j)
		return
	}
	if reason := s.resumeShares.take(j.t.sess().ip); reason != "" {
		s.metrics.rejected.WithLabelValues(reason).Inc()
		s.completeResume(j)
		return
	}
	// The timer runs from the request: time spent waiting in the queue
	// counts against resume_timeout.
	j.timer = time.AfterFunc(time.Until(j.deadline), func() { s.expireResume(j) })
	select {
	case s.resumeQ <- j:
		s.resumePending.Add(1)
	default:
		// Not reached: resumeShares admits no more jobs than the queue holds.
		s.resumeShares.release(j.t.sess().ip)
		s.metrics.rejected.WithLabelValues("resume_queue_full").Inc()
		s.completeResume(j)
	}
}

// runResumes is one goroutine of the resume pool: it reads jobs back from
// Kafka until ctx ends.
func (s *Server) runResumes(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case j := <-s.resumeQ:
			s.resumeShares.release(j.t.sess().ip)
			s.runResume(ctx, j)
			s.resumePending.Add(-1)
		}
	}
}

// resumeShares keeps any one client address from holding more than its
// share of the resume queue: an address may add a read-back only while it
// has fewer waiting than there are free places in the queue. So one address
// never holds half of it or more, and a client from an address holding none
// always finds a place. Behind a proxy (max_connections_per_ip: 0, the
// addresses are the proxy's) only the queue's size applies.
type resumeShares struct {
	mu     sync.Mutex
	size   int            // the queue's capacity (resume_queue)
	perIP  bool           // tell addresses apart
	queued int            // guarded by mu; jobs in the queue
	byIP   map[string]int // guarded by mu; jobs in the queue per address
}

func newResumeShares(size int, perIP bool) *resumeShares {
	return &resumeShares{size: size, perIP: perIP, byIP: make(map[string]int)}
}

// take reserves a place in the queue for ip, or returns the rejection's
// metric label.
func (q *resumeShares) take(ip string) string {
	q.mu.Lock()
	defer q.mu.Unlock()
	free := q.size - q.queued
	if free <= 0 {
		return "resume_queue_full"
	}
	if q.perIP && q.byIP[ip] >= free {
		return "resume_address_share"
	}
	q.queued++
	if q.perIP {
		q.byIP[ip]++
	}
	return ""
}

// release gives back a place taken for ip.
func (q *resumeShares) release(ip string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.queued--
	if q.perIP {
		if q.byIP[ip]--; q.byIP[ip] <= 0 {
			delete(q.byIP, ip)
		}
	}
}

func (s *Server) runResume(ctx context.Context, j *resumeJob) {
	if !s.resumeLive(j, nil) {
		return // timed out in the queue, or the connection went
	}
	ctx, cancel := context.WithDeadline(ctx, j.deadline)
	defer cancel()
	// The read-back budget is the request's: all its channels together hold
	// at most what the connection's queue may.
	lim := s.lim()
	maxMsgs, maxBytes := lim.MaxQueueMessages, lim.MaxQueueBytes
	n, bytes := 0, 0
	for _, rc := range j.chans {
		if ctx.Err() != nil || !s.resumeLive(j, rc) {
			continue // rc.ok stays false
		}
		rc.ok = true
		cn, cb := len(rc.mem), 0
		for _, f := range rc.mem {
			cb += len(f.Data)
		}
		for _, pp := range rc.kafka {
			next := pp.after
			complete, err := s.replayer.Replay(ctx, rc.ch, pp.p, pp.after, func(m *router.Record) bool {
				if m.Channel != rc.ch || m.Partition != pp.p || m.Offset <= next {
					return true // not asked for; never sent out of order
				}
				f := EncodeRecord(m)
				cn++
				cb += len(f.Data)
				if n+cn > maxMsgs || bytes+cb > maxBytes {
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
		if rc.ok {
			n, bytes = n+cn, bytes+cb
		} else {
			rc.out = nil // what a failed channel read is never sent
		}
	}
	s.completeResume(j)
}

// resumeLive reports whether j still waits for its answer and, for rc, whether
// its channel still waits for its read-back (not unsubscribed or revoked).
func (s *Server) resumeLive(j *resumeJob, rc *resumeChan) bool {
	c := j.t.sess()
	c.mu.Lock()
	defer c.mu.Unlock()
	if j.finished || c.flags&(flagClosing|flagClosed) != 0 {
		return false
	}
	return rc == nil || c.out.resume[rc.ch] == rc.st
}

// completeResume delivers a finished job: per channel the replayed frames
// (or the failure's snapshot), the held live frames, then the ok reply.
// A job already answered (timed out) is left alone.
func (s *Server) completeResume(j *resumeJob) { s.answerResume(j, false) }

// expireResume answers a job at its deadline, wherever it is: every channel
// still waiting fails (its snapshot, then the live frames held), and the ok
// reply goes out. A read-back still running stops at the same deadline and
// its result is dropped.
func (s *Server) expireResume(j *resumeJob) { s.answerResume(j, true) }

// answerResume answers j once, under the connection's lock: completed, or
// expired at its deadline. An expired job does not touch what the read-back
// writes (out, ok): it may still be running.
func (s *Server) answerResume(j *resumeJob, expired bool) {
	c := j.t.sess()
	c.mu.Lock()
	defer c.mu.Unlock()
	if j.finished {
		return
	}
	j.finished = true
	if expired {
		s.metrics.rejected.WithLabelValues("resume_timeout").Inc()
	} else if j.timer != nil {
		j.timer.Stop()
	}
	if c.flags&(flagClosing|flagClosed) != 0 {
		return
	}
	for _, rc := range j.chans {
		if c.out.resume[rc.ch] != rc.st {
			j.recovered[rc.ch] = false // unsubscribed or revoked meanwhile
			continue
		}
		var frames []*router.Frame
		ok := false
		if !expired {
			frames, ok = append(rc.mem, rc.out...), rc.ok
		}
		ok = c.finishResumeLocked(j.t, rc.ch, rc.st, frames, rc.parts, ok, rc.st.last, j.reserve)
		j.recovered[rc.ch] = ok
		s.countResume("kafka", ok, len(frames))
	}
	c.sendLocked(j.t, okFrame(j.id, j.recovered))
}
