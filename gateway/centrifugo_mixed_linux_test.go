package gateway

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	centrifuge "github.com/centrifugal/centrifuge-go"
	"github.com/gobwas/ws/wsutil"
	"github.com/kpush/kpush/router"
)

// gateReplayer is a logReplayer whose read-back waits, once started, until
// the test releases it: records published meanwhile arrive while the
// recovery is in progress.
type gateReplayer struct {
	log     logReplayer
	started chan struct{} // closed by the first Replay
	release chan struct{} // closed by the test
	calls   atomic.Int32
}

func newGateReplayer(log logReplayer) *gateReplayer {
	return &gateReplayer{log: log, started: make(chan struct{}), release: make(chan struct{})}
}

func (g *gateReplayer) Replay(ctx context.Context, ch string, p int32, after int64, emit func(*router.Record) bool) (bool, error) {
	if g.calls.Add(1) == 1 {
		close(g.started)
	}
	select {
	case <-g.release:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	return g.log.Replay(ctx, ch, p, after, emit)
}

func (g *gateReplayer) waitStarted(t *testing.T) {
	t.Helper()
	select {
	case <-g.started:
	case <-time.After(15 * time.Second):
		t.Fatal("the recovery's read-back did not start within 15s")
	}
}

// TestCentrifugoSecondPartitionDuringRecovery: a recover from Kafka
// positions (partition 2) is in progress when a live record of another
// partition of the channel comes. The reply holds the recovered and live
// records of partition 2 only, with the position of the last of them; the
// 2500 unsubscribe push follows it in the same frame; the resubscribe's
// recover is answered recovered:false without a position (and without
// reading Kafka again, which would leave out partition 0's records); then
// the channel's records of both partitions come live.
func TestCentrifugoSecondPartitionDuringRecovery(t *testing.T) {
	gate := newGateReplayer(logReplayer{2: {3, 4, 5, 6, 7}})
	g := serveGateway(t, Config{DrainTimeout: 200 * time.Millisecond, Workers: 4}, serveOptions{replayer: gate})
	live := func(p int32, o int64) {
		g.srv.Publish(&Message{Channel: "c", Topic: "t", Partition: p, Offset: o, Epoch: 9, Data: []byte(fmt.Sprintf(`{"o":%d}`, o))}, nil)
	}
	cl := dialCFRaw(t, g.addr)
	cl.id++
	if err := wsutil.WriteClientText(cl.c, []byte(fmt.Sprintf(`{"id":%d,"subscribe":{"channel":"c","recover":true,"epoch":"t:2:abc","offset":4}}`, cl.id))); err != nil {
		t.Fatal(err)
	}
	gate.waitStarted(t)
	live(2, 8) // held while the read-back runs, then into the reply
	live(0, 1) // another partition: not in the reply
	live(2, 9)
	close(gate.release)
	want := fmt.Sprintf(`{"id":%d,"subscribe":{"recoverable":true,"positioned":true,"epoch":"t:2:9","offset":9,"was_recovering":true,"recovered":true,`+
		`"publications":[{"data":{"o":5},"offset":5},{"data":{"o":6},"offset":6},{"data":{"o":7},"offset":7},{"data":{"o":8},"offset":8},{"data":{"o":9},"offset":9}]}}`+
		"\n"+`{"push":{"channel":"c","unsubscribe":{"code":2500,"reason":"insufficient state"}}}`, cl.id)
	next := func() string {
		t.Helper()
		_ = cl.c.SetDeadline(time.Now().Add(15 * time.Second))
		for {
			b, err := wsutil.ReadServerText(cl.c)
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != `{}` { // a ping
				return string(b)
			}
		}
	}
	if got := next(); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	live(0, 2) // told to resubscribe: not sent
	res, raw := cl.subscribe("c", `,"recover":true,"epoch":"t:2:9","offset":9`)
	if !res.WasRecovering || res.Recovered || res.Recoverable || res.Positioned || len(res.Publications) != 0 {
		t.Fatalf("the resubscribe was answered %s", raw)
	}
	if n := gate.calls.Load(); n != 1 {
		t.Fatalf("Kafka read back %d times, want once", n)
	}
	live(0, 3)
	live(2, 10)
	for _, w := range []string{`{"push":{"channel":"c","pub":{"data":{"o":3},"offset":3}}}`, `{"push":{"channel":"c","pub":{"data":{"o":10},"offset":10}}}`} {
		if got := next(); got != w {
			t.Fatalf("got %s, want %s", got, w)
		}
	}
	if n := g.srv.router.Stats().Subscriptions; n != 1 {
		t.Fatalf("%d subscriptions after the resubscribe, want 1", n)
	}
}

// TestCentrifugoGoSDKSecondPartitionDuringRecovery: the same with the
// unmodified centrifuge-go SDK in the Protobuf format (the reply and the
// 2500 push share a binary frame): reconnecting, its recovery (read back
// from Kafka) gets the records of partition 2 only, is told to
// resubscribe, and is answered recovered:false with the channel's last
// record; then it gets both partitions' records.
func TestCentrifugoGoSDKSecondPartitionDuringRecovery(t *testing.T) {
	gate := newGateReplayer(logReplayer{2: {4, 5, 6, 7}})
	g := serveGateway(t, Config{DrainTimeout: 200 * time.Millisecond, Workers: 4}, serveOptions{replayer: gate})
	last := &router.Retention{Last: true}
	pub := func(p int32, o int64) {
		g.srv.Publish(&Message{Channel: "c", Topic: "t", Partition: p, Offset: o, Epoch: 9, Data: []byte(fmt.Sprintf(`{"o":%d}`, o))}, last)
	}
	pub(2, 3)
	cl := centrifuge.NewProtobufClient(cfURL(g.addr), centrifuge.Config{})
	t.Cleanup(cl.Close)
	if err := cl.Connect(); err != nil {
		t.Fatal(err)
	}
	ev := sdkSubscribe(t, cl, "c", centrifuge.SubscriptionConfig{})
	if e := recv(t, ev.subscribed, "first subscribed event"); e.StreamPosition == nil || *e.StreamPosition != (centrifuge.StreamPosition{Offset: 3, Epoch: "t:2:9"}) {
		t.Fatalf("subscribed with %+v", e)
	}
	var got []string
	take := func(n int) {
		t.Helper()
		for ; n > 0; n-- {
			got = append(got, string(nextPub(t, ev.pubs).Data))
		}
	}
	take(1) // the snapshot
	if err := cl.Disconnect(); err != nil {
		t.Fatal(err)
	}
	waitSubscribed(t, g.srv, 0)
	for o := int64(4); o <= 7; o++ {
		pub(2, o) // missed while disconnected: read back from Kafka
	}
	if err := cl.Connect(); err != nil {
		t.Fatal(err)
	}
	gate.waitStarted(t)
	pub(2, 8) // live while recovering: into the reply
	pub(0, 1) // another partition: the 2500 push follows the reply
	close(gate.release)
	if e := recv(t, ev.subscribed, "subscribed event after the recovery"); !e.WasRecovering || !e.Recovered || e.StreamPosition == nil || *e.StreamPosition != (centrifuge.StreamPosition{Offset: 8, Epoch: "t:2:9"}) {
		t.Fatalf("recovered with %+v", e)
	}
	deadline := time.After(15 * time.Second)
	for told := false; !told; {
		select {
		case e := <-ev.subscribing:
			told = e.Code == 2500
		case <-deadline:
			t.Fatal("the SDK was not told to resubscribe")
		}
	}
	if e := recv(t, ev.subscribed, "subscribed event after the resubscribe"); !e.WasRecovering || e.Recovered || e.Recoverable || e.Positioned {
		t.Fatalf("resubscribed with %+v", e)
	}
	take(6) // 4..8 recovered, then the last record with the resubscribe's reply
	pub(0, 2)
	pub(2, 9)
	take(2)
	if w := `[{"o":3} {"o":4} {"o":5} {"o":6} {"o":7} {"o":8} {"o":1} {"o":2} {"o":9}]`; fmt.Sprint(got) != w {
		t.Fatalf("got %v, want %s", got, w)
	}
	if n := gate.calls.Load(); n != 1 {
		t.Fatalf("Kafka read back %d times, want once", n)
	}
}
