// Command kpush-bench measures kpush at scale: it holds many WebSocket
// connections in one process, produces records to Kafka, and measures every
// delivery from the record's send time to its receipt, next to kpush's own
// CPU seconds, RSS and goroutines read from kpush's /metrics.
//
// By default it starts everything it needs: an embedded Kafka-protocol
// broker (kfake) in its own process, and for each scenario a fresh kpush
// process from a built binary (-kpush-bin, or built from ./cmd/kpush), so
// that kpush's CPU and memory figures are its own. -kafka points it at a
// real Kafka instead, and -kpush-ws with -kpush-admin at a running kpush.
//
//	kpush-bench                          every scenario at full size (make bench)
//	kpush-bench -quick                   every scenario, small (make bench-quick)
//	kpush-bench -scenarios idle -idle-steps 1000,5000,15000
//	kpush-bench -scenarios fanout -fanout-subs 10000 -fanout-rates 50,100,200
//	kpush-bench -json results.json      also write machine-readable results
//	kpush-bench -scenarios idle,fanout -protocol sse   clients on Centrifugo's protocol or SSE
//
// Scenarios: idle (memory and goroutines per idle connection), fanout (one
// channel, many subscribers, rising rates), market (many connections, each
// on several Zipf-popular symbols), handshake (upgrades per second, and a
// reconnect storm). After fan-out and market a plain writev loop over as
// many sockets gives what this machine's kernel allows, and each step is
// also reported as a ratio of it (kernel_linux.go). See cmd/kpush-bench/README.md
// for the results and how each is measured.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kpush/kpush/cmd/kpush-bench/internal/wsload"
)

// options are the command-line flags.
type options struct {
	scenarios     []string
	quick         bool
	kpushBin      string
	kpushWS       string
	kpushAdmin    string
	kafka         string
	topic         string
	channelPrefix string
	out           string
	jsonPath      string
	loops         int
	srcAddrs      int
	inFlight      int
	profile       bool
	kpushEnv      envList
	snapshot      bool
	history       int
	slow          string
	kpushCPUs     string
	deflate       bool          // clients offer permessage-deflate; a started kpush accepts it
	deflateMin    int           // a started kpush's gateway.compression_min_bytes
	writeDelay    time.Duration // a started kpush's gateway.write_delay
	maxRate       float64       // a started kpush's routes[].max_rate
	kernelLoop    time.Duration // the plain writev loop's time per frames-per-write figure; 0: none
	protocol      string        // idle and fanout: v1, centrifugo or sse
	protocolPath  string        // the path of -protocol on kpush ("" = kpush's default for it)

	idleSteps    []int
	idleChannels int
	settle       time.Duration

	fanoutSubs     int
	fanoutRates    []float64
	fanoutStep     time.Duration
	fanoutOverload int
	recordBytes    int

	marketConns      int
	marketSubs       int
	marketSymbols    int
	marketRate       float64
	marketZipf       float64
	marketDuration   time.Duration
	marketPartitions int
	marketRecordZipf bool
	warmUp           time.Duration

	hsConns       int
	hsInFlight    []int
	stormConns    int
	stormInFlight int

	closeConns  int
	closeProbes int
	closeRate   float64
	closeCycles int

	trimChannels int
	trimPhase    time.Duration
	trimRouter   string

	trimProbeChannels int
	trimSettle        time.Duration
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	o, err := parseFlags(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "kpush-bench:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	rep, err := runAll(ctx, o)
	if rep != nil {
		printReport(os.Stdout, rep)
		if o.jsonPath != "" {
			if werr := writeJSON(o.jsonPath, rep); werr != nil {
				fmt.Fprintln(os.Stderr, "kpush-bench:", werr)
				err = errors.Join(err, werr)
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kpush-bench:", err)
		return 1
	}
	return 0
}

func parseFlags(args []string) (*options, error) {
	fs := flag.NewFlagSet("kpush-bench", flag.ContinueOnError)
	o := &options{}
	scen := fs.String("scenarios", "idle,fanout,market,handshake", "scenarios to run, comma-separated")
	fs.BoolVar(&o.quick, "quick", false, "small sizes for a quick pass (make bench-quick); explicit size flags still win")
	fs.StringVar(&o.kpushBin, "kpush-bin", "", "kpush binary to start for each scenario (default: go build ./cmd/kpush into -out)")
	fs.StringVar(&o.kpushWS, "kpush-ws", "", "attach to a running kpush at this ws:// URL instead of starting one (with -kpush-admin)")
	fs.StringVar(&o.kpushAdmin, "kpush-admin", "", "admin base URL of the running kpush, e.g. http://127.0.0.1:9090")
	fs.StringVar(&o.kafka, "kafka", "", "comma-separated Kafka brokers to produce to (default: an embedded kfake broker)")
	fs.StringVar(&o.topic, "topic", "", "topic to produce to with -kpush-ws (a started kpush gets one topic per scenario)")
	fs.StringVar(&o.channelPrefix, "channel-prefix", "bench.", "channel = prefix + record key; a started kpush routes {key} this way")
	fs.StringVar(&o.out, "out", "bin/bench-results", "directory for kpush's config and log, profiles and results")
	fs.StringVar(&o.jsonPath, "json", "", "write the results as JSON to this file")
	fs.IntVar(&o.loops, "loops", 0, "generator event loops (default GOMAXPROCS)")
	fs.IntVar(&o.srcAddrs, "src-addrs", 0, "spread connections over 127.0.0.1..N (default: one per 20,000 connections, at least 4)")
	fs.IntVar(&o.inFlight, "inflight", 512, "connections connecting or subscribing at once")
	fs.BoolVar(&o.profile, "profile", false, "write kpush CPU profiles of the measured phases (and a heap profile after idle) into -out")
	fs.Var(&o.kpushEnv, "kpush-env", "KEY=VALUE added to the started kpush's environment (repeatable), e.g. GOGC=50")
	fs.BoolVar(&o.snapshot, "route-snapshot", false, "a started kpush's route keeps each channel's last record (routes[].snapshot)")
	fs.IntVar(&o.history, "route-history", 0, "a started kpush's route keeps this many records per channel for resumes (routes[].history.max_records; 0: none)")
	fs.StringVar(&o.slow, "route-slow", "disconnect", "a started kpush's policy for full queues (routes[].slow): disconnect or conflate")
	fs.StringVar(&o.kpushCPUs, "kpush-cpus", "", "run the started kpush on these CPUs (taskset -c LIST), e.g. 0,1")
	fs.BoolVar(&o.deflate, "compression", false, "clients offer permessage-deflate and a started kpush accepts it (gateway.compression)")
	fs.IntVar(&o.deflateMin, "compression-min-bytes", 64, "a started kpush's gateway.compression_min_bytes (with -compression)")
	fs.DurationVar(&o.writeDelay, "write-delay", 0, "a started kpush's gateway.write_delay (coalesced writes; 0: off)")
	fs.StringVar(&o.protocol, "protocol", "v1", "idle and fanout: what the clients speak: v1 (kpush's protocol on gateway.path), centrifugo (Centrifugo's JSON client protocol on gateway.centrifugo_path) or sse (event streams on gateway.sse_path)")
	fs.StringVar(&o.protocolPath, "protocol-path", "", "the path -protocol is served on (default: kpush's default for it: /ws as the bench configures gateway.path, /connection/websocket, /events)")
	fs.DurationVar(&o.kernelLoop, "kernel-loop", time.Second, "fanout and market: after the scenario, run the plain writev loop (same frames, same number of sockets, one writev each) this long per frames-per-write figure, and give kpush's deliveries per CPU-second as a ratio of it; 0: none")
	fs.Float64Var(&o.maxRate, "route-max-rate", 0, "a started kpush's routes[].max_rate (frequency cap per channel and connection; 0: none)")

	idle := fs.String("idle-steps", "1000,5000,15000", "idle: connection counts to measure")
	fs.IntVar(&o.idleChannels, "idle-channels", 1000, "idle: connections subscribe to one of this many channels")
	fs.DurationVar(&o.settle, "settle", 8*time.Second, "idle: wait after the connections are subscribed before reading memory")

	fs.IntVar(&o.fanoutSubs, "fanout-subs", 10000, "fanout: subscribers of the one channel")
	rates := fs.String("fanout-rates", "10,20,40,80,120,160,200,250,320,400,500,640,800,1000", "fanout: records/s to step through until deliveries stop keeping up")
	fs.DurationVar(&o.fanoutStep, "fanout-step", 5*time.Second, "fanout: duration of each rate step")
	fs.IntVar(&o.fanoutOverload, "fanout-overload", 3, "fanout: rate steps still run after the first one that does not keep up (they show the cost per delivery under overload)")
	fs.IntVar(&o.recordBytes, "record-bytes", 100, "record value size in bytes")
	fs.BoolVar(&marketPad, "record-market-pad", false, "pad record values with market-data-like fields (repeating names, random numbers) instead of one repeated byte: for -compression")

	fs.IntVar(&o.marketConns, "market-conns", 10000, "market: connections")
	fs.IntVar(&o.marketSubs, "market-subs", 10, "market: symbols each connection subscribes to")
	fs.IntVar(&o.marketSymbols, "market-symbols", 1000, "market: symbols (channels)")
	fs.Float64Var(&o.marketRate, "market-rate", 2000, "market: records/s over all symbols")
	fs.Float64Var(&o.marketZipf, "market-zipf", 1.0, "market: Zipf exponent of symbol popularity among subscribers")
	fs.DurationVar(&o.marketDuration, "market-duration", 20*time.Second, "market: measured duration (after -warmup)")
	fs.DurationVar(&o.warmUp, "warmup", 3*time.Second, "market: unmeasured time at the full rate before measuring")
	fs.IntVar(&o.marketPartitions, "market-partitions", 8, "market: partitions of the topic (records keyed by symbol)")
	fs.BoolVar(&o.marketRecordZipf, "market-record-zipf", false, "market: draw records' symbols by the same Zipf law (default: uniform)")

	fs.IntVar(&o.hsConns, "hs-conns", 5000, "handshake: connections opened per round")
	hsIn := fs.String("hs-inflight", "8,32,128,512", "handshake: handshakes in flight per round, rising to saturation")
	fs.IntVar(&o.stormConns, "storm-conns", 10000, "handshake: subscribed connections dropped at once in the reconnect storm")
	fs.IntVar(&o.stormInFlight, "storm-inflight", 1024, "handshake: reconnects in flight during the storm")

	fs.IntVar(&o.closeConns, "close-conns", 15000, "closeall: connections (× -market-subs of -market-symbols channels) reset at once")
	fs.IntVar(&o.closeProbes, "close-probes", 20, "closeall: probe connections that stay and measure delivery latency")
	fs.Float64Var(&o.closeRate, "close-rate", 500, "closeall: records/s to the probes' channel")
	fs.IntVar(&o.closeCycles, "close-cycles", 3, "closeall: open-all / close-all cycles")
	fs.IntVar(&o.trimChannels, "trim-channels", 1000000, "trim: channels filled with a retained snapshot (one record per distinct key) between the two phases; also uses -close-conns, -close-probes, -close-rate")
	fs.DurationVar(&o.trimPhase, "trim-phase", 10*time.Second, "trim: duration of each measured phase (kpush runs Trim once a second)")
	fs.IntVar(&o.trimProbeChannels, "trim-probe-channels", 64, "trim: channels every probe subscribes to; the probe records go to them in turn, over many router shards")
	fs.DurationVar(&o.trimSettle, "trim-settle", 3*time.Second, "trim: wait after the connections are open, before the baseline")
	fs.StringVar(&o.trimRouter, "trim-router", "{max_retained_bytes: 8589934592, max_age: 24h}", "trim: a started kpush's router section, so the budget keeps every channel; empty: none (the 51d00d5 binary rejects the key)")

	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.quick {
		quick := map[string]string{
			"idle-steps": "1000,5000", "settle": "3s",
			"fanout-subs": "2000", "fanout-rates": "50,100,200,400,800", "fanout-step": "2s",
			"market-conns": "2000", "market-duration": "6s",
			"hs-conns": "2000", "hs-inflight": "16,256", "storm-conns": "2000",
		}
		for name, v := range quick {
			if !set[name] {
				if err := fs.Set(name, v); err != nil {
					return nil, err
				}
			}
		}
	}
	var err error
	o.scenarios = splitList(*scen)
	for _, s := range o.scenarios {
		switch s {
		case "idle", "fanout", "market", "handshake", "closeall", "trim":
		default:
			return nil, fmt.Errorf("-scenarios: unknown scenario %q (idle, fanout, market, handshake, closeall, trim)", s)
		}
	}
	if o.idleSteps, err = parseInts(*idle); err != nil {
		return nil, fmt.Errorf("-idle-steps: %w", err)
	}
	if o.hsInFlight, err = parseInts(*hsIn); err != nil {
		return nil, fmt.Errorf("-hs-inflight: %w", err)
	}
	if o.fanoutRates, err = parseFloats(*rates); err != nil {
		return nil, fmt.Errorf("-fanout-rates: %w", err)
	}
	if (o.kpushWS == "") != (o.kpushAdmin == "") {
		return nil, errors.New("-kpush-ws and -kpush-admin go together")
	}
	if o.kpushWS != "" && (o.kafka == "" || o.topic == "") {
		return nil, errors.New("-kpush-ws needs -kafka and -topic: the brokers and topic the running kpush reads")
	}
	if o.marketSubs > o.marketSymbols {
		return nil, errors.New("-market-subs must not exceed -market-symbols")
	}
	if o.trimProbeChannels <= 0 || o.trimChannels < 0 {
		return nil, errors.New("-trim-probe-channels must be positive and -trim-channels not negative")
	}
	switch o.protocol {
	case wsload.ProtoV1, wsload.ProtoCentrifugo, wsload.ProtoSSE:
	default:
		return nil, fmt.Errorf("-protocol: %q is not v1, centrifugo or sse", o.protocol)
	}
	if o.protocol != wsload.ProtoV1 && o.deflate {
		return nil, errors.New("-compression is for -protocol v1")
	}
	if o.recordBytes < 0 || o.inFlight <= 0 {
		return nil, errors.New("-record-bytes and -inflight must be positive")
	}
	o.out, err = filepath.Abs(o.out)
	return o, err
}

// envList is a repeatable KEY=VALUE flag.
type envList []string

func (e *envList) String() string { return strings.Join(*e, " ") }

func (e *envList) Set(v string) error {
	if !strings.Contains(v, "=") {
		return fmt.Errorf("%q is not KEY=VALUE", v)
	}
	*e = append(*e, v)
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func parseInts(s string) ([]int, error) { return parseList(s, "integer", strconv.Atoi) }

func parseFloats(s string) ([]float64, error) {
	return parseList(s, "number", func(f string) (float64, error) { return strconv.ParseFloat(f, 64) })
}

// parseList parses the comma-separated list s with parse; an empty list,
// or a value that does not parse or is not above zero, is an error that
// names it as a positive what.
func parseList[T int | float64](s, what string, parse func(string) (T, error)) ([]T, error) {
	var out []T
	for _, f := range splitList(s) {
		n, err := parse(f)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%q is not a positive %s", f, what)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, errors.New("empty list")
	}
	return out, nil
}

// runAll sets up Kafka and runs each scenario in turn. It returns what it
// measured even when a scenario fails.
func runAll(ctx context.Context, o *options) (*Report, error) {
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return nil, err
	}
	rep := &Report{Machine: describeMachine(), Command: strings.Join(append([]string{"kpush-bench"}, os.Args[1:]...), " "), Started: time.Now()}
	if need := maxConns(o) + 200; uint64(need) > rep.Machine.OpenFiles {
		return rep, fmt.Errorf("the scenarios hold up to %d connections but this process may open %d files (Go has already raised the soft limit to the hard one): raise the hard limit (ulimit -Hn) or use smaller sizes", need-200, rep.Machine.OpenFiles)
	}
	e, err := newEnv(ctx, o)
	if err != nil {
		return rep, err
	}
	defer e.close()
	var errs []error
	for _, s := range o.scenarios {
		if ctx.Err() != nil {
			break
		}
		logf("== scenario %s", s)
		var err error
		switch s {
		case "idle":
			rep.Idle, err = runIdle(ctx, e)
		case "fanout":
			rep.Fanout, err = runFanout(ctx, e)
		case "market":
			rep.Market, err = runMarket(ctx, e)
		case "handshake":
			rep.Handshake, err = runHandshake(ctx, e)
		case "closeall":
			rep.CloseAll, err = runCloseAll(ctx, e)
		case "trim":
			rep.Trim, err = runTrim(ctx, e)
		}
		if err != nil {
			logf("scenario %s failed: %v", s, err)
			errs = append(errs, fmt.Errorf("%s: %w", s, err))
		}
	}
	rep.Took = time.Since(rep.Started).Round(time.Second).String()
	return rep, errors.Join(errs...)
}

// maxConns is the most connections the chosen scenarios hold at once.
func maxConns(o *options) int {
	n := 0
	for _, s := range o.scenarios {
		switch s {
		case "idle":
			for _, k := range o.idleSteps {
				n = max(n, k)
			}
		case "fanout":
			n = max(n, o.fanoutSubs)
		case "market":
			n = max(n, o.marketConns)
		case "handshake":
			n = max(n, o.hsConns, o.stormConns)
		case "closeall", "trim":
			n = max(n, o.closeConns+o.closeProbes)
		}
	}
	return n
}

func writeJSON(path string, rep *Report) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// logf prints progress to stderr with a timestamp.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}
