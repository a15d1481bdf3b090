package consumer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kpush/kpush/router"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
)

// epochs hands out continuity epochs; 0 is never used.
var epochs atomic.Uint64

// nextEpoch returns a continuity epoch never returned before.
func nextEpoch() uint64 { return epochs.Add(1) }

// Destination is where the consumer hands routed records: in kpush, the
// router (*router.Router satisfies it).
//
// Deliver is called from one goroutine per partition, in offset order
// within a partition, and must not block. The Record and its Value are
// reused for the next record of the partition once Deliver returns: a
// Destination that keeps either past the call must copy it (the router's
// encoder copies the value into the frame it builds during the call).
//
// DropRetention is called by SetRoutes, never concurrently with itself,
// with the router.Retention of every route a reload removed or changed, so
// what is retained of their channels goes; a record of such a route still
// being delivered may carry it afterwards.
type Destination interface {
	Deliver(rec *router.Record)
	DropRetention(keeps ...*router.Retention)
}

// Consumer reads every partition of the routed topics.
type Consumer struct {
	cfg   Config
	table atomic.Pointer[Routes] // replaced whole by SetRoutes
	dest  Destination
	// routesMu serialises SetRoutes: it hands one table's Retentions to
	// the next and drops the others.
	routesMu sync.Mutex
	log      *slog.Logger
	m        *metrics
	wake     chan struct{} // asks Run to read metadata now (routes changed)
	// committed is kafka.isolation == read_committed.
	committed bool

	// kc is the kafka-go client in use; SetRoutes replaces it when the set
	// of routed topics changes (its metadata cache holds those topics only).
	kc atomic.Pointer[kafkaClient]
	// base is the parent context of every client's transport; Run cancels
	// it (baseStop) when it returns, ending their background goroutines.
	base     context.Context
	baseStop context.CancelFunc

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
	// gone holds routed topics being read that metadata says no longer
	// exist (deleted); logged once when they go and once when they return.
	gone map[string]bool

	// runStart is when Run began (Unix nanoseconds, 0 before); started
	// latches once start-up has finished (see Started).
	runStart atomic.Int64
	started  atomic.Bool
	// stallLimit, when set (tests), replaces stallAfter's bound.
	stallLimit time.Duration
	// leaders maps each partition of the routed topics to the broker that
	// leads it, as the last metadata read said; groups has the fetch group
	// of each such broker (see fetchGroup). Guarded by mu.
	leaders map[topicPartition]int
	groups  map[int]*fetchGroup
	// retired holds clients replaced by SetRoutes until requests begun on
	// them have ended (Run closes them). Guarded by mu.
	retired []*kafkaClient

	resetMu sync.Mutex // guards resetBelow
	// resetBelow is, per partition, the highest next offset of a log that
	// was replaced (truncated, or its topic recreated): positions below it
	// may name records of the old log, so Replay refuses them.
	resetBelow map[topicPartition]int64
}

type topicPartition struct {
	topic     string
	partition int
}

// Partition reader states, the label values of kpush_consumer_partitions
// and the status endpoint's "state".
const (
	// StatusStarting: no fetch has been answered yet.
	StatusStarting = "starting"
	// StatusReading: the last fetch was answered.
	StatusReading = "reading"
	// StatusError: requests for the partition are failing (broker
	// unreachable, no leader, ...); retried with backoff.
	StatusError = "error"
	// StatusDeleted: the partition's topic was deleted; it is read from its
	// first offset if it is created again.
	StatusDeleted = "deleted"
)

// statuses are the states in the order of their numbers in partState.
var statuses = [...]string{StatusStarting, StatusReading, StatusError, StatusDeleted}

// partState is what readiness, metrics and the status endpoint know of one
// partition reader. Written by the reader, read by anyone.
type partState struct {
	st     atomic.Int32 // index into statuses
	since  atomic.Int64 // Unix nanoseconds of the last change of st
	beat   atomic.Int64 // Unix nanoseconds the reader's loop last turned
	err    atomic.Pointer[string]
	next   atomic.Int64       // next offset to read
	cancel context.CancelFunc // stops the reader; set before it starts
}

func newPartState(cancel context.CancelFunc) *partState {
	ps := &partState{cancel: cancel}
	now := time.Now().UnixNano()
	ps.since.Store(now)
	ps.beat.Store(now)
	ps.next.Store(-1)
	return ps
}

func (ps *partState) status() string { return statuses[ps.st.Load()] }

// set records the reader's state and, for StatusError, why.
func (ps *partState) set(status string, err error) {
	n := int32(slices.Index(statuses[:], status))
	if err != nil {
		msg := err.Error()
		ps.err.Store(&msg)
	} else {
		ps.err.Store(nil)
	}
	if ps.st.Swap(n) != n {
		ps.since.Store(time.Now().UnixNano())
	}
}

// New returns a Consumer that reads the topics of routes and hands their
// records to dest. routes are compiled (CompileRoutes) and not kept.
func New(cfg Config, routes []Route, dest Destination, reg prometheus.Registerer, log *slog.Logger) (*Consumer, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	t, err := CompileRoutes(routes)
	if err != nil {
		return nil, err
	}
	if dest == nil {
		return nil, errors.New("consumer: nil destination")
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	c := &Consumer{
		cfg:        cfg,
		committed:  cfg.Isolation == ReadCommitted,
		dest:       dest,
		log:        log,
		wake:       make(chan struct{}, 1),
		partitions: make(map[topicPartition]*partState),
		stopping:   make(map[topicPartition]*partState),
		fresh:      make(map[string]bool),
		gone:       make(map[string]bool),
		leaders:    make(map[topicPartition]int),
		groups:     make(map[int]*fetchGroup),
		resetBelow: make(map[topicPartition]int64),
	}
	c.table.Store(t)
	for _, topic := range t.topics {
		c.fresh[topic] = true
	}
	m, err := newMetrics(reg, c)
	if err != nil {
		return nil, fmt.Errorf("consumer: register metrics: %w", err)
	}
	c.m = m
	c.base, c.baseStop = context.WithCancel(context.Background())
	c.kc.Store(c.newClient(t.topics))
	return c, nil
}

// kafkaClient is a kafka-go client with its own transport: connections
// (one per concurrent request to each broker) and a metadata cache of the
// routed topics.
type kafkaClient struct {
	*kafka.Client
	transport *kafka.Transport
	topics    string             // the routed topics it caches, sorted, joined by ","
	stop      context.CancelFunc // ends the transport's background goroutines
	retireAt  time.Time          // set when retired: no request begun before can still run
}

// newClient returns a client whose metadata cache holds topics only, so
// kpush never asks for the whole cluster's metadata. The transport answers
// Metadata requests from the cache and refreshes it at random times less
// than MetadataTTL apart: discover reads it every half interval, so a
// routed topic or partition that appears is read within metadata_interval
// (plus one round trip), and fetches route to leaders through the same
// cache. Its goroutines stop when Run returns.
func (c *Consumer) newClient(topics []string) *kafkaClient {
	ctx, stop := context.WithCancel(c.base)
	sorted := slices.Sorted(slices.Values(topics))
	t := &kafka.Transport{
		ClientID:       c.cfg.ClientID,
		DialTimeout:    c.cfg.DialTimeout,
		IdleTimeout:    30 * time.Second,
		MetadataTTL:    c.cfg.MetadataInterval / 2,
		MetadataTopics: sorted,
		Context:        ctx,
	}
	return &kafkaClient{
		Client:    &kafka.Client{Addr: kafka.TCP(c.cfg.Brokers...), Transport: t},
		transport: t,
		topics:    strings.Join(sorted, ","),
		stop:      stop,
	}
}

// close ends the client's goroutines and connections.
func (k *kafkaClient) close() {
	k.stop()
	k.transport.CloseIdleConnections()
}

// useTopicsLocked switches to a client caching topics if the current one caches
// others. The old one is closed by Run once every request that may have
// begun on it has reached its deadline. Caller holds c.mu.
func (c *Consumer) useTopicsLocked(topics []string) {
	if strings.Join(slices.Sorted(slices.Values(topics)), ",") == c.kc.Load().topics {
		return
	}
	old := c.kc.Swap(c.newClient(topics))
	// The longest request deadline: a fetch (fetch_max_wait + dial_timeout
	// + 10s); a replay's or a listing's is shorter.
	old.retireAt = time.Now().Add(c.cfg.FetchMaxWait + c.cfg.DialTimeout + 15*time.Second)
	c.retired = append(c.retired, old)
}

// closeRetired closes the retired clients whose requests have all ended,
// or all of them.
func (c *Consumer) closeRetired(all bool) {
	c.mu.Lock()
	var done []*kafkaClient
	keep := c.retired[:0]
	for _, k := range c.retired {
		if all || time.Now().After(k.retireAt) {
			done = append(done, k)
		} else {
			keep = append(keep, k)
		}
	}
	c.retired = keep
	c.mu.Unlock()
	for _, k := range done {
		k.close()
	}
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
		if p.status() != StatusReading {
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
	c.runStart.Store(time.Now().UnixNano())
	defer func() {
		c.closeRetired(true)
		c.kc.Load().close()
		c.baseStop()
	}()
	defer wg.Wait()
	c.log.Info("consumer starting", "brokers", c.cfg.Brokers, "topics", c.table.Load().topics, "start", c.cfg.Start, "isolation", c.cfg.Isolation)
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
		c.closeRetired(false)
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
		for _, f := range found {
			tp := f.tp
			start := int64(kafka.FirstOffset)
			if f.fresh && c.cfg.Start == "latest" {
				start = kafka.LastOffset
			}
			pctx, cancel := context.WithCancel(ctx)
			ps := newPartState(cancel)
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
			r := c.newPartReader(tp, ps)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.readerStopped(tp, ps)
				defer cancel()
				r.run(pctx, start)
			}()
		}
		c.startGroups(ctx, &wg)
		c.setMetadataOK(true)
		t.Reset(c.cfg.MetadataInterval / 2)
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
	md, err := c.kc.Load().Metadata(ctx, &kafka.MetadataRequest{Topics: table.topics})
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
	// known: topics the answer says exist, or do not exist. A topic with
	// another error (no leader yet, ...) stays fresh, so a start-up
	// metadata error never makes start: latest read it from its beginning.
	known := map[string]bool{}
	for _, t := range md.Topics {
		if t.Error == nil || errors.Is(t.Error, kafka.UnknownTopicOrPartition) {
			known[t.Name] = true
		}
		if t.Error != nil {
			if !errors.Is(t.Error, kafka.UnknownTopicOrPartition) {
				c.log.Warn("consumer: topic metadata error", "topic", t.Name, "err", t.Error)
			} else if !c.gone[t.Name] && c.readingLocked(t.Name) {
				c.gone[t.Name] = true
				c.log.Warn("consumer: routed topic deleted; its partitions are not read until it is created again, then from their first offset", "topic", t.Name)
			}
			continue
		}
		if _, ok := routed[t.Name]; !ok {
			continue
		}
		if c.gone[t.Name] {
			delete(c.gone, t.Name)
			c.log.Info("consumer: routed topic created again; reading it from its first offset", "topic", t.Name)
		}
		for _, p := range t.Partitions {
			tp := topicPartition{t.Name, p.ID}
			if p.Error == nil && p.Leader.Host != "" {
				c.leaders[tp] = p.Leader.ID
			} else {
				delete(c.leaders, tp)
			}
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
		if known[topic] && !waiting[topic] {
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

// startGroups starts a fetch group for every broker that leads a routed
// partition and has none yet; wg tracks their goroutines.
func (c *Consumer) startGroups(ctx context.Context, wg *sync.WaitGroup) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, leader := range c.leaders {
		if _, ok := c.groups[leader]; ok {
			continue
		}
		g := newFetchGroup(c, leader)
		c.groups[leader] = g
		wg.Add(1)
		go func() {
			defer wg.Done()
			g.run(ctx)
		}()
	}
}

// groupOf returns the fetch group of tp's leader, or nil if it is not
// known yet.
func (c *Consumer) groupOf(tp topicPartition) *fetchGroup {
	c.mu.Lock()
	defer c.mu.Unlock()
	leader, ok := c.leaders[tp]
	if !ok {
		return nil
	}
	return c.groups[leader]
}

// readingLocked reports whether topic has partition readers. Caller holds
// c.mu.
func (c *Consumer) readingLocked(topic string) bool {
	for tp := range c.partitions {
		if tp.topic == topic {
			return true
		}
	}
	return false
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

// peek is the most the next delay can be.
func (b *backoff) peek() time.Duration {
	d := b.min << min(b.failures, 20)
	if d > b.max || d <= 0 {
		d = b.max
	}
	return d
}

// noteReset records that tp's log was replaced while from was its next
// offset.
func (c *Consumer) noteReset(tp topicPartition, from int64) {
	c.resetMu.Lock()
	defer c.resetMu.Unlock()
	if from > c.resetBelow[tp] {
		c.resetBelow[tp] = from
	}
}

// resetAbove reports whether a read-back of tp from offset may span a
// reset: offset-1 (the client's position) was below the old log's next
// offset, so the client may hold a record of the old log.
func (c *Consumer) resetAbove(tp topicPartition, offset int64) bool {
	c.resetMu.Lock()
	defer c.resetMu.Unlock()
	below, ok := c.resetBelow[tp]
	return ok && offset <= below
}

// topicGone reports whether the cluster's metadata says topic does not
// exist. Metadata errors count as "not known to be gone".
func (c *Consumer) topicGone(ctx context.Context, topic string) bool {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout+5*time.Second)
	defer cancel()
	md, err := c.kc.Load().Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return false
	}
	for _, t := range md.Topics {
		if t.Name == topic {
			return errors.Is(t.Error, kafka.UnknownTopicOrPartition)
		}
	}
	return true
}
