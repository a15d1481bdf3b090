package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kpush/kpush/consumer"
	"github.com/kpush/kpush/gateway"
	"github.com/kpush/kpush/gateway/web"
	"github.com/kpush/kpush/router"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// app wires the router, gateway, consumer and admin server.
type app struct {
	cfg      *Config
	log      *slog.Logger
	reg      *prometheus.Registry
	router   *router.Router
	gw       *gateway.Server
	consumer *consumer.Consumer
	reloader *reloader

	gwLn    net.Listener
	adminLn net.Listener
	admin   *http.Server

	// serving is set once Run hands the listener to the gateway.
	serving atomic.Bool

	shutdownOnce sync.Once
}

func newLogger(cfg LogConfig, w io.Writer) *slog.Logger {
	log, _ := newLeveledLogger(cfg, w)
	return log
}

// newLeveledLogger is newLogger with its level in a variable that a reload
// can change.
func newLeveledLogger(cfg LogConfig, w io.Writer) (*slog.Logger, *slog.LevelVar) {
	level := new(slog.LevelVar)
	l, _ := parseLevel(cfg.Level) // validated with the config
	level.Set(l)
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts)), level
	}
	return slog.New(slog.NewJSONHandler(w, opts)), level
}

// newApp builds kpush and binds its listeners, so their addresses are known
// (and port 0 resolved) before Run.
func newApp(cfg *Config, log *slog.Logger) (*app, error) {
	a := &app{cfg: cfg, log: log, reg: prometheus.NewRegistry(), router: router.New()}
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "kpush_build_info", Help: "Always 1; the version label says which build runs.",
		ConstLabels: prometheus.Labels{"version": version},
	}, func() float64 { return 1 }))
	var err error
	if a.gw, err = gateway.New(cfg.Gateway, a.router, a.reg, log.With("component", "gateway")); err != nil {
		return nil, err
	}
	a.gw.HandleHTTP(web.Handler(web.Config{WSPath: cfg.Gateway.Path}))
	if err := a.router.SetConfig(cfg.Router); err != nil {
		return nil, err
	}
	// The record path: consumer → router → gateway (the router's Encoder).
	a.router.SetEncoder(a.gw)
	if a.consumer, err = consumer.New(cfg.Kafka, cfg.Routes, a.router, a.reg, log.With("component", "consumer")); err != nil {
		return nil, err
	}
	a.gw.SetPublicChannels(a.consumer)
	a.gw.SetReplayer(replayer{a.consumer})
	if a.reloader, err = newReloader(cfg, a.gw, a, a.reg, log.With("component", "config")); err != nil {
		return nil, err
	}
	if a.gwLn, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	if a.adminLn, err = net.Listen("tcp", cfg.AdminListen); err != nil {
		a.gwLn.Close()
		return nil, fmt.Errorf("admin_listen: %w", err)
	}
	a.admin = &http.Server{Handler: a.adminHandler(), ReadHeaderTimeout: 5 * time.Second}
	return a, nil
}

// SetRoutes applies reloaded routes (already validated). The consumer
// compiles them: the policy every record carries, which channels are
// public, and what the router keeps retaining.
func (a *app) SetRoutes(routes []consumer.Route) error { return a.consumer.SetRoutes(routes) }

// SetRouterConfig applies reloaded `router` keys (already validated).
func (a *app) SetRouterConfig(cfg router.Config) error { return a.router.SetConfig(cfg) }

// replayer reads records back from Kafka for the gateway's resumes.
type replayer struct{ c *consumer.Consumer }

func (r replayer) Replay(ctx context.Context, ch string, p int32, after int64, emit func(*router.Record) bool) (bool, error) {
	complete, _, err := r.c.Replay(ctx, ch, p, after, emit)
	return complete, err
}

func (a *app) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{Registry: a.reg}))
	mux.HandleFunc("/healthz", healthz(a.gw.Err, a.consumer.Stalled))
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		ready, why := a.ready()
		if !ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintln(w, why)
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(a.status())
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// healthz answers the liveness probe: 503 once this pod cannot recover by
// itself, so the orchestrator restarts it and its clients move to pods that
// deliver. Two faults are this pod's own: the gateway's epoll failed (the
// process is then on its way out with a non-zero status), or a partition
// reader stopped turning while the partition is readable.
func healthz(failed func() error, stalled func() []string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := failed(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "failed:", err)
			return
		}
		if st := stalled(); len(st) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "consumer stalled: partition readers not turning: %s\n", strings.Join(st, " "))
			return
		}
		fmt.Fprintln(w, "ok")
	}
}

// ready answers /readyz: this pod can serve. Kafka faults after start-up
// are shared by every pod and show in metrics and /status instead.
func (a *app) ready() (bool, string) {
	switch {
	case a.gw.Draining():
		return false, "draining"
	case !a.serving.Load():
		return false, "not ready: the WebSocket listener is not serving yet"
	case !a.consumer.Started():
		return false, "not ready: Kafka start-up has not finished (at most kafka.ready_timeout)"
	}
	return true, "ready"
}

// statusReport is what /status answers.
type statusReport struct {
	Ready        bool   `json:"ready"`
	Readiness    string `json:"readiness"`
	KafkaStarted bool   `json:"kafka_started"`
	// Partitions counts partition readers by state.
	Partitions map[string]int `json:"partitions"`
	// NotReading lists the partitions not being read, and why.
	NotReading []consumer.PartitionStatus `json:"not_reading"`
	// Stalled lists partition readers that stopped turning (fails /healthz).
	Stalled []string `json:"stalled"`
}

func (a *app) status() *statusReport {
	ready, why := a.ready()
	s := &statusReport{Ready: ready, Readiness: why, KafkaStarted: a.consumer.Started(),
		Partitions: map[string]int{}, NotReading: []consumer.PartitionStatus{}, Stalled: a.consumer.Stalled()}
	if s.Stalled == nil {
		s.Stalled = []string{}
	}
	for _, p := range a.consumer.Status() {
		s.Partitions[p.State]++
		if p.State != consumer.StatusReading || p.Stalled {
			s.NotReading = append(s.NotReading, p)
		}
	}
	return s
}

// Run serves until ctx ends (hard stop) or Shutdown finishes draining.
func (a *app) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	start := func(name string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errs <- fmt.Errorf("%s: %w", name, err)
				cancel()
			}
		}()
	}
	start("admin", func() error { return a.admin.Serve(a.adminLn) })
	start("consumer", func() error { return a.consumer.Run(ctx) })
	start("config", func() error { a.reloader.run(ctx); return nil })
	a.serving.Store(true)
	start("gateway", func() error {
		err := a.gw.Serve(ctx, a.gwLn)
		cancel() // the gateway ending (drained) ends the rest
		return err
	})
	a.log.Info("kpush running", "version", version, "listen", a.gwLn.Addr().String(), "admin", a.adminLn.Addr().String())
	<-ctx.Done()
	shutCtx, done := context.WithTimeout(context.Background(), 5*time.Second)
	_ = a.admin.Shutdown(shutCtx)
	done()
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}

// Shutdown drains: /readyz turns 503, the listener closes, clients get 1001
// spread over gateway.drain_timeout. Run returns once that is done.
func (a *app) Shutdown(ctx context.Context) error {
	var err error
	a.shutdownOnce.Do(func() {
		err = a.gw.Shutdown(ctx)
	})
	return err
}

// configSource is where the configuration came from: a file (path and its
// content at start-up), or the embedded one (path "").
type configSource struct {
	path string
	data []byte
}

// serve runs kpush until SIGTERM or SIGINT, then drains and returns. SIGHUP
// reloads the configuration file.
func serve(cfg *Config, src configSource, dev *devOptions, out io.Writer) error {
	log, level := newLeveledLogger(cfg.Log, os.Stderr)
	// SIGHUP's default action ends the process: ignore it until the
	// reloader takes it.
	signal.Ignore(syscall.SIGHUP)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if dev != nil {
		stopDev, err := startDev(ctx, cfg, dev, log)
		if err != nil {
			return err
		}
		defer stopDev()
	}
	a, err := newApp(cfg, log)
	if err != nil {
		return err
	}
	a.reloader.watch(src.path, src.data, level)
	signal.Notify(a.reloader.hup, syscall.SIGHUP)
	defer signal.Stop(a.reloader.hup)
	if dev != nil {
		printDevBanner(out, a)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	runErr := make(chan error, 1)
	go func() { runErr <- a.Run(ctx) }()
	select {
	case err := <-runErr:
		return err
	case sig := <-sigs:
		log.Info("signal received; draining", "signal", sig.String(), "window", cfg.Gateway.DrainTimeout.String())
	}
	// A second signal stops at once.
	drainCtx, drainDone := context.WithTimeout(ctx, cfg.Gateway.DrainTimeout+10*time.Second)
	go func() {
		select {
		case <-sigs:
			log.Warn("second signal; stopping without finishing the drain")
			drainDone()
		case <-drainCtx.Done():
		}
	}()
	if err := a.Shutdown(drainCtx); err != nil && !errors.Is(err, context.Canceled) {
		log.Warn("drain did not finish", "err", err)
	}
	drainDone()
	err = <-runErr
	log.Info("kpush stopped")
	return err
}
