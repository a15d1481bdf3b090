// Command kpush-feed produces a simulated market feed (JSON ticks keyed by
// symbol) to any Kafka cluster, for demos and load tests of kpush.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/kpush/kpush/cmd/internal/feed"
)

func main() {
	brokers := flag.String("brokers", "127.0.0.1:9092", "comma-separated Kafka bootstrap brokers")
	topic := flag.String("topic", "ticks", "topic to produce to")
	symbols := flag.String("symbols", strings.Join(feed.DefaultSymbols, ","), "comma-separated symbols")
	rate := flag.Float64("rate", 100, "records per second over all symbols")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err := feed.Run(ctx, feed.Config{
		Brokers: strings.Split(*brokers, ","),
		Topic:   *topic,
		Symbols: strings.Split(*symbols, ","),
		Rate:    *rate,
	}, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kpush-feed:", err)
		os.Exit(1)
	}
}
