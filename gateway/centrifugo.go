package gateway

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// Centrifugo's client protocol (JSON), so that Centrifugo's SDKs
// (centrifuge-go, centrifuge-js, ...) work with kpush unchanged.
//
// The connection is an ordinary WebSocket connection of the gateway (same
// queue, bounds, slow-consumer policy, close codes); only its requests and
// its frames differ. Commands are JSON objects, several per text frame
// separated by newlines: {"id":1,"connect":{"token":"..."}},
// {"id":2,"subscribe":{"channel":"x"}}, {} (the client's pong). Replies carry
// the command's id and one result or an error; records are pushed as
// {"push":{"channel":"x","pub":{"data":...,"offset":N}}}; the server's
// ping is an empty reply {}. The connection's flush turns kpush's record
// and ping frames into these forms (cfFrameLocked, centrifugo_session.go);
// a record's push is made once and shared by all of its subscribers
// (cfPushCache, centrifugo_proto.go).
//
// kpush is one-way: publish, presence, presence_stats, history, rpc and
// sub_refresh are answered with the protocol's "not available" error.

// DefaultCentrifugoPath is gateway.centrifugo_path's default.
const DefaultCentrifugoPath = "/connection/websocket"

// Centrifugo's error codes kpush answers with.
const (
	cfErrInternal         = 100
	cfErrUnauthorized     = 101
	cfErrPermissionDenied = 103
	cfErrMethodNotFound   = 104
	cfErrAlreadySubbed    = 105
	cfErrLimitExceeded    = 106
	cfErrBadRequest       = 107
	cfErrNotAvailable     = 108
	cfErrTokenExpired     = 109
	cfErrUnrecoverable    = 112
)

// Centrifugo's disconnect codes (WebSocket close codes) kpush closes with.
const (
	cfCloseExpired      = 3005 // the connection's token expired unrefreshed: the SDK reconnects, getting a new token
	cfCloseInvalidToken = 3500 // a connect token that is not valid: the SDK does not reconnect
	cfCloseBadRequest   = 3501 // a command that is not the protocol's, or one before connect
)

func (c *Config) validateCentrifugo() []error {
	switch {
	case c.CentrifugoPath == sseOff:
		return nil
	case !strings.HasPrefix(c.CentrifugoPath, "/"):
		return []error{fmt.Errorf("gateway.centrifugo_path: %q must start with / (or be %q)", c.CentrifugoPath, sseOff)}
	case c.CentrifugoPath == c.Path || c.CentrifugoPath == c.SSEPath:
		return []error{fmt.Errorf("gateway.centrifugo_path: %q is also gateway.path or gateway.sse_path", c.CentrifugoPath)}
	}
	return nil
}

// cfCommand is one client command. Only what kpush reads is decoded; the
// methods it does not serve are recognised by their key.
type cfCommand struct {
	ID          uint32          `json:"id"`
	Connect     *cfConnect      `json:"connect"`
	Subscribe   *cfSubscribe    `json:"subscribe"`
	Unsubscribe *cfChannel      `json:"unsubscribe"`
	Refresh     *cfConnect      `json:"refresh"`
	Publish     json.RawMessage `json:"publish"`
	Presence    json.RawMessage `json:"presence"`
	PresenceSt  json.RawMessage `json:"presence_stats"`
	History     json.RawMessage `json:"history"`
	RPC         json.RawMessage `json:"rpc"`
	Send        json.RawMessage `json:"send"`
	SubRefresh  json.RawMessage `json:"sub_refresh"`
	Ping        json.RawMessage `json:"ping"`
}

type cfConnect struct {
	Token string `json:"token"`
}

type cfChannel struct {
	Channel string `json:"channel"`
}

type cfSubscribe struct {
	Channel string `json:"channel"`
	Recover bool   `json:"recover"`
	Offset  uint64 `json:"offset"`
	Epoch   string `json:"epoch"`
	Delta   string `json:"delta"`
	Flag    int64  `json:"flag"`
}

// cfFlagRejectUnrecovered is the subscribe flag of SDKs that reload their
// state themselves (centrifuge-go's GetState): a recovery that cannot be
// exact is answered with error 112 instead of recovered:false.
const cfFlagRejectUnrecovered = 2

// cfReply encodes a reply: {"id":N,"<method>":<result>}.
func cfReply(id uint32, method string, result string) []byte {
	b := make([]byte, 0, 24+len(method)+len(result))
	b = append(b, `{"id":`...)
	b = strconv.AppendUint(b, uint64(id), 10)
	b = append(b, `,"`...)
	b = append(b, method...)
	b = append(b, `":`...)
	b = append(b, result...)
	return append(b, '}')
}

// cfError encodes an error reply.
func cfError(id uint32, code int, msg string) []byte {
	m, _ := json.Marshal(msg)
	return []byte(fmt.Sprintf(`{"id":%d,"error":{"code":%d,"message":%s}}`, id, code, m))
}

// cfPush encodes a record as a publication push; value is the record as
// protocol v1's "data".
func cfPush(channel string, offset int64, value []byte) []byte {
	b := make([]byte, 0, 48+len(channel)+len(value))
	b = append(b, `{"push":{"channel":"`...)
	b = append(b, channel...) // channel names need no escaping
	b = append(b, `","pub":`...)
	b = append(b, cfPub(offset, value)...)
	return append(b, "}}"...)
}

// cfPub encodes a publication.
func cfPub(offset int64, value []byte) []byte {
	b := make([]byte, 0, 32+len(value))
	b = append(b, `{"data":`...)
	b = append(b, value...)
	if offset > 0 {
		b = append(b, `,"offset":`...)
		b = strconv.AppendInt(b, offset, 10)
	}
	return append(b, '}')
}
