package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kpush/kpush/consumer"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Consumer throughput and latency against a real Apache Kafka broker. Both
// benchmarks skip unless KPUSH_TEST_KAFKA names a broker; `make bench-kafka`
// starts one and runs them. Results and the exact commands are in
// cmd/kpush-bench/README.md.

// benchValue returns a JSON value of exactly size bytes carrying n and the
// produce time t (Unix nanoseconds), padded with a string field.
func benchValue(size int, n int, t int64) []byte {
	v := fmt.Appendf(nil, `{"n":%d,"t":%d,"pad":"`, n, t)
	for len(v) < size-2 {
		v = append(v, 'x')
	}
	return append(v, `"}`...)
}

// benchTopic is the pre-filled topic shared by every run of
// BenchmarkKafkaConsume in one process, so repeated runs (-count) do not
// produce the records again.
var benchTopic struct {
	once    sync.Once
	name    string
	records int
	err     error
}

const (
	benchValueBytes = 100
	benchKeys       = 1000
)

// benchPartitions is the partitions of each bench topic:
// KPUSH_BENCH_PARTITIONS, 4 by default.
func benchPartitions() int32 {
	if n, err := strconv.Atoi(os.Getenv("KPUSH_BENCH_PARTITIONS")); err == nil && n > 0 {
		return int32(n)
	}
	return 4
}

// benchRoutes routes topic to ticks.{key} and, with KPUSH_BENCH_TOPICS=n,
// n-1 more topics of as many partitions that stay idle: kpush reads them
// all (the 2 topics x 64 partitions measurement of cmd/kpush-bench/README.md).
func benchRoutes(b *testing.B, k *testKafka, topic string) []consumer.Route {
	routes := tickRoute(topic)
	n, _ := strconv.Atoi(os.Getenv("KPUSH_BENCH_TOPICS"))
	for i := 1; i < n; i++ {
		routes = append(routes, consumer.Route{Topic: k.topic(b, "bench-idle", benchPartitions()), Channel: fmt.Sprintf("idle%d.{key}", i), Format: consumer.FormatJSON})
	}
	return routes
}

func benchRecords() int {
	if s := os.Getenv("KPUSH_BENCH_RECORDS"); s != "" {
		if n, err := strconv.Atoi(s); err == nil && n > 0 {
			return n
		}
	}
	return 2_000_000
}

// fillBenchTopic creates a topic with benchPartitions partitions and writes
// records values of benchValueBytes bytes, uncompressed, keyed over
// benchKeys symbols.
func fillBenchTopic(b *testing.B, k *testKafka) (string, int) {
	benchTopic.once.Do(func() {
		name := k.topic(b, "bench", benchPartitions())
		n := benchRecords()
		cl, err := kgo.NewClient(
			kgo.SeedBrokers(k.brokers...),
			kgo.RecordPartitioner(kgo.ManualPartitioner()),
			kgo.ProducerBatchCompression(kgo.NoCompression()),
			kgo.ProducerBatchMaxBytes(1<<20),
			kgo.MaxBufferedRecords(100_000),
		)
		if err != nil {
			benchTopic.err = err
			return
		}
		defer cl.Close()
		start := time.Now()
		var (
			mu       sync.Mutex
			firstErr error
		)
		keys := make([][]byte, benchKeys)
		for i := range keys {
			keys[i] = fmt.Appendf(nil, "S%03d", i)
		}
		for i := range n {
			r := &kgo.Record{Topic: name, Partition: int32(i) % benchPartitions(), Key: keys[i%benchKeys], Value: benchValue(benchValueBytes, i, 0)}
			cl.Produce(context.Background(), r, func(_ *kgo.Record, err error) {
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			})
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if err := cl.Flush(ctx); err != nil {
			benchTopic.err = err
			return
		}
		if firstErr != nil {
			benchTopic.err = firstErr
			return
		}
		b.Logf("produced %d records of %d bytes to %s in %s", n, benchValueBytes, name, time.Since(start).Round(time.Millisecond))
		benchTopic.name, benchTopic.records = name, n
	})
	if benchTopic.err != nil {
		b.Fatalf("fill bench topic: %v", benchTopic.err)
	}
	return benchTopic.name, benchTopic.records
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// BenchmarkKafkaConsume measures how many records per second one kpush
// reads from Kafka and routes (template, JSON check, encode, channel lookup)
// when no client is subscribed. Each iteration starts a fresh kpush that
// reads the pre-filled topic from its first offset to its end.
func BenchmarkKafkaConsume(b *testing.B) {
	if os.Getenv("KPUSH_TEST_KAFKA") == "" {
		b.Skip("needs a real Apache Kafka broker: run `make bench-kafka` (sets KPUSH_TEST_KAFKA)")
	}
	k := startKafka(b)
	topic, n := fillBenchTopic(b, k)
	routes := benchRoutes(b, k, topic)
	b.ReportAllocs()
	b.ResetTimer()
	var elapsed time.Duration
	var cpu float64
	for range b.N {
		cpu0, start := cpuSeconds(), time.Now()
		a := startApp(b, k, routes, func(c *Config) {
			benchConfig(c)
			c.Kafka.Start = "earliest"
		})
		// Every record renders a valid channel and is valid JSON, so the
		// router's published count is the consumed count; it is cheap to
		// read, unlike a scrape of the registry.
		for a.router.Stats().Published < uint64(n) {
			time.Sleep(2 * time.Millisecond)
		}
		elapsed += time.Since(start)
		cpu += cpuSeconds() - cpu0
		a.stop()
	}
	b.StopTimer()
	total := float64(n) * float64(b.N)
	b.ReportMetric(total/elapsed.Seconds(), "records/s")
	b.ReportMetric(total/cpu, "records/cpu-s")
	b.ReportMetric(cpu/elapsed.Seconds(), "cores")
}

// BenchmarkKafkaLatency measures produce-to-receive latency for one client
// subscribed to one channel while records for that channel are produced at
// 1,000 per second: from just before the producer hands the record to its
// Kafka client, through the broker (acks=all), kpush's fetch, routing and
// WebSocket write, to the client having read and parsed the frame. The
// first second is a warm-up and not counted. ack-p50/ack-p99 are the
// producer's own produce-to-acknowledgement times over the same records, in
// the same process: a floor set by the broker and by how promptly this
// machine schedules the process, which kpush cannot go below.
func BenchmarkKafkaLatency(b *testing.B) {
	if os.Getenv("KPUSH_TEST_KAFKA") == "" {
		b.Skip("needs a real Apache Kafka broker: run `make bench-kafka` (sets KPUSH_TEST_KAFKA)")
	}
	const (
		rate     = 1000
		warmup   = rate     // records
		measured = 5 * rate // records
	)
	k := startKafka(b)
	topic := k.topic(b, "latency", benchPartitions())
	a := startApp(b, k, benchRoutes(b, k, topic), benchConfig)
	c := dial(b, a.wsURL)
	c.subscribe(b, "ticks.LAT")
	b.ResetTimer()
	var lat, acks []time.Duration
	var acksMu sync.Mutex
	for iter := range b.N {
		total := warmup + measured
		done := make(chan []time.Duration, 1)
		go func() {
			got := make([]time.Duration, 0, measured)
			var v struct{ N, T int64 }
			timeout := time.NewTimer(30 * time.Second)
			defer timeout.Stop()
			for seen := 0; seen < total; {
				select {
				case f, ok := <-c.frames:
					if !ok {
						done <- got
						return
					}
					now := time.Now().UnixNano()
					if f.Op != "msg" || json.Unmarshal(f.Data, &v) != nil {
						continue
					}
					seen++
					if v.N >= warmup {
						got = append(got, time.Duration(now-v.T))
					}
				case <-timeout.C:
					done <- got
					return
				}
			}
			done <- got
		}()
		tick := time.NewTicker(time.Second / rate)
		for i := range total {
			<-tick.C
			sent := time.Now()
			r := &kgo.Record{Topic: topic, Partition: 1, Key: []byte("LAT"), Value: benchValue(benchValueBytes, i, sent.UnixNano())}
			k.cl.Produce(context.Background(), r, func(_ *kgo.Record, err error) {
				if err != nil || i < warmup {
					return
				}
				acksMu.Lock()
				acks = append(acks, time.Since(sent))
				acksMu.Unlock()
			})
		}
		tick.Stop()
		got := <-done
		if len(got) != measured {
			b.Fatalf("iteration %d: received %d of %d measured records", iter, len(got), measured)
		}
		lat = append(lat, got...)
	}
	b.StopTimer()
	acksMu.Lock()
	defer acksMu.Unlock()
	q := func(d []time.Duration, p float64) float64 {
		slices.Sort(d)
		return float64(d[int(p*float64(len(d)-1))]) / float64(time.Millisecond)
	}
	b.ReportMetric(q(lat, 0.50), "p50-ms")
	b.ReportMetric(q(lat, 0.99), "p99-ms")
	b.ReportMetric(q(lat, 0.999), "p99.9-ms")
	b.ReportMetric(q(lat, 1), "max-ms")
	b.ReportMetric(q(acks, 0.50), "ack-p50-ms")
	b.ReportMetric(q(acks, 0.99), "ack-p99-ms")
}

// benchConfig is kpush's default configuration, except that the harness's
// short test intervals are reset to their defaults; KPUSH_BENCH_FETCH_MAX_BYTES
// overrides kafka.fetch_max_bytes to compare fetch sizes.
func benchConfig(c *Config) {
	c.Kafka.MetadataInterval = 0
	c.Kafka.RetryBackoff = 0
	c.Kafka.RetryBackoffMax = 0
	if n, err := strconv.Atoi(os.Getenv("KPUSH_BENCH_FETCH_MAX_BYTES")); err == nil {
		c.Kafka.FetchMaxBytes = n
	}
}

// stop ends kpush now (no drain) and waits for Run to return; the cleanup
// registered by startApp then finds it stopped.
func (a *testApp) stop() {
	a.cancel()
	err := <-a.done
	a.done <- err
}
