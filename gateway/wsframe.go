package gateway

import (
	"encoding/binary"
	"errors"

	"github.com/gobwas/ws"
)

// Frame-level parsing over byte slices. gobwas/ws reads headers from an
// io.Reader; the epoll read path holds bytes already, so it parses them in
// place and unmasks with ws.Cipher.

var (
	errFrameRSV       = errors.New("reserved bits set without an extension")
	errFrameUnmasked  = errors.New("client frame is not masked")
	errFrameControl   = errors.New("control frame fragmented or longer than 125 bytes")
	errFrameOpcode    = errors.New("reserved opcode")
	errFrameLength    = errors.New("64-bit length with the top bit set")
	errFrameTooLarge  = errors.New("frame larger than max_message_bytes")
	errFrameBadResume = errors.New("continuation frame without a message to continue")
)

// inFrame is one parsed client frame; payload aliases the read buffer and is
// already unmasked.
type inFrame struct {
	fin     bool
	op      ws.OpCode
	payload []byte
}

// parseFrame parses one client frame from b. It returns the frame and the
// number of bytes it used, or n == 0 when b holds only part of a frame. Frames
// whose payload exceeds maxPayload are refused as soon as the header is read,
// before their payload arrives.
func parseFrame(b []byte, maxPayload int) (f inFrame, n int, err error) {
	if len(b) < 2 {
		return f, 0, nil
	}
	b0, b1 := b[0], b[1]
	f.fin = b0&0x80 != 0
	if b0&0x70 != 0 {
		return f, 0, errFrameRSV
	}
	f.op = ws.OpCode(b0 & 0x0f)
	if f.op.IsReserved() {
		return f, 0, errFrameOpcode
	}
	if b1&0x80 == 0 {
		return f, 0, errFrameUnmasked
	}
	length := uint64(b1 & 0x7f)
	hdr := 2
	switch length {
	case 126:
		if len(b) < 4 {
			return f, 0, nil
		}
		length = uint64(binary.BigEndian.Uint16(b[2:4]))
		hdr = 4
	case 127:
		if len(b) < 10 {
			return f, 0, nil
		}
		length = binary.BigEndian.Uint64(b[2:10])
		if length>>63 != 0 {
			return f, 0, errFrameLength
		}
		hdr = 10
	}
	if f.op.IsControl() && (length > 125 || !f.fin) {
		return f, 0, errFrameControl
	}
	if length > uint64(maxPayload) {
		return f, 0, errFrameTooLarge
	}
	total := hdr + 4 + int(length)
	if len(b) < total {
		return f, 0, nil
	}
	var mask [4]byte
	copy(mask[:], b[hdr:hdr+4])
	f.payload = b[hdr+4 : total]
	ws.Cipher(f.payload, mask, 0)
	return f, total, nil
}

// serverHeaderLen is the size of an unmasked server frame header for a
// payload of n bytes.
func serverHeaderLen(n int) int {
	switch {
	case n < 126:
		return 2
	case n <= 0xffff:
		return 4
	default:
		return 10
	}
}

// putServerHeader writes a FIN frame header for op and payload length n into
// dst, which must be serverHeaderLen(n) bytes long.
func putServerHeader(dst []byte, op ws.OpCode, n int) {
	dst[0] = 0x80 | byte(op)
	switch len(dst) {
	case 2:
		dst[1] = byte(n)
	case 4:
		dst[1] = 126
		binary.BigEndian.PutUint16(dst[2:], uint16(n))
	default:
		dst[1] = 127
		binary.BigEndian.PutUint64(dst[2:], uint64(n))
	}
}

// serverFrame returns a complete unmasked frame with the given payload.
func serverFrame(op ws.OpCode, payload []byte) []byte {
	h := serverHeaderLen(len(payload))
	b := make([]byte, h+len(payload))
	putServerHeader(b[:h], op, len(payload))
	copy(b[h:], payload)
	return b
}

// closeFrame returns a close frame with a status code and reason.
func closeFrame(code ws.StatusCode, reason string) []byte {
	if len(reason) > 123 {
		reason = reason[:123]
	}
	p := make([]byte, 2+len(reason))
	binary.BigEndian.PutUint16(p, uint16(code))
	copy(p[2:], reason)
	return serverFrame(ws.OpClose, p)
}
