package gateway

import (
	"strings"
	"testing"

	"github.com/kpush/kpush/router"
)

// recordEncoder is the gateway's encoding without a Server's deflate.
type recordEncoder struct{}

func (recordEncoder) Encode(rec *router.Record) *router.Frame { return EncodeRecord(rec) }

// BenchmarkDeliverUnsubscribed is the figure behind the router calling the
// gateway's encoder (router.PublishRecord) instead of being handed frames
// encoded beforehand: a record of a channel nobody subscribes to, its
// route retaining nothing (most records, at a given instant), published
// lazily, and encoded first.
func BenchmarkDeliverUnsubscribed(b *testing.B) {
	rt := router.New()
	rt.Subscribe(nopSink{}, "ticks.MSFT", nil) // another channel of the shard set
	rec := &router.Record{Channel: "ticks.AAPL", Topic: "ticks", Partition: 3, Offset: 123456, Timestamp: 1700000000000,
		Value: []byte(`{"sym":"AAPL","px":187.25,"pad":"` + strings.Repeat("x", 60) + `"}`), Policy: &router.Policy{}}
	b.Run("lazy", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			rt.PublishRecord(rec, recordEncoder{})
		}
	})
	b.Run("encoded_first", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			rt.Publish(EncodeRecord(rec), nil)
		}
	})
}

type nopSink struct{}

func (nopSink) Enqueue(*router.Frame) bool { return true }
