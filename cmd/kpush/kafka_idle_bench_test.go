package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kpush/kpush/consumer"
)

// brokerBytesSent sums the bytes this process has sent, and the broker
// acknowledged, over its open TCP connections to port (the kernel's
// tcpi_bytes_acked of each socket found in /proc/self/fd). Linux only; -1
// when it cannot tell.
func brokerBytesSent(port string) int64 {
	p, err := strconv.Atoi(port)
	if err != nil {
		return -1
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	var sum int64
	for _, e := range fds {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err != nil || !strings.HasPrefix(l, "socket:") {
			continue
		}
		sa, err := unix.Getpeername(fd)
		if err != nil {
			continue
		}
		switch a := sa.(type) {
		case *unix.SockaddrInet4:
			if a.Port != p {
				continue
			}
		case *unix.SockaddrInet6:
			if a.Port != p {
				continue
			}
		default:
			continue
		}
		info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			continue
		}
		sum += int64(info.Bytes_acked)
	}
	return sum
}

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
		f0, cpu0, sent0 := app.metric(b, "kpush_consumer_fetch_requests_total"), cpuSeconds(), brokerBytesSent(port)
		time.Sleep(window) // the measurement window, not synchronisation
		f1, cpu1, sent1 := app.metric(b, "kpush_consumer_fetch_requests_total"), cpuSeconds(), brokerBytesSent(port)
		conns := brokerConns(port) - before
		b.ReportMetric(float64(conns), "broker-conns")
		b.ReportMetric((f1-f0)/window.Seconds(), "fetches/s")
		b.ReportMetric((cpu1-cpu0)/window.Seconds()*100, "idle-cpu-%")
		b.ReportMetric(float64(sent1-sent0)/window.Seconds(), "sent-B/s")
		app.cancel()
		err := <-app.done
		app.done <- err // for startApp's cleanup

	}
}
