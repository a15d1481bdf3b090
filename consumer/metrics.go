package consumer

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	records *prometheus.CounterVec
	skipped *prometheus.CounterVec
	errors  *prometheus.CounterVec
	lag     *prometheus.GaugeVec
	resets  *prometheus.CounterVec
	fetches prometheus.Counter
	// fetchSessionResets counts fetch sessions a broker dropped.
	fetchSessionResets prometheus.Counter
	// epochChecks counts OffsetForLeaderEpoch questions by result.
	epochChecks *prometheus.CounterVec

	replays       *prometheus.CounterVec
	replayScanned prometheus.Counter

	// Children resolved once, for the per-record and retry paths.
	skipTemplate, skipChannel, skipJSON, skipRead prometheus.Counter
	errMetadata, errDecode                        prometheus.Counter
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
			Help: "Records not delivered, by reason: template (a placeholder had no value), invalid_channel, invalid_json, offset_out_of_range (deleted by retention before kpush read them).",
		}, []string{"reason"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kpush_consumer_errors_total",
			Help: "Failed Kafka requests, by operation (metadata, list_offsets, fetch, offset_for_leader_epoch, decode); each is retried with backoff. It rises while a broker is unreachable.",
		}, []string{"op"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kpush_consumer_lag",
			Help: "Records between the partition's high watermark and the next offset kpush reads.",
		}, []string{"topic", "partition"}),
		fetches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kpush_consumer_fetch_requests_total",
			Help: "Fetch requests sent to brokers (live reads and resume read-backs). While idle, each partition is fetched about once per kafka.fetch_max_wait.",
		}),
		fetchSessionResets: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kpush_consumer_fetch_session_resets_total",
			Help: "Fetch sessions (KIP-227) a broker no longer knew (FETCH_SESSION_ID_NOT_FOUND, INVALID_FETCH_SESSION_EPOCH: evicted, or the broker restarted); each is followed at once by a full fetch.",
		}),
		resets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kpush_consumer_resets_total",
			Help: "Partition logs found to have gone back under kpush, by reason: truncated (the log ends before the next offset, e.g. after an unclean leader election), recreated (the topic was deleted and created again), leader_epoch (the leader's log diverged from the delivered one: OffsetForLeaderEpoch, KIP-320). Offsets after a reset may repeat ones delivered before.",
		}, []string{"reason"}),
		epochChecks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kpush_consumer_epoch_checks_total",
			Help: "Checks that a partition's log still matches the delivered one after its leadership may have changed (OffsetForLeaderEpoch), by result: same, diverged, error (retried).",
		}, []string{"result"}),
		replays: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kpush_consumer_replays_total",
			Help: "Partition read-backs for resuming clients, by result (complete, gone, reset, limit, stopped, no_route, ambiguous, error).",
		}, []string{"result"}),
		replayScanned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kpush_consumer_replay_records_scanned_total",
			Help: "Records read back from Kafka for resuming clients, of any channel.",
		}),
	}
	m.skipTemplate = m.skipped.WithLabelValues("template")
	m.skipChannel = m.skipped.WithLabelValues("invalid_channel")
	m.skipJSON = m.skipped.WithLabelValues("invalid_json")
	m.skipRead = m.skipped.WithLabelValues("read_error")
	m.errMetadata = m.errors.WithLabelValues("metadata")
	m.errDecode = m.errors.WithLabelValues("decode")
	for _, col := range []prometheus.Collector{m.records, m.skipped, m.errors, m.lag, m.resets, m.epochChecks, m.fetches, m.fetchSessionResets, m.replays, m.replayScanned,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kpush_consumer_ready",
			Help: "1 when every routed partition is being read without error; 0 while any is starting, failing or deleted (see kpush_consumer_partitions{state} and /status). Not part of readiness.",
		}, func() float64 {
			if c.Ready() {
				return 1
			}
			return 0
		}),
		partitionsCollector{c},
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kpush_consumer_stalled_partitions",
			Help: "Partition readers whose loop has not turned for longer than any Kafka request or backoff can take: a fault of this pod, not of Kafka. Non-zero fails /healthz (liveness).",
		}, func() float64 { return float64(len(c.Stalled())) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kpush_consumer_started",
			Help: "1 once Kafka start-up has finished (every partition known at start answered a fetch) or kafka.ready_timeout passed.",
		}, func() float64 {
			if c.Started() {
				return 1
			}
			return 0
		}),
	} {
		if err := reg.Register(col); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// partitionsCollector exposes kpush_consumer_partitions{state}: the
// partition readers by state, counted when scraped.
type partitionsCollector struct{ c *Consumer }

var partitionsDesc = prometheus.NewDesc("kpush_consumer_partitions",
	"Partitions of routed topics with a reader, by state: starting (no fetch answered yet), reading, error (requests failing, retried), deleted (the topic was deleted; read from its first offset if created again).",
	[]string{"state"}, nil)

func (p partitionsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- partitionsDesc }

func (p partitionsCollector) Collect(ch chan<- prometheus.Metric) {
	var n [len(statuses)]int
	p.c.mu.Lock()
	for _, ps := range p.c.partitions {
		n[ps.st.Load()]++
	}
	p.c.mu.Unlock()
	for i, st := range statuses {
		ch <- prometheus.MustNewConstMetric(partitionsDesc, prometheus.GaugeValue, float64(n[i]), st)
	}
}
