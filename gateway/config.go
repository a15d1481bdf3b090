package gateway

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/kpush/kpush/gateway/auth"
)

// Config is the gateway section of kpush's configuration. Zero values mean
// "use the default"; call SetDefaults, then Validate.
type Config struct {
	// Listen is the TCP address for WebSocket clients (the top-level
	// `listen` key; set by the caller).
	Listen string `yaml:"-"`

	Path string `yaml:"path"`
	// SSEPath is where Server-Sent Events streams are served (sse.go);
	// "/events" by default, "off" to serve none.
	SSEPath string `yaml:"sse_path"`
	// CentrifugoPath serves Centrifugo's client protocol (centrifugo.go);
	// "/connection/websocket" by default, "off" to serve none.
	CentrifugoPath   string        `yaml:"centrifugo_path"`
	MaxConnections   int           `yaml:"max_connections"`
	MaxMessageBytes  int           `yaml:"max_message_bytes"`
	MaxSubscriptions int           `yaml:"max_subscriptions"`
	PingInterval     time.Duration `yaml:"ping_interval"`
	IdleTimeout      time.Duration `yaml:"idle_timeout"`
	AllowedOrigins   []string      `yaml:"allowed_origins"`
	DrainTimeout     time.Duration `yaml:"drain_timeout"`
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
	// MaxQueueBytes and MaxQueueMessages bound what may wait to be written
	// to one connection. Past either, the connection is a slow consumer.
	MaxQueueBytes    int `yaml:"max_queue_bytes"`
	MaxQueueMessages int `yaml:"max_queue_messages"`
	// Workers is the size of the pool that reads and writes ready sockets;
	// 0 means twice GOMAXPROCS.
	Workers int `yaml:"workers"`
	// MaxHandshakes bounds handshakes in progress at once.
	MaxHandshakes int `yaml:"max_handshakes"`
	// ResumeConcurrency bounds the Kafka read-backs for resuming clients
	// running at once; ResumeQueue bounds those waiting for one (a resume
	// that finds the queue full is answered recovered:false at once).
	// ResumeTimeout bounds how long a client waits for its resume to be
	// read back, queueing included.
	ResumeConcurrency int           `yaml:"resume_concurrency"`
	ResumeQueue       int           `yaml:"resume_queue"`
	ResumeTimeout     time.Duration `yaml:"resume_timeout"`

	// MaxConnectionsPerIP bounds the WebSocket connections one client
	// address may hold (HTTP 429 past it); 0 means no per-address limit,
	// the right setting behind a proxy that hides client addresses.
	MaxConnectionsPerIP int `yaml:"max_connections_per_ip"`
	// MaxHeaderBytes bounds the upgrade request, request line and headers
	// together (HTTP 431 past it).
	MaxHeaderBytes int `yaml:"max_header_bytes"`
	// MaxRequestsPerSecond and RequestBurst bound client requests and pings
	// per connection (a token bucket). A request over the limit is answered
	// with error rate_limited; once RequestBurst requests in a row were
	// refused the connection is closed with 1008.
	MaxRequestsPerSecond int `yaml:"max_requests_per_second"`
	RequestBurst         int `yaml:"request_burst"`

	// TrustedProxies (CIDRs) and ProxyProtocol (v1, v2 or off) say how the
	// real client address is found behind proxies (clientaddr.go).
	TrustedProxies []string `yaml:"trusted_proxies"`
	ProxyProtocol  string   `yaml:"proxy_protocol"`

	// WriteDelay (write_delay) lets records that become due for one
	// connection within this long go out in one socket write: the first
	// record queued to an idle connection starts the delay. 0 (default):
	// each is flushed at once. Replies and close frames are never delayed.
	WriteDelay time.Duration `yaml:"write_delay"`

	// Compression (compression) accepts permessage-deflate (RFC 7692) from
	// clients that offer it, with no context takeover either way; false
	// (default): the extension is declined. CompressionMinBytes
	// (compression_min_bytes, default 128) is the smallest record payload
	// compressed; smaller ones go out plain.
	Compression         bool `yaml:"compression"`
	CompressionMinBytes int  `yaml:"compression_min_bytes"`

	// TLS and Auth are the top-level `tls` and `auth` sections (set by the
	// caller).
	TLS  TLSConfig   `yaml:"-"`
	Auth auth.Config `yaml:"-"`
}

// SetDefaults fills zero fields with their defaults.
func (c *Config) SetDefaults() {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	if c.Listen == "" {
		c.Listen = ":8080"
	}
	if c.Path == "" {
		c.Path = "/ws"
	}
	if c.SSEPath == "" {
		c.SSEPath = DefaultSSEPath
	}
	if c.CentrifugoPath == "" {
		c.CentrifugoPath = DefaultCentrifugoPath
	}
	def(&c.MaxConnections, 100000)
	def(&c.MaxMessageBytes, 4096)
	def(&c.MaxSubscriptions, 100)
	defDur(&c.PingInterval, 30*time.Second)
	defDur(&c.IdleTimeout, 75*time.Second)
	if c.AllowedOrigins == nil {
		c.AllowedOrigins = []string{"*"}
	}
	defDur(&c.DrainTimeout, 20*time.Second)
	defDur(&c.HandshakeTimeout, 5*time.Second)
	def(&c.MaxQueueBytes, 1<<20)
	def(&c.MaxQueueMessages, 4096)
	def(&c.MaxHandshakes, 1024)
	def(&c.ResumeConcurrency, 4)
	def(&c.ResumeQueue, 1024)
	defDur(&c.ResumeTimeout, 5*time.Second)
	def(&c.MaxHeaderBytes, 16<<10)
	def(&c.MaxRequestsPerSecond, 20)
	def(&c.RequestBurst, 40)
	def(&c.CompressionMinBytes, 128)
	if c.ProxyProtocol == "" {
		c.ProxyProtocol = ProxyProtocolOff
	}
	c.TLS.SetDefaults()
	c.Auth.SetDefaults()
}

// Validate reports every invalid key, named as in the YAML file.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("gateway.%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if !strings.HasPrefix(c.Path, "/") {
		bad("path", "%q must start with /", c.Path)
	}
	positive := map[string]int{
		"max_connections":         c.MaxConnections,
		"max_message_bytes":       c.MaxMessageBytes,
		"max_subscriptions":       c.MaxSubscriptions,
		"max_queue_bytes":         c.MaxQueueBytes,
		"max_queue_messages":      c.MaxQueueMessages,
		"max_handshakes":          c.MaxHandshakes,
		"max_connections_per_ip":  c.MaxConnectionsPerIP,
		"max_header_bytes":        c.MaxHeaderBytes,
		"max_requests_per_second": c.MaxRequestsPerSecond,
		"request_burst":           c.RequestBurst,
		"resume_concurrency":      c.ResumeConcurrency,
		"resume_queue":            c.ResumeQueue,
		"compression_min_bytes":   c.CompressionMinBytes,
	}
	for _, k := range []string{"max_connections", "max_message_bytes", "max_subscriptions", "max_queue_bytes", "max_queue_messages", "max_handshakes",
		"max_connections_per_ip", "max_header_bytes", "max_requests_per_second", "request_burst", "resume_concurrency", "resume_queue", "compression_min_bytes"} {
		if positive[k] < 0 {
			bad(k, "must be positive, got %d", positive[k])
		}
	}
	if c.Workers < 0 {
		bad("workers", "must be 0 (automatic) or positive, got %d", c.Workers)
	}
	if c.MaxMessageBytes > 1<<20 {
		bad("max_message_bytes", "%d is above the 1 MiB ceiling for client requests", c.MaxMessageBytes)
	}
	for k, d := range map[string]time.Duration{"ping_interval": c.PingInterval, "idle_timeout": c.IdleTimeout, "drain_timeout": c.DrainTimeout, "handshake_timeout": c.HandshakeTimeout, "resume_timeout": c.ResumeTimeout} {
		if d < 0 {
			bad(k, "must be positive, got %s", d)
		}
	}
	if c.PingInterval > 0 && c.IdleTimeout > 0 && c.IdleTimeout <= c.PingInterval {
		bad("idle_timeout", "%s must be longer than ping_interval (%s), or every client times out between pings", c.IdleTimeout, c.PingInterval)
	}
	if c.PingInterval > 0 && c.PingInterval < 100*time.Millisecond {
		bad("ping_interval", "%s is below the 100ms resolution of the connection timer", c.PingInterval)
	}
	if c.WriteDelay < 0 || c.WriteDelay > time.Second || c.WriteDelay%time.Millisecond != 0 {
		bad("write_delay", "%s must be a whole number of milliseconds from 0 (off) to 1s", c.WriteDelay)
	}
	if len(c.AllowedOrigins) == 0 {
		bad("allowed_origins", "must list at least one origin, or \"*\" for any")
	}
	for _, o := range c.AllowedOrigins {
		if o != "*" && !strings.Contains(o, "://") {
			bad("allowed_origins", "%q must be \"*\" or a scheme://host[:port] origin", o)
		}
	}
	if c.MaxHeaderBytes > 0 && c.MaxHeaderBytes < 1024 {
		bad("max_header_bytes", "%d is below 1024, too small for a browser's upgrade request", c.MaxHeaderBytes)
	}
	errs = append(errs, c.validateClientAddr()...)
	errs = append(errs, c.validateSSE()...)
	errs = append(errs, c.validateCentrifugo()...)
	errs = append(errs, c.TLS.Validate(), c.Auth.Validate())
	return errors.Join(errs...)
}
