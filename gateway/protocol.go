package gateway

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/gobwas/ws"
	"github.com/kpush/kpush/gateway/wire"
	"github.com/kpush/kpush/router"
)

// Protocol v1: one JSON object per text frame. See README.md for the full
// description.

// Error codes sent in {"op":"error"} replies, close codes kpush adds to
// RFC 6455's, and the request type: protocol v1's names live in package
// wire, shared with the client and the load generator; these are the
// gateway's names for them.
const (
	CodeBadRequest           = wire.CodeBadRequest
	CodeUnknownOp            = wire.CodeUnknownOp
	CodeInvalidChannel       = wire.CodeInvalidChannel
	CodeTooManySubscriptions = wire.CodeTooManySubscriptions
	CodeForbidden            = wire.CodeForbidden
	CodeRateLimited          = wire.CodeRateLimited
	CodeInvalidToken         = wire.CodeInvalidToken
	CodeInternal             = wire.CodeInternal

	CloseTokenExpired = wire.CloseTokenExpired
	CloseSlowConsumer = wire.CloseSlowConsumer
)

// MinMaxRate and MaxMaxRate bound a frequency cap (the subscribe option
// max_rate and a route's max_rate), in messages a second per channel: the
// cap's timer has a resolution of a millisecond.
const (
	MinMaxRate = 0.01
	MaxMaxRate = 1000.0
)

// Request is a parsed client request.
type Request = wire.Request

// ProtocolError is a request the server answers with an error reply.
type ProtocolError struct {
	ID      int64
	Code    string
	Message string
}

func (e *ProtocolError) Error() string { return e.Code + ": " + e.Message }

// ParseRequest decodes and checks one client request. maxChannels bounds the
// channels one request may name. It never panics on any input.
func ParseRequest(b []byte, maxChannels int) (*Request, error) {
	var r Request
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		// The decoder stops at the first unknown field or wrong type, maybe
		// before it reached "id": take the id from a lenient second pass so
		// the error still answers the request that carried it.
		return nil, &ProtocolError{ID: requestID(b), Code: CodeBadRequest, Message: "request is not a protocol v1 JSON object: " + trimJSONErr(err)}
	}
	if dec.More() {
		return nil, &ProtocolError{ID: r.ID, Code: CodeBadRequest, Message: "trailing data after the JSON object"}
	}
	switch r.Op {
	case "subscribe", "unsubscribe":
		if len(r.Channels) == 0 {
			return nil, &ProtocolError{ID: r.ID, Code: CodeBadRequest, Message: r.Op + " needs a non-empty channels list"}
		}
		if len(r.Channels) > maxChannels {
			return nil, &ProtocolError{ID: r.ID, Code: CodeTooManySubscriptions, Message: fmt.Sprintf("%d channels in one request, at most %d", len(r.Channels), maxChannels)}
		}
		for _, ch := range r.Channels {
			if !router.ValidChannel(ch) {
				return nil, &ProtocolError{ID: r.ID, Code: CodeInvalidChannel, Message: fmt.Sprintf("channel %q must match ^[A-Za-z0-9_.:@/-]{1,200}$", truncate(ch, 64))}
			}
		}
		if r.Op == "subscribe" {
			for ch, parts := range r.Since {
				if !contains(r.Channels, ch) {
					return nil, &ProtocolError{ID: r.ID, Code: CodeBadRequest, Message: fmt.Sprintf("since names channel %q that the request does not subscribe to", truncate(ch, 64))}
				}
				for p, o := range parts {
					if n, err := strconv.ParseInt(p, 10, 32); err != nil || n < 0 {
						return nil, &ProtocolError{ID: r.ID, Code: CodeBadRequest, Message: fmt.Sprintf("since[%q] partition %q is not a non-negative integer", ch, truncate(p, 16))}
					}
					if o < -1 {
						return nil, &ProtocolError{ID: r.ID, Code: CodeBadRequest, Message: fmt.Sprintf("since[%q][%s] offset %d is negative", ch, p, o)}
					}
				}
			}
			if r.MaxRate != nil {
				if v := *r.MaxRate; !(v >= MinMaxRate && v <= MaxMaxRate) {
					return nil, &ProtocolError{ID: r.ID, Code: CodeBadRequest, Message: fmt.Sprintf("max_rate %g must be between %g and %g messages a second", v, MinMaxRate, MaxMaxRate)}
				}
			}
		} else if r.Since != nil || r.Snapshot || r.MaxRate != nil {
			return nil, &ProtocolError{ID: r.ID, Code: CodeBadRequest, Message: "since, snapshot and max_rate belong to subscribe"}
		}
	case "ping":
	case "refresh":
		if r.Token == "" {
			return nil, &ProtocolError{ID: r.ID, Code: CodeBadRequest, Message: "refresh needs a token"}
		}
	case "":
		return nil, &ProtocolError{ID: r.ID, Code: CodeBadRequest, Message: "missing op"}
	default:
		return nil, &ProtocolError{ID: r.ID, Code: CodeUnknownOp, Message: fmt.Sprintf("unknown op %q", truncate(r.Op, 32))}
	}
	return &r, nil
}

// requestID returns the integer "id" of a JSON object that failed strict
// decoding, or 0 when b is not a JSON object or its id is not an integer.
func requestID(b []byte) int64 {
	var r struct {
		ID json.RawMessage `json:"id"`
	}
	if json.Unmarshal(b, &r) != nil {
		return 0
	}
	id, err := strconv.ParseInt(string(r.ID), 10, 64)
	if err != nil {
		return 0
	}
	return id
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// trimJSONErr keeps encoding/json's message but drops the Go type names it
// sometimes mentions, which mean nothing to a client, and bounds its length:
// it may quote a field name of the client's choosing.
func trimJSONErr(err error) string {
	var te *json.UnmarshalTypeError
	if ok := asTypeErr(err, &te); ok {
		return fmt.Sprintf("field %q has the wrong type (%s)", truncate(te.Field, 64), te.Value)
	}
	return truncate(err.Error(), 160)
}

func asTypeErr(err error, te **json.UnmarshalTypeError) bool {
	t, ok := err.(*json.UnmarshalTypeError)
	if ok {
		*te = t
	}
	return ok
}

// Reply frames. These are small and rare; each is its own allocation.

func okFrame(id int64, recovered map[string]bool) []byte {
	b := make([]byte, 0, 64)
	b = append(b, `{"op":"ok","id":`...)
	b = strconv.AppendInt(b, id, 10)
	if recovered != nil {
		b = append(b, `,"recovered":{`...)
		first := true
		for ch, ok := range recovered {
			if !first {
				b = append(b, ',')
			}
			first = false
			b = append(b, '"')
			b = append(b, ch...) // channel names need no escaping
			b = append(b, `":`...)
			b = strconv.AppendBool(b, ok)
		}
		b = append(b, '}')
	}
	b = append(b, '}')
	return wire.ServerFrame(ws.OpText, b)
}

func pongFrame(id int64) []byte {
	b := make([]byte, 0, 32)
	b = append(b, `{"op":"pong","id":`...)
	b = strconv.AppendInt(b, id, 10)
	b = append(b, '}')
	return wire.ServerFrame(ws.OpText, b)
}

func errorFrame(id int64, code, msg string) []byte {
	m, _ := json.Marshal(msg) // a string always marshals
	b := make([]byte, 0, 48+len(code)+len(m))
	b = append(b, `{"op":"error","id":`...)
	b = strconv.AppendInt(b, id, 10)
	b = append(b, `,"code":"`...)
	b = append(b, code...)
	b = append(b, `","message":`...)
	b = append(b, m...)
	b = append(b, '}')
	return wire.ServerFrame(ws.OpText, b)
}

// Message is a record given to the gateway directly, with its route's
// settings inline: what tests, benchmarks and tools publish (Server.Publish,
// EncodeMessage) when no consumer is involved. kpush's own records reach
// the gateway as router.Record, through the router's Encoder (Server.Encode).
type Message struct {
	Channel   string
	Topic     string // the Kafka topic ("" when unknown)
	Partition int32
	Offset    int64
	Timestamp int64 // Unix milliseconds
	// Epoch is the consumer's continuity epoch of the partition stream the
	// record came from (see router.Frame.Epoch); 0 for none.
	Epoch uint64
	Data  []byte
	// Binary marks Data as opaque bytes: it is sent base64-encoded with
	// "enc":"base64". Otherwise Data must be one valid JSON value.
	Binary bool
	// Snapshot marks the channel's last record sent on subscribe.
	Snapshot bool
	// Skipped is how many older records of the channel conflation dropped
	// before this one.
	Skipped int64
	// Reset marks the first record of the channel after its partition's
	// log went back (truncated, or its topic recreated): sent as
	// "reset":true, it tells the client that offsets from here on may
	// repeat ones it has seen, for different records.
	Reset bool
	// Conflate lets a connection that falls behind keep only the newest
	// pending record of this channel (the route's slow: conflate).
	Conflate bool
	// MaxRate is the route's frequency cap (messages a second per channel
	// and connection; 0: none), for subscriptions that set no max_rate.
	MaxRate float64
}

// record returns m as the router.Record it stands for, with a policy of
// its own holding m's settings and keep (one allocation for both).
func (m *Message) record(keep *router.Retention) *router.Record {
	p := &struct {
		rec router.Record
		pol router.Policy
	}{
		rec: router.Record{
			Channel:   m.Channel,
			Topic:     m.Topic,
			Partition: m.Partition,
			Offset:    m.Offset,
			Timestamp: m.Timestamp,
			Epoch:     m.Epoch,
			Reset:     m.Reset,
			Value:     m.Data,
		},
		pol: router.Policy{Binary: m.Binary, Conflate: m.Conflate, MaxRate: m.MaxRate, Keep: keep},
	}
	p.rec.Policy = &p.pol
	return &p.rec
}

// EncodeMessage encodes m once as a complete WebSocket text frame and
// returns the Frame every subscriber of m.Channel receives.
func EncodeMessage(m *Message) *router.Frame {
	pol := router.Policy{Binary: m.Binary, Conflate: m.Conflate, MaxRate: m.MaxRate}
	rec := router.Record{Channel: m.Channel, Topic: m.Topic, Partition: m.Partition, Offset: m.Offset, Timestamp: m.Timestamp,
		Epoch: m.Epoch, Reset: m.Reset, Value: m.Data, Policy: &pol}
	return encodeRecord(&rec, m.Snapshot, m.Skipped)
}

// EncodeRecord encodes rec once as a complete WebSocket text frame (a msg
// frame of protocol v1, in its route's format) and returns the Frame every
// subscriber of rec.Channel receives. rec.Value is copied.
func EncodeRecord(rec *router.Record) *router.Frame { return encodeRecord(rec, false, 0) }

// encodeRecord is EncodeRecord, marked as a snapshot or as following
// skipped records when asked.
func encodeRecord(rec *router.Record, snapshot bool, skipped int64) *router.Frame {
	var pol router.Policy
	if rec.Policy != nil {
		pol = *rec.Policy
	}
	// Size the buffer exactly so the frame is one allocation.
	dataLen := len(rec.Value)
	if pol.Binary {
		dataLen = base64.StdEncoding.EncodedLen(len(rec.Value)) + 2 + len(`,"enc":"base64"`)
	}
	n := len(`{"op":"msg","ch":"","p":,"o":,"ts":,"data":}`) + len(rec.Channel) + 11 + 20 + 20 + dataLen
	if snapshot {
		n += len(`,"snap":true`)
	}
	if skipped > 0 {
		n += len(`,"skipped":`) + 20
	}
	if rec.Reset {
		n += len(`,"reset":true`)
	}
	hl := wire.ServerHeaderLen(n) // upper bound on the final length's header size
	buf := make([]byte, hl, hl+n)
	b := append(buf, `{"op":"msg","ch":"`...)
	b = append(b, rec.Channel...)
	b = append(b, `","p":`...)
	b = strconv.AppendInt(b, int64(rec.Partition), 10)
	b = append(b, `,"o":`...)
	b = strconv.AppendInt(b, rec.Offset, 10)
	b = append(b, `,"ts":`...)
	b = strconv.AppendInt(b, rec.Timestamp, 10)
	if snapshot {
		b = append(b, `,"snap":true`...)
	}
	if skipped > 0 {
		b = append(b, `,"skipped":`...)
		b = strconv.AppendInt(b, skipped, 10)
	}
	if rec.Reset {
		b = append(b, `,"reset":true`...)
	}
	if pol.Binary {
		b = append(b, `,"enc":"base64","data":"`...)
		b = base64.StdEncoding.AppendEncode(b, rec.Value)
		b = append(b, `"}`...)
	} else {
		b = append(b, `,"data":`...)
		b = append(b, rec.Value...)
		b = append(b, '}')
	}
	payload := len(b) - hl
	// The real header may be shorter than the reserved one: shift the start.
	real := wire.ServerHeaderLen(payload)
	start := hl - real
	wire.PutServerHeader(b[start:hl], ws.OpText, payload)
	return &router.Frame{
		Channel:   rec.Channel,
		Topic:     rec.Topic,
		Partition: rec.Partition,
		Offset:    rec.Offset,
		Timestamp: rec.Timestamp,
		Epoch:     rec.Epoch,
		Reset:     rec.Reset,
		Data:      b[start:],
		Payload:   b[hl:],
		Conflate:  pol.Conflate,
		MaxRate:   pol.MaxRate,
	}
}
