package wsload

import (
	"bytes"
	"testing"

	"github.com/gobwas/ws"
	"github.com/kpush/kpush/gateway"
	"github.com/kpush/kpush/gateway/wire"
)

// TestParseMsgReadsWhatKpushEncodes round-trips records through kpush's own
// encoder.
func TestParseMsgReadsWhatKpushEncodes(t *testing.T) {
	cases := []struct {
		name      string
		msg       gateway.Message
		wantSeq   int64
		wantSent  int64
		wantSnap  bool
		wantSkips int64
	}{
		{"bench value", gateway.Message{Channel: "bench.S001", Partition: 3, Offset: 99, Timestamp: 1700000000123,
			Data: AppendValue(nil, 42, 1700000000123456789, 100)}, 42, 1700000000123456789, false, 0},
		{"feed tick", gateway.Message{Channel: "ticks.AAPL", Partition: 0, Offset: 7, Timestamp: 1700000000999,
			Data: []byte(`{"sym":"AAPL","price":189.5,"seq":17,"ts":1700000000999}`)}, 17, 0, false, 0},
		{"no seq", gateway.Message{Channel: "c", Offset: 1, Timestamp: 5, Data: []byte(`[1,2,3]`)}, -1, 0, false, 0},
		{"snapshot", gateway.Message{Channel: "c", Offset: 1, Timestamp: 5, Snapshot: true, Data: AppendValue(nil, 1, 2, 0)}, 1, 2, true, 0},
		{"conflated", gateway.Message{Channel: "c", Offset: 9, Timestamp: 5, Skipped: 4, Data: AppendValue(nil, 9, 2, 0)}, 9, 2, false, 4},
		{"large", gateway.Message{Channel: "big", Offset: 1, Timestamp: 5, Data: AppendValue(nil, 1, 2, 70000)}, 1, 2, false, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := gateway.EncodeMessage(&tc.msg)
			op, hdr, n, err := wire.ParseServerHeader(f.Data)
			if err != nil || op != ws.OpText || hdr+n != len(f.Data) {
				t.Fatalf("header: op %d hdr %d len %d err %v for a %d-byte frame", op, hdr, n, err, len(f.Data))
			}
			m, ok := parseMsg(f.Data[hdr:])
			if !ok {
				t.Fatalf("parseMsg refused %s", f.Data[hdr:])
			}
			if string(m.ch) != tc.msg.Channel || m.partition != tc.msg.Partition || m.offset != tc.msg.Offset || m.tsMillis != tc.msg.Timestamp {
				t.Fatalf("got ch=%s p=%d o=%d ts=%d, want %s %d %d %d", m.ch, m.partition, m.offset, m.tsMillis,
					tc.msg.Channel, tc.msg.Partition, tc.msg.Offset, tc.msg.Timestamp)
			}
			if m.seq != tc.wantSeq || m.sentNanos != tc.wantSent || m.snapshot != tc.wantSnap || m.skipped != tc.wantSkips {
				t.Fatalf("got seq=%d sent=%d snap=%v skipped=%d, want %d %d %v %d", m.seq, m.sentNanos, m.snapshot, m.skipped,
					tc.wantSeq, tc.wantSent, tc.wantSnap, tc.wantSkips)
			}
		})
	}
}

// TestParseMsgReadsMarkedFrames reads frames as kpush marks them after
// encoding (conflated or capped: "skipped" right after "op"), which a
// parser expecting "ch" right after "op" dropped: the capped market run
// then counted every frame that reported skipped records as missing.
func TestParseMsgReadsMarkedFrames(t *testing.T) {
	for _, tc := range []struct {
		payload string
		skipped int64
		snap    bool
	}{
		{`{"op":"msg","skipped":3,"ch":"bench.S0001","p":2,"o":77,"ts":1700000000123,"data":{"seq":9,"t":55,"pad":""}}`, 3, false},
		{`{"op":"msg","snap":true,"ch":"bench.S0001","p":2,"o":77,"ts":1700000000123,"data":{"seq":9,"t":55,"pad":""}}`, 0, true},
	} {
		m, ok := parseMsg([]byte(tc.payload))
		if !ok {
			t.Fatalf("parseMsg refused %s", tc.payload)
		}
		if string(m.ch) != "bench.S0001" || m.partition != 2 || m.offset != 77 || m.tsMillis != 1700000000123 ||
			m.seq != 9 || m.sentNanos != 55 || m.skipped != tc.skipped || m.snapshot != tc.snap {
			t.Fatalf("%s: got %+v", tc.payload, m)
		}
	}
	if _, ok := parseMsg([]byte(`{"op":"msg","p":2,"o":77,"ts":1,"data":{}}`)); ok {
		t.Fatal("parseMsg accepted a msg without ch")
	}
}

func TestAppendValueSize(t *testing.T) {
	for _, size := range []int{0, 50, 100, 1000} {
		v := AppendValue(nil, 123456, 1700000000123456789, size)
		if size >= 50 && len(v) != size {
			t.Errorf("size %d: got %d bytes: %s", size, len(v), v)
		}
		if !bytes.HasPrefix(v, []byte(`{"seq":123456,"t":1700000000123456789,"pad":"`)) || !bytes.HasSuffix(v, []byte(`"}`)) {
			t.Errorf("size %d: malformed value %s", size, v)
		}
	}
}

func TestUpgradeOK(t *testing.T) {
	cases := []struct {
		head   string
		status int
		ok     bool
	}{
		{"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: " + wsAccept, 101, true},
		{"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: wrong", 101, false},
		{"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5", 503, false},
		{"garbage", 0, false},
		{"", 0, false},
	}
	for _, tc := range cases {
		status, ok := upgradeOK([]byte(tc.head))
		if status != tc.status || ok != tc.ok {
			t.Errorf("%q: got %d %v, want %d %v", tc.head, status, ok, tc.status, tc.ok)
		}
	}
}

func TestReplyID(t *testing.T) {
	cases := []struct {
		in, op string
		id     int64
		ok     bool
	}{
		{`{"op":"ok","id":12}`, "ok", 12, true},
		{`{"op":"error","id":3,"code":"bad_request","message":"x"}`, "error", 3, true},
		{`{"op":"pong","id":-1}`, "pong", -1, true},
		{`{"op":"msg","ch":"x"}`, "", 0, false},
	}
	for _, tc := range cases {
		op, id, ok := replyID([]byte(tc.in))
		if op != tc.op || id != tc.id || ok != tc.ok {
			t.Errorf("%s: got %q %d %v", tc.in, op, id, ok)
		}
	}
}

// FuzzServerFrames feeds arbitrary bytes through the frame and msg parsers:
// they must never panic, never claim more bytes than given, and a msg they
// accept must name a channel inside the payload.
func FuzzServerFrames(f *testing.F) {
	f.Add(gateway.EncodeMessage(&gateway.Message{Channel: "c", Data: AppendValue(nil, 1, 2, 100)}).Data)
	f.Add([]byte{0x81, 126, 0, 3, 'a', 'b', 'c'})
	f.Add([]byte{0x82, 127, 0xff, 0, 0, 0, 0, 0, 0, 1})
	f.Add([]byte(`{"op":"msg","ch":"x","p":1,"o":2,"ts":3,"data":{"seq":-5,"t":"`))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, hdr, n, err := wire.ParseServerHeader(b)
		if err == nil && hdr > 0 && (hdr > len(b) || n < 0) {
			t.Fatalf("header %d of %d bytes, payload %d", hdr, len(b), n)
		}
		if m, ok := parseMsg(b); ok && !bytes.Contains(b, m.ch) {
			t.Fatalf("channel %q not in input", m.ch)
		}
		replyID(b)
		upgradeOK(b)
	})
}

func TestAppendMarketValue(t *testing.T) {
	for _, size := range []int{0, 100, 2048} {
		v := AppendMarketValue(nil, 7, 1700000000123456789, size)
		if size > 60 && len(v) != size {
			t.Fatalf("size %d: %d bytes", size, len(v))
		}
		m, ok := parseMsg([]byte(`{"op":"msg","ch":"c","p":0,"o":1,"ts":1,"data":` + string(v) + `}`))
		if !ok || m.seq != 7 || m.sentNanos != 1700000000123456789 {
			t.Fatalf("size %d: %s parsed as %+v %v", size, v, m, ok)
		}
	}
}
