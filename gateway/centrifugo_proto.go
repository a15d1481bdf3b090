package gateway

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"strings"
	"sync/atomic"

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
		out.Subscribe = &cfSubscribe{Channel: s.Channel, Recover: s.Recover, Offset: s.Offset, Epoch: s.Epoch, Delta: s.Delta}
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
// into the Protobuf form: each Reply prefixed with its varint length.
func cfReplyProto(js []byte) ([]byte, error) {
	var out []byte
	for _, line := range bytes.Split(js, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var r protocol.Reply
		if err := json.Unmarshal(line, &r); err != nil {
			return nil, fmt.Errorf("gateway: centrifugo: transcode reply %.64q: %w", line, err)
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

// cfPushProto encodes a publication push: value (the record as protocol
// v1's "data") becomes the Publication's data.
func cfPushProto(channel string, offset int64, value []byte) []byte {
	pub := &protocol.Publication{Data: value}
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
// that a record is encoded once for all of its channel's subscribers, not
// once per subscriber. It is direct-mapped by channel: a slot holds the
// encodings of one channel's most recent record; a newer record of the
// channel, or another channel hashing to the slot, replaces it (and its
// subscribers still flushing the older record encode it again). So it
// holds at most cfPushSlots records, whatever the number of channels.
// Safe for concurrent use: entries are immutable and swapped atomically.
type cfPushCache struct {
	seed  maphash.Seed
	slots [cfPushSlots]atomic.Pointer[cfEncoded]
}

const cfPushSlots = 1024

// cfEncoded is one record's wire frames for Centrifugo sessions.
type cfEncoded struct {
	f     *router.Frame
	json  []byte // a text frame; nil until a JSON session needed it
	proto []byte // a binary frame; nil until a Protobuf session needed it
}

func newCFPushCache() *cfPushCache { return &cfPushCache{seed: maphash.MakeSeed()} }

// push returns f's publication push as a WebSocket frame in the JSON or
// the Protobuf form; value is the record as protocol v1's "data".
func (pc *cfPushCache) push(f *router.Frame, value []byte, proto bool) []byte {
	slot := &pc.slots[maphash.String(pc.seed, f.Channel)%cfPushSlots]
	e := slot.Load()
	if e != nil && e.f == f {
		if proto && e.proto != nil {
			return e.proto
		}
		if !proto && e.json != nil {
			return e.json
		}
	}
	n := &cfEncoded{f: f}
	if e != nil && e.f == f {
		*n = *e
	}
	var b []byte
	if proto {
		b = wire.ServerFrame(ws.OpBinary, cfPushProto(f.Channel, f.Offset, value))
		n.proto = b
	} else {
		b = wire.ServerFrame(ws.OpText, cfPush(f.Channel, f.Offset, value))
		n.json = b
	}
	slot.Store(n)
	return b
}
