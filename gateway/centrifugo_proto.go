package gateway

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/centrifugal/fdelta"
	"github.com/centrifugal/protocol"
	"github.com/gobwas/ws"
	"github.com/kpush/kpush/gateway/wire"
	"github.com/kpush/kpush/router"
)

// Centrifugo's Protobuf format: a client that asks for it (the
// "centrifuge-protobuf" WebSocket subprotocol, which the SDKs send, or
// ?format=protobuf) exchanges binary frames holding one or more messages,
// each prefixed with its length as a varint: Commands from the client,
// Replies from kpush (github.com/centrifugal/protocol's definitions).
//
// kpush builds every reply in the JSON form (centrifugo_session.go) and a
// Protobuf session transcodes it (cfReplyProto): replies are few. Records
// are pushed in the hot path instead, and are encoded once per record for
// every subscriber of either format (cfPushCache).

// cfProtobufSubprotocol is the WebSocket subprotocol of Centrifugo's
// Protobuf format.
const cfProtobufSubprotocol = "centrifuge-protobuf"

// cfWantsProtobuf reports whether a Sec-WebSocket-Protocol value offers
// Centrifugo's Protobuf format.
func cfWantsProtobuf(v []byte) bool {
	for _, p := range strings.Split(string(v), ",") {
		if strings.TrimSpace(p) == cfProtobufSubprotocol {
			return true
		}
	}
	return false
}

// cfFormatProtobuf reports whether a request URI asks for the Protobuf
// format with ?format=protobuf.
func cfFormatProtobuf(uri []byte) bool {
	q := bytes.IndexByte(uri, '?')
	if q < 0 {
		return false
	}
	for _, kv := range bytes.Split(uri[q+1:], []byte("&")) {
		if string(kv) == "format=protobuf" {
			return true
		}
	}
	return false
}

// errCFProtoFrame is a binary frame that does not hold whole Commands.
var errCFProtoFrame = errors.New("gateway: centrifugo: a binary frame must hold varint-length-prefixed Commands")

// cfDecodeProto decodes the Commands of one binary frame into kpush's
// command form, calling each in order; it stops when each returns false.
func cfDecodeProto(p []byte, each func(*cfCommand) bool) error {
	d := protocol.NewProtobufCommandDecoder(p)
	for {
		cmd, err := d.Decode()
		if cmd != nil {
			if !each(cfFromProto(cmd)) {
				return nil
			}
		}
		switch {
		case err == io.EOF:
			return nil
		case err != nil:
			return fmt.Errorf("%w: %v", errCFProtoFrame, err)
		case cmd == nil:
			return errCFProtoFrame
		}
	}
}

// present marks a method kpush answers without reading its request.
var present = json.RawMessage(`{}`)

// cfFromProto turns a decoded Command into kpush's command form.
func cfFromProto(c *protocol.Command) *cfCommand {
	out := &cfCommand{ID: c.Id}
	if c.Connect != nil {
		out.Connect = &cfConnect{Token: c.Connect.Token}
	}
	if c.Subscribe != nil {
		s := c.Subscribe
		out.Subscribe = &cfSubscribe{Channel: s.Channel, Recover: s.Recover, Offset: s.Offset, Epoch: s.Epoch, Delta: s.Delta, Flag: s.Flag}
	}
	if c.Unsubscribe != nil {
		out.Unsubscribe = &cfChannel{Channel: c.Unsubscribe.Channel}
	}
	if c.Refresh != nil {
		out.Refresh = &cfConnect{Token: c.Refresh.Token}
	}
	for _, m := range []struct {
		set bool
		dst *json.RawMessage
	}{
		{c.Publish != nil, &out.Publish}, {c.Presence != nil, &out.Presence}, {c.PresenceStats != nil, &out.PresenceSt},
		{c.History != nil, &out.History}, {c.Rpc != nil, &out.RPC}, {c.Send != nil, &out.Send},
		{c.SubRefresh != nil, &out.SubRefresh}, {c.Ping != nil, &out.Ping},
	} {
		if m.set {
			*m.dst = present
		}
	}
	return out
}

// cfReplyProto transcodes replies in the JSON form (newline separated)
// into the Protobuf form: each Reply prefixed with its varint length. pubs,
// when not nil, holds the Protobuf data of a subscribe reply's
// publications, in order (nil: the JSON data as it is), so that a record of
// a format: bytes route is its raw bytes there (cfProtoData).
func cfReplyProto(js []byte, pubs [][]byte) ([]byte, error) {
	var out []byte
	for _, line := range bytes.Split(js, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var r protocol.Reply
		if err := json.Unmarshal(line, &r); err != nil {
			return nil, fmt.Errorf("gateway: centrifugo: transcode reply %.64q: %w", line, err)
		}
		if r.Subscribe != nil {
			for i, p := range r.Subscribe.Publications {
				if i < len(pubs) && pubs[i] != nil {
					p.Data = pubs[i]
				}
			}
		}
		b, err := r.MarshalVT()
		if err != nil {
			return nil, fmt.Errorf("gateway: centrifugo: encode reply: %w", err)
		}
		out = binary.AppendUvarint(out, uint64(len(b)))
		out = append(out, b...)
	}
	return out, nil
}

// cfBinaryMember is what precedes the data of a record of a format: bytes
// route in its protocol v1 payload (EncodeMessage): its data is the record's
// bytes in base64, as a JSON string.
var cfBinaryMember = []byte(`,"enc":"base64","data":"`)

// cfBinary reports whether a record's v1 payload holds opaque bytes (a
// format: bytes route). Only the payload's head is looked at: the first
// ,"data": member is the record's, whatever its value holds.
func cfBinary(payload []byte) bool {
	i := bytes.Index(payload, []byte(`,"data":`))
	return i >= 0 && bytes.HasPrefix(payload[i:], cfBinaryMember[len(`,"enc":"base64"`):]) &&
		bytes.HasSuffix(payload[:i], cfBinaryMember[:len(`,"enc":"base64"`)])
}

// cfProtoData is the data of a record's publication in the Protobuf format,
// given its v1 payload and its value there (recordValue): the record's raw
// bytes for a format: bytes route (its value is them in base64), the JSON
// value as it is otherwise. In the JSON format the value stays as it is:
// Centrifugo's JSON protocol copies a publication's data into the frame
// verbatim (github.com/centrifugal/protocol's Raw), so it must be JSON, and
// the base64 string is.
func cfProtoData(payload, value []byte) []byte {
	if len(value) < 2 || !cfBinary(payload) {
		return value
	}
	raw, err := base64.StdEncoding.AppendDecode(make([]byte, 0, base64.StdEncoding.DecodedLen(len(value)-2)), value[1:len(value)-1])
	if err != nil {
		return value // not reached: EncodeMessage wrote it
	}
	return raw
}

// cfPushProto encodes a publication push: value (the publication's data:
// the record's cfProtoData, or a fossil delta when delta is set) becomes the
// Publication's data.
func cfPushProto(channel string, offset int64, value []byte, delta bool) []byte {
	pub := &protocol.Publication{Data: value, Delta: delta}
	if offset > 0 {
		pub.Offset = uint64(offset)
	}
	r := &protocol.Reply{Push: &protocol.Push{Channel: channel, Pub: pub}}
	b, err := r.MarshalVT()
	if err != nil {
		return nil // not reached: these fields always encode
	}
	return append(binary.AppendUvarint(make([]byte, 0, len(b)+binary.MaxVarintLen32), uint64(len(b))), b...)
}

// cfPingProto is the server's ping in the Protobuf format: an empty Reply.
var cfPingProto = []byte{0}

// cfPushCache keeps the Centrifugo forms of the records being pushed, and
// their event stream form (sse.go, sseEvent), so that a record is encoded (and its delta computed) once for all of its
// channel's subscribers, not once per subscriber: each form is a whole
// router.Frame (a WebSocket frame in Data, Payload nil), put in the place
// of the record in every queue that writes that form, as protocol v1's
// frames are shared. A subscriber keeping up costs no allocation then (see
// TestProtocolDeliveryDoesNotAllocate).
//
// It is direct-mapped by record (the frame's identity): a slot holds the
// forms of one recent record, and another record hashing to the slot
// replaces it (subscribers still flushing the older record then encode it
// again). So it holds at most cfPushSlots records, and a burst of records
// is shared as long as the subscribers' flushes are fewer than cfPushSlots
// records apart.
//
// Its memory is bounded by cfPushCacheBytes (the records it holds on to and
// their encodings; slots filled at the same moment may each pass it by one
// form): past it, a record is encoded for each subscriber without being
// kept, and delta subscribers get it whole.
//
// Safe for concurrent use. A form once made never changes, so readers load
// it without a lock; a slot's lock is held while one of its forms is made
// or the slot is given to another record, and bytes and an entry's size
// are updated under it.
type cfPushCache struct {
	seed   maphash.Seed
	slots  [cfPushSlots]cfPushSlot
	bytes  atomic.Int64  // held by all slots
	limit  int64         // cfPushCacheBytes; tests lower it
	deltas atomic.Uint64 // fossil deltas computed
	// protoEncodes counts the whole records encoded as Protobuf pushes.
	protoEncodes atomic.Uint64
}

const (
	cfPushSlots      = 4096
	cfPushCacheBytes = 32 << 20
)

type cfPushSlot struct {
	mu sync.Mutex
	e  atomic.Pointer[cfEncoded] // the record held (nil: none); stored under mu
}

// cfEncoded is one record's wire frames for Centrifugo sessions. Each form
// is nil until a session needed it, then set once, under the slot's lock.
type cfEncoded struct {
	f    *router.Frame // the record
	size int64         // bytes counted in the cache's bytes; guarded by the slot's mu
	kept bool          // the entry is a slot's (false: made for one delivery)

	json  atomic.Pointer[router.Frame] // a text frame
	proto atomic.Pointer[router.Frame] // a binary frame

	// For subscriptions with delta: "fossil" (see pushDelta). deltas[0]
	// is computed from the record's JSON value (JSON sessions, and
	// Protobuf sessions of JSON records), deltas[1] from its raw bytes
	// (Protobuf sessions of a format: bytes record).
	jsonStr    atomic.Pointer[router.Frame] // the JSON push with the data as a JSON string
	deltas     [2]atomic.Pointer[cfDeltaOf]
	jsonDelta  atomic.Pointer[router.Frame] // the JSON push of deltas[0]
	protoDelta atomic.Pointer[router.Frame] // the Protobuf push of the record's Protobuf delta

	// The record as the event of a stream of its channel alone (sse.go's
	// cfPushCache.sseEvent).
	sse atomic.Pointer[router.Frame]
}

// cfDeltaOf is one fossil delta of a record.
type cfDeltaOf struct {
	base  *router.Frame // the record the delta was computed against
	delta []byte        // from base's data; nil: none (not smaller, or no room)
}

func newCFPushCache() *cfPushCache {
	return &cfPushCache{seed: maphash.MakeSeed(), limit: cfPushCacheBytes}
}

// slotOf is the index of f's slot.
func (pc *cfPushCache) slotOf(f *router.Frame) uint64 {
	return maphash.Comparable(pc.seed, f) % cfPushSlots
}

// held returns f's slot, and its entry when the slot holds f (else nil),
// without locking.
func (pc *cfPushCache) held(f *router.Frame) (*cfPushSlot, *cfEncoded) {
	sl := &pc.slots[pc.slotOf(f)]
	if e := sl.e.Load(); e != nil && e.f == f {
		return sl, e
	}
	return sl, nil
}

// takeLocked returns sl's entry for f. When the slot holds another record
// it is emptied, and taken for f if the cache has room for f's frame;
// otherwise the entry returned is not the slot's (kept is false) and
// nothing made for f is kept. Caller holds sl.mu.
func (pc *cfPushCache) takeLocked(sl *cfPushSlot, f *router.Frame) *cfEncoded {
	if e := sl.e.Load(); e != nil {
		if e.f == f {
			return e
		}
		pc.bytes.Add(-e.size)
		sl.e.Store(nil)
	}
	e := &cfEncoded{f: f}
	if n := int64(len(f.Data)); pc.bytes.Load()+n <= pc.limit {
		e.kept, e.size = true, n
		pc.bytes.Add(n)
		sl.e.Store(e)
	}
	return e
}

// keepLocked stores fr as the form *dst of e when e is a slot's and the
// cache has room for it, and returns fr. Caller holds e's slot's mu.
func (pc *cfPushCache) keepLocked(e *cfEncoded, dst *atomic.Pointer[router.Frame], fr *router.Frame) *router.Frame {
	if e.kept && pc.bytes.Load()+int64(len(fr.Data)) <= pc.limit {
		dst.Store(fr)
		e.size += int64(len(fr.Data))
		pc.bytes.Add(int64(len(fr.Data)))
	}
	return fr
}

// cfPushFrame is the frame that takes the place of the record f in a
// Centrifugo session's queue: its position and time, and b (a WebSocket
// frame) to write. Its nil Payload marks it as made (cfFrameLocked), and
// keeps conflation from rewriting it.
func cfPushFrame(f *router.Frame, b []byte) *router.Frame {
	return &router.Frame{Channel: f.Channel, Topic: f.Topic, Partition: f.Partition, Offset: f.Offset,
		Timestamp: f.Timestamp, Epoch: f.Epoch, Data: b}
}

// push returns f's publication push as a frame in the JSON or the Protobuf
// form, nil when f holds no record value (recordValue).
func (pc *cfPushCache) push(f *router.Frame, proto bool) *router.Frame {
	sl, e := pc.held(f)
	if e != nil {
		if fr := e.whole(proto).Load(); fr != nil {
			return fr
		}
	}
	value, ok := recordValue(f.Payload)
	if !ok {
		return nil
	}
	sl.mu.Lock()
	defer sl.mu.Unlock()
	e = pc.takeLocked(sl, f)
	return pc.wholeLocked(e, value, proto)
}

// whole is e's form of the whole record for a subscription without delta.
func (e *cfEncoded) whole(proto bool) *atomic.Pointer[router.Frame] {
	if proto {
		return &e.proto
	}
	return &e.json
}

// wholeLocked returns e's whole-record push, made if it is not yet; value
// is the record as protocol v1's "data". Caller holds e's slot's mu.
func (pc *cfPushCache) wholeLocked(e *cfEncoded, value []byte, proto bool) *router.Frame {
	dst := e.whole(proto)
	if fr := dst.Load(); fr != nil {
		return fr
	}
	f := e.f
	if proto {
		pc.protoEncodes.Add(1)
		return pc.keepLocked(e, dst, cfPushFrame(f, wire.ServerFrame(ws.OpBinary, cfPushProto(f.Channel, f.Offset, cfProtoData(f.Payload, value), false))))
	}
	return pc.keepLocked(e, dst, cfPushFrame(f, wire.ServerFrame(ws.OpText, cfPush(f.Channel, f.Offset, value))))
}

// pushDelta returns f's push for a subscription with delta: "fossil" whose
// client last got the record base (nil: none yet), nil when f holds no
// record value. The delta is computed once per record, against the base of
// the first subscriber that needs it, which for subscribers keeping up is
// the channel's previous record; a subscriber with another base (it was
// behind, or conflated) gets the whole record, so no delta is ever
// computed per subscriber (nor when the cache has no room to keep it). In
// the JSON form the data of such subscriptions is a JSON string, whole or
// delta, as the SDKs expect.
//
// A Protobuf subscriber of a format: bytes record gets a delta between raw
// bytes (the data it applies deltas to), computed once per record too.
func (pc *cfPushCache) pushDelta(f *router.Frame, base *router.Frame, proto bool) *router.Frame {
	raw := proto && cfBinary(f.Payload)
	form := 0
	if raw {
		form = 1
	}
	sl, e := pc.held(f)
	if e != nil {
		// Made already: the delta's base decides the form.
		dv := e.deltas[form].Load()
		switch {
		case base == nil:
			if fr := e.deltaWhole(proto).Load(); fr != nil {
				return fr
			}
		case dv != nil:
			if fr := e.deltaForm(dv, base, proto).Load(); fr != nil {
				return fr
			}
		}
	}
	value, ok := recordValue(f.Payload)
	if !ok {
		return nil
	}
	baseValue, hasBase := []byte(nil), base != nil && base.Channel == f.Channel
	if hasBase {
		baseValue, hasBase = recordValue(base.Payload)
	}
	sl.mu.Lock()
	defer sl.mu.Unlock()
	e = pc.takeLocked(sl, f)
	dv := e.deltas[form].Load()
	if hasBase && e.kept && dv == nil {
		// The first subscriber of f (in this form) that has a base: compute
		// the delta. Keeping base counts against the cache's bytes.
		if room := int64(len(base.Data)); pc.bytes.Load()+room <= pc.limit {
			dv = &cfDeltaOf{base: base}
			e.size += room
			pc.bytes.Add(room)
			pc.deltas.Add(1)
			data, baseData := value, baseValue
			if raw {
				data, baseData = cfProtoData(f.Payload, value), cfProtoData(base.Payload, baseValue)
			}
			if d := fdelta.Create(baseData, data); len(d) < len(data) && pc.bytes.Load()+int64(len(d)) <= pc.limit {
				dv.delta = d
				e.size += int64(len(d))
				pc.bytes.Add(int64(len(d)))
			}
			e.deltas[form].Store(dv)
		}
	}
	useDelta := hasBase && dv != nil && dv.base == base && dv.delta != nil
	switch {
	case useDelta && proto:
		if fr := e.protoDelta.Load(); fr != nil {
			return fr
		}
		return pc.keepLocked(e, &e.protoDelta, cfPushFrame(f, wire.ServerFrame(ws.OpBinary, cfPushProto(f.Channel, f.Offset, dv.delta, true))))
	case useDelta:
		if fr := e.jsonDelta.Load(); fr != nil {
			return fr
		}
		return pc.keepLocked(e, &e.jsonDelta, cfPushFrame(f, wire.ServerFrame(ws.OpText, cfPushString(f.Channel, f.Offset, dv.delta, true))))
	case proto:
		return pc.wholeLocked(e, value, true)
	default:
		if fr := e.jsonStr.Load(); fr != nil {
			return fr
		}
		return pc.keepLocked(e, &e.jsonStr, cfPushFrame(f, wire.ServerFrame(ws.OpText, cfPushString(f.Channel, f.Offset, value, false))))
	}
}

// deltaWhole is e's form of the whole record for a subscription with delta.
func (e *cfEncoded) deltaWhole(proto bool) *atomic.Pointer[router.Frame] {
	if proto {
		return &e.proto
	}
	return &e.jsonStr
}

// deltaForm is e's form for a subscription with delta whose client last
// got base, given the delta computed (dv).
func (e *cfEncoded) deltaForm(dv *cfDeltaOf, base *router.Frame, proto bool) *atomic.Pointer[router.Frame] {
	switch {
	case dv.base != base || dv.delta == nil:
		return e.deltaWhole(proto)
	case proto:
		return &e.protoDelta
	default:
		return &e.jsonDelta
	}
}

// cfPushString encodes a publication push of a subscription with delta in
// the JSON form: data (the record, or a delta when delta is set) as a JSON
// string.
func cfPushString(channel string, offset int64, data []byte, delta bool) []byte {
	b := make([]byte, 0, 64+len(channel)+len(data)*5/4)
	b = append(b, `{"push":{"channel":"`...)
	b = append(b, channel...) // channel names need no escaping
	b = append(b, `","pub":`...)
	b = append(b, cfPubString(offset, data, delta)...)
	return append(b, "}}"...)
}

// cfPubString encodes a publication whose data is a JSON string.
func cfPubString(offset int64, data []byte, delta bool) []byte {
	s, _ := json.Marshal(string(data)) // a string always encodes
	b := make([]byte, 0, 48+len(s))
	b = append(b, `{"data":`...)
	b = append(b, s...)
	if offset > 0 {
		b = append(b, `,"offset":`...)
		b = strconv.AppendInt(b, offset, 10)
	}
	if delta {
		b = append(b, `,"delta":true`...)
	}
	return append(b, '}')
}
