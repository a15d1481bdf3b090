package gateway

import (
	"slices"
	"time"
)

// Limits are the gateway keys that may change while kpush runs: a running
// Server applies them with SetLimits. Every other key of Config is read once
// by New, and changing it needs a restart.
//
// What a change does to connections already open:
//   - MaxConnections, AllowedOrigins, MaxHeaderBytes: checked at each
//     handshake; open connections are kept even if they are now over the
//     limit.
//   - MaxSubscriptions: checked at each subscribe; subscriptions already
//     held are kept.
//   - MaxMessageBytes: applies to the next frame read.
//   - MaxQueueBytes, MaxQueueMessages: apply to the next frame queued; a
//     connection already past a lowered bound is closed as a slow consumer
//     when its next frame arrives.
//   - MaxRequestsPerSecond, RequestBurst: apply to the next request; tokens
//     a connection saved up are kept (at most the new burst).
//   - PingInterval, IdleTimeout: apply from the next sweep (within a second,
//     or one tenth of the ping interval).
type Limits struct {
	MaxConnections   int
	MaxMessageBytes  int
	MaxSubscriptions int
	MaxQueueBytes    int
	MaxQueueMessages int
	PingInterval     time.Duration
	IdleTimeout      time.Duration
	AllowedOrigins   []string

	MaxHeaderBytes       int
	MaxRequestsPerSecond int
	RequestBurst         int
}

// Limits returns c's live-changeable keys.
func (c *Config) Limits() Limits {
	return Limits{
		MaxConnections:   c.MaxConnections,
		MaxMessageBytes:  c.MaxMessageBytes,
		MaxSubscriptions: c.MaxSubscriptions,
		MaxQueueBytes:    c.MaxQueueBytes,
		MaxQueueMessages: c.MaxQueueMessages,
		PingInterval:     c.PingInterval,
		IdleTimeout:      c.IdleTimeout,
		AllowedOrigins:   slices.Clone(c.AllowedOrigins),

		MaxHeaderBytes:       c.MaxHeaderBytes,
		MaxRequestsPerSecond: c.MaxRequestsPerSecond,
		RequestBurst:         c.RequestBurst,
	}
}

// SetLimits replaces c's live-changeable keys with l, leaving the others.
func (c *Config) SetLimits(l Limits) {
	c.MaxConnections = l.MaxConnections
	c.MaxMessageBytes = l.MaxMessageBytes
	c.MaxSubscriptions = l.MaxSubscriptions
	c.MaxQueueBytes = l.MaxQueueBytes
	c.MaxQueueMessages = l.MaxQueueMessages
	c.PingInterval = l.PingInterval
	c.IdleTimeout = l.IdleTimeout
	c.AllowedOrigins = slices.Clone(l.AllowedOrigins)
	c.MaxHeaderBytes = l.MaxHeaderBytes
	c.MaxRequestsPerSecond = l.MaxRequestsPerSecond
	c.RequestBurst = l.RequestBurst
}
