package gateway

import (
	"fmt"
	"testing"
	"time"

	centrifuge "github.com/centrifugal/centrifuge-go"
	"github.com/kpush/kpush/router"
)

// tickRecord is a market tick as JSON; consecutive ticks of one symbol
// differ in a few digits.
func tickRecord(sym string, i int64) []byte {
	return []byte(fmt.Sprintf(`{"symbol":%q,"bid":%d.%02d,"ask":%d.%02d,"bid_size":%d,"ask_size":%d,"venue":"XNAS","seq":%d,"ts":%d}`,
		sym, 189+i%3, i%100, 189+i%3, (i+2)%100, 100+i%7*100, 300+i%5*100, 1000000+i, 1764460800000+i*37))
}

// TestCentrifugoGoSDKDelta: centrifuge-go subscriptions with delta:
// "fossil", in the JSON and the Protobuf format, get every record exactly
// (the SDK applies the deltas), while a plain subscription gets the same
// records whole; the delta subscribers receive fewer bytes, and kpush
// computes one delta per record, however many subscribers use it.
func TestCentrifugoGoSDKDelta(t *testing.T) {
	for _, proto := range []bool{false, true} {
		t.Run(map[bool]string{false: "json", true: "protobuf"}[proto], func(t *testing.T) {
			g := startSSEServer(t, nil)
			last := &router.Retention{Last: true}
			publish := func(from, to int64) {
				for i := from; i <= to; i++ {
					g.srv.Publish(&Message{Channel: "ticks.AAPL", Topic: "ticks", Partition: 0, Offset: i, Epoch: 1,
						Timestamp: time.Now().UnixMilli(), Data: tickRecord("AAPL", i)}, last)
				}
			}
			publish(1, 1)
			newClient := func(p *tcpProxy) *centrifuge.Client {
				url := cfURL(p.ln.Addr().String())
				var cl *centrifuge.Client
				if proto {
					cl = centrifuge.NewProtobufClient(url, centrifuge.Config{})
				} else {
					cl = centrifuge.NewJsonClient(url, centrifuge.Config{})
				}
				t.Cleanup(cl.Close)
				if err := cl.Connect(); err != nil {
					t.Fatal(err)
				}
				return cl
			}
			type sub struct {
				proxy *tcpProxy
				pubs  chan centrifuge.PublicationEvent
			}
			var subs []sub
			for i, delta := range []centrifuge.DeltaType{centrifuge.DeltaTypeNone, centrifuge.DeltaTypeFossil, centrifuge.DeltaTypeFossil, centrifuge.DeltaTypeFossil} {
				p := startProxy(t, g.addr)
				cl := newClient(p)
				ev := sdkSubscribe(t, cl, "ticks.AAPL", centrifuge.SubscriptionConfig{Delta: delta})
				recv(t, ev.subscribed, fmt.Sprintf("subscribed event of subscriber %d", i))
				subs = append(subs, sub{p, ev.pubs})
			}
			waitSubscribed(t, g.srv, int64(len(subs)))
			before := g.srv.cfPushes.deltas.Load()
			const n = 300
			publish(2, n)
			for i, s := range subs {
				for o := int64(1); o <= n; o++ {
					e := nextPub(t, s.pubs)
					if e.Offset != uint64(o) || string(e.Data) != string(tickRecord("AAPL", o)) {
						t.Fatalf("subscriber %d, record %d: offset %d data %s", i, o, e.Offset, e.Data)
					}
				}
			}
			// One delta per record after the first; a record whose cache
			// slot another record took meanwhile is computed again (slots
			// are picked by a hash), but never once per subscriber, which
			// would be 3 per record here.
			d := g.srv.cfPushes.deltas.Load() - before
			if d < n-1 || d >= 2*(n-1) {
				t.Fatalf("%d deltas computed for %d records and 3 delta subscribers, want about one per record", d, n-1)
			}
			plain, delta := subs[0].proxy.down.Load(), subs[1].proxy.down.Load()
			if delta >= plain {
				t.Fatalf("the delta subscriber received %d bytes, the plain one %d", delta, plain)
			}
			t.Logf("%d ticks: plain subscriber %d bytes, delta subscriber %d bytes (%.0f%% saved); %d deltas computed for 3 delta subscribers",
				n, plain, delta, 100*float64(plain-delta)/float64(plain), d)
		})
	}
}
