package gateway

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/kpush/kpush/gateway/internal/netpoll"
	"github.com/kpush/kpush/router"
	"github.com/prometheus/client_golang/prometheus"
)

// The package's one server harness: every test gateway (startServer,
// startPushServer, startSecGateway, startFaultGateway) is a gateway served
// by serveGateway on a random loopback port with its own router and
// metrics registry, stopped when the test ends. Clients are real WebSocket
// clients.

// served is a running test gateway.
type served struct {
	srv  *Server
	reg  *prometheus.Registry
	addr string
	url  string     // ws:// or wss://, with the configured path
	done chan error // Serve's result; a test that takes it puts it back for the cleanup
}

// serveOptions are what some harnesses add to a plain gateway.
type serveOptions struct {
	log      *slog.Logger
	sys      netpoll.Sys // nil: the kernel's
	replayer Replayer
	before   func() // run first at cleanup, before Serve is stopped
}

func serveGateway(t testing.TB, cfg Config, o serveOptions) *served {
	t.Helper()
	cfg.Listen = "127.0.0.1:0"
	if o.sys == nil {
		o.sys = netpoll.RealSys{}
	}
	reg := prometheus.NewRegistry()
	srv, err := newServer(cfg, router.New(), reg, o.log, o.sys)
	if err != nil {
		t.Fatalf("gateway.New: %v", err)
	}
	if o.replayer != nil {
		srv.SetReplayer(o.replayer)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &served{srv: srv, reg: reg, addr: ln.Addr().String(), done: make(chan error, 1)}
	go func() { s.done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		if o.before != nil {
			o.before()
		}
		cancel()
		select {
		case <-s.done:
		case <-time.After(15 * time.Second):
			t.Errorf("gateway did not stop within 15s")
		}
	})
	<-srv.Ready()
	scheme := "ws"
	if cfg.TLS.Enabled() {
		scheme = "wss"
	}
	s.url = scheme + "://" + s.addr + srv.cfg.Path
	return s
}
