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
	msgOpPrefix = []byte(`{"op":"msg",`)
	chKey       = []byte(`"ch":"`)
	dataKey     = []byte(`,"data":`)
	keyP        = []byte(`"p":`)
	keyO        = []byte(`"o":`)
	keyTS       = []byte(`"ts":`)
	keySnap     = []byte(`"snap":true`)
	keySkipped  = []byte(`"skipped":`)
	keySeq      = []byte(`"seq":`)
	benchValue  = []byte(`{"seq":`)
	keyT        = []byte(`,"t":`)
)

// parseMsg reads a msg payload as kpush encodes it: "op" first, then ch,
// p, o, ts and optional markers in any order, then data last. A frame kpush
// marks after encoding ("snap", "skipped" on conflated and capped frames)
// has the marker after "ts", as EncodeMessage puts it; kpush builds before
// that put it right after "op", before "ch", and are read too. ok is false
// for anything else.
func parseMsg(p []byte) (m msgFrame, ok bool) {
	if !bytes.HasPrefix(p, msgOpPrefix) {
		return m, false
	}
	d := bytes.Index(p, dataKey)
	if d < 0 || len(p) < d+len(dataKey)+1 || p[len(p)-1] != '}' {
		return m, false
	}
	head, data := p[len(msgOpPrefix):d], p[d+len(dataKey):len(p)-1]
	c := bytes.Index(head, chKey)
	if c < 0 {
		return m, false
	}
	q := bytes.IndexByte(head[c+len(chKey):], '"')
	if q < 0 {
		return m, false
	}
	m.ch = head[c+len(chKey) : c+len(chKey)+q]
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
	m.seq, m.sentNanos = parseValue(data)
	return m, true
}

// parseValue reads a record value: the generator's own
// {"seq":N,"t":NANOS,...}, or a feed's value with a "seq" field
// (kpush-feed). seq is -1 and sentNanos 0 when absent.
func parseValue(data []byte) (seq, sentNanos int64) {
	seq = -1
	if bytes.HasPrefix(data, benchValue) {
		v, n := leadingInt(data[len(benchValue):])
		if n > 0 {
			seq = v
			if after := data[len(benchValue)+n:]; bytes.HasPrefix(after, keyT) {
				if t, k := leadingInt(after[len(keyT):]); k > 0 {
					sentNanos = t
				}
			}
		}
	} else if s, found := intAfter(data, keySeq); found {
		seq = s
	}
	return seq, sentNanos
}

// Centrifugo's client protocol (JSON), as kpush speaks it
// (gateway/centrifugo.go): a publication push is
// {"push":{"channel":"X","pub":{"data":V,"offset":N}}}, a reply
// {"id":N,"<method>":{...}} or {"id":N,"error":{...}}, the server's ping {}.
var (
	cfPushPrefix = []byte(`{"push":{"channel":"`)
	cfPubData    = []byte(`","pub":{"data":`)
	cfOffset     = []byte(`,"offset":`)
	cfIDPrefix   = []byte(`{"id":`)
	cfErrorKey   = []byte(`"error":`)
)

// parseCFPush reads a publication push. The offset is the record's Kafka
// offset (its partition is not carried: partition is 0); ok is false for
// anything else.
func parseCFPush(p []byte) (m msgFrame, ok bool) {
	if !bytes.HasPrefix(p, cfPushPrefix) {
		return m, false
	}
	rest := p[len(cfPushPrefix):]
	q := bytes.Index(rest, cfPubData)
	if q < 0 || !bytes.HasSuffix(rest, []byte("}}")) {
		return m, false
	}
	m.ch = rest[:q]
	pub := rest[q+len(cfPubData) : len(rest)-2] // V,"offset":N} or V}
	m.offset = -1
	if i := bytes.LastIndex(pub, cfOffset); i >= 0 {
		if v, n := leadingInt(pub[i+len(cfOffset):]); n > 0 {
			m.offset = v
			pub = pub[:i]
		}
	} else if len(pub) > 0 && pub[len(pub)-1] == '}' {
		pub = pub[:len(pub)-1]
	}
	m.seq, m.sentNanos = parseValue(pub)
	return m, true
}

// cfReplyID returns a reply's id and whether it is an error.
func cfReplyID(p []byte) (id int64, isErr, ok bool) {
	if !bytes.HasPrefix(p, cfIDPrefix) {
		return 0, false, false
	}
	id, n := leadingInt(p[len(cfIDPrefix):])
	if n == 0 {
		return 0, false, false
	}
	return id, bytes.Contains(p, cfErrorKey), true
}

// sseEvent is one event of a text/event-stream: its name, its data (the
// data lines joined) and whether it held only comments, with the first
// comment.
type sseEvent struct {
	name, data, comment []byte
}

// parseSSEEvent reads one event block (without its blank line). Data of
// several lines is kept from the first line only (kpush writes a record's
// value on one line).
func parseSSEEvent(b []byte) (e sseEvent) {
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		switch {
		case len(line) > 0 && line[0] == ':':
			if e.comment == nil {
				e.comment = bytes.TrimSpace(line[1:])
			}
		case bytes.HasPrefix(line, []byte("event: ")):
			e.name = line[len("event: "):]
		case bytes.HasPrefix(line, []byte("data: ")):
			if e.data == nil {
				e.data = line[len("data: "):]
			}
		}
	}
	return e
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

// sseOK checks an event stream's response head (up to the blank line).
func sseOK(head []byte) (status int, ok bool) {
	if len(head) < 12 || !bytes.HasPrefix(head, []byte("HTTP/1.")) {
		return 0, false
	}
	code, n := leadingInt(head[9:12])
	if n != 3 {
		return 0, false
	}
	return int(code), code == 200 && bytes.Contains(head, []byte("text/event-stream"))
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
