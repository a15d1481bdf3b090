// Command kpush is a Kafka-fed real-time push gateway: it consumes Kafka
// topics, maps each record to a channel and pushes it over WebSocket to every
// connection subscribed to that channel.
//
//	kpush -config kpush.yaml     run with a configuration file (SIGHUP or a change of the file reloads it)
//	kpush -dev                   run with an embedded Kafka broker and a market-feed simulator
//	kpush validate -config FILE  check a configuration file and exit
//	kpush healthcheck [-url URL] exit 0 if a running kpush answers /healthz (container health check)
//	kpush version                print the version
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/kpush/kpush/configs"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) > 0 {
		switch args[0] {
		case "validate":
			return cmdValidate(args[1:])
		case "healthcheck":
			return cmdHealthcheck(args[1:])
		case "version":
			fmt.Println("kpush", version)
			return 0
		}
	}
	fs := flag.NewFlagSet("kpush", flag.ContinueOnError)
	configPath := fs.String("config", "", "configuration file (default: the embedded configs/kpush.yaml, or configs/dev.yaml with -dev)")
	dev := fs.Bool("dev", false, "development mode: embedded Kafka broker on -dev-kafka, topic ticks, market-feed simulator")
	devKafka := fs.String("dev-kafka", "127.0.0.1:9092", "address of the embedded broker in -dev mode")
	devRate := fs.Float64("dev-rate", 50, "simulated ticks per second in -dev mode")
	devPartitions := fs.Int("dev-partitions", 4, "partitions of topic ticks in -dev mode")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	name, data := "configs/kpush.yaml (embedded)", configs.Default
	if *dev {
		name, data = "configs/dev.yaml (embedded)", configs.Dev
	}
	if *configPath != "" {
		b, err := os.ReadFile(*configPath)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kpush:", err)
			return 1
		}
		name, data = *configPath, b
	}
	cfg, err := LoadConfig(name, data)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kpush:", err)
		return 1
	}
	var devOpts *devOptions
	if *dev {
		devOpts = &devOptions{kafkaAddr: *devKafka, rate: *devRate, partitions: *devPartitions}
	}
	src := configSource{data: data}
	if *configPath != "" {
		src.path = *configPath
	}
	if err := serve(cfg, src, devOpts, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kpush:", err)
		return 1
	}
	return 0
}

func cmdValidate(args []string) int {
	fs := flag.NewFlagSet("kpush validate", flag.ContinueOnError)
	path := fs.String("config", "", "configuration file to check")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *path == "" {
		fmt.Fprintln(os.Stderr, "kpush validate: -config FILE is required")
		return 2
	}
	if _, err := LoadConfigFile(*path); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("%s: valid\n", *path)
	return 0
}

func cmdHealthcheck(args []string) int {
	fs := flag.NewFlagSet("kpush healthcheck", flag.ContinueOnError)
	url := fs.String("url", "http://127.0.0.1:9090/healthz", "health endpoint to query")
	timeout := fs.Duration("timeout", 3*time.Second, "how long to wait for the answer")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, *url, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kpush healthcheck:", err)
		return 2
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kpush healthcheck:", err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(os.Stderr, "kpush healthcheck: %s answered %s\n", *url, resp.Status)
		return 1
	}
	return 0
}
