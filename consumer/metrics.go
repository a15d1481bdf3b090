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
			Help: "Failed Kafka requests, by operation (metadata, list_offsets, fetch, decode); each is retried with backoff. It rises while a broker is unreachable.",
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
	m.skipTemplate = m.skipped.WithLabelValues("template")
	m.skipChannel = m.skipped.WithLabelValues("invalid_channel")
	m.skipJSON = m.skipped.WithLabelValues("invalid_json")
	m.skipRead = m.skipped.WithLabelValues("read_error")
	m.errMetadata = m.errors.WithLabelValues("metadata")
	m.errDecode = m.errors.WithLabelValues("decode")
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
