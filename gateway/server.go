package gateway

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/kpush/kpush/gateway/auth"
	"github.com/kpush/kpush/router"
	"github.com/prometheus/client_golang/prometheus"
)

// Server accepts WebSocket connections, serves protocol v1 on them and
// writes routed frames to their subscribers.
//
// Its fields here are the sessions' half, the same on every system: what
// subscribe, resume, authorization and the slow-consumer policy read
// (session.go). The transport's half (netState: the listener, the pollers,
// the registry, the workers) is Linux-only (server_linux.go).
type Server struct {
	// cfg is the configuration given to New. Its live-changeable keys are
	// only the starting values: read those through lim().
	cfg    Config
	limits atomic.Pointer[Limits] // replaced whole by SetLimits
	router *router.Router
	log    *slog.Logger

	metrics      *metrics
	policy       policyCounters // the outbound queues' counters, on metrics
	clock        atomic.Int64   // coarse time in Unix ms, advanced by the ticker
	socketWrites atomic.Int64   // write calls on client sockets (kpush_socket_writes_total)
	deflateConns atomic.Int64   // plain-ws connections that negotiated permessage-deflate (deflate.go)
	deflated     atomic.Int64   // records compressed (kpush_deflated_records_total)
	cfPushes     *cfPushCache   // Centrifugo forms of the records being pushed (centrifugo_proto.go)
	draining     atomic.Bool

	// Security (security.go, security_linux.go, tls_linux.go); set by New,
	// read-only while serving, except public (replaced by
	// SetPublicChannels).
	tlsConfig *tls.Config // nil: plain ws
	certs     *certStore
	verifier  *auth.Verifier // nil: auth.mode none
	public    atomic.Pointer[PublicChannels]
	perIP     *ipLimiter
	slots     atomic.Int64 // connections open or past the max_connections check

	replayer      Replayer        // nil: resumes beyond the history fail
	resumeQ       chan *resumeJob // read-backs waiting for the resume pool
	resumeShares  *resumeShares   // places in resumeQ per client address
	resumePending atomic.Int64    // read-backs queued or running

	netState // the transport's half (server_linux.go)
}

// newCore returns a Server with its sessions' half built: configuration,
// limits, metrics, token verification and the resume queue. The transport's
// half is left empty; New fills it on Linux. Unit tests drive sessions on a
// Server from newCore, on any system.
func newCore(cfg Config, rt *router.Router, reg prometheus.Registerer, log *slog.Logger) (*Server, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if rt == nil {
		return nil, errors.New("gateway: nil router")
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	s := &Server{
		cfg:      cfg,
		router:   rt,
		log:      log,
		resumeQ:  make(chan *resumeJob, cfg.ResumeQueue),
		cfPushes: newCFPushCache(),
	}
	s.resumeShares = newResumeShares(cfg.ResumeQueue, cfg.MaxConnectionsPerIP > 0)
	s.clock.Store(time.Now().UnixMilli())
	lim := cfg.Limits()
	s.limits.Store(&lim)
	m, err := newMetrics(reg, s)
	if err != nil {
		return nil, fmt.Errorf("gateway: register metrics: %w", err)
	}
	s.metrics = m
	s.policy = policyCounters{
		compactions: m.slowConsumers.WithLabelValues("conflate"),
		abandoned:   m.slowConsumers.WithLabelValues("abandon_resume"),
		conflated:   m.conflated,
		snapshots:   m.snapshots,
	}
	if err := s.initSecurity(reg); err != nil {
		return nil, err
	}
	return s, nil
}

// SetReplayer sets where resumes older than the in-memory history are read
// back from (Kafka). Without one they answer recovered:false. Call before Run.
func (s *Server) SetReplayer(r Replayer) { s.replayer = r }

// Draining reports whether Shutdown has begun.
func (s *Server) Draining() bool { return s.draining.Load() }

// SetLimits applies the live-changeable keys of cfg (see Limits) to the
// running server and ignores the others. cfg is defaulted and validated
// first; an invalid cfg changes nothing. Safe to call concurrently with
// everything else.
func (s *Server) SetLimits(cfg Config) error {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	lim := cfg.Limits()
	s.limits.Store(&lim)
	return nil
}

// lim returns the limits in force.
func (s *Server) lim() *Limits { return s.limits.Load() }

// Encode is the router's Encoder (router.SetEncoder): it encodes rec once
// as a msg frame and, when a connection negotiated permessage-deflate and
// the frame is large enough, marks it compressible: the first of those
// connections that takes it compresses it, once for all of them
// (deflate.go).
func (s *Server) Encode(rec *router.Record) *router.Frame {
	f := EncodeRecord(rec)
	if s.deflateConns.Load() > 0 && len(f.Payload) >= s.cfg.CompressionMinBytes {
		f.Deflated = new(router.Lazy)
	}
	return f
}

var _ router.Encoder = (*Server)(nil)

// Publish publishes m through the router as a record of a route with m's
// settings and keep (nil for nothing retained), encoded by Encode: how
// tests and tools without a consumer publish. It returns the number of
// connections that accepted it. A record nobody subscribes to and nothing
// retains is not encoded at all.
func (s *Server) Publish(m *Message, keep *router.Retention) int {
	return s.router.PublishRecord(m.record(keep), s)
}
