package router

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkPublishDuringTrim measures how long a publish to a subscribed
// channel waits while Trim sweeps 1,000,000 channels that retain their last
// frame: Trim must not hold a shard's lock across the whole shard. It
// reports the publish latency's p50, p99, p99.9 and maximum (one publish
// every 20µs, to each shard in turn, for the whole run) and the time of one
// full Trim. The publisher and Trim share the CPUs with nothing else only on
// an idle machine: compare runs made side by side.
func BenchmarkPublishDuringTrim(b *testing.B) {
	const channels = 1000000
	r := New()
	keep := &Retention{Last: true}
	data := make([]byte, 64)
	for i := 0; i < channels; i++ {
		r.Publish(&Frame{Channel: fmt.Sprintf("k.%d", i), Offset: int64(i), Data: data}, keep)
	}
	// One subscribed channel in every shard, published to in turn, so the
	// publisher meets whichever shard Trim holds.
	var live []*Frame
	for i, seen := 0, map[*shard]bool{}; len(live) < numShards; i++ {
		name := fmt.Sprintf("live.%d", i)
		if sh := r.shardFor(name); !seen[sh] {
			seen[sh] = true
			live = append(live, &Frame{Channel: name, Data: data})
			r.Subscribe(&nopSink{}, name, nil)
		}
	}
	b.ResetTimer()
	var stop atomic.Bool
	var wg sync.WaitGroup
	var lat []time.Duration
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; !stop.Load(); i++ {
			t0 := time.Now()
			r.Publish(live[i%len(live)], nil)
			lat = append(lat, time.Since(t0))
			for time.Since(t0) < 20*time.Microsecond {
			}
		}
	}()
	var trim time.Duration
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		r.Trim(time.Now())
		trim += time.Since(t0)
	}
	stop.Store(true)
	wg.Wait()
	b.StopTimer()
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Nanoseconds()) / 1e3 }
	b.ReportMetric(q(0.5), "p50-µs")
	b.ReportMetric(q(0.99), "p99-µs")
	b.ReportMetric(q(0.999), "p99.9-µs")
	b.ReportMetric(q(1), "max-µs")
	b.ReportMetric(float64(trim.Milliseconds())/float64(b.N), "ms/trim")
}
