package consumer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
)

// Message is one routed record.
type Message struct {
	Channel   string
	Topic     string
	Partition int32
	Offset    int64
	Timestamp int64 // Unix milliseconds
	Value     []byte
	Route     *Route
}

// Sink receives routed records. Deliver is called from one goroutine per
// partition, in offset order within a partition, and must not block.
//
// The Message and its Value are reused for the next record of the partition
// once Deliver returns: a Sink that keeps either past the call must copy it.
// (The gateway encodes the record into its own frame during the call.)
type Sink interface {
	Deliver(m *Message)
}

// Consumer reads every partition of the routed topics.
type Consumer struct {
	cfg    Config
	routes map[string][]*Route // topic → routes
	topics []string
	sink   Sink
	log    *slog.Logger
	m      *metrics

	client    *kafka.Client
	transport *kafka.Transport
	// stop ends the transport's background goroutines; Run calls it when
	// it returns.
	stop context.CancelFunc

	mu         sync.Mutex // guards partitions, metadataOK
	partitions map[topicPartition]*partState
	metadataOK bool
}

type topicPartition struct {
	topic     string
	partition int
}

// partState is what readiness and metrics know of one partition reader.
type partState struct {
	healthy atomic.Bool
	next    atomic.Int64 // next offset to read
}

// New returns a Consumer for routes (already checked with ValidateRoutes).
func New(cfg Config, routes []Route, sink Sink, reg prometheus.Registerer, log *slog.Logger) (*Consumer, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := ValidateRoutes(routes); err != nil {
		return nil, err
	}
	if sink == nil {
		return nil, errors.New("consumer: nil sink")
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	c := &Consumer{
		cfg:        cfg,
		routes:     make(map[string][]*Route),
		sink:       sink,
		log:        log,
		partitions: make(map[topicPartition]*partState),
	}
	for i := range routes {
		r := &routes[i]
		if _, ok := c.routes[r.Topic]; !ok {
			c.topics = append(c.topics, r.Topic)
		}
		c.routes[r.Topic] = append(c.routes[r.Topic], r)
	}
	m, err := newMetrics(reg, c)
	if err != nil {
		return nil, fmt.Errorf("consumer: register metrics: %w", err)
	}
	c.m = m
	var ctx context.Context
	ctx, c.stop = context.WithCancel(context.Background())
	c.client, c.transport = c.newClient(ctx)
	return c, nil
}

// newClient returns the kafka-go client the partition readers and Replay
// share. Its transport keeps one connection per concurrent request to each
// broker and a cache of cluster metadata; its background goroutines stop
// when ctx ends.
func (c *Consumer) newClient(ctx context.Context) (*kafka.Client, *kafka.Transport) {
	t := &kafka.Transport{
		ClientID:    c.cfg.ClientID,
		DialTimeout: c.cfg.DialTimeout,
		IdleTimeout: 30 * time.Second,
		// The transport answers Metadata requests from its cache and
		// refreshes that cache at random times less than MetadataTTL apart
		// (and only for the routed topics). discover reads the cache every
		// half interval, so a topic or partition that appears is read within
		// metadata_interval (plus one round trip) of appearing, and Fetch
		// routes to its leader through the same cache.
		MetadataTTL:    c.cfg.MetadataInterval / 2,
		MetadataTopics: c.topics,
		Context:        ctx,
	}
	return &kafka.Client{Addr: kafka.TCP(c.cfg.Brokers...), Transport: t}, t
}

// Ready reports whether metadata has been read and every known partition of
// the routed topics is being read without error.
func (c *Consumer) Ready() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.metadataOK {
		return false
	}
	for _, p := range c.partitions {
		if !p.healthy.Load() {
			return false
		}
	}
	return true
}

// Run reads until ctx is cancelled and returns once every partition reader
// has stopped, and with them the Kafka client's own goroutines (a Replay
// after that fails at once). Call it once.
func (c *Consumer) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer c.transport.CloseIdleConnections()
	defer c.stop()
	defer wg.Wait()
	c.log.Info("consumer starting", "brokers", c.cfg.Brokers, "topics", c.topics, "start", c.cfg.Start)
	first := true
	backoff := c.newBackoff()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		found, err := c.discover(ctx)
		if err != nil {
			c.setMetadataOK(false)
			c.m.errMetadata.Inc()
			d := backoff.next()
			c.log.Warn("consumer: reading metadata failed; retrying", "err", err, "retry_in", d.String())
			t.Reset(d)
			continue
		}
		if backoff.failures > 0 {
			c.log.Info("consumer: metadata read", "after_failures", backoff.failures)
		}
		backoff.reset()
		for _, tp := range found {
			start := int64(kafka.FirstOffset)
			if first && c.cfg.Start == "latest" {
				start = kafka.LastOffset
			}
			ps := &partState{}
			c.mu.Lock()
			c.partitions[tp] = ps
			c.mu.Unlock()
			if !first {
				c.log.Info("consumer: new partition; reading from its first offset", "topic", tp.topic, "partition", tp.partition)
			}
			r := c.newPartReader(tp, ps)
			wg.Add(1)
			go func() {
				defer wg.Done()
				r.run(ctx, start)
			}()
		}
		c.setMetadataOK(true)
		first = false
		t.Reset(c.cfg.MetadataInterval / 2)
	}
}

func (c *Consumer) setMetadataOK(ok bool) {
	c.mu.Lock()
	c.metadataOK = ok
	c.mu.Unlock()
}

// discover returns the partitions of routed topics that have no reader yet.
func (c *Consumer) discover(ctx context.Context) ([]topicPartition, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout+5*time.Second)
	defer cancel()
	md, err := c.client.Metadata(ctx, &kafka.MetadataRequest{Topics: c.topics})
	if err != nil {
		return nil, fmt.Errorf("consumer: metadata for %v: %w", c.topics, err)
	}
	var found []topicPartition
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, t := range md.Topics {
		if t.Error != nil {
			if !errors.Is(t.Error, kafka.UnknownTopicOrPartition) {
				c.log.Warn("consumer: topic metadata error", "topic", t.Name, "err", t.Error)
			}
			continue
		}
		if _, routed := c.routes[t.Name]; !routed {
			continue
		}
		for _, p := range t.Partitions {
			tp := topicPartition{t.Name, p.ID}
			if _, ok := c.partitions[tp]; !ok {
				found = append(found, tp)
			}
		}
	}
	slices.SortFunc(found, func(a, b topicPartition) int {
		if a.topic != b.topic {
			if a.topic < b.topic {
				return -1
			}
			return 1
		}
		return a.partition - b.partition
	})
	return found, nil
}

// backoff is exponential with jitter: the n-th delay is uniform in
// [d/2, d] for d = min * 2^n, capped at max.
type backoff struct {
	min, max time.Duration
	failures int
}

func (c *Consumer) newBackoff() *backoff {
	return &backoff{min: c.cfg.RetryBackoff, max: c.cfg.RetryBackoffMax}
}

func (b *backoff) next() time.Duration {
	d := b.min << min(b.failures, 20)
	if d > b.max || d <= 0 {
		d = b.max
	}
	b.failures++
	return d/2 + rand.N(d/2+1)
}

func (b *backoff) reset() { b.failures = 0 }
