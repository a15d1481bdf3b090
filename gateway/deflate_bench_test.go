package gateway

import (
	"fmt"
	"strings"
	"testing"
)

// BenchmarkPublishMixed: the publishing half of kpush's CPU per delivery
// (Encode, compression, the router's fan-out, the sessions' queues; no
// sockets) where a few clients negotiated permessage-deflate: one channel
// with 10 deflate subscribers, 99 channels with 10 plain subscribers each,
// records published round-robin over the 100 channels. ns/op is per
// record; each record has 10 deliveries. With compression on, a
// connection with the extension exists throughout, so Encode marks every
// record of at least compression_min_bytes (64) as compressible.
func BenchmarkPublishMixed(b *testing.B) {
	for _, size := range []int{100, 2048} {
		for _, on := range []bool{false, true} {
			b.Run(fmt.Sprintf("record=%dB/compression=%v", size, on), func(b *testing.B) {
				s := newSessionServer(b, func(c *Config) {
					c.Compression, c.CompressionMinBytes = on, 64
					c.MaxQueueMessages, c.MaxQueueBytes = 1<<20, 1<<30
				})
				const channels, subs = 100, 10
				links := make([][]*fakeLink, channels)
				for ch := range channels {
					for i := range subs {
						l := newFakeLink(s, fmt.Sprintf("192.0.2.%d", i))
						if on && ch == 0 {
							l.out.deflate, l.out.zshared = true, true
							if i == 0 {
								s.deflateConns.Add(1)
							}
						}
						if !s.router.Subscribe(l, fmt.Sprint("ch", ch), nil) {
							b.Fatal("subscribe refused")
						}
						links[ch] = append(links[ch], l)
					}
				}
				names := make([]string, channels)
				for ch := range names {
					names[ch] = fmt.Sprint("ch", ch)
				}
				data := []byte(`{"sym":"AAPL","book":[` + strings.Repeat(`{"px":189.52,"size":300},`, max(0, size-30)/25) + `{}]}`)
				m := &Message{Partition: 0, Timestamp: 1700000000000, Data: data}
				b.ReportAllocs()
				n := 0
				for b.Loop() {
					ch := n % channels
					m.Channel, m.Offset = names[ch], int64(n)
					if got := s.Publish(m, nil); got != subs {
						b.Fatalf("%d deliveries, want %d", got, subs)
					}
					for _, l := range links[ch] {
						l.mu.Lock()
						l.out.consume(l.out.bytes)
						l.mu.Unlock()
					}
					n++
				}
				b.ReportMetric(float64(s.deflated.Load())/float64(n), "compressions/record")
			})
		}
	}
}
