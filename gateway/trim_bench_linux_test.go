package gateway

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kpush/kpush/gateway/client"
	"github.com/kpush/kpush/router"
)

// BenchmarkPublishToSocketDuringTrim measures publish-to-socket latency
// (publish, then the client reads the record) while router.Trim loops over
// 1,000,000 channels that retain their last record. One client subscribes
// to 64 channels spread over the router's shards and gets one record at a
// time. It reports p50, p99, p99.9 and the maximum.
func BenchmarkPublishToSocketDuringTrim(b *testing.B) {
	const channels = 1000000
	s := startPushServer(b, Config{}, nil)
	keep := &router.Retention{Last: true}
	data := []byte(`{"v":1}`)
	for i := 0; i < channels; i++ {
		s.Publish(&Message{Channel: fmt.Sprintf("k.%d", i), Offset: int64(i), Data: data}, keep)
	}
	c := dialPush(b, s.url, nil)
	var live []string
	for i := 0; i < 64; i++ {
		live = append(live, fmt.Sprintf("live.%d", i))
	}
	if _, reply := c.request(b, &client.Request{Op: "subscribe", Channels: live}); reply.Op != "ok" {
		b.Fatalf("subscribe: %+v", reply)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				s.router.Trim(time.Now())
			}
		}
	}()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		s.publish(live[i%len(live)], 0, int64(i), nil, false)
		if f := c.next(b); f.Op != "msg" {
			b.Fatalf("got %+v, want a msg", f)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	close(stop)
	wg.Wait()
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Nanoseconds()) / 1e3 }
	b.ReportMetric(q(0.5), "p50-µs")
	b.ReportMetric(q(0.99), "p99-µs")
	b.ReportMetric(q(0.999), "p99.9-µs")
	b.ReportMetric(q(1), "max-µs")
}
