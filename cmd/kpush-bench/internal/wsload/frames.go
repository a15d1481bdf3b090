package wsload

import (
	"bytes"
	"math"
	"strconv"
)

// Frames are parsed and built by package wire (gateway/wire), the codec the
// gateway itself uses; this file reads protocol v1 payloads.

// msgFrame is what the benchmark reads from one {"op":"msg"} payload.
type msgFrame struct {
	ch        []byte // aliases the payload
	partition int32
	offset    int64
	tsMillis  int64 // the record's Kafka timestamp
	sentNanos int64 // the producer's embedded send time; 0 if absent
	seq       int64 // the record's "seq"; -1 if absent
	snapshot  bool
	skipped   int64
}

var (
	msgPrefix  = []byte(`{"op":"msg","ch":"`)
	dataKey    = []byte(`,"data":`)
	keyP       = []byte(`"p":`)
	keyO       = []byte(`"o":`)
	keyTS      = []byte(`"ts":`)
	keySnap    = []byte(`"snap":true`)
	keySkipped = []byte(`"skipped":`)
	keySeq     = []byte(`"seq":`)
	benchValue = []byte(`{"seq":`)
	keyT       = []byte(`,"t":`)
)

// parseMsg reads a msg payload as kpush encodes it: channel first, then
// p, o, ts and optional markers, then data last. ok is false for anything
// else.
func parseMsg(p []byte) (m msgFrame, ok bool) {
	if !bytes.HasPrefix(p, msgPrefix) {
		return m, false
	}
	rest := p[len(msgPrefix):]
	q := bytes.IndexByte(rest, '"')
	if q < 0 {
		return m, false
	}
	m.ch = rest[:q]
	rest = rest[q+1:]
	d := bytes.Index(rest, dataKey)
	if d < 0 || len(rest) < d+len(dataKey)+1 || rest[len(rest)-1] != '}' {
		return m, false
	}
	head, data := rest[:d], rest[d+len(dataKey):len(rest)-1]
	var part int64
	if part, ok = intAfter(head, keyP); !ok || part < 0 || part > 1<<31-1 {
		return m, false
	}
	m.partition = int32(part)
	if m.offset, ok = intAfter(head, keyO); !ok {
		return m, false
	}
	if m.tsMillis, ok = intAfter(head, keyTS); !ok {
		return m, false
	}
	m.snapshot = bytes.Contains(head, keySnap)
	m.skipped, _ = intAfter(head, keySkipped)
	m.seq = -1
	if bytes.HasPrefix(data, benchValue) {
		// The generator's own value: {"seq":N,"t":NANOS,...}.
		v, n := leadingInt(data[len(benchValue):])
		if n > 0 {
			m.seq = v
			if after := data[len(benchValue)+n:]; bytes.HasPrefix(after, keyT) {
				if t, k := leadingInt(after[len(keyT):]); k > 0 {
					m.sentNanos = t
				}
			}
		}
	} else if s, found := intAfter(data, keySeq); found {
		m.seq = s // a feed with per-channel sequence numbers (kpush-feed)
	}
	return m, true
}

// intAfter returns the integer that follows the first occurrence of key.
func intAfter(b, key []byte) (int64, bool) {
	i := bytes.Index(b, key)
	if i < 0 {
		return 0, false
	}
	v, n := leadingInt(b[i+len(key):])
	return v, n > 0
}

// leadingInt parses an optionally negative decimal integer at the start of
// b and returns it with the number of bytes used (0 if none).
func leadingInt(b []byte) (int64, int) {
	i, neg := 0, false
	if len(b) > 0 && b[0] == '-' {
		neg, i = true, 1
	}
	start := i
	var v int64
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		d := int64(b[i] - '0')
		if v > (math.MaxInt64-d)/10 {
			break // stop before overflowing
		}
		v = v*10 + d
		i++
	}
	if i == start {
		return 0, 0
	}
	if neg {
		v = -v
	}
	return v, i
}

// replyID returns the "id" of an ok, error or pong reply, and its op.
func replyID(p []byte) (op string, id int64, ok bool) {
	switch {
	case bytes.HasPrefix(p, []byte(`{"op":"ok","id":`)):
		op = "ok"
	case bytes.HasPrefix(p, []byte(`{"op":"error","id":`)):
		op = "error"
	case bytes.HasPrefix(p, []byte(`{"op":"pong","id":`)):
		op = "pong"
	default:
		return "", 0, false
	}
	id, ok = intAfter(p, []byte(`"id":`))
	return op, id, ok
}

// AppendValue appends a record value the generator measures: the channel's
// sequence number, the send time in Unix nanoseconds, and padding up to
// size bytes (the value is longer only if size is too small for the rest).
func AppendValue(dst []byte, seq, sentNanos int64, size int) []byte {
	start := len(dst)
	dst = append(dst, benchValue...)
	dst = strconv.AppendInt(dst, seq, 10)
	dst = append(dst, keyT...)
	dst = strconv.AppendInt(dst, sentNanos, 10)
	dst = append(dst, `,"pad":"`...)
	for len(dst)-start < size-2 {
		dst = append(dst, 'x')
	}
	return append(dst, `"}`...)
}

// AppendMarketValue is AppendValue with padding that compresses like market
// data rather than like a run of one byte: fields "fNN:DDDD.DD," whose
// names repeat and whose numbers are pseudo-random (from seq), so that
// deflate finds the structure but not the values.
func AppendMarketValue(dst []byte, seq, sentNanos int64, size int) []byte {
	start := len(dst)
	dst = append(dst, benchValue...)
	dst = strconv.AppendInt(dst, seq, 10)
	dst = append(dst, keyT...)
	dst = strconv.AppendInt(dst, sentNanos, 10)
	dst = append(dst, `,"pad":"`...)
	x := uint64(seq)*0x9E3779B97F4A7C15 | 1
	for i := 0; len(dst)-start < size-2; i++ {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		field := []byte{'f', byte('0' + i/10%10), byte('0' + i%10), ':',
			byte('0' + x%10), byte('0' + x/10%10), byte('0' + x/100%10), byte('0' + x/1000%10), '.',
			byte('0' + x/10000%10), byte('0' + x/100000%10), ','}
		room := size - 2 - (len(dst) - start)
		dst = append(dst, field[:min(len(field), room)]...)
	}
	return append(dst, `"}`...)
}

// upgradeOK checks an HTTP upgrade response head (up to the blank line).
func upgradeOK(head []byte) (status int, ok bool) {
	// "HTTP/1.1 101 Switching Protocols"
	if len(head) < 12 || !bytes.HasPrefix(head, []byte("HTTP/1.")) {
		return 0, false
	}
	code, n := leadingInt(head[9:12])
	if n != 3 {
		return 0, false
	}
	if code != 101 {
		return int(code), false
	}
	return 101, bytes.Contains(head, []byte(wsAccept))
}

// The upgrade uses RFC 6455's sample key; kpush does not require a unique
// one, and the accept value it must answer with is then a constant.
const (
	wsKey    = "dGhlIHNhbXBsZSBub25jZQ=="
	wsAccept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
)
