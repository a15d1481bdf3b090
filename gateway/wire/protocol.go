package wire

import (
	"encoding/json"

	"github.com/gobwas/ws"
)

// Protocol v1: one JSON object per text frame. README.md, "Protocol",
// describes it in full.

// Error codes sent in {"op":"error"} replies.
const (
	CodeBadRequest           = "bad_request"
	CodeUnknownOp            = "unknown_op"
	CodeInvalidChannel       = "invalid_channel"
	CodeTooManySubscriptions = "too_many_subscriptions"
	CodeForbidden            = "forbidden"
	CodeRateLimited          = "rate_limited"
	CodeInvalidToken         = "invalid_token"
	CodeInternal             = "internal"
)

// Close codes used by kpush beyond RFC 6455's.
const (
	CloseTokenExpired ws.StatusCode = 4001
	CloseSlowConsumer ws.StatusCode = 4008
)

// Request is one client request.
type Request struct {
	Op       string                      `json:"op"`
	ID       int64                       `json:"id"`
	Channels []string                    `json:"channels,omitempty"`
	Since    map[string]map[string]int64 `json:"since,omitempty"`
	Snapshot bool                        `json:"snapshot,omitempty"`
	// MaxRate caps the subscribe's channels at this many messages a
	// second for the connection (the newest, with "skipped":N); nil: the
	// route's default.
	MaxRate *float64 `json:"max_rate,omitempty"`
	Token   string   `json:"token,omitempty"`
}

// Frame is any server frame of protocol v1, as a client decodes it.
type Frame struct {
	Op        string          `json:"op"`
	ID        int64           `json:"id,omitempty"`
	Ch        string          `json:"ch,omitempty"`
	P         int32           `json:"p"`
	O         int64           `json:"o"`
	TS        int64           `json:"ts,omitempty"`
	Data      json.RawMessage `json:"data,omitempty"`
	Enc       string          `json:"enc,omitempty"`
	Snap      bool            `json:"snap,omitempty"`
	Skipped   int64           `json:"skipped,omitempty"`
	Reset     bool            `json:"reset,omitempty"`
	Code      string          `json:"code,omitempty"`
	Message   string          `json:"message,omitempty"`
	Recovered map[string]bool `json:"recovered,omitempty"`
	// Revoked lists the channels a refresh dropped because the new token
	// no longer grants them.
	Revoked []string `json:"revoked,omitempty"`
}
