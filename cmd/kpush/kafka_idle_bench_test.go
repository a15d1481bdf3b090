package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kpush/kpush/consumer"
)

// brokerConns counts this process's established TCP connections to port
// (hex in /proc/net/tcp). Linux only; -1 when it cannot tell.
func brokerConns(port string) int {
	var p int
	if _, err := fmt.Sscan(port, &p); err != nil {
		return -1
	}
	want := fmt.Sprintf(":%04X", p)
	n := 0
	for _, file := range []string{"/proc/self/net/tcp", "/proc/self/net/tcp6"} {
		f, err := os.Open(file)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			// sl local_address rem_address st ...; st 01 is ESTABLISHED.
			if len(fields) > 3 && strings.HasSuffix(fields[2], want) && fields[3] == "01" {
				n++
			}
		}
		f.Close()
	}
	return n
}

// BenchmarkKafkaIdle measures what an idle kpush costs the broker with two
// routed topics of 64 partitions each and no records flowing: its TCP
// connections to the broker and its fetch requests per second. Each
// iteration starts a fresh kpush, waits until every partition is read and
// then 35 seconds more (start-up connections idle out after 30), and
// watches it for 10 seconds.
func BenchmarkKafkaIdle(b *testing.B) {
	if os.Getenv("KPUSH_TEST_KAFKA") == "" {
		b.Skip("needs a real Apache Kafka broker: run `make bench-kafka` (sets KPUSH_TEST_KAFKA)")
	}
	k := startKafka(b)
	const partitions = 64
	topics := []string{k.topic(b, "idle-a", partitions), k.topic(b, "idle-b", partitions)}
	_, port, _ := strings.Cut(k.brokers[0], ":")
	const window = 10 * time.Second
	for range b.N {
		before := brokerConns(port)
		app := startApp(b, k, []consumer.Route{
			{Topic: topics[0], Channel: "a.{key}"},
			{Topic: topics[1], Channel: "b.{key}"},
		}, func(c *Config) { c.Kafka.MetadataInterval = 5 * time.Second })
		waitFor(b, 60*time.Second, "every partition to be read", func() bool {
			return app.metric(b, "kpush_consumer_partitions", `state="reading"`) == 2*partitions
		})
		// Connections opened for start-up requests (offsets of every
		// partition) close after the transport's 30s idle timeout: what
		// stays is the steady state.
		time.Sleep(35 * time.Second)
		f0, cpu0 := app.metric(b, "kpush_consumer_fetch_requests_total"), cpuSeconds()
		time.Sleep(window) // the measurement window, not synchronisation
		f1, cpu1 := app.metric(b, "kpush_consumer_fetch_requests_total"), cpuSeconds()
		conns := brokerConns(port) - before
		b.ReportMetric(float64(conns), "broker-conns")
		b.ReportMetric((f1-f0)/window.Seconds(), "fetches/s")
		b.ReportMetric((cpu1-cpu0)/window.Seconds()*100, "idle-cpu-%")
		app.cancel()
		err := <-app.done
		app.done <- err // for startApp's cleanup

	}
}
