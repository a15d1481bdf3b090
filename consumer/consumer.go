package consumer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kpush/kpush/router"
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
type Sink interface {
	Deliver(m *Message)
}

// Consumer reads every partition of the routed topics.
type Consumer struct {
	cfg    Config
	table  atomic.Pointer[routeTable] // replaced whole by SetRoutes
	sink   Sink
	log    *slog.Logger
	client *kafka.Client
	m      *metrics
	wake   chan struct{} // asks Run to read metadata now (routes changed)

	mu         sync.Mutex // guards partitions, stopping, fresh, metadataOK
	partitions map[topicPartition]*partState
	// stopping holds readers of topics no longer routed until they have
	// returned, so a topic routed again is not read twice at once.
	stopping map[topicPartition]*partState
	// fresh holds routed topics that no metadata read has seen since they
	// were routed: their partitions start at cfg.Start. Partitions that
	// appear later start at their first offset.
	fresh      map[string]bool
	metadataOK bool
}

// routeTable is the routes in force, indexed by topic. It is never modified
// once stored.
type routeTable struct {
	byTopic map[string][]*Route
	topics  []string // in first-route order
}

// newRouteTable indexes routes, which must have passed ValidateRoutes.
func newRouteTable(routes []Route) *routeTable {
	t := &routeTable{byTopic: make(map[string][]*Route)}
	for i := range routes {
		r := &routes[i]
		if _, ok := t.byTopic[r.Topic]; !ok {
			t.topics = append(t.topics, r.Topic)
		}
		t.byTopic[r.Topic] = append(t.byTopic[r.Topic], r)
	}
	return t
}

type topicPartition struct {
	topic     string
	partition int
}

// partState is what readiness and metrics know of one partition reader.
type partState struct {
	healthy atomic.Bool
	next    atomic.Int64       // next offset to read
	cancel  context.CancelFunc // stops the reader; set before it starts
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
		sink:       sink,
		log:        log,
		wake:       make(chan struct{}, 1),
		partitions: make(map[topicPartition]*partState),
		stopping:   make(map[topicPartition]*partState),
		fresh:      make(map[string]bool),
	}
	t := newRouteTable(routes)
	c.table.Store(t)
	for _, topic := range t.topics {
		c.fresh[topic] = true
	}
	c.client = &kafka.Client{
		Addr: kafka.TCP(cfg.Brokers...),
		Transport: &kafka.Transport{
			ClientID:    cfg.ClientID,
			DialTimeout: cfg.DialTimeout,
			IdleTimeout: 30 * time.Second,
			MetadataTTL: cfg.MetadataInterval,
		},
	}
	m, err := newMetrics(reg, c)
	if err != nil {
		return nil, fmt.Errorf("consumer: register metrics: %w", err)
	}
	c.m = m
	return c, nil
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
// has stopped.
func (c *Consumer) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	c.log.Info("consumer starting", "brokers", c.cfg.Brokers, "topics", c.table.Load().topics, "start", c.cfg.Start)
	backoff := c.newBackoff()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-c.wake:
			t.Stop()
		}
		if ctx.Err() != nil {
			return nil
		}
		found, err := c.discover(ctx)
		if err != nil {
			c.setMetadataOK(false)
			c.m.errors.WithLabelValues("metadata").Inc()
			d := backoff.next()
			c.log.Warn("consumer: reading metadata failed; retrying", "err", err, "retry_in", d.String())
			t.Reset(d)
			continue
		}
		backoff.reset()
		for _, f := range found {
			tp := f.tp
			start := int64(kafka.FirstOffset)
			if f.fresh && c.cfg.Start == "latest" {
				start = kafka.LastOffset
			}
			pctx, cancel := context.WithCancel(ctx)
			ps := &partState{cancel: cancel}
			c.mu.Lock()
			_, routed := c.table.Load().byTopic[tp.topic]
			if routed { // not unrouted by SetRoutes since discover
				c.partitions[tp] = ps
			}
			c.mu.Unlock()
			if !routed {
				cancel()
				continue
			}
			if !f.fresh {
				c.log.Info("consumer: new partition; reading from its first offset", "topic", tp.topic, "partition", tp.partition)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.readerStopped(tp, ps)
				defer cancel()
				c.readPartition(pctx, tp, start, ps)
			}()
		}
		c.setMetadataOK(true)
		t.Reset(c.cfg.MetadataInterval)
	}
}

func (c *Consumer) setMetadataOK(ok bool) {
	c.mu.Lock()
	c.metadataOK = ok
	c.mu.Unlock()
}

// newPartition is a partition discover found without a reader. fresh says
// its topic had not been seen since it was routed.
type newPartition struct {
	tp    topicPartition
	fresh bool
}

// discover returns the partitions of routed topics that have no reader yet.
func (c *Consumer) discover(ctx context.Context) ([]newPartition, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout+5*time.Second)
	defer cancel()
	table := c.table.Load()
	md, err := c.client.Metadata(ctx, &kafka.MetadataRequest{Topics: table.topics})
	if err != nil {
		return nil, fmt.Errorf("consumer: metadata for %v: %w", table.topics, err)
	}
	var found []newPartition
	c.mu.Lock()
	defer c.mu.Unlock()
	// Routes may have changed during the request: only what is routed now
	// gets a reader, and only topics the request asked for stop being fresh.
	routed := c.table.Load().byTopic
	waiting := map[string]bool{} // topics with a partition whose old reader is still stopping
	for _, t := range md.Topics {
		if t.Error != nil {
			if !errors.Is(t.Error, kafka.UnknownTopicOrPartition) {
				c.log.Warn("consumer: topic metadata error", "topic", t.Name, "err", t.Error)
			}
			continue
		}
		if _, ok := routed[t.Name]; !ok {
			continue
		}
		for _, p := range t.Partitions {
			tp := topicPartition{t.Name, p.ID}
			_, reading := c.partitions[tp]
			_, stopping := c.stopping[tp]
			if stopping {
				waiting[t.Name] = true
			}
			if !reading && !stopping {
				found = append(found, newPartition{tp: tp, fresh: c.fresh[t.Name]})
			}
		}
	}
	for _, topic := range table.topics {
		if !waiting[topic] {
			delete(c.fresh, topic)
		}
	}
	slices.SortFunc(found, func(a, b newPartition) int {
		if a.tp.topic != b.tp.topic {
			if a.tp.topic < b.tp.topic {
				return -1
			}
			return 1
		}
		return a.tp.partition - b.tp.partition
	})
	return found, nil
}

// readPartition fetches one partition from start (an offset, or
// kafka.FirstOffset / kafka.LastOffset) until ctx ends.
func (c *Consumer) readPartition(ctx context.Context, tp topicPartition, start int64, ps *partState) {
	log := c.log.With("topic", tp.topic, "partition", tp.partition)
	pm := c.m.forPartition(tp)
	defer pm.drop()
	backoff := c.newBackoff()
	offset := start
	fail := func(op string, err error) bool {
		ps.healthy.Store(false)
		c.m.errors.WithLabelValues(op).Inc()
		d := backoff.next()
		log.Warn("consumer: request failed; retrying", "op", op, "offset", offset, "err", err, "retry_in", d.String())
		select {
		case <-time.After(d):
			return true
		case <-ctx.Done():
			return false
		}
	}
	for ctx.Err() == nil {
		if offset < 0 {
			o, err := c.resolveOffset(ctx, tp, offset)
			if err != nil {
				if ctx.Err() != nil || !fail("list_offsets", err) {
					return
				}
				continue
			}
			offset = o
			ps.next.Store(offset)
		}
		fctx, cancel := context.WithTimeout(ctx, c.cfg.FetchMaxWait+c.cfg.DialTimeout+10*time.Second)
		resp, err := c.client.Fetch(fctx, &kafka.FetchRequest{
			Topic:     tp.topic,
			Partition: tp.partition,
			Offset:    offset,
			MinBytes:  1,
			MaxBytes:  int64(c.cfg.FetchMaxBytes),
			MaxWait:   c.cfg.FetchMaxWait,
		})
		if err == nil && resp.Error != nil {
			err = resp.Error
		}
		if err != nil {
			cancel()
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, kafka.OffsetOutOfRange) {
				// The records were deleted by retention before we read
				// them: continue from the oldest one still there.
				c.m.skipped.WithLabelValues("offset_out_of_range").Inc()
				log.Warn("consumer: offset out of range; continuing from the first retained offset", "offset", offset)
				offset = kafka.FirstOffset
				continue
			}
			if !fail("fetch", err) {
				return
			}
			continue
		}
		if !ps.healthy.Load() {
			if backoff.failures > 0 {
				log.Info("consumer: partition readable again", "offset", offset)
			}
			ps.healthy.Store(true)
		}
		backoff.reset()
		offset = c.dispatch(resp, tp, offset, pm)
		cancel()
		ps.next.Store(offset)
		if resp.HighWatermark >= offset {
			pm.lag.Set(float64(resp.HighWatermark - offset))
		}
	}
}

// dispatch routes every record of resp at or after offset and returns the
// next offset to fetch.
func (c *Consumer) dispatch(resp *kafka.FetchResponse, tp topicPartition, offset int64, pm *partMetrics) int64 {
	routes := c.table.Load().byTopic[tp.topic]
	var chbuf []byte
	for {
		rec, err := resp.Records.ReadRecord()
		if err != nil {
			// io.EOF ends the batch; any other error is a truncated
			// response: fetch again from the next offset.
			if !errors.Is(err, io.EOF) {
				c.m.errors.WithLabelValues("decode").Inc()
			}
			return offset
		}
		if rec.Offset < offset {
			continue // compressed batches start before the fetch offset
		}
		offset = rec.Offset + 1
		pm.records.Inc()
		chbuf = c.route(routes, tp, rec, chbuf, "", c.sink.Deliver, true)
	}
}

// route maps one record through routes and calls deliver with a Message per
// route that gives it a valid channel (only that channel, when only is set);
// live counts the records it skips (a replay reads them a second time).
// chbuf is scratch space, returned for reuse.
func (c *Consumer) route(routes []*Route, tp topicPartition, rec *kafka.Record, chbuf []byte, only string, deliver func(*Message), live bool) []byte {
	skip := func(reason string) {
		if live {
			c.m.skipped.WithLabelValues(reason).Inc()
		}
	}
	key := readBytes(rec.Key)
	value := readBytes(rec.Value)
	fields := Fields{Topic: tp.topic, Partition: int32(tp.partition), Key: key}
	if len(rec.Headers) > 0 {
		headers := rec.Headers
		fields.Header = func(name string) ([]byte, bool) {
			for _, h := range headers {
				if h.Key == name {
					return h.Value, true
				}
			}
			return nil, false
		}
	}
	for _, r := range routes {
		var err error
		chbuf, err = r.tmpl.Append(chbuf[:0], &fields)
		if err != nil {
			skip("template")
			continue
		}
		if only != "" && string(chbuf) != only {
			continue
		}
		ch := string(chbuf)
		if !router.ValidChannel(ch) {
			skip("invalid_channel")
			continue
		}
		if r.Format == FormatJSON && !json.Valid(value) {
			skip("invalid_json")
			continue
		}
		deliver(&Message{
			Channel:   ch,
			Topic:     tp.topic,
			Partition: int32(tp.partition),
			Offset:    rec.Offset,
			Timestamp: rec.Time.UnixMilli(),
			Value:     value,
			Route:     r,
		})
	}
	return chbuf
}

func readBytes(b kafka.Bytes) []byte {
	if b == nil {
		return nil
	}
	defer b.Close()
	out := make([]byte, b.Len())
	if _, err := io.ReadFull(b, out); err != nil {
		return nil
	}
	return out
}

// resolveOffset turns kafka.FirstOffset or kafka.LastOffset into an offset.
func (c *Consumer) resolveOffset(ctx context.Context, tp topicPartition, which int64) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout+5*time.Second)
	defer cancel()
	res, err := c.client.ListOffsets(ctx, &kafka.ListOffsetsRequest{
		Topics: map[string][]kafka.OffsetRequest{tp.topic: {{Partition: tp.partition, Timestamp: which}}},
	})
	if err != nil {
		return 0, fmt.Errorf("consumer: list offsets of %s[%d]: %w", tp.topic, tp.partition, err)
	}
	for _, p := range res.Topics[tp.topic] {
		if p.Partition != tp.partition {
			continue
		}
		if p.Error != nil {
			return 0, fmt.Errorf("consumer: list offsets of %s[%d]: %w", tp.topic, tp.partition, p.Error)
		}
		if which == kafka.FirstOffset {
			return p.FirstOffset, nil
		}
		return p.LastOffset, nil
	}
	return 0, fmt.Errorf("consumer: list offsets of %s[%d]: partition missing from the response", tp.topic, tp.partition)
}

// backoff is exponential with full jitter.
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

type metrics struct {
	records       *prometheus.CounterVec
	skipped       *prometheus.CounterVec
	errors        *prometheus.CounterVec
	lag           *prometheus.GaugeVec
	replays       *prometheus.CounterVec
	replayScanned prometheus.Counter
}

type partMetrics struct {
	m       *metrics
	tp      topicPartition
	records prometheus.Counter
	lag     prometheus.Gauge
}

func (m *metrics) forPartition(tp topicPartition) *partMetrics {
	return &partMetrics{
		m:       m,
		tp:      tp,
		records: m.records.WithLabelValues(tp.topic),
		lag:     m.lag.WithLabelValues(tp.topic, strconv.Itoa(tp.partition)),
	}
}

func (pm *partMetrics) drop() {
	pm.m.lag.DeleteLabelValues(pm.tp.topic, strconv.Itoa(pm.tp.partition))
}

func newMetrics(reg prometheus.Registerer, c *Consumer) (*metrics, error) {
	m := &metrics{
		records: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kpush_consumer_records_total",
			Help: "Kafka records consumed, by topic.",
		}, []string{"topic"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kpush_consumer_records_skipped_total",
			Help: "Records not delivered, by reason (template, invalid_channel, invalid_json, offset_out_of_range).",
		}, []string{"reason"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kpush_consumer_errors_total",
			Help: "Failed Kafka requests, by operation; each is retried with backoff.",
		}, []string{"op"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kpush_consumer_lag",
			Help: "Records between the partition's high watermark and the next offset kpush reads.",
		}, []string{"topic", "partition"}),
		replays: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kpush_consumer_replays_total",
			Help: "Partition read-backs for resuming clients, by result (complete, gone, limit, stopped, no_route, ambiguous, error).",
		}, []string{"result"}),
		replayScanned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kpush_consumer_replay_records_scanned_total",
			Help: "Records read back from Kafka for resuming clients, of any channel.",
		}),
	}
	for _, col := range []prometheus.Collector{m.records, m.skipped, m.errors, m.lag, m.replays, m.replayScanned,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kpush_consumer_ready",
			Help: "1 when every routed partition is being read without error.",
		}, func() float64 {
			if c.Ready() {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kpush_consumer_partitions",
			Help: "Partitions of routed topics being read.",
		}, func() float64 {
			c.mu.Lock()
			defer c.mu.Unlock()
			return float64(len(c.partitions))
		}),
	} {
		if err := reg.Register(col); err != nil {
			return nil, err
		}
	}
	return m, nil
}
