package main

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// BenchmarkQuietTopicLatency measures produce-to-receive time for single
// records on an otherwise idle topic: the case where a fetch is parked on the
// broker and must return as soon as a record lands. It reports p50 and p99.
func BenchmarkQuietTopicLatency(b *testing.B) {
	k := startKafka(b)
	topic := k.topic(b, "quiet", 1)
	app := startApp(b, k, tickRoute(topic), nil)
	c := dial(b, app.wsURL)
	c.subscribe(b, "ticks.Q")
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Let the consumer's fetch park on the broker between records.
		time.Sleep(20 * time.Millisecond)
		start := time.Now()
		k.produce(b, rec(topic, 0, "Q", fmt.Sprintf(`{"i":%d}`, i)))
		f := c.next(b, 10*time.Second)
		lat = append(lat, time.Since(start))
		if f.Op != "msg" {
			b.Fatalf("got %+v", f)
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}
