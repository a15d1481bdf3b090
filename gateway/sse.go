package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"

	"github.com/gobwas/ws"
	"github.com/kpush/kpush/router"
)

// Server-Sent Events (the WHATWG "server-sent events" stream).
//
// GET <sse_path>?channel=a&channel=b answers text/event-stream. The stream
// is a connection like a WebSocket one (same queue, bounds, slow-consumer
// policy, resume seam, grants), only its frames are written in the event
// stream's form: the connection's flush passes every frame through
// sseFrameLocked (sse_linux.go) just before it is written. A record is
//
//	event: <channel>
//	id: <stream position>
//	data: <the record, as in protocol v1's "data">
//
// and the stream position is, for every (channel, partition) the stream has
// delivered, the last offset: what protocol v1's since names. A browser
// resends the last id it saw as Last-Event-ID when it reconnects, so the
// stream resumes every channel exactly as a v1 subscribe with since does.
//
// The id is "<h>" followed by "_<c>.<p>.<o>" per position, sorted, with c
// the channel's index in the request's channel list, p the partition and o
// the offset, all in base 36; h (4 base-36 digits) is a hash of the channel
// list, so an id brought to a stream of other channels is not misread.
// "k0a1_0.2.ya3_1.0.5" says: channel 0 up to offset 44211 of partition 2,
// channel 1 up to offset 5 of partition 0.
//
// A stream of one channel fed by one partition has an id that is the
// record's own position, the same in every such stream of the channel: its
// event is made once per record and shared (cfPushCache.sseEvent). Only a
// stream whose id holds several positions (several channels, or a channel
// of several partitions) gets an event of its own for each record.

// DefaultSSEPath is gateway.sse_path's default.
const DefaultSSEPath = "/events"

// sseOff is the gateway.sse_path value that serves no event streams.
const sseOff = "off"

// sseMaxIDBytes bounds an event id. A stream's id grows with its positions,
// one per (channel, partition) delivered; a stream that would need a longer
// id is closed (kpush-close, code CloseSSEIDTooLong). sseMaxChannels keeps
// streams of single-partition channels well inside it: an entry is at most
// 24 bytes (1+2+1+6+1+13), so 64 of them and the hash take 1540.
const (
	sseMaxIDBytes  = 2048
	sseMaxChannels = 64
)

// CloseSSEIDTooLong is the code of the kpush-close event that ends a stream
// whose position no longer fits an id of sseMaxIDBytes.
const CloseSSEIDTooLong ws.StatusCode = 4010

// sseRetryMS is the reconnection delay a stream asks of its client
// (the "retry:" field).
const sseRetryMS = 1000

// validateSSE checks gateway.sse_path.
func (c *Config) validateSSE() []error {
	switch {
	case c.SSEPath == sseOff:
		return nil
	case !strings.HasPrefix(c.SSEPath, "/"):
		return []error{fmt.Errorf("gateway.sse_path: %q must start with / (or be %q)", c.SSEPath, sseOff)}
	case c.SSEPath == c.Path:
		return []error{fmt.Errorf("gateway.sse_path: %q is also gateway.path", c.SSEPath)}
	}
	return nil
}

// ssePos is the last offset a stream delivered of one channel's partition.
type ssePos struct {
	ch     int // index in the stream's channel list
	part   int32
	offset int64
}

// sseStream is the stream-position state of one event stream. It is not
// safe for concurrent use: the connection's mu guards it.
type sseStream struct {
	channels []string       // as requested, in order
	index    map[string]int // channel → index in channels, for a list longer than sseIndexFrom; nil: searched
	hash     string         // 4 base-36 digits of the channel list's hash
	pos      []ssePos       // sorted by (ch, part)
	over     bool           // the stream's close event is queued: nothing follows it
}

// sseIndexFrom is the shortest channel list a stream indexes: a shorter
// one is searched, which costs a record a few comparisons and an idle
// stream nothing (a one-entry map cost it 208 bytes).
const sseIndexFrom = 16

func newSSEStream(channels []string) *sseStream {
	st := &sseStream{channels: channels, hash: sseHash(channels)}
	if len(channels) >= sseIndexFrom {
		st.index = make(map[string]int, len(channels))
		for i, ch := range channels {
			st.index[ch] = i
		}
	}
	return st
}

// channelIndex returns ch's index in the stream's channel list (its last,
// if listed twice, as the index has it).
func (st *sseStream) channelIndex(ch string) (int, bool) {
	if st.index != nil {
		i, ok := st.index[ch]
		return i, ok
	}
	for i := len(st.channels) - 1; i >= 0; i-- {
		if st.channels[i] == ch {
			return i, true
		}
	}
	return 0, false
}

// sseHash is 4 base-36 digits of an FNV-1a hash of the channel list.
func sseHash(channels []string) string {
	h := fnv.New32a()
	for _, ch := range channels {
		h.Write([]byte(ch))
		h.Write([]byte{0})
	}
	s := strconv.FormatUint(uint64(h.Sum32()%(36*36*36*36)), 36)
	return strings.Repeat("0", 4-len(s)) + s
}

// advance records that the stream delivers offset o of partition p of ch.
func (st *sseStream) advance(ch string, p int32, o int64) {
	ci, ok := st.channelIndex(ch)
	if !ok {
		return
	}
	i, found := slices.BinarySearchFunc(st.pos, ssePos{ch: ci, part: p}, cmpSSEPos)
	if found {
		st.pos[i].offset = o
		return
	}
	st.pos = slices.Insert(st.pos, i, ssePos{ch: ci, part: p, offset: o})
}

func cmpSSEPos(a, b ssePos) int {
	if a.ch != b.ch {
		return a.ch - b.ch
	}
	return int(a.part) - int(b.part)
}

// appendID appends the stream's id to b.
func (st *sseStream) appendID(b []byte) []byte {
	b = append(b, st.hash...)
	for _, p := range st.pos {
		b = append(b, '_')
		b = strconv.AppendInt(b, int64(p.ch), 36)
		b = append(b, '.')
		b = strconv.AppendInt(b, int64(p.part), 36)
		b = append(b, '.')
		b = strconv.AppendInt(b, p.offset, 36)
	}
	return b
}

// errSSEID says why a Last-Event-ID was not used.
var errSSEID = errors.New("gateway: Last-Event-ID is not a position of this stream")

// parseSSEID reads an id of a stream of channels into protocol v1's since
// (channel → partition → offset). An id of another channel list, or one
// that is malformed or longer than sseMaxIDBytes, is an error: the stream
// then resumes nothing and says so.
func parseSSEID(id string, channels []string) (map[string]map[string]int64, error) {
	if len(id) > sseMaxIDBytes {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", errSSEID, len(id), sseMaxIDBytes)
	}
	if len(id) < 4 || id[:4] != sseHash(channels) {
		return nil, fmt.Errorf("%w: it was issued for another channel list", errSSEID)
	}
	since := make(map[string]map[string]int64)
	rest := id[4:]
	for rest != "" {
		if rest[0] != '_' {
			return nil, fmt.Errorf("%w: malformed", errSSEID)
		}
		rest = rest[1:]
		entry := rest
		if i := strings.IndexByte(rest, '_'); i >= 0 {
			entry, rest = rest[:i], rest[i:]
		} else {
			rest = ""
		}
		f := strings.Split(entry, ".")
		if len(f) != 3 {
			return nil, fmt.Errorf("%w: malformed entry %q", errSSEID, truncate(entry, 32))
		}
		ci, err1 := strconv.ParseUint(f[0], 36, 16)
		p, err2 := strconv.ParseUint(f[1], 36, 31)
		o, err3 := strconv.ParseInt(f[2], 36, 64)
		if err1 != nil || err2 != nil || err3 != nil || int(ci) >= len(channels) || o < -1 {
			return nil, fmt.Errorf("%w: malformed entry %q", errSSEID, truncate(entry, 32))
		}
		ch := channels[ci]
		if since[ch] == nil {
			since[ch] = make(map[string]int64)
		}
		since[ch][strconv.FormatUint(p, 10)] = o
	}
	return since, nil
}

// seed starts the stream's positions from a resumed id, so that the ids of
// the resumed stream still carry the channels that have nothing new.
func (st *sseStream) seed(since map[string]map[string]int64) {
	for ch, parts := range since {
		for p, o := range parts {
			if n, err := strconv.ParseInt(p, 10, 32); err == nil {
				st.advance(ch, int32(n), o)
			}
		}
	}
}

// appendSSEData appends v as data lines: an event's data cannot hold a line
// break, so a value with some (JSON whitespace) is split over several data
// lines, which the client joins with "\n".
func appendSSEData(b, v []byte) []byte {
	for {
		b = append(b, "data: "...)
		i := bytes.IndexAny(v, "\r\n")
		if i < 0 {
			b = append(b, v...)
			return append(b, '\n')
		}
		b = append(b, v[:i]...)
		b = append(b, '\n')
		if v[i] == '\r' && i+1 < len(v) && v[i+1] == '\n' {
			i++
		}
		v = v[i+1:]
	}
}

// recordValue returns the "data" member of a v1 msg frame's payload (the
// last member: the fields before it never hold `,"data":`).
func recordValue(payload []byte) ([]byte, bool) {
	i := bytes.Index(payload, []byte(`,"data":`))
	if i < 0 || len(payload) < i+9 || payload[len(payload)-1] != '}' {
		return nil, false
	}
	return payload[i+len(`,"data":`) : len(payload)-1], true
}

// sseRecord encodes a record frame (its v1 payload) as an event after
// advancing the stream's position. ok is false when the id would pass
// sseMaxIDBytes: the position is not advanced then.
//
// This is the event of one stream: its id holds every position of the
// stream. The streams whose id is the record's own position (one channel,
// one partition) share one event per record instead (sseShareable,
// cfPushCache.sseEvent).
func (st *sseStream) sseRecord(f *router.Frame) (b []byte, ok bool) {
	v, valid := recordValue(f.Payload)
	if !valid {
		return []byte(": unreadable record\n\n"), true
	}
	// The positions are kept to be put back only when the id can pass
	// the bound: with room for one more entry of the longest kind it
	// cannot.
	var prev []ssePos
	if (len(st.pos)+1)*sseMaxEntryBytes+len(st.hash) > sseMaxIDBytes {
		prev = slices.Clone(st.pos)
	}
	st.advance(f.Channel, f.Partition, f.Offset)
	b = make([]byte, 0, len("event: \nid: \n\n")+len(f.Channel)+16+24*len(st.pos)+len(v)+8)
	b = append(b, "event: "...)
	b = append(b, f.Channel...)
	b = append(b, "\nid: "...)
	idStart := len(b)
	b = st.appendID(b)
	if len(b)-idStart > sseMaxIDBytes {
		st.pos = prev
		return nil, false
	}
	b = append(b, '\n')
	b = appendSSEData(b, v)
	return append(b, '\n'), true
}

// sseMaxEntryBytes is the longest position entry of an id:
// "_" channel "." partition "." offset, in base 36 (at most 2, 6 and 13
// digits).
const sseMaxEntryBytes = 1 + 2 + 1 + 6 + 1 + 13

// sseShareable reports whether the stream's id after the record f is f's
// own position alone, the same for every stream of f's channel alone: the
// stream has that one channel, and no position yet or only one in f's
// partition. Its event is then the record's shared one.
func (st *sseStream) sseShareable(f *router.Frame) bool {
	return len(st.channels) == 1 && st.channels[0] == f.Channel &&
		(len(st.pos) == 0 || len(st.pos) == 1 && st.pos[0].part == f.Partition)
}

// advanceShared advances a stream for which sseShareable(f) holds.
func (st *sseStream) advanceShared(f *router.Frame) {
	if len(st.pos) == 1 {
		st.pos[0].offset = f.Offset
		return
	}
	st.advance(f.Channel, f.Partition, f.Offset)
}

// sseEvent returns the record f as the event of every stream of f's
// channel alone, made once per
// record and kept with its Centrifugo forms; nil when f holds no record
// value. Its id is f's position alone.
func (pc *cfPushCache) sseEvent(f *router.Frame) *router.Frame {
	sl, e := pc.held(f)
	if e != nil {
		if fr := e.sse.Load(); fr != nil {
			return fr
		}
	}
	if _, ok := recordValue(f.Payload); !ok {
		return nil
	}
	sl.mu.Lock()
	defer sl.mu.Unlock()
	e = pc.takeLocked(sl, f)
	if fr := e.sse.Load(); fr != nil {
		return fr
	}
	b, _ := newSSEStream([]string{f.Channel}).sseRecord(f) // one position: never too long
	return pc.keepLocked(e, &e.sse, sseFrame(f, b))
}

// sseFrame is the frame that takes the place of f in a stream's queue: b,
// an event (not a WebSocket frame: sseFrameLocked leaves it as it is), and
// f's position, time, payload and conflation.
func sseFrame(f *router.Frame, b []byte) *router.Frame {
	return &router.Frame{Channel: f.Channel, Topic: f.Topic, Partition: f.Partition, Offset: f.Offset, Timestamp: f.Timestamp,
		Epoch: f.Epoch, Conflate: f.Conflate, Payload: f.Payload, Data: b}
}

// sseControl encodes a frame private to the connection (a v1 reply, a
// ping, a close frame; ws is its WebSocket form) as what a stream shows of
// it:
//
//   - a ping: the heartbeat comment ": ping";
//   - an ok with recovered (the answer to a resume): event kpush-resume,
//     data {"recovered":{...}};
//   - an error: event kpush-error, data {"code":...,"message":...};
//   - a close frame: event kpush-close, data {"code":N,"reason":"..."};
//     the stream ends after it;
//   - anything else: a comment.
func sseControl(frame []byte) []byte {
	op, payload := serverFramePayload(frame)
	switch op {
	case ws.OpPing:
		return []byte(": ping\n\n")
	case ws.OpClose:
		code, reason := 1005, ""
		if len(payload) >= 2 {
			code = int(payload[0])<<8 | int(payload[1])
			reason = string(payload[2:])
		}
		data, _ := json.Marshal(struct {
			Code   int    `json:"code"`
			Reason string `json:"reason"`
		}{code, reason})
		return sseEvent("kpush-close", data)
	case ws.OpText:
		var r struct {
			Op        string          `json:"op"`
			Code      string          `json:"code"`
			Message   string          `json:"message"`
			Recovered json.RawMessage `json:"recovered"`
		}
		if json.Unmarshal(payload, &r) != nil {
			break
		}
		switch {
		case r.Op == "error":
			data, _ := json.Marshal(struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			}{r.Code, r.Message})
			return sseEvent("kpush-error", data)
		case r.Op == "ok" && r.Recovered != nil:
			return sseEvent("kpush-resume", append(append([]byte(`{"recovered":`), r.Recovered...), '}'))
		case r.Op == "ok":
			return []byte(": subscribed\n\n")
		}
	}
	return []byte(":\n\n")
}

func sseEvent(name string, data []byte) []byte {
	b := make([]byte, 0, len(name)+len(data)+24)
	b = append(b, "event: "...)
	b = append(b, name...)
	b = append(b, '\n')
	b = appendSSEData(b, data)
	return append(b, '\n')
}

// serverFramePayload splits an unmasked, unfragmented server frame (as
// wire.ServerFrame builds it) into its opcode and payload.
func serverFramePayload(b []byte) (ws.OpCode, []byte) {
	if len(b) < 2 {
		return 0, nil
	}
	op := ws.OpCode(b[0] & 0x0f)
	n, h := int(b[1]&0x7f), 2
	switch n {
	case 126:
		if len(b) < 4 {
			return 0, nil
		}
		n, h = int(b[2])<<8|int(b[3]), 4
	case 127:
		if len(b) < 10 {
			return 0, nil
		}
		n = 0
		for _, c := range b[2:10] {
			n = n<<8 | int(c)
		}
		h = 10
	}
	if n < 0 || len(b) < h+n {
		return 0, nil
	}
	return op, b[h : h+n]
}

// sseSubscribe subscribes a new event stream's channels as protocol v1's
// subscribe would (since from Last-Event-ID, snapshot with
// ?snapshot=true), once the stream's connection is registered (startSSE,
// sse_linux.go). With badID (a Last-Event-ID that could not be used) the
// stream first says that nothing was resumed; a server draining closes the
// stream with 1001 once it is subscribed.
func (s *Server) sseSubscribe(t transport, sub *Request, badID bool) {
	c := t.sess()
	if badID {
		// Nothing could be resumed: say so before anything else.
		recovered := make(map[string]bool, len(sub.Channels))
		for _, ch := range sub.Channels {
			recovered[ch] = false
		}
		c.send(t, okFrame(0, recovered))
	}
	s.subscribe(t, sub)
	if s.draining.Load() {
		c.closeWith(t, ws.StatusGoingAway, "server shutting down", false)
	}
}
