package gateway

import (
	"encoding/binary"
	"errors"
	"unicode/utf8"

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

// checkCloseBody checks the body of a client close frame (RFC 6455 §5.5.1,
// §7.4): empty, or a status code valid on the wire followed by a UTF-8
// reason. It returns the code to echo (1000 for an empty body), or, when the
// body is invalid, the code to fail the connection with (1002, or 1007 for a
// reason that is not UTF-8) and why; an invalid code is never echoed.
func checkCloseBody(p []byte) (echo, fail ws.StatusCode, why string) {
	switch {
	case len(p) == 0:
		return ws.StatusNormalClosure, 0, ""
	case len(p) == 1:
		return 0, ws.StatusProtocolError, "close frame body of 1 byte"
	}
	code := ws.StatusCode(binary.BigEndian.Uint16(p))
	if !validWireCode(code) {
		return 0, ws.StatusProtocolError, "close code not valid on the wire"
	}
	if !utf8.Valid(p[2:]) {
		return 0, ws.StatusInvalidFramePayloadData, "close reason is not valid UTF-8"
	}
	return code, 0, ""
}

// validWireCode reports whether a close frame may carry code: the codes
// RFC 6455 §7.4.1 defines for endpoints to send (1000-1003, 1007-1011), the
// ones IANA registered since (1012-1014), and the ranges for libraries and
// applications (3000-4999). 1004-1006 and 1015 must never be sent, and the
// rest of 0-2999 is unassigned.
func validWireCode(code ws.StatusCode) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
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
