package consumer

import (
	"errors"
	"fmt"
	"time"
)

// Config is the `kafka` section of kpush's configuration. Zero values mean
// "use the default"; call SetDefaults, then Validate.
type Config struct {
	Brokers  []string `yaml:"brokers"`
	ClientID string   `yaml:"client_id"`
	// Start is where partitions known at start-up are read from: "latest"
	// (only new records) or "earliest". Partitions and topics that appear
	// later are always read from their first offset, so nothing produced to
	// them is missed.
	Start string `yaml:"start"`
	// Isolation is the Kafka isolation level kpush reads with:
	// "read_committed" (the default) delivers a record of a transaction
	// only once the transaction has committed, never one of an aborted
	// transaction, and nothing of a partition past a transaction still open
	// there (the last stable offset); "read_uncommitted" delivers every
	// record as soon as it is written. Resume read-backs follow the same
	// rule. Control records (transaction markers) are never delivered.
	Isolation string `yaml:"isolation"`
	// MetadataInterval bounds how long a routed topic created, or a
	// partition added, while kpush runs goes unread: it is read from its
	// first offset within this interval (plus one round trip). Metadata is
	// refreshed every half interval or sooner; at most 10s.
	MetadataInterval time.Duration `yaml:"metadata_interval"`
	// FetchMaxWait is how long the broker may hold a fetch open when its
	// partitions have nothing new. Fetches ask for one byte at least, so a
	// new record ends the wait at once: this bounds idle round trips (two
	// per second per broker at 500ms: one request covers every routed
	// partition a broker leads), not latency.
	FetchMaxWait time.Duration `yaml:"fetch_max_wait"`
	// FetchMaxBytes caps one fetch response per partition (a request for n
	// partitions asks for at most n times this), which kpush
	// holds in memory while it routes the records. A partition that is
	// behind gets this much per round trip; at the 4 MiB default (about
	// 25,000 records of 100 bytes) the per-fetch overhead no longer shows
	// in throughput, and 1 MiB costs about a tenth more CPU per record
	// (cmd/kpush-bench/README.md).
	FetchMaxBytes int `yaml:"fetch_max_bytes"`
	// RetryBackoff and RetryBackoffMax bound the exponential backoff after a
	// failed request.
	RetryBackoff    time.Duration `yaml:"retry_backoff"`
	RetryBackoffMax time.Duration `yaml:"retry_backoff_max"`
	DialTimeout     time.Duration `yaml:"dial_timeout"`
	// ReplayMaxScanned bounds the records one resume may read back from one
	// partition (its channel's and the other channels' sharing the
	// partition). A resume that would need more answers recovered:false.
	ReplayMaxScanned int `yaml:"replay_max_scanned"`
	// ReadyTimeout bounds how long start-up waits for Kafka before the pod
	// reports ready anyway: /readyz is 200 once every partition known at
	// start has answered a first fetch, or once this much time has passed.
	// Kafka faults after that show in metrics and the status endpoint, not
	// in readiness: every pod shares them.
	ReadyTimeout time.Duration `yaml:"ready_timeout"`
}

// SetDefaults fills zero fields with their defaults.
func (c *Config) SetDefaults() {
	if len(c.Brokers) == 0 {
		c.Brokers = []string{"127.0.0.1:9092"}
	}
	if c.ClientID == "" {
		c.ClientID = "kpush"
	}
	if c.Start == "" {
		c.Start = "latest"
	}
	if c.Isolation == "" {
		c.Isolation = ReadCommitted
	}
	dur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	dur(&c.MetadataInterval, 5*time.Second)
	dur(&c.FetchMaxWait, 500*time.Millisecond)
	dur(&c.RetryBackoff, 100*time.Millisecond)
	dur(&c.RetryBackoffMax, 5*time.Second)
	dur(&c.DialTimeout, 5*time.Second)
	dur(&c.ReadyTimeout, 30*time.Second)
	if c.FetchMaxBytes == 0 {
		c.FetchMaxBytes = 4 << 20
	}
	if c.ReplayMaxScanned == 0 {
		c.ReplayMaxScanned = 100000
	}
}

// Validate reports every invalid key, named as in the YAML file.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("kafka.%s: %s", key, fmt.Sprintf(format, args...)))
	}
	for i, b := range c.Brokers {
		if b == "" {
			bad(fmt.Sprintf("brokers[%d]", i), "empty address")
		}
	}
	if c.Start != "latest" && c.Start != "earliest" {
		bad("start", "%q must be latest or earliest", c.Start)
	}
	if c.Isolation != ReadCommitted && c.Isolation != ReadUncommitted {
		bad("isolation", "%q must be read_committed or read_uncommitted", c.Isolation)
	}
	if c.MetadataInterval < 100*time.Millisecond || c.MetadataInterval > 10*time.Second {
		bad("metadata_interval", "%s must be between 100ms and 10s (new topics and partitions are found within it)", c.MetadataInterval)
	}
	if c.FetchMaxWait < time.Millisecond || c.FetchMaxWait > 30*time.Second {
		bad("fetch_max_wait", "%s must be between 1ms and 30s", c.FetchMaxWait)
	}
	if c.FetchMaxBytes < 1024 {
		bad("fetch_max_bytes", "%d is below 1024", c.FetchMaxBytes)
	}
	if c.RetryBackoff <= 0 || c.RetryBackoffMax < c.RetryBackoff {
		bad("retry_backoff", "%s must be positive and at most retry_backoff_max (%s)", c.RetryBackoff, c.RetryBackoffMax)
	}
	if c.DialTimeout <= 0 {
		bad("dial_timeout", "must be positive")
	}
	if c.ReadyTimeout < 0 || c.ReadyTimeout > 10*time.Minute {
		bad("ready_timeout", "%s must be between 0 (the default, 30s) and 10m", c.ReadyTimeout)
	}
	if c.ReplayMaxScanned < 0 {
		bad("replay_max_scanned", "must be positive, got %d", c.ReplayMaxScanned)
	}
	return errors.Join(errs...)
}

// Format says how a record value is carried to clients.
type Format string

const (
	// FormatJSON embeds the value as raw JSON; invalid JSON is skipped.
	FormatJSON Format = "json"
	// FormatBytes sends the value base64-encoded.
	FormatBytes Format = "bytes"
)

// SlowPolicy says what happens to a connection too slow for a route's
// records once its outbound queue is full.
type SlowPolicy string

const (
	// SlowDisconnect closes the connection with 4008 "slow consumer".
	SlowDisconnect SlowPolicy = "disconnect"
	// SlowConflate keeps only the newest pending record per channel; the
	// next one delivered says how many were skipped.
	SlowConflate SlowPolicy = "conflate"
)

// History bounds the per-channel in-memory history a route keeps for
// resuming clients. MaxRecords 0 keeps none.
type History struct {
	MaxRecords int           `yaml:"max_records"`
	MaxBytes   int           `yaml:"max_bytes"`
	MaxAge     time.Duration `yaml:"max_age"`
}

// Route maps one topic to channels.
type Route struct {
	Topic   string `yaml:"topic"`
	Channel string `yaml:"channel"`
	Format  Format `yaml:"format"`
	// Public opens the route's channels to every client, anonymous ones
	// included, when auth.mode is jwt.
	Public bool `yaml:"public"`
	// Snapshot keeps every channel's last record, sent to clients that
	// subscribe with "snapshot":true.
	Snapshot bool `yaml:"snapshot"`
	// Slow is the slow-consumer policy for this route's records.
	Slow SlowPolicy `yaml:"slow"`
	// History is the in-memory history per channel that resumes are
	// served from before falling back to reading Kafka.
	History History `yaml:"history"`
	// MaxRate is the default frequency cap of the route's channels, in
	// records a second per channel and connection (0: none); a subscribe's
	// max_rate overrides it.
	MaxRate float64 `yaml:"max_rate"`
}
