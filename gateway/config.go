package gateway

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Config is the gateway section of kpush's configuration. Zero values mean
// "use the default"; call SetDefaults, then Validate.
type Config struct {
	// Listen is the TCP address for WebSocket clients (the top-level
	// `listen` key; set by the caller).
	Listen string `yaml:"-"`

	Path             string        `yaml:"path"`
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
		"max_connections":    c.MaxConnections,
		"max_message_bytes":  c.MaxMessageBytes,
		"max_subscriptions":  c.MaxSubscriptions,
		"max_queue_bytes":    c.MaxQueueBytes,
		"max_queue_messages": c.MaxQueueMessages,
		"max_handshakes":     c.MaxHandshakes,
		"resume_concurrency": c.ResumeConcurrency,
		"resume_queue":       c.ResumeQueue,
	}
	for _, k := range []string{"max_connections", "max_message_bytes", "max_subscriptions", "max_queue_bytes", "max_queue_messages", "max_handshakes", "resume_concurrency", "resume_queue"} {
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
	if len(c.AllowedOrigins) == 0 {
		bad("allowed_origins", "must list at least one origin, or \"*\" for any")
	}
	for _, o := range c.AllowedOrigins {
		if o != "*" && !strings.Contains(o, "://") {
			bad("allowed_origins", "%q must be \"*\" or a scheme://host[:port] origin", o)
		}
	}
	return errors.Join(errs...)
}
