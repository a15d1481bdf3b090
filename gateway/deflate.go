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
// every connection that negotiated the extension.
//
// A record is compressed at most once, and only when a connection that
// negotiated the extension takes it. Encode marks a frame as compressible
// (gives it a router.Lazy, Frame.Deflated) when it has at least
// gateway.compression_min_bytes of payload and some plain-ws connection
// has the extension; nothing is compressed then. The first such
// connection the router hands the frame to compresses it (deflateShared),
// in its Enqueue before it takes its session lock, so on the publishing
// goroutine, as the router's fan-out runs; the frame keeps the result and
// every later connection with the extension writes the same bytes. A
// channel whose subscribers did not negotiate it never pays for
// compression, whatever other channels do. A compressible frame that
// reaches a queue another way (a resume from the channel's in-memory
// history) is compressed, once as well, by the worker that writes it
// (conn.wireLocked, with the session lock held, so the router's fan-out to
// that one connection waits for it): at most one compression per record
// held in history, however many connections resume it, each of one
// record's payload, at most MaxIovecs of them per write. Records read back
// from Kafka for a resume (EncodeRecord) are not marked and go plain.
// Connections that did not negotiate the extension write Data, and so do
// frames rewritten for one connection ("snap", "skipped"), replies, event
// streams and Centrifugo sessions: the extension allows uncompressed
// messages.
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

// deflateShared returns f's shared compressed frame, compressing it if no
// connection has yet (once per record, counted in
// kpush_deflated_records_total); nil when f may not be compressed or
// compressing does not make it smaller. Safe for concurrent use: a caller
// that comes while another compresses f waits for its result.
func (s *Server) deflateShared(f *router.Frame) []byte {
	if f.Deflated == nil {
		return nil
	}
	return f.Deflated.Get(func() []byte {
		s.deflated.Add(1)
		return deflateFrame(f)
	})
}

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
