package gateway

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/gobwas/ws"
)

func TestParseRequest(t *testing.T) {
	cases := []struct {
		name string
		in   string
		code string // "" for a valid request
		op   string
	}{
		{"subscribe", `{"op":"subscribe","id":1,"channels":["ticks.AAPL","ticks.MSFT"]}`, "", "subscribe"},
		{"subscribe since", `{"op":"subscribe","id":4,"channels":["ticks.AAPL"],"since":{"ticks.AAPL":{"2":1234}}}`, "", "subscribe"},
		{"subscribe snapshot", `{"op":"subscribe","id":4,"channels":["a"],"snapshot":true}`, "", "subscribe"},
		{"unsubscribe", `{"op":"unsubscribe","id":2,"channels":["ticks.MSFT"]}`, "", "unsubscribe"},
		{"ping", `{"op":"ping","id":3}`, "", "ping"},
		{"refresh", `{"op":"refresh","id":5,"token":"abc"}`, "", "refresh"},
		{"empty", ``, CodeBadRequest, ""},
		{"not json", `hello`, CodeBadRequest, ""},
		{"array", `[1,2]`, CodeBadRequest, ""},
		{"trailing", `{"op":"ping","id":1} {}`, CodeBadRequest, ""},
		{"unknown field", `{"op":"ping","id":1,"x":1}`, CodeBadRequest, ""},
		{"id string", `{"op":"ping","id":"1"}`, CodeBadRequest, ""},
		{"id float", `{"op":"ping","id":1.5}`, CodeBadRequest, ""},
		{"missing op", `{"id":1}`, CodeBadRequest, ""},
		{"unknown op", `{"op":"publish","id":1}`, CodeUnknownOp, ""},
		{"no channels", `{"op":"subscribe","id":1}`, CodeBadRequest, ""},
		{"channels not list", `{"op":"subscribe","id":1,"channels":"a"}`, CodeBadRequest, ""},
		{"bad channel", `{"op":"subscribe","id":1,"channels":["a b"]}`, CodeInvalidChannel, ""},
		{"empty channel", `{"op":"subscribe","id":1,"channels":[""]}`, CodeInvalidChannel, ""},
		{"long channel", `{"op":"subscribe","id":1,"channels":["` + strings.Repeat("a", 201) + `"]}`, CodeInvalidChannel, ""},
		{"too many", `{"op":"subscribe","id":1,"channels":["a","b","c","d"]}`, CodeTooManySubscriptions, ""},
		{"since other channel", `{"op":"subscribe","id":1,"channels":["a"],"since":{"b":{"0":1}}}`, CodeBadRequest, ""},
		{"since bad partition", `{"op":"subscribe","id":1,"channels":["a"],"since":{"a":{"x":1}}}`, CodeBadRequest, ""},
		{"since negative partition", `{"op":"subscribe","id":1,"channels":["a"],"since":{"a":{"-1":1}}}`, CodeBadRequest, ""},
		{"since bad offset", `{"op":"subscribe","id":1,"channels":["a"],"since":{"a":{"0":-5}}}`, CodeBadRequest, ""},
		{"since on unsubscribe", `{"op":"unsubscribe","id":1,"channels":["a"],"since":{"a":{"0":1}}}`, CodeBadRequest, ""},
		{"refresh no token", `{"op":"refresh","id":1}`, CodeBadRequest, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, err := ParseRequest([]byte(tc.in), 3)
			if tc.code == "" {
				if err != nil {
					t.Fatalf("ParseRequest: %v", err)
				}
				if r.Op != tc.op {
					t.Fatalf("op = %q, want %q", r.Op, tc.op)
				}
				return
			}
			var pe *ProtocolError
			if !errors.As(err, &pe) {
				t.Fatalf("err = %v, want a ProtocolError %s", err, tc.code)
			}
			if pe.Code != tc.code || pe.Message == "" {
				t.Fatalf("got %s %q, want code %s with a message", pe.Code, pe.Message, tc.code)
			}
		})
	}
}

func TestProtocolErrorKeepsID(t *testing.T) {
	_, err := ParseRequest([]byte(`{"op":"nope","id":42}`), 10)
	var pe *ProtocolError
	if !errors.As(err, &pe) || pe.ID != 42 {
		t.Fatalf("err = %v, want a ProtocolError with id 42", err)
	}
}

// payloadOf checks a server frame's header and returns its payload.
func payloadOf(t *testing.T, b []byte) []byte {
	t.Helper()
	if b[0] != 0x81 {
		t.Fatalf("first byte %#x, want FIN|text", b[0])
	}
	n, h := int(b[1]), 2
	switch n {
	case 126:
		n, h = int(binary.BigEndian.Uint16(b[2:])), 4
	case 127:
		n, h = int(binary.BigEndian.Uint64(b[2:])), 10
	}
	if len(b)-h != n {
		t.Fatalf("header says %d payload bytes, frame has %d", n, len(b)-h)
	}
	return b[h:]
}

func TestEncodeMessage(t *testing.T) {
	big := `{"v":"` + strings.Repeat("x", 70000) + `"}`
	cases := []struct {
		name string
		m    Message
		want string
	}{
		{"json", Message{Channel: "ticks.AAPL", Partition: 2, Offset: 1234, Timestamp: 1764000000123, Data: []byte(`{"price":1.5}`)},
			`{"op":"msg","ch":"ticks.AAPL","p":2,"o":1234,"ts":1764000000123,"data":{"price":1.5}}`},
		{"bytes", Message{Channel: "b", Partition: 0, Offset: 0, Timestamp: 1, Data: []byte{0, 0xff}, Binary: true},
			`{"op":"msg","ch":"b","p":0,"o":0,"ts":1,"enc":"base64","data":"` + base64.StdEncoding.EncodeToString([]byte{0, 0xff}) + `"}`},
		{"snapshot skipped", Message{Channel: "c", Offset: 9, Data: []byte(`1`), Snapshot: true, Skipped: 3},
			`{"op":"msg","ch":"c","p":0,"o":9,"ts":0,"snap":true,"skipped":3,"data":1}`},
		{"reset", Message{Channel: "c", Offset: 0, Data: []byte(`1`), Reset: true},
			`{"op":"msg","ch":"c","p":0,"o":0,"ts":0,"reset":true,"data":1}`},
		{"16-bit length", Message{Channel: "c", Data: []byte(`"` + strings.Repeat("y", 300) + `"`)},
			`{"op":"msg","ch":"c","p":0,"o":0,"ts":0,"data":"` + strings.Repeat("y", 300) + `"}`},
		{"64-bit length", Message{Channel: "c", Data: []byte(big)},
			`{"op":"msg","ch":"c","p":0,"o":0,"ts":0,"data":` + big + `}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := EncodeMessage(&tc.m)
			p := payloadOf(t, f.Data)
			if string(p) != tc.want {
				t.Fatalf("payload\n got %.200s\nwant %.200s", p, tc.want)
			}
			if !bytes.Equal(f.Payload, p) {
				t.Fatal("Frame.Payload differs from the frame's payload")
			}
			if !json.Valid(p) {
				t.Fatal("payload is not valid JSON")
			}
			if f.Channel != tc.m.Channel || f.Offset != tc.m.Offset || f.Partition != tc.m.Partition {
				t.Fatalf("frame metadata %+v does not match the message", f)
			}
		})
	}
}

func TestMarkFrame(t *testing.T) {
	f := EncodeMessage(&Message{Channel: "c", Partition: 1, Offset: 5, Data: []byte(`{"a":1}`)})
	m := markFrame(f, `"snap":true`)
	got := string(payloadOf(t, m.Data))
	want := `{"op":"msg","ch":"c","p":1,"o":5,"ts":0,"snap":true,"data":{"a":1}}`
	if got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	if string(payloadOf(t, f.Data)) == got {
		t.Fatal("markFrame modified the shared frame")
	}
}

func TestReplyFrames(t *testing.T) {
	cases := map[string][]byte{
		`{"op":"ok","id":1}`:                              okFrame(1, nil),
		`{"op":"ok","id":4,"recovered":{"ticks.A":true}}`: okFrame(4, map[string]bool{"ticks.A": true}),
		`{"op":"pong","id":3}`:                            pongFrame(3),
		`{"op":"error","id":7,"code":"bad_request","message":"a \"quoted\" \u003cthing\u003e"}`: errorFrame(7, "bad_request", `a "quoted" <thing>`),
	}
	for want, frame := range cases {
		if got := string(payloadOf(t, frame)); got != want {
			t.Errorf("got %s, want %s", got, want)
		}
	}
}

// maskedFrame builds a client frame as a browser would send it.
func maskedFrame(fin bool, op ws.OpCode, payload []byte) []byte {
	var buf bytes.Buffer
	f := ws.NewFrame(op, fin, append([]byte(nil), payload...))
	f = ws.MaskFrameInPlace(f)
	_ = ws.WriteFrame(&buf, f)
	return buf.Bytes()
}
