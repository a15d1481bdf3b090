package wire

import (
	"bytes"
	"encoding/binary"
	"testing"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// maskedFrame builds a client frame as a browser would send it, through
// gobwas/ws (an independent encoder).
func maskedFrame(fin bool, op ws.OpCode, payload []byte) []byte {
	b, err := ws.CompileFrame(ws.MaskFrameInPlace(ws.NewFrame(op, fin, bytes.Clone(payload))))
	if err != nil {
		panic(err) // only for lengths no test uses
	}
	return b
}

func TestParseClientFrame(t *testing.T) {
	text := maskedFrame(true, ws.OpText, []byte(`{"op":"ping","id":1}`))
	f, n, err := ParseClientFrame(text, 4096)
	if err != nil || n != len(text) || f.Op != ws.OpText || !f.Fin || string(f.Payload) != `{"op":"ping","id":1}` {
		t.Fatalf("ParseClientFrame(text) = %+v, %d, %v", f, n, err)
	}
	// Every proper prefix is incomplete, not an error.
	full := maskedFrame(true, ws.OpText, bytes.Repeat([]byte("a"), 300))
	for i := 0; i < len(full); i++ {
		if _, n, err := ParseClientFrame(append([]byte(nil), full[:i]...), 4096); n != 0 || err != nil {
			t.Fatalf("prefix %d: n=%d err=%v, want incomplete", i, n, err)
		}
	}
	unmasked := []byte{0x81, 0x01, 'x'}
	bad := []struct {
		name string
		b    []byte
		want error
	}{
		{"unmasked", unmasked, ErrFrameUnmasked},
		{"rsv", append([]byte{0xc1}, text[1:]...), ErrFrameRSV},
		{"reserved opcode", append([]byte{0x83}, text[1:]...), ErrFrameOpcode},
		{"too large", maskedFrame(true, ws.OpText, bytes.Repeat([]byte("a"), 5000)), ErrFrameTooLarge},
		{"fragmented ping", maskedFrame(false, ws.OpPing, nil), ErrFrameControl},
		{"long ping", maskedFrame(true, ws.OpPing, bytes.Repeat([]byte("a"), 126)), ErrFrameControl},
		{"huge length", []byte{0x81, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0}, ErrFrameLength},
	}
	for _, tc := range bad {
		if _, _, err := ParseClientFrame(tc.b, 4096); err != tc.want {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
}

// TestValidCloseCode checks every code against RFC 6455 §7.4 and the IANA
// registry, written out by range.
func TestValidCloseCode(t *testing.T) {
	for c := 0; c < 6000; c++ {
		want := (c >= 1000 && c <= 1003) || (c >= 1007 && c <= 1014) || (c >= 3000 && c <= 4999)
		if got := ValidCloseCode(ws.StatusCode(c)); got != want {
			t.Errorf("ValidCloseCode(%d) = %v, want %v", c, got, want)
		}
	}
}

func TestCheckCloseBody(t *testing.T) {
	cases := []struct {
		name       string
		body       []byte
		echo, fail ws.StatusCode
	}{
		{"empty", nil, ws.StatusNormalClosure, 0},
		{"one byte", []byte{3}, 0, ws.StatusProtocolError},
		{"1000", []byte{0x03, 0xe8}, 1000, 0},
		{"4000 with reason", []byte{0x0f, 0xa0, 'o', 'k'}, 4000, 0},
		{"1005 never sent", []byte{0x03, 0xed}, 0, ws.StatusProtocolError},
		{"reason not UTF-8", []byte{0x03, 0xe8, 0xff}, 0, ws.StatusInvalidFramePayloadData},
	}
	for _, tc := range cases {
		echo, fail, why := CheckCloseBody(tc.body)
		if echo != tc.echo || fail != tc.fail || (fail != 0) != (why != "") {
			t.Errorf("%s: got echo %d fail %d why %q, want %d %d", tc.name, echo, fail, why, tc.echo, tc.fail)
		}
	}
}

// TestServerFramesMatchGobwas: the server's frames are the bytes gobwas/ws
// writes for the same frame, at each length encoding.
func TestServerFramesMatchGobwas(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 65535, 65536} {
		payload := bytes.Repeat([]byte("z"), n)
		var want bytes.Buffer
		if err := ws.WriteFrame(&want, ws.NewTextFrame(payload)); err != nil {
			t.Fatal(err)
		}
		if got := ServerFrame(ws.OpText, payload); !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("len %d: ServerFrame differs from gobwas/ws", n)
		}
		op, hdr, plen, err := ParseServerHeader(want.Bytes())
		if err != nil || op != ws.OpText || hdr != ServerHeaderLen(n) || plen != n {
			t.Fatalf("len %d: ParseServerHeader = %d %d %d %v", n, op, hdr, plen, err)
		}
		for i := 0; i < hdr; i++ {
			if _, h, _, err := ParseServerHeader(want.Bytes()[:i]); h != 0 || err != nil {
				t.Fatalf("len %d: header prefix %d: hdr %d err %v, want incomplete", n, i, h, err)
			}
		}
	}
	var want bytes.Buffer
	_ = ws.WriteFrame(&want, ws.NewCloseFrame(ws.NewCloseFrameBody(CloseSlowConsumer, "slow consumer")))
	if got := CloseFrame(CloseSlowConsumer, "slow consumer"); !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("CloseFrame = %x, want %x", got, want.Bytes())
	}
	if got := CloseFrame(ws.StatusPolicyViolation, string(bytes.Repeat([]byte("r"), 300))); len(got) != 2+125 {
		t.Fatalf("a long reason gives a %d-byte close frame, want %d", len(got), 2+125)
	}
}

func TestParseServerHeaderRefuses(t *testing.T) {
	cases := []struct {
		name string
		b    []byte
		want error
	}{
		{"masked", []byte{0x81, 0x81, 1, 2, 3, 4, 'x'}, ErrServerMasked},
		{"not final", []byte{0x01, 0x01, 'x'}, ErrServerFragmented},
		{"continuation", []byte{0x80, 0x01, 'x'}, ErrServerFragmented},
		{"too long", []byte{0x82, 127, 0, 0, 0, 1, 0, 0, 0, 0}, ErrServerTooLong},
	}
	for _, tc := range cases {
		if _, _, _, err := ParseServerHeader(tc.b); err != tc.want {
			t.Errorf("%s: err %v, want %v", tc.name, err, tc.want)
		}
	}
}

// TestClientFrameRoundTrip: AppendClientFrame's frames parse back with the
// server's parser, at each length encoding.
func TestClientFrameRoundTrip(t *testing.T) {
	for _, n := range []int{0, 125, 126, 65535, 65536} {
		payload := bytes.Repeat([]byte("a"), n)
		b := AppendClientFrame([]byte("prefix"), ws.OpText, payload, [4]byte{1, 2, 3, 4})
		if !bytes.HasPrefix(b, []byte("prefix")) {
			t.Fatalf("len %d: dst's bytes lost", n)
		}
		f, used, err := ParseClientFrame(b[len("prefix"):], 1<<20)
		if err != nil || used != len(b)-len("prefix") || f.Op != ws.OpText || !f.Fin || !bytes.Equal(f.Payload, payload) {
			t.Fatalf("len %d: parsed back %d %v %v, used %d of %d", n, f.Op, f.Fin, err, used, len(b)-len("prefix"))
		}
	}
}

// FuzzParseFrame: no byte sequence crashes the frame parser; what it returns
// stays inside the input and within the limits.
func FuzzParseFrame(f *testing.F) {
	mask := []byte{1, 2, 3, 4}
	for _, s := range [][]byte{
		append([]byte{0x81, 0x85}, append(mask, []byte("hello")...)...),
		append([]byte{0x89, 0x80}, mask...),
		{0x81, 0xfe, 0x00, 0x10},
		{0x82, 0xff, 0, 0, 0, 0, 0, 0, 0x10, 0},
		{0x81, 0x05, 'h', 'e', 'l', 'l', 'o'},
		{0xf1, 0x80},
		{0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8},
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		const max = 1024
		in := bytes.Clone(b)
		fr, n, err := ParseClientFrame(in, max)
		if err != nil {
			if n != 0 {
				t.Fatalf("error %v with n=%d", err, n)
			}
			return
		}
		if n == 0 {
			return // incomplete
		}
		if n > len(b) || len(fr.Payload) > max || len(fr.Payload) > n {
			t.Fatalf("n=%d payload=%d of %d bytes", n, len(fr.Payload), len(b))
		}
		if fr.Op.IsControl() && (len(fr.Payload) > 125 || !fr.Fin) {
			t.Fatalf("control frame op %d fin %v len %d accepted", fr.Op, fr.Fin, len(fr.Payload))
		}
		if fr.Compressed {
			t.Fatal("RSV1 accepted without the extension")
		}
	})
}

// FuzzParseFrameDeflate: with permessage-deflate negotiated, RSV1 is
// accepted only on text and binary frames, and otherwise the parser
// answers exactly as without it.
func FuzzParseFrameDeflate(f *testing.F) {
	mask := []byte{1, 2, 3, 4}
	for _, s := range [][]byte{
		append([]byte{0xc1, 0x85}, append(mask, []byte("hello")...)...),
		append([]byte{0xc9, 0x80}, mask...),
		append([]byte{0x40, 0x80}, mask...),
		append([]byte{0xa1, 0x80}, mask...),
		{0x81, 0x05, 'h', 'e', 'l', 'l', 'o'},
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		const max = 1024
		fr, n, err := ParseClientFrameExt(bytes.Clone(b), max, true)
		if err != nil && n != 0 {
			t.Fatalf("error %v with n=%d", err, n)
		}
		if fr.Compressed && err == nil && n > 0 && fr.Op != ws.OpText && fr.Op != ws.OpBinary {
			t.Fatalf("RSV1 accepted on op %d", fr.Op)
		}
		if len(b) > 0 && b[0]&0x40 == 0 {
			// Without RSV1 the extension changes nothing.
			fr2, n2, err2 := ParseClientFrame(bytes.Clone(b), max)
			if n2 != n || err2 != err || fr2.Op != fr.Op || fr2.Fin != fr.Fin || !bytes.Equal(fr2.Payload, fr.Payload) {
				t.Fatalf("%x: with deflate %v %d %v, without %v %d %v", b, fr, n, err, fr2, n2, err2)
			}
		}
	})
}

// FuzzCloseBody: any close frame body is either echoed with a code valid on
// the wire or fails the connection with 1002 or 1007.
func FuzzCloseBody(f *testing.F) {
	for _, s := range [][]byte{nil, {3}, {0x03, 0xe8}, {0x03, 0xed}, {0x0f, 0xa0, 'o', 'k'}, {0x03, 0xe8, 0xff}} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		echo, fail, why := CheckCloseBody(b)
		switch {
		case fail == 0 && (!ValidCloseCode(echo) || why != ""):
			t.Fatalf("%x: echoes %d", b, echo)
		case fail == 0 && len(b) >= 2 && !utf8.Valid(b[2:]):
			t.Fatalf("%x: accepted a reason that is not UTF-8", b)
		case fail != 0 && (echo != 0 || (fail != ws.StatusProtocolError && fail != ws.StatusInvalidFramePayloadData)):
			t.Fatalf("%x: echo %d, fail %d", b, echo, fail)
		}
	})
}

// sliceWriter writes into a fixed byte slice, the way PutServerHeader's
// callers would have to feed gobwas/ws.
type sliceWriter struct {
	b []byte
	n int
}

func (w *sliceWriter) Write(p []byte) (int, error) {
	w.n += copy(w.b[w.n:], p)
	return len(p), nil
}

// BenchmarkPutServerHeader compares kpush's header writer with gobwas/ws's
// ws.WriteHeaderBuffer into the same slice (EncodeMessage writes one header
// per record into its own buffer). The figures are in PutServerHeader's
// comment.
func BenchmarkPutServerHeader(b *testing.B) {
	const n = 300
	dst := make([]byte, 14)
	b.Run("own", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			PutServerHeader(dst[:ServerHeaderLen(n)], ws.OpText, n)
		}
	})
	b.Run("gobwas", func(b *testing.B) {
		b.ReportAllocs()
		var scratch [ws.MaxHeaderSize]byte
		for i := 0; i < b.N; i++ {
			w := &sliceWriter{b: dst}
			if err := ws.WriteHeaderBuffer(w, ws.Header{Fin: true, OpCode: ws.OpText, Length: n}, scratch[:]); err != nil {
				b.Fatal(err)
			}
		}
	})
	if binary.BigEndian.Uint16(dst[2:4]) != n {
		b.Fatalf("header length %d, want %d", binary.BigEndian.Uint16(dst[2:4]), n)
	}
}
