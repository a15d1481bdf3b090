package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"

	"github.com/kpush/kpush/cmd/internal/feed"
	"github.com/twmb/franz-go/pkg/kfake"
)

// devOptions configure `kpush -dev`.
type devOptions struct {
	kafkaAddr  string
	rate       float64
	partitions int
}

// startDev starts the embedded Kafka-protocol broker (kfake) with topic
// "ticks" and the market-feed simulator producing to it, and points cfg at
// the broker. The returned function stops both.
func startDev(ctx context.Context, cfg *Config, o *devOptions, log *slog.Logger) (func(), error) {
	host, portStr, err := net.SplitHostPort(o.kafkaAddr)
	if err != nil {
		return nil, fmt.Errorf("-dev-kafka %q: %w", o.kafkaAddr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("-dev-kafka %q: bad port", o.kafkaAddr)
	}
	cluster, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.Ports(port),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			return net.Listen(network, net.JoinHostPort(host, portStr))
		}),
		kfake.SeedTopics(int32(o.partitions), "ticks"),
	)
	if err != nil {
		return nil, fmt.Errorf("dev: start embedded Kafka broker on %s (is another broker using the port? pick one with -dev-kafka): %w", o.kafkaAddr, err)
	}
	addrs := cluster.ListenAddrs()
	cfg.Kafka.Brokers = addrs
	log.Info("dev: embedded Kafka broker running", "addr", addrs, "topic", "ticks", "partitions", o.partitions)

	fctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := feed.Run(fctx, feed.Config{Brokers: addrs, Topic: "ticks", Rate: o.rate}, log.With("component", "feed"))
		if err != nil {
			log.Error("dev: feed stopped", "err", err)
		}
	}()
	return func() {
		cancel()
		wg.Wait()
		cluster.Close()
	}, nil
}

func printDevBanner(w io.Writer, a *app) {
	addr := a.gwLn.Addr().String()
	fmt.Fprintf(w, "\nkpush dev mode\n")
	scheme := "ws"
	if a.cfg.TLS.Enabled() {
		scheme = "wss"
	}
	fmt.Fprintf(w, "  WebSocket:  %s://%s%s\n", scheme, addr, a.cfg.Gateway.Path)
	fmt.Fprintf(w, "  Demo page:  http://%s/\n", addr)
	fmt.Fprintf(w, "  Admin:      http://%s/metrics  /healthz  /readyz\n", a.adminLn.Addr())
	fmt.Fprintf(w, "  Kafka:      %v (topic ticks; produce with kcat -P -b %s -t ticks -k AAPL)\n", a.cfg.Kafka.Brokers, a.cfg.Kafka.Brokers[0])
	fmt.Fprintf(w, "  Try:        subscribe with {\"op\":\"subscribe\",\"id\":1,\"channels\":[\"ticks.AAPL\"]}\n\n")
}
