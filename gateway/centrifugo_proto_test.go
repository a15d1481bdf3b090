package gateway

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/centrifugal/fdelta"
	"github.com/centrifugal/protocol"
	"github.com/kpush/kpush/router"
)

// FuzzCFDecodeProto: whatever a client sends in a binary frame, decoding
// neither panics nor hands on a command after a malformed one.
func FuzzCFDecodeProto(f *testing.F) {
	for _, c := range []*protocol.Command{
		{Id: 1, Connect: &protocol.ConnectRequest{Token: "t"}},
		{Id: 2, Subscribe: &protocol.SubscribeRequest{Channel: "ticks.AAPL", Recover: true, Offset: 7, Epoch: "t:0:1", Delta: "fossil", Flag: 2}},
		{},
	} {
		b, _ := c.MarshalVT()
		f.Add(append(binary.AppendUvarint(nil, uint64(len(b))), b...))
	}
	f.Add([]byte{0x7f, 1})
	f.Fuzz(func(t *testing.T, p []byte) {
		n := 0
		err := cfDecodeProto(p, func(c *cfCommand) bool { n++; return true })
		if err == nil && n == 0 && len(p) > 0 && p[0] != 0 {
			// Something non-empty decoded to no command without an error:
			// only a frame of empty messages may.
			var cmd protocol.Command
			if l, k := binary.Uvarint(p); k > 0 && int(l) <= len(p)-k && cmd.UnmarshalVT(p[k:k+int(l)]) == nil {
				t.Fatalf("frame %x: a whole Command decoded to nothing", p)
			}
		}
	})
}

// TestCFDecodeProto: a frame of several Commands gives them in order, with
// the members kpush reads.
func TestCFDecodeProto(t *testing.T) {
	var frame []byte
	for _, c := range []*protocol.Command{
		{Id: 1, Connect: &protocol.ConnectRequest{Token: "tok"}},
		{Id: 2, Subscribe: &protocol.SubscribeRequest{Channel: "x", Recover: true, Offset: 9, Epoch: "t:1:2", Delta: "fossil", Flag: 2}},
		{Id: 3, History: &protocol.HistoryRequest{Channel: "x"}},
		{},
	} {
		b, _ := c.MarshalVT()
		frame = append(binary.AppendUvarint(frame, uint64(len(b))), b...)
	}
	var got []*cfCommand
	if err := cfDecodeProto(frame, func(c *cfCommand) bool { got = append(got, c); return true }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 || got[0].Connect == nil || got[0].Connect.Token != "tok" ||
		got[1].Subscribe == nil || *got[1].Subscribe != (cfSubscribe{Channel: "x", Recover: true, Offset: 9, Epoch: "t:1:2", Delta: "fossil", Flag: 2}) ||
		got[2].History == nil || got[3].ID != 0 || got[3].Connect != nil {
		t.Fatalf("decoded %+v", got)
	}
	if err := cfDecodeProto(frame[:len(frame)-3], func(*cfCommand) bool { return true }); err == nil {
		t.Fatal("a truncated frame decoded without an error")
	}
}

// TestCFPushCacheBytesBound drives the push cache past its byte bound with
// large records: it never holds more than the bound, every push is still
// right, and small records are still shared (encoded once).
func TestCFPushCacheBytesBound(t *testing.T) {
	pc := newCFPushCache()
	pc.limit = 1 << 20
	big := func(i int64) *router.Frame {
		v := []byte(`{"blob":"` + strings.Repeat(string(rune('a'+i%26)), 200<<10) + `"}`)
		return EncodeMessage(&Message{Channel: "big", Topic: "t", Offset: i, Data: v})
	}
	var prev *router.Frame
	for i := int64(1); i <= 40; i++ {
		f := big(i)
		v, _ := recordValue(f.Payload)
		j := pc.push(f, false).Data
		p := pc.push(f, true).Data
		d := pc.pushDelta(f, prev, true).Data
		if ev := pc.sseEvent(f); !strings.Contains(string(ev.Data), "data: "+string(v)+"\n") {
			t.Fatalf("record %d: event without its data", i)
		}
		if held := pc.bytes.Load(); held > pc.limit || held < 0 {
			t.Fatalf("record %d: the cache holds %d bytes, bound %d", i, held, pc.limit)
		}
		if _, payload := serverFramePayload(j); !strings.Contains(string(payload), string(v)) {
			t.Fatalf("record %d: JSON push without its data", i)
		}
		for _, b := range [][]byte{p, d} {
			_, payload := serverFramePayload(b)
			r, err := protocol.NewProtobufReplyDecoder(payload).Decode()
			if err != nil || r.Push == nil || r.Push.Pub == nil || r.Push.Pub.Offset != uint64(i) {
				t.Fatalf("record %d: Protobuf push %+v: %v", i, r, err)
			}
			if !r.Push.Pub.Delta && string(r.Push.Pub.Data) != string(v) {
				t.Fatalf("record %d: whole push with other data", i)
			}
			if r.Push.Pub.Delta {
				pv, _ := recordValue(prev.Payload)
				if got, err := fdelta.Apply(pv, r.Push.Pub.Data); err != nil || string(got) != string(v) {
					t.Fatalf("record %d: delta does not give the record: %v", i, err)
				}
			}
		}
		prev = f
	}
	small := EncodeMessage(&Message{Channel: "small", Offset: 1, Data: []byte(`{"x":1}`)})
	pc.limit = cfPushCacheBytes
	if a, b := pc.push(small, true), pc.push(small, true); a != b {
		t.Fatal("a small record was encoded twice")
	}
}
