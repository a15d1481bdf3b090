package target

import (
	"math"
	"reflect"
	"strings"
	"testing"
)

const sample = `# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 12.5
process_resident_memory_bytes 3.3554432e+07
go_goroutines 24
go_memstats_heap_alloc_bytes 1.2e+06
kpush_connections 15000
kpush_subscriptions 15000
kpush_deliveries_total 1e+07
kpush_handshakes_total{result="ok"} 15000
kpush_handshakes_total{result="failed"} 3
kpush_handshakes_total{result="rejected"} 2
kpush_slow_consumers_total{policy="disconnect"} 4
kpush_delivery_latency_seconds_bucket{le="0.001"} 10
kpush_delivery_latency_seconds_bucket{le="0.01"} 70
kpush_delivery_latency_seconds_bucket{le="+Inf"} 77
kpush_delivery_latency_seconds_count 77
kpush_connections_other 999
weird line without value
kpush_published_total NaN
`

func TestParseMetricsSumsTheSeries(t *testing.T) {
	m, err := ParseMetrics(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	want := Metrics{
		CPUSeconds: 12.5, RSSBytes: 33554432, Goroutines: 24, HeapAlloc: 1.2e6,
		Connections: 15000, Subscriptions: 15000, Deliveries: 1e7,
		HandshakesOK: 15000, HandshakesBad: 5, SlowConsumers: 4, Writes: 77,
	}
	buckets := m.LatencyBuckets
	m.LatencyBuckets = nil
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("got %+v\nwant %+v", m, want)
	}
	if len(buckets) != 3 || buckets[1] != (Bucket{LE: 0.01, Count: 70}) || !math.IsInf(buckets[2].LE, 1) {
		t.Fatalf("latency buckets %+v", buckets)
	}
	m.LatencyBuckets = buckets
	earlier := Metrics{LatencyBuckets: []Bucket{{0.001, 5}, {0.01, 5}, {math.Inf(1), 7}}}
	// Between the two: 5 writes at <= 1ms, 60 more at <= 10ms, 5 beyond.
	for _, tc := range []struct{ q, want float64 }{{0.05, 0.001}, {0.5, 0.01}, {0.95, math.Inf(1)}} {
		if got := m.LatencyQuantile(earlier, tc.q); got != tc.want {
			t.Errorf("quantile %.2f = %v, want %v", tc.q, got, tc.want)
		}
	}
}

func TestParseStat(t *testing.T) {
	cases := []struct {
		name, line string
		want       CPU
	}{
		{"plain", "1234 (kpush) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 12 0 100 0 0", CPU{User: 2.5, System: 0.75}},
		{"spaces in name", "99 (my prog) x) R 1 2 3 4 5 6 7 8 9 10 1000 10 0 0", CPU{User: 10, System: 0.1}},
		{"truncated", "1 (a) S 1 2", CPU{}},
		{"garbage", "no parenthesis", CPU{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := parseStat(tc.line); got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func FuzzParseMetrics(f *testing.F) {
	f.Add(sample)
	f.Add("kpush_connections{a=\"}\"} 1 123\n")
	f.Add("{ 1\n x{ 2\n")
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = ParseMetrics(strings.NewReader(s))
		_ = parseStat(s)
	})
}
