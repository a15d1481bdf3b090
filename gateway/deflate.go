package gateway

import (
	"bytes"
	"compress/flate"
	"errors"
	"io"
	"sync"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsflate"
	"github.com/kpush/kpush/gateway/wire"
	"github.com/kpush/kpush/router"
)

// permessage-deflate (RFC 7692), paid once per record.
//
// kpush accepts the extension only with server_no_context_takeover and
// client_no_context_takeover (gobwas/ws's wsflate negotiates it): every
// message is compressed on its own, so one compressed frame is valid on
// every connection that negotiated the extension. Publish compresses a
// record once, when it encodes it, and only while some connection has the
// extension and the record has at least gateway.compression_min_bytes of
// payload; the router hands the same frame to every subscriber, and each
// connection writes Deflated or Data according to what it negotiated.
// Frames rewritten for one connection ("snap", "skipped") and replies are
// sent uncompressed, which the extension allows.
//
// Messages a client compresses (RSV1) are inflated with a bound: the
// inflated size counts against gateway.max_message_bytes.

// deflateParams are the only parameters kpush accepts.
var deflateParams = wsflate.Parameters{ServerNoContextTakeover: true, ClientNoContextTakeover: true}

// deflaters pools wsflate writers over compress/flate (each holds a few
// hundred KB of compressor state, so they are reused, never made per
// record).
var deflaters = sync.Pool{New: func() any {
	return wsflate.NewWriter(nil, func(w io.Writer) wsflate.Compressor {
		f, _ := flate.NewWriter(w, flate.DefaultCompression) // the level is valid: no error
		return f
	})
}}

// inflaters pools wsflate readers over compress/flate.
var inflaters = sync.Pool{New: func() any {
	return wsflate.NewReader(nil, func(r io.Reader) wsflate.Decompressor {
		return flate.NewReader(r)
	})
}}

// deflateFrame returns f's text message compressed as one complete server
// frame with RSV1 set, or nil when compressing does not make it smaller.
func deflateFrame(f *router.Frame) []byte {
	var buf bytes.Buffer
	buf.Grow(len(f.Payload)/2 + 16)
	w := deflaters.Get().(*wsflate.Writer)
	w.Reset(&buf)
	_, err := w.Write(f.Payload)
	if err == nil {
		err = w.Flush()
	}
	w.Reset(nil)
	deflaters.Put(w)
	z := buf.Bytes()
	if err != nil || len(z) >= len(f.Payload) {
		return nil
	}
	h := wire.ServerHeaderLen(len(z))
	out := make([]byte, h+len(z))
	wire.PutServerHeader(out[:h], ws.OpText, len(z))
	out[0] |= 0x40 // RSV1: compressed (RFC 7692 §6)
	copy(out[h:], z)
	return out
}

// errInflatedTooLarge is a compressed client message whose inflated size
// passes max_message_bytes.
var errInflatedTooLarge = errors.New("inflated message larger than max_message_bytes")

// inflateMessage inflates a compressed client message, refusing one whose
// inflated size passes limit without inflating past it.
func inflateMessage(p []byte, limit int) ([]byte, error) {
	r := inflaters.Get().(*wsflate.Reader)
	defer inflaters.Put(r)
	r.Reset(bytes.NewReader(p))
	out := make([]byte, 0, min(limit, 4*len(p)+64))
	buf := bytes.NewBuffer(out)
	n, err := io.Copy(buf, io.LimitReader(r, int64(limit)+1))
	r.Reset(bytes.NewReader(nil))
	if err != nil {
		return nil, err
	}
	if n > int64(limit) {
		return nil, errInflatedTooLarge
	}
	return buf.Bytes(), nil
}
