package gateway

import (
	"fmt"
	"strings"
	"testing"

	"github.com/kpush/kpush/router"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Unit tests of the outbound queue: bounds, compaction, conflation and the
// resume seam, driven without a socket (on any OS).

func newPolicyCounters() *policyCounters {
	return &policyCounters{
		compactions: prometheus.NewCounter(prometheus.CounterOpts{Name: "compactions"}),
		abandoned:   prometheus.NewCounter(prometheus.CounterOpts{Name: "abandoned"}),
		conflated:   prometheus.NewCounter(prometheus.CounterOpts{Name: "conflated"}),
		snapshots:   prometheus.NewCounter(prometheus.CounterOpts{Name: "snapshots"}),
	}
}

func count(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// rec is a live record of ch at offset o in partition 0, from a route with
// slow: conflate when conflate is set.
func rec(ch string, o int64, conflate bool) *router.Frame {
	return EncodeMessage(&Message{Channel: ch, Offset: o, Timestamp: 1, Data: []byte(fmt.Sprintf(`{"v":%d}`, o)), Conflate: conflate})
}

// describe lists the queue as channel@offset, with +skipped or +snap for a
// frame that gained "skipped":N or "snap":true.
func describe(o *outbound) string {
	var parts []string
	for _, f := range o.frames {
		s := fmt.Sprintf("%s@%d", f.Channel, f.Offset)
		p := string(f.Payload)
		if strings.Contains(p, `"skipped":`) {
			s += "+skipped"
		}
		if strings.Contains(p, `"snap":true`) {
			s += "+snap"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}

// checkBytes: bytes always equals what the queue and the held frames hold,
// less what was written of the head frame.
func checkBytes(t *testing.T, o *outbound) {
	t.Helper()
	n := -o.head
	for _, f := range o.frames {
		n += len(f.Data)
	}
	held := 0
	for _, st := range o.resume {
		for _, h := range st.held {
			n += len(h.Data)
		}
		held += len(st.held)
	}
	if n != o.bytes || held != o.heldCount {
		t.Fatalf("bytes %d held %d, but the queue holds %d bytes and %d held frames", o.bytes, o.heldCount, n, held)
	}
}

func TestOutboundBounds(t *testing.T) {
	pc := newPolicyCounters()
	var o outbound
	f := rec("a", 1, false)
	b := queueBounds{messages: 3, bytes: 10 * len(f.Data)}
	for i := int64(1); i <= 3; i++ {
		if r := o.enqueue(rec("a", i, false), 0, b, pc); r != pushQueued {
			t.Fatalf("record %d within the bounds: %d, want queued", i, r)
		}
	}
	if r := o.enqueue(rec("a", 4, false), 0, b, pc); r != pushRefused {
		t.Fatalf("a 4th record over max_queue_messages 3: %d, want refused", r)
	}
	checkBytes(t, &o)
	// The byte bound: 3 messages of room, but not the bytes.
	o = outbound{}
	b = queueBounds{messages: 100, bytes: 2*len(f.Data) + 1}
	o.enqueue(rec("a", 1, false), 0, b, pc)
	o.enqueue(rec("a", 2, false), 0, b, pc)
	if r := o.enqueue(rec("a", 3, false), 0, b, pc); r != pushRefused {
		t.Fatalf("a record over max_queue_bytes: %d, want refused", r)
	}
	// Writing frees room: a partial write keeps the head frame.
	o.consume(len(f.Data) + 3)
	if len(o.frames) != 1 || o.head != 3 {
		t.Fatalf("after writing 1 frame and 3 bytes: %d frames, head %d", len(o.frames), o.head)
	}
	checkBytes(t, &o)
	if r := o.enqueue(rec("a", 3, false), 0, b, pc); r != pushQueued {
		t.Fatalf("after a write: %d, want queued", r)
	}
	// Held frames of a resume count against the bounds too.
	o = outbound{}
	b = queueBounds{messages: 2, bytes: 1 << 20}
	o.startReplay("r", []partPos{{0, 10}}, nil)
	o.enqueue(rec("r", 11, false), 0, b, pc)
	o.enqueue(rec("a", 1, false), 0, b, pc)
	if o.fits(b, 1, 1) {
		t.Fatal("one held and one queued frame leave room under max_queue_messages 2")
	}
	checkBytes(t, &o)
}

func TestOutboundCompaction(t *testing.T) {
	pc := newPolicyCounters()
	var o outbound
	for _, f := range []*router.Frame{rec("a", 1, true), rec("a", 2, true), rec("x", 1, false), rec("b", 1, true), rec("a", 3, true), rec("x", 2, false), rec("b", 2, true)} {
		o.add(f)
	}
	o.inflight = 1 // a@1 is being written: never dropped
	o.compact(pc)
	if got, want := describe(&o), "a@1 x@1 a@3 x@2 b@2"; got != want {
		t.Fatalf("compacted to %q, want %q", got, want)
	}
	if o.conflated[o.frames[2]].n != 1 || o.conflated[o.frames[4]].n != 1 || count(t, pc.conflated) != 2 || count(t, pc.compactions) != 1 {
		t.Fatalf("skipped %v, conflated %v, compactions %v", o.conflated, count(t, pc.conflated), count(t, pc.compactions))
	}
	checkBytes(t, &o)
	// Nothing to drop: no compaction counted.
	o.compact(pc)
	if count(t, pc.compactions) != 1 {
		t.Fatal("a compaction that dropped nothing was counted")
	}
	// The next frame of a channel written carries what was dropped before it.
	o.inflight = 0
	o.consume(len(o.frames[0].Data))
	a3 := o.frames[1]
	if m := o.markSkipped(1); !strings.Contains(string(m.Payload), `"skipped":1,`) || o.frames[1] != m {
		t.Fatalf("markSkipped gave %s", m.Payload)
	}
	if _, left := o.conflated[a3]; left {
		t.Fatal("the skipped count of a was not reset once reported")
	}
	checkBytes(t, &o)
}

func TestOutboundConflation(t *testing.T) {
	pc := newPolicyCounters()
	var o outbound
	size := len(rec("a", 1, true).Data)
	b := queueBounds{messages: 2, bytes: 1 << 20}
	o.enqueue(rec("a", 1, true), 0, b, pc)
	o.enqueue(rec("b", 1, true), 0, b, pc)
	// Full: a newer a replaces the pending a.
	if r := o.enqueue(rec("a", 2, true), 0, b, pc); r != pushReplaced {
		t.Fatalf("a@2 on a full queue: %d, want replaced", r)
	}
	// c has nothing pending: it joins beyond the bounds, once.
	if r := o.enqueue(rec("c", 1, true), 0, b, pc); r != pushQueued {
		t.Fatalf("c@1 on a full queue: %d, want queued beyond the bounds", r)
	}
	if r := o.enqueue(rec("c", 2, true), 0, b, pc); r != pushReplaced {
		t.Fatalf("c@2: %d, want replaced", r)
	}
	// A route without conflation on the same full queue: refused.
	if r := o.enqueue(rec("x", 1, false), 0, b, pc); r != pushRefused {
		t.Fatalf("x@1: %d, want refused", r)
	}
	if got, want := describe(&o), "a@2 b@1 c@2"; got != want {
		t.Fatalf("queue %q, want %q", got, want)
	}
	if len(o.frames) > b.messages+2 || o.bytes > 3*size+8 {
		t.Fatalf("%d frames and %d bytes: past the bounds plus one frame per conflated channel", len(o.frames), o.bytes)
	}
	// A frame being written is never replaced: the next a joins instead.
	o.inflight = 1
	if r := o.enqueue(rec("a", 3, true), 0, b, pc); r != pushQueued {
		t.Fatalf("a@3 while a@2 is in flight: %d, want queued", r)
	}
	if got, want := describe(&o), "a@2 b@1 c@2 a@3"; got != want {
		t.Fatalf("queue %q, want %q", got, want)
	}
	if count(t, pc.conflated) != 2 {
		t.Fatalf("conflated %v, want 2", count(t, pc.conflated))
	}
	checkBytes(t, &o)
}

// TestOutboundResumeSeam: while a channel is read back its live frames are
// held; the read-back, then the held frames, are queued with the overlap
// dropped, and later live frames at or below the floor are dropped too.
func TestOutboundResumeSeam(t *testing.T) {
	pc := newPolicyCounters()
	b := queueBounds{messages: 100, bytes: 1 << 20}
	var o outbound
	st := o.startReplay("r", []partPos{{0, 10}}, nil)
	for _, off := range []int64{13, 14} { // live, published during the read-back
		if r := o.enqueue(rec("r", off, false), 0, b, pc); r != pushAside {
			t.Fatalf("live r@%d while replaying: %d, want held", off, r)
		}
	}
	o.enqueue(rec("other", 1, false), 0, b, pc) // other channels flow meanwhile
	checkBytes(t, &o)
	// The read-back reached 14 (the partition's end when it read).
	replayed := []*router.Frame{rec("r", 11, false), rec("r", 12, false), rec("r", 13, false), rec("r", 14, false)}
	complete, queued := o.finishResume("r", st, replayed, []partPos{{0, 10}}, true, nil, b, pc)
	if !complete || !queued {
		t.Fatalf("finishResume = %v, %v; want complete and queued", complete, queued)
	}
	if got, want := describe(&o), "other@1 r@11 r@12 r@13 r@14"; got != want {
		t.Fatalf("queue %q, want %q (held r@13 and r@14 overlap the read-back)", got, want)
	}
	if o.frames[1].Timestamp != 0 {
		t.Fatal("a replayed frame kept its timestamp: it would count in the delivery latency")
	}
	checkBytes(t, &o)
	// A lagging instance's live stream repeats 14: dropped; 15 passes and
	// the floor is forgotten.
	if r := o.enqueue(rec("r", 14, false), 0, b, pc); r != pushAside {
		t.Fatalf("live r@14 at the floor: %d, want dropped", r)
	}
	if r := o.enqueue(rec("r", 15, false), 0, b, pc); r != pushQueued {
		t.Fatalf("live r@15: %d, want queued", r)
	}
	if _, left := o.resume["r"]; left {
		t.Fatal("the resume state of r outlived its floor")
	}
	checkBytes(t, &o)
}

// replay is an outbound queue with channel r being read back from offset 10
// of partition 0; r's last record, for a snapshot, is at offset 20.
type replay struct {
	o    outbound
	st   *chanResume
	pc   *policyCounters
	b    queueBounds
	last *router.Frame
}

func startReplay(maxMessages int) *replay {
	r := &replay{pc: newPolicyCounters(), b: queueBounds{messages: maxMessages, bytes: 1 << 20}, last: rec("r", 20, false)}
	r.st = r.o.startReplay("r", []partPos{{0, 10}}, r.last)
	return r
}

// TestOutboundResumeOverflow: held frames that overflow the bounds give the
// resume up, not the connection; the read-back then answers
// recovered:false with nothing replayed and no snapshot.
func TestOutboundResumeOverflow(t *testing.T) {
	r := startReplay(3)
	o, st, pc := &r.o, r.st, r.pc
	for off := int64(21); off <= 23; off++ {
		o.enqueue(rec("r", off, false), 0, r.b, pc)
	}
	if res := o.enqueue(rec("r", 24, false), 0, r.b, pc); res != pushQueued {
		t.Fatalf("r@24 past the bounds while replaying: %d, want queued live (resume abandoned)", res)
	}
	if count(t, pc.abandoned) != 1 || o.heldCount != 0 || !st.lossy || st.replaying {
		t.Fatalf("abandoned %v, held %d, lossy %v, replaying %v", count(t, pc.abandoned), o.heldCount, st.lossy, st.replaying)
	}
	checkBytes(t, o)
	complete, _ := o.finishResume("r", st, []*router.Frame{rec("r", 11, false)}, []partPos{{0, 10}}, true, r.last, r.b, pc)
	if complete || count(t, pc.snapshots) != 0 {
		t.Fatalf("complete %v, snapshots %v; want false and none", complete, count(t, pc.snapshots))
	}
	if got, want := describe(o), "r@24"; got != want {
		t.Fatalf("queue %q, want %q", got, want)
	}
	checkBytes(t, o)
}

// TestOutboundFailedResumeSnapshot: a read-back that could not be complete
// sends the channel's last record, marked "snap":true, when it is newer
// than the client's position, then the held live frames.
func TestOutboundFailedResumeSnapshot(t *testing.T) {
	r := startReplay(100)
	o := &r.o
	o.enqueue(rec("r", 21, false), 0, r.b, r.pc)
	complete, queued := o.finishResume("r", r.st, nil, []partPos{{0, 10}}, false, r.last, r.b, r.pc)
	if complete || !queued || count(t, r.pc.snapshots) != 1 {
		t.Fatalf("complete %v queued %v snapshots %v", complete, queued, count(t, r.pc.snapshots))
	}
	if got, want := describe(o), "r@20+snap r@21"; got != want {
		t.Fatalf("queue %q, want %q", got, want)
	}
	// A connection closing drops the resume and every pending frame but
	// the one being written.
	o.inflight = 1
	o.dropResume("r")
	o.dropPending()
	if got, want := describe(o), "r@20+snap"; got != want {
		t.Fatalf("after dropPending: %q, want %q", got, want)
	}
	checkBytes(t, o)
}

// TestOutboundFloorForgottenOnReset: after a resume, live frames at or
// below the client's position are dropped as already delivered, except once
// the partition's log was replaced: the first frame of the new log
// (Reset) and those after it are new records under old positions, and go
// out.
func TestOutboundFloorForgottenOnReset(t *testing.T) {
	pc := newPolicyCounters()
	b := queueBounds{messages: 100, bytes: 1 << 20}
	var o outbound
	st := o.startReplay("r", []partPos{{0, 10}}, nil)
	if complete, _ := o.finishResume("r", st, []*router.Frame{rec("r", 11, false)}, []partPos{{0, 10}}, true, nil, b, pc); !complete {
		t.Fatal("resume not complete")
	}
	if r := o.enqueue(rec("r", 11, false), 0, b, pc); r != pushAside {
		t.Fatalf("live r@11 at the floor: %d, want dropped", r)
	}
	// The topic was recreated: its new log starts at 0.
	first := rec("r", 0, false)
	first.Reset = true
	if r := o.enqueue(first, 0, b, pc); r != pushQueued {
		t.Fatalf("first frame of the new log (reset) r@0: %d, want queued", r)
	}
	if r := o.enqueue(rec("r", 1, false), 0, b, pc); r != pushQueued {
		t.Fatalf("new log r@1 after the reset: %d, want queued", r)
	}
	if got, want := describe(&o), "r@11 r@0 r@1"; got != want {
		t.Fatalf("queue %q, want %q", got, want)
	}
	checkBytes(t, &o)
}

// TestMarkFrameMatchesEncodeMessage: a frame marked after encoding
// ("snap":true on a snapshot, "skipped":N on a conflated or capped frame)
// is byte for byte the frame EncodeMessage makes of the same record with
// Snapshot or Skipped set: one member order for clients that read by
// position.
func TestMarkFrameMatchesEncodeMessage(t *testing.T) {
	long := `{"v":"` + strings.Repeat("x", 200) + `"}`     // a 2-byte length header once marked
	longer := `{"v":"` + strings.Repeat("y", 65600) + `"}` // an 8-byte one
	for _, tc := range []struct {
		name string
		m    Message
	}{
		{"plain", Message{Channel: "t.a", Partition: 3, Offset: 17, Timestamp: 1700000000000, Data: []byte(`{"p":1}`)}},
		{"negative offset and time", Message{Channel: "t.a", Offset: -1, Timestamp: -5, Data: []byte(`1`)}},
		{"channel with punctuation", Message{Channel: "a:b@c/d-e_f.g", Offset: 1, Data: []byte(`{"ts":1,"o":2}`)}},
		{"reset", Message{Channel: "t.a", Offset: 2, Reset: true, Data: []byte(`{}`)}},
		{"binary", Message{Channel: "t.a", Offset: 2, Binary: true, Data: []byte{0, 1, 2, 250}}},
		{"crosses 125 bytes", Message{Channel: "t.a", Offset: 9, Data: []byte(`"` + strings.Repeat("z", 125-len(`{"op":"msg","ch":"t.a","p":0,"o":9,"ts":0,"data":""}`)) + `"`)}},
		{"2-byte header", Message{Channel: "t.a", Offset: 9, Data: []byte(long)}},
		{"8-byte header", Message{Channel: "t.a", Offset: 9, Data: []byte(longer)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, mk := range []struct {
				name    string
				mark    func(*router.Frame) *router.Frame
				snap    bool
				skipped int64
			}{
				{"snap", func(f *router.Frame) *router.Frame { return markFrame(f, `"snap":true`) }, true, 0},
				{"skipped", func(f *router.Frame) *router.Frame { return markFrame(f, `"skipped":12`) }, false, 12},
				{"snap then skipped", func(f *router.Frame) *router.Frame {
					return markFrame(markFrame(f, `"snap":true`), `"skipped":3`)
				}, true, 3},
				{"skipped then snap", func(f *router.Frame) *router.Frame {
					return markFrame(markFrame(f, `"skipped":3`), `"snap":true`)
				}, true, 3},
			} {
				m := tc.m
				got := mk.mark(EncodeMessage(&m))
				m.Snapshot, m.Skipped = mk.snap, mk.skipped
				want := EncodeMessage(&m)
				if string(got.Data) != string(want.Data) {
					t.Fatalf("%s: marked frame\n%.300q\nEncodeMessage\n%.300q", mk.name, got.Data, want.Data)
				}
				if string(got.Payload) != string(want.Payload) || got.Channel != want.Channel || got.Offset != want.Offset || got.Reset != want.Reset {
					t.Fatalf("%s: marked frame's fields differ from EncodeMessage's", mk.name)
				}
			}
		})
	}
}

// TestSkipMarkFollowsItsFrame: a frame marked while gathered but not yet
// written keeps its count: replaced by a transport's form (an event
// stream's), then dropped by conflation, its count and itself go to the
// next frame of its channel, and nothing is left once that is written.
func TestSkipMarkFollowsItsFrame(t *testing.T) {
	pc := newPolicyCounters()
	var o outbound
	a1, a2 := rec("a", 1, true), rec("a", 2, true)
	o.add(a1)
	o.addMark(a1, 3) // three records of a dropped before a@1
	m := o.markSkipped(0)
	if !strings.Contains(string(m.Payload), `"skipped":3,`) {
		t.Fatalf("marked %s", m.Payload)
	}
	// A transport puts its own form in the queue (conn_linux.go wireLocked).
	nf := &router.Frame{Channel: "a", Offset: 1, Conflate: true, Payload: m.Payload, Data: []byte("event form")}
	o.bytes += len(nf.Data) - len(m.Data)
	o.frames[0] = nf
	o.replaced(m, nf)
	// Nothing was written; a@2 arrives on a full queue and a@1 is dropped.
	o.add(a2)
	o.compact(pc)
	if got := describe(&o); got != "a@2" {
		t.Fatalf("queue %q, want a@2", got)
	}
	if m := o.markSkipped(0); !strings.Contains(string(m.Payload), `"skipped":4,`) {
		t.Fatalf("a@2 marked %s, want skipped:4 (3 before a@1, and a@1)", m.Payload)
	}
	checkBytes(t, &o)
	o.consume(o.bytes)
	if len(o.conflated) != 0 {
		t.Fatalf("%d marks left after the queue was written", len(o.conflated))
	}
}
