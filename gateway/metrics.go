package gateway

import (
	"sync/atomic"

	"github.com/gobwas/ws"
	"github.com/kpush/kpush/router"
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	handshakes    *prometheus.CounterVec
	rejected      *prometheus.CounterVec
	clientErrors  *prometheus.CounterVec
	closes        *prometheus.CounterVec
	slowConsumers *prometheus.CounterVec
	latency       prometheus.Histogram
	resumes       *prometheus.CounterVec
	resumeRecords *prometheus.CounterVec
	snapshots     prometheus.Counter
	conflated     prometheus.Counter
	sseHandshakes *prometheus.CounterVec // kpush_handshakes_total{protocol="sse"}
	cfHandshakes  *prometheus.CounterVec // kpush_handshakes_total{protocol="centrifugo"}
	sseConns      atomic.Int64           // open event streams, among the registry's connections
	cfConns       atomic.Int64           // open Centrifugo connections, likewise
}

// handshakesOf is kpush_handshakes_total of a WebSocket upgrade: protocol
// v1, or the Centrifugo client protocol (cf).
func (m *metrics) handshakesOf(cf bool) *prometheus.CounterVec {
	if cf {
		return m.cfHandshakes
	}
	return m.handshakes
}

func newMetrics(reg prometheus.Registerer, s *Server) (*metrics, error) {
	m := &metrics{
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "kpush_handshakes_total",
			Help:        "Handshakes (WebSocket upgrades, event stream requests) by protocol (v1, centrifugo, sse) and result (ok, rejected, failed).",
			ConstLabels: prometheus.Labels{"protocol": "v1"},
		}, []string{"result"}),
		sseHandshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "kpush_handshakes_total",
			Help:        "Handshakes (WebSocket upgrades, event stream requests) by protocol (v1, centrifugo, sse) and result (ok, rejected, failed).",
			ConstLabels: prometheus.Labels{"protocol": "sse"},
		}, []string{"result"}),
		cfHandshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "kpush_handshakes_total",
			Help:        "Handshakes (WebSocket upgrades, event stream requests) by protocol (v1, centrifugo, sse) and result (ok, rejected, failed).",
			ConstLabels: prometheus.Labels{"protocol": "centrifugo"},
		}, []string{"result"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kpush_rejected_total",
			Help: "Connections and requests refused by a limit or policy, by reason.",
		}, []string{"reason"}),
		clientErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kpush_client_errors_total",
			Help: "Bad client input by kind: protocol error codes and frame violations.",
		}, []string{"code"}),
		closes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kpush_connection_closes_total",
			Help: "Connections closed by the server, by close reason.",
		}, []string{"reason"}),
		slowConsumers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kpush_slow_consumers_total",
			Help: "Outbound queue overflows, by the policy applied (disconnect: closed with 4008; conflate: queue compacted to the newest record per channel; abandon_resume: live records held during a resume overflowed, the resume answers recovered:false).",
		}, []string{"policy"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kpush_delivery_latency_seconds",
			Help:    "Time from a record's Kafka timestamp to its write to a client socket, sampled once per socket write.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1, 2.5, 5},
		}),
		resumes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kpush_resumes_total",
			Help: "Channels resumed from a client position, by source (memory: the in-memory history; kafka: read back) and result (recovered, not_recovered).",
		}, []string{"source", "result"}),
		resumeRecords: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kpush_resume_records_total",
			Help: "Records sent to resuming clients, by source (memory, kafka).",
		}, []string{"source"}),
		snapshots: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kpush_snapshots_total",
			Help: "Last-value snapshots sent (on subscribe with snapshot, or after a resume that could not be complete).",
		}),
		conflated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kpush_conflated_total",
			Help: "Records dropped for slow connections on slow: conflate routes (clients see them as \"skipped\").",
		}),
	}
	cs := []prometheus.Collector{m.handshakes, m.sseHandshakes, m.cfHandshakes, m.rejected, m.clientErrors, m.closes, m.slowConsumers, m.latency,
		m.resumes, m.resumeRecords, m.snapshots, m.conflated,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kpush_resume_pending",
			Help: "Resume read-backs from Kafka queued or running.",
		}, func() float64 { return float64(s.resumePending.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kpush_history_records",
			Help: "Records held in the per-channel in-memory histories.",
		}, func() float64 { return float64(s.router.Stats().HistoryFrames) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kpush_history_bytes",
			Help: "Bytes of records held in the per-channel in-memory histories.",
		}, func() float64 { return float64(s.router.Stats().HistoryBytes) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kpush_retained_bytes",
			Help: "Estimated memory of every channel's snapshot and history, bounded by router.max_retained_bytes.",
		}, func() float64 { return float64(s.router.Stats().RetainedBytes) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "kpush_connections",
			Help:        "Open connections by protocol (v1: WebSocket protocol v1, centrifugo: Centrifugo client protocol, sse: event streams).",
			ConstLabels: prometheus.Labels{"protocol": "v1"},
		}, func() float64 { return float64(int64(s.Connections()) - m.sseConns.Load() - m.cfConns.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "kpush_connections",
			Help:        "Open connections by protocol (v1: WebSocket protocol v1, centrifugo: Centrifugo client protocol, sse: event streams).",
			ConstLabels: prometheus.Labels{"protocol": "centrifugo"},
		}, func() float64 { return float64(m.cfConns.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "kpush_connections",
			Help:        "Open connections by protocol (v1: WebSocket protocol v1, centrifugo: Centrifugo client protocol, sse: event streams).",
			ConstLabels: prometheus.Labels{"protocol": "sse"},
		}, func() float64 { return float64(m.sseConns.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kpush_subscriptions",
			Help: "Current (connection, channel) subscriptions.",
		}, func() float64 { return float64(s.router.Stats().Subscriptions) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kpush_channels",
			Help: "Channels with subscribers or a retained snapshot.",
		}, func() float64 { return float64(s.router.Stats().Channels) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "kpush_published_total",
			Help: "Frames published to the router (one per routed record).",
		}, func() float64 { return float64(s.router.Stats().Published) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "kpush_deliveries_total",
			Help: "Frames queued to connections (one per subscriber per record).",
		}, func() float64 { return float64(s.router.Stats().Deliveries) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "kpush_socket_writes_total",
			Help: "Write calls on client sockets (one writev, or one TLS flush, each); kpush_deliveries_total over this is the frames per write.",
		}, func() float64 { return float64(s.socketWrites.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "kpush_deflated_records_total",
			Help: "Records compressed with permessage-deflate (once each, however many subscribers share the compressed frame).",
		}, func() float64 { return float64(s.deflated.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "kpush_queue_full_total",
			Help: "Deliveries refused because a connection's outbound queue was full or closing.",
		}, func() float64 { return float64(s.router.Stats().QueueFull) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kpush_draining",
			Help: "1 while the gateway drains connections before shutdown.",
		}, func() float64 {
			if s.draining.Load() {
				return 1
			}
			return 0
		}),
	}
	for why := router.EvictReason(0); why < router.NumEvictReasons; why++ {
		cs = append(cs, prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "kpush_retained_evictions_total",
			Help:        "Channels whose snapshot and history were dropped, by reason (max_age: no subscriber and no record for router.max_age; route_removed: reload; budget: router.max_retained_bytes).",
			ConstLabels: prometheus.Labels{"reason": why.String()},
		}, func() float64 { return float64(s.router.Stats().Evicted[why]) }))
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// closeReason is the metric label for a close code.
func closeReason(code ws.StatusCode) string {
	switch code {
	case ws.StatusNormalClosure:
		return "normal"
	case ws.StatusGoingAway:
		return "going_away"
	case ws.StatusProtocolError:
		return "protocol_error"
	case ws.StatusUnsupportedData:
		return "binary_frame"
	case ws.StatusInvalidFramePayloadData:
		return "invalid_utf8"
	case ws.StatusPolicyViolation:
		return "policy"
	case ws.StatusMessageTooBig:
		return "message_too_big"
	case ws.StatusInternalServerError:
		return "internal"
	case CloseTokenExpired, cfCloseExpired:
		return "token_expired"
	case cfCloseInvalidToken:
		return "invalid_token"
	case cfCloseBadRequest:
		return "bad_request"
	case CloseSlowConsumer:
		return "slow_consumer"
	case ws.StatusNoStatusRcvd:
		return "no_status"
	}
	return "other"
}
