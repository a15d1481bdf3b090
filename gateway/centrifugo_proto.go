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
// kpush builds every reply in the JSON form (centrifugo_linux.go) and a
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

// cfPushCache keeps the Centrifugo forms of the records being pushed, so
// that a record is encoded (and its delta computed) once for all of its
// channel's subscribers, not once per subscriber. It is direct-mapped by
// record (the frame's identity): a slot holds the encodings of one recent
// record, and another record hashing to the slot replaces it (subscribers
// still flushing the older record then encode it again). So it holds at
// most cfPushSlots records, and a burst of records is shared as long as
// the subscribers' flushes are fewer than cfPushSlots records apart.
//
// Its memory is bounded by cfPushCacheBytes (the records it holds on to and
// their encodings; slots filled at the same moment may each pass it by one
// form): past it, a record is encoded for each subscriber without being
// kept, and delta subscribers get it whole.
//
// Safe for concurrent use: each slot has its own lock, held while one of
// its forms is made; bytes is updated under the slot's lock.
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
	e  cfEncoded // guarded by mu
}

// cfEncoded is one record's wire frames for Centrifugo sessions.
type cfEncoded struct {
	f     *router.Frame // nil: the slot holds nothing
	size  int64         // bytes counted in the cache's bytes
	json  []byte        // a text frame; nil until a JSON session needed it
	proto []byte        // a binary frame; nil until a Protobuf session needed it

	// For subscriptions with delta: "fossil" (see pushDelta). deltas[0]
	// is computed from the record's JSON value (JSON sessions, and
	// Protobuf sessions of JSON records), deltas[1] from its raw bytes
	// (Protobuf sessions of a format: bytes record).
	jsonStr    []byte // the JSON push with the data as a JSON string
	deltas     [2]cfDeltaOf
	jsonDelta  []byte // the JSON push of deltas[0]
	protoDelta []byte // the Protobuf push of the record's Protobuf delta
}

// cfDeltaOf is one fossil delta of a record.
type cfDeltaOf struct {
	base  *router.Frame // the record the delta was computed against
	delta []byte        // from base's data; nil: none (not smaller, or no room)
}

func newCFPushCache() *cfPushCache {
	return &cfPushCache{seed: maphash.MakeSeed(), limit: cfPushCacheBytes}
}

// lock locks f's slot and returns its entry for f. When the slot held
// another record it is emptied, and taken for f if the cache has room for
// f's frame; otherwise the entry returned is not the slot's (its f is nil)
// and nothing made for f is kept. The caller unlocks the slot.
func (pc *cfPushCache) lock(f *router.Frame) (*cfPushSlot, *cfEncoded) {
	sl := &pc.slots[maphash.Comparable(pc.seed, f)%cfPushSlots]
	sl.mu.Lock()
	if sl.e.f == f {
		return sl, &sl.e
	}
	pc.bytes.Add(-sl.e.size)
	sl.e = cfEncoded{}
	if n := int64(len(f.Data)); pc.bytes.Load()+n <= pc.limit {
		sl.e = cfEncoded{f: f, size: n}
		pc.bytes.Add(n)
		return sl, &sl.e
	}
	return sl, &cfEncoded{}
}

// keep stores b in *dst of e when e is a slot's and the cache has room for
// it, and returns b.
func (pc *cfPushCache) keep(e *cfEncoded, dst *[]byte, b []byte) []byte {
	if e.f != nil && pc.bytes.Load()+int64(len(b)) <= pc.limit {
		*dst = b
		e.size += int64(len(b))
		pc.bytes.Add(int64(len(b)))
	}
	return b
}

// push returns f's publication push as a WebSocket frame in the JSON or
// the Protobuf form; value is the record as protocol v1's "data".
func (pc *cfPushCache) push(f *router.Frame, value []byte, proto bool) []byte {
	sl, e := pc.lock(f)
	defer sl.mu.Unlock()
	if proto {
		if e.proto != nil {
			return e.proto
		}
		pc.protoEncodes.Add(1)
		return pc.keep(e, &e.proto, wire.ServerFrame(ws.OpBinary, cfPushProto(f.Channel, f.Offset, cfProtoData(f.Payload, value), false)))
	}
	if e.json != nil {
		return e.json
	}
	return pc.keep(e, &e.json, wire.ServerFrame(ws.OpText, cfPush(f.Channel, f.Offset, value)))
}

// pushDelta returns f's push for a subscription with delta: "fossil" whose
// client last got the record base (nil: none yet). The delta is computed
// once per record, against the base of the first subscriber that needs
// it, which for subscribers keeping up is the channel's previous record;
// a subscriber with another base (it was behind, or conflated) gets the
// whole record, so no delta is ever computed per subscriber (nor when the
// cache has no room to keep it). In the JSON form the data of such
// subscriptions is a JSON string, whole or delta, as the SDKs expect.
//
// A Protobuf subscriber of a format: bytes record gets a delta between raw
// bytes (the data it applies deltas to), computed once per record too.
func (pc *cfPushCache) pushDelta(f *router.Frame, value []byte, base *router.Frame, proto bool) []byte {
	baseValue, ok := []byte(nil), base != nil && base.Channel == f.Channel
	if ok {
		baseValue, ok = recordValue(base.Payload)
	}
	raw := proto && cfBinary(f.Payload)
	form := 0
	if raw {
		form = 1
	}
	sl, e := pc.lock(f)
	defer sl.mu.Unlock()
	dv := &e.deltas[form]
	if ok && e.f != nil && dv.base == nil {
		// The first subscriber of f (in this form) that has a base: compute
		// the delta. Keeping base counts against the cache's bytes.
		if room := int64(len(base.Data)); pc.bytes.Load()+room <= pc.limit {
			dv.base = base
			e.size += room
			pc.bytes.Add(room)
			pc.deltas.Add(1)
			data, baseData := value, baseValue
			if raw {
				data, baseData = cfProtoData(f.Payload, value), cfProtoData(base.Payload, baseValue)
			}
			if d := fdelta.Create(baseData, data); len(d) < len(data) {
				pc.keep(e, &dv.delta, d)
			}
		}
	}
	useDelta := ok && dv.base == base && dv.delta != nil
	switch {
	case useDelta && proto:
		if e.protoDelta != nil {
			return e.protoDelta
		}
		return pc.keep(e, &e.protoDelta, wire.ServerFrame(ws.OpBinary, cfPushProto(f.Channel, f.Offset, dv.delta, true)))
	case useDelta:
		if e.jsonDelta != nil {
			return e.jsonDelta
		}
		return pc.keep(e, &e.jsonDelta, wire.ServerFrame(ws.OpText, cfPushString(f.Channel, f.Offset, dv.delta, true)))
	case proto:
		if e.proto != nil {
			return e.proto
		}
		pc.protoEncodes.Add(1)
		return pc.keep(e, &e.proto, wire.ServerFrame(ws.OpBinary, cfPushProto(f.Channel, f.Offset, cfProtoData(f.Payload, value), false)))
	default:
		if e.jsonStr != nil {
			return e.jsonStr
		}
		return pc.keep(e, &e.jsonStr, wire.ServerFrame(ws.OpText, cfPushString(f.Channel, f.Offset, value, false)))
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
