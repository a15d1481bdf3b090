package gateway

import (
	"bufio"
	"bytes"
	"strings"
	"testing"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsflate"
)

func TestDeflateFrameOnceAndBounds(t *testing.T) {
	f := EncodeMessage(&Message{Channel: "z", Offset: 1, Data: []byte(`{"v":"` + strings.Repeat("abc", 500) + `"}`)})
	d := deflateFrame(f)
	if d == nil || len(d) >= len(f.Data) || d[0] != 0xC1 {
		t.Fatalf("deflated frame: %d bytes of %d, first byte %#x (want FIN|RSV1|text)", len(d), len(f.Data), d[0])
	}
	r := bufio.NewReader(bytes.NewReader(d))
	wf, err := ws.ReadFrame(r)
	if err != nil {
		t.Fatal(err)
	}
	if wf, err = wsflate.DecompressFrame(wf); err != nil || !bytes.Equal(wf.Payload, f.Payload) {
		t.Fatalf("inflated %d bytes (%v), want the payload", len(wf.Payload), err)
	}
	// The inflated size of a client message is bounded, without
	// inflating past the bound.
	bomb, _ := wsflate.CompressFrame(ws.NewTextFrame(bytes.Repeat([]byte(" "), 1<<20)))
	if _, err := inflateMessage(bomb.Payload, 4096); err != errInflatedTooLarge {
		t.Fatalf("1 MiB inflated from %d bytes: %v, want errInflatedTooLarge", len(bomb.Payload), err)
	}
	if _, err := inflateMessage([]byte{0xff, 0xff, 0xff}, 4096); err == nil {
		t.Fatal("garbage inflated")
	}
}
