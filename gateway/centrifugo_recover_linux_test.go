package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	centrifuge "github.com/centrifugal/centrifuge-go"
	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/kpush/kpush/router"
)

// cfRaw is a Centrifugo JSON client written out by hand, to check the
// members of kpush's replies exactly.
type cfRaw struct {
	t  *testing.T
	c  net.Conn
	id int
}

func dialCFRaw(t *testing.T, addr string) *cfRaw {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, _, err := ws.Dialer{}.Dial(ctx, cfURL(addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r := &cfRaw{t: t, c: c}
	if res := r.call(`"connect":{}`); !strings.Contains(string(res), `"client"`) {
		t.Fatalf("connect answered %s", res)
	}
	return r
}

// call sends one command (its members after the id) and returns the result
// member of its reply (the error member if it failed).
func (r *cfRaw) call(members string) json.RawMessage {
	r.t.Helper()
	r.id++
	cmd := fmt.Sprintf(`{"id":%d,%s}`, r.id, members)
	_ = r.c.SetDeadline(time.Now().Add(15 * time.Second))
	if err := wsutil.WriteClientText(r.c, []byte(cmd)); err != nil {
		r.t.Fatal(err)
	}
	for {
		b, err := wsutil.ReadServerText(r.c)
		if err != nil {
			r.t.Fatalf("reading the reply to %s: %v", cmd, err)
		}
		var reply map[string]json.RawMessage
		if err := json.Unmarshal(b, &reply); err != nil {
			r.t.Fatalf("reply %s: %v", b, err)
		}
		if string(reply["id"]) != fmt.Sprint(r.id) {
			continue // a push or a ping
		}
		for k, v := range reply {
			if k != "id" {
				return v
			}
		}
		r.t.Fatalf("reply %s has no result", b)
	}
}

// cfSubResult is what a subscribe reply may hold.
type cfSubResult struct {
	Recoverable   bool   `json:"recoverable"`
	Positioned    bool   `json:"positioned"`
	Epoch         string `json:"epoch"`
	Offset        int64  `json:"offset"`
	WasRecovering bool   `json:"was_recovering"`
	Recovered     bool   `json:"recovered"`
	Publications  []struct {
		Data   json.RawMessage `json:"data"`
		Offset int64           `json:"offset"`
	} `json:"publications"`
}

func (r *cfRaw) subscribe(ch string, extra string) (cfSubResult, string) {
	r.t.Helper()
	raw := r.call(`"subscribe":{"channel":"` + ch + `"` + extra + `}`)
	var res cfSubResult
	if err := json.Unmarshal(raw, &res); err != nil {
		r.t.Fatalf("subscribe answered %s: %v", raw, err)
	}
	return res, string(raw)
}

func (res cfSubResult) offsets() []int64 {
	var out []int64
	for _, p := range res.Publications {
		out = append(out, p.Offset)
	}
	return out
}

// TestCentrifugoRecoverySemantics: what a subscribe and a recover answer,
// by what the channel's route retains and where its records come from. A
// recover that cannot be exact answers recovered:false (the SDKs then
// tell the application it may have missed records).
func TestCentrifugoRecoverySemantics(t *testing.T) {
	last := &router.Retention{Last: true}
	both := &router.Retention{Last: true, HistoryRecords: 100, HistoryBytes: 1 << 20, HistoryAge: time.Minute}
	hist := &router.Retention{HistoryRecords: 100, HistoryBytes: 1 << 20, HistoryAge: time.Minute}
	type rec struct {
		p int32
		o int64
	}
	for _, tc := range []struct {
		name    string
		keep    *router.Retention
		records []rec
		// what a fresh subscribe answers
		raw         string // the exact result, when set
		recoverable bool
		epoch       string
		offset      int64
		pubs        []int64 // the cache-mode publication
		// then a recover from this epoch and offset (none when epoch is "")
		recEpoch     string
		recOffset    int64
		recovered    bool
		recPubs      []int64
		recRecovable bool
	}{
		{name: "snapshot route: position and the last record", keep: last, records: []rec{{3, 1}, {3, 2}, {3, 3}},
			recoverable: true, epoch: "t:3:7", offset: 3, pubs: []int64{3},
			recEpoch: "t:3:7", recOffset: 3, recovered: true, recRecovable: true},
		{name: "history-only route: recoverable, no cache", keep: hist, records: []rec{{3, 1}, {3, 2}, {3, 3}},
			recoverable: true, epoch: "t:3:7", offset: 3,
			recEpoch: "t:3:7", recOffset: 1, recovered: true, recPubs: []int64{2, 3}, recRecovable: true},
		{name: "several partitions: not recoverable", keep: both, records: []rec{{0, 1}, {1, 1}, {0, 2}},
			pubs: []int64{2}, recEpoch: "t:0:7", recOffset: 1, recPubs: []int64{2}},
		{name: "recover from another partition", keep: both, records: []rec{{3, 1}, {3, 2}},
			recoverable: true, epoch: "t:3:7", offset: 2, pubs: []int64{2},
			recEpoch: "t:4:7", recOffset: 1, recPubs: []int64{2}, recRecovable: true},
		{name: "recover from another topic", keep: both, records: []rec{{3, 1}, {3, 2}},
			recoverable: true, epoch: "t:3:7", offset: 2, pubs: []int64{2},
			recEpoch: "u:3:7", recOffset: 1, recPubs: []int64{2}, recRecovable: true},
		{name: "recover from a malformed epoch", keep: both, records: []rec{{3, 1}, {3, 2}},
			recoverable: true, epoch: "t:3:7", offset: 2, pubs: []int64{2},
			recEpoch: "3.7", recOffset: 1, recPubs: []int64{2}, recRecovable: true},
		{name: "another continuity epoch: Kafka positions still name the records", keep: both, records: []rec{{3, 1}, {3, 2}, {3, 3}},
			recoverable: true, epoch: "t:3:7", offset: 3, pubs: []int64{3},
			recEpoch: "t:3:2", recOffset: 1, recovered: true, recPubs: []int64{2, 3}, recRecovable: true},
		{name: "route retaining nothing: no position to give", keep: nil, records: []rec{{3, 1}}, raw: `{}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := startSSEServer(t, nil)
			for _, r := range tc.records {
				g.srv.Publish(&Message{Channel: "c", Topic: "t", Partition: r.p, Offset: r.o, Epoch: 7, Timestamp: time.Now().UnixMilli(),
					Data: []byte(fmt.Sprintf(`{"o":%d}`, r.o))}, tc.keep)
			}
			cl := dialCFRaw(t, g.addr)
			res, raw := cl.subscribe("c", "")
			if tc.raw != "" && raw != tc.raw {
				t.Fatalf("subscribe answered %s, want %s", raw, tc.raw)
			}
			if res.Recoverable != tc.recoverable || res.Positioned != tc.recoverable || res.Epoch != tc.epoch || res.Offset != tc.offset ||
				fmt.Sprint(res.offsets()) != fmt.Sprint(tc.pubs) || res.WasRecovering || res.Recovered != (len(tc.pubs) > 0) {
				t.Fatalf("subscribe answered %s", raw)
			}
			for _, p := range res.Publications {
				if string(p.Data) != fmt.Sprintf(`{"o":%d}`, p.Offset) {
					t.Fatalf("publication %s at offset %d", p.Data, p.Offset)
				}
			}
			if tc.recEpoch == "" {
				return
			}
			again := dialCFRaw(t, g.addr)
			res, raw = again.subscribe("c", fmt.Sprintf(`,"recover":true,"epoch":%q,"offset":%d`, tc.recEpoch, tc.recOffset))
			if !res.WasRecovering || res.Recovered != tc.recovered || res.Recoverable != tc.recRecovable || res.Positioned != tc.recRecovable ||
				fmt.Sprint(res.offsets()) != fmt.Sprint(tc.recPubs) {
				t.Fatalf("recover answered %s", raw)
			}
			if res.Recoverable && res.Epoch != "t:3:7" {
				t.Fatalf("recover answered the epoch %q, want the channel's", res.Epoch)
			}
		})
	}
}

// logReplayer stands in for Kafka: it holds records of one topic and
// emits those asked for.
type logReplayer map[int32][]int64

func (l logReplayer) Replay(ctx context.Context, ch string, p int32, after int64, emit func(*router.Record) bool) (bool, error) {
	for _, o := range l[p] {
		if o > after && !emit(&router.Record{Channel: ch, Topic: "t", Partition: p, Offset: o, Epoch: 9, Value: []byte(fmt.Sprintf(`{"o":%d}`, o))}) {
			return false, nil
		}
	}
	return true, nil
}

// TestCentrifugoRecoversFromKafka: an instance that retains nothing of the
// channel (the client's position came from another instance) reads the
// missed records back from Kafka, from the partition its epoch names.
func TestCentrifugoRecoversFromKafka(t *testing.T) {
	g := serveGateway(t, Config{DrainTimeout: 200 * time.Millisecond, Workers: 4},
		serveOptions{replayer: logReplayer{2: {3, 4, 5, 6, 7}, 0: {6, 8}}})
	cl := dialCFRaw(t, g.addr)
	res, raw := cl.subscribe("c", `,"recover":true,"epoch":"t:2:abc","offset":4`)
	if !res.WasRecovering || !res.Recovered || !res.Recoverable || res.Epoch != "t:2:9" || res.Offset != 7 ||
		fmt.Sprint(res.offsets()) != "[5 6 7]" {
		t.Fatalf("recover answered %s", raw)
	}
	// Then live, after the reply.
	g.srv.Publish(&Message{Channel: "c", Topic: "t", Partition: 2, Offset: 8, Epoch: 9, Data: []byte(`{"o":8}`)}, nil)
	_ = cl.c.SetDeadline(time.Now().Add(15 * time.Second))
	for {
		b, err := wsutil.ReadServerText(cl.c)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) == `{}` {
			continue // a ping
		}
		if want := `{"push":{"channel":"c","pub":{"data":{"o":8},"offset":8}}}`; string(b) != want {
			t.Fatalf("got %s, want %s", b, want)
		}
		break
	}
}

// TestCentrifugoEpochChangesAtAHole: when the consumer's read of the
// partition has a hole (a reset or truncation detected: a new continuity
// epoch), the channel's epoch changes, and a recover from before the hole
// that nothing can fill answers recovered:false with the last record.
func TestCentrifugoEpochChangesAtAHole(t *testing.T) {
	both := &router.Retention{Last: true, HistoryRecords: 100, HistoryBytes: 1 << 20, HistoryAge: time.Minute}
	g := startSSEServer(t, nil)
	pub := func(o int64, epoch uint64) {
		g.srv.Publish(&Message{Channel: "c", Topic: "t", Partition: 3, Offset: o, Epoch: epoch, Timestamp: time.Now().UnixMilli(),
			Data: []byte(fmt.Sprintf(`{"o":%d}`, o))}, both)
	}
	pub(1, 7)
	pub(2, 7)
	cl := dialCFRaw(t, g.addr)
	if res, raw := cl.subscribe("c", ""); res.Epoch != "t:3:7" || res.Offset != 2 {
		t.Fatalf("subscribe answered %s", raw)
	}
	pub(5, 8) // after a hole
	again := dialCFRaw(t, g.addr)
	if res, raw := again.subscribe("c", ""); res.Epoch != "t:3:8" || res.Offset != 5 {
		t.Fatalf("subscribe after the hole answered %s", raw)
	}
	third := dialCFRaw(t, g.addr)
	res, raw := third.subscribe("c", `,"recover":true,"epoch":"t:3:7","offset":2`)
	if !res.WasRecovering || res.Recovered || res.Epoch != "t:3:8" || res.Offset != 5 || fmt.Sprint(res.offsets()) != "[5]" {
		t.Fatalf("recover across the hole answered %s", raw)
	}
}

// TestCentrifugoGoSDKSnapshotOnSubscribe: a route with snapshot: true gives
// Centrifugo's cache behaviour to the unmodified centrifuge-go SDK: a fresh
// subscribe delivers the channel's last record, exactly, with its stream
// position, and live records follow it.
func TestCentrifugoGoSDKSnapshotOnSubscribe(t *testing.T) {
	g := startSSEServer(t, nil)
	last := &router.Retention{Last: true}
	for o := int64(40); o <= 42; o++ {
		g.srv.Publish(&Message{Channel: "fx.EURUSD", Topic: "fx", Partition: 5, Offset: o, Epoch: 11, Timestamp: time.Now().UnixMilli(),
			Data: []byte(fmt.Sprintf(`{"bid":1.0%d}`, o))}, last)
	}
	cl := cfClient(t, g.addr, centrifuge.Config{})
	ev := sdkSubscribe(t, cl, "fx.EURUSD", centrifuge.SubscriptionConfig{})
	if e := recv(t, ev.subscribed, "subscribed event"); !e.Recoverable || !e.Positioned || e.StreamPosition == nil || *e.StreamPosition != (centrifuge.StreamPosition{Offset: 42, Epoch: "fx:5:b"}) {
		t.Fatalf("subscribed with %+v (position %+v)", e, e.StreamPosition)
	}
	if e := nextPub(t, ev.pubs); string(e.Data) != `{"bid":1.042}` || e.Offset != 42 {
		t.Fatalf("the snapshot: %s at offset %d", e.Data, e.Offset)
	}
	g.srv.Publish(&Message{Channel: "fx.EURUSD", Topic: "fx", Partition: 5, Offset: 43, Epoch: 11, Data: []byte(`{"bid":1.043}`)}, last)
	if e := nextPub(t, ev.pubs); string(e.Data) != `{"bid":1.043}` || e.Offset != 43 {
		t.Fatalf("live after the snapshot: %s at offset %d", e.Data, e.Offset)
	}
}

// TestCentrifugoGoSDKSecondPartitionMidStream: a channel answered with a
// position in one partition starts getting records of another. kpush tells
// the unmodified centrifuge-go SDK to resubscribe (unsubscribe push 2500,
// "insufficient state"); the SDK does, with recover, and is answered
// recovered:false without a position, then gets the channel's records
// (whole, without recovery) from then on.
func TestCentrifugoGoSDKSecondPartitionMidStream(t *testing.T) {
	g := startSSEServer(t, nil)
	last := &router.Retention{Last: true}
	pub := func(p int32, o int64) {
		g.srv.Publish(&Message{Channel: "c", Topic: "t", Partition: p, Offset: o, Epoch: 3, Timestamp: time.Now().UnixMilli(),
			Data: []byte(fmt.Sprintf(`{"p":%d,"o":%d}`, p, o))}, last)
	}
	pub(0, 1)
	cl := cfClient(t, g.addr, centrifuge.Config{})
	ev := sdkSubscribe(t, cl, "c", centrifuge.SubscriptionConfig{})
	if e := recv(t, ev.subscribed, "first subscribed event"); !e.Recoverable || e.StreamPosition == nil || e.StreamPosition.Epoch != "t:0:3" {
		t.Fatalf("subscribed with %+v", e)
	}
	if e := nextPub(t, ev.pubs); string(e.Data) != `{"p":0,"o":1}` {
		t.Fatalf("snapshot %s", e.Data)
	}
	recv(t, ev.subscribing, "subscribing event of the first subscribe") // the first subscribe's
	pub(0, 2)
	if e := nextPub(t, ev.pubs); e.Offset != 2 {
		t.Fatalf("offset %d", e.Offset)
	}
	pub(1, 1) // another partition
	select {
	case e := <-ev.subscribing:
		if e.Code != 2500 {
			t.Fatalf("resubscribing with code %d %q", e.Code, e.Reason)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the SDK was not told to resubscribe")
	}
	e := recv(t, ev.subscribed, "subscribed event after the resubscribe")
	if !e.WasRecovering || e.Recovered || e.Recoverable || e.Positioned {
		t.Fatalf("resubscribed with %+v", e)
	}
	if e := nextPub(t, ev.pubs); string(e.Data) != `{"p":1,"o":1}` {
		t.Fatalf("after the resubscribe: the last record %s", e.Data)
	}
	pub(1, 2)
	pub(0, 3)
	for _, want := range []string{`{"p":1,"o":2}`, `{"p":0,"o":3}`} {
		if e := nextPub(t, ev.pubs); string(e.Data) != want {
			t.Fatalf("got %s, want %s", e.Data, want)
		}
	}
	if n := g.srv.router.Stats().Subscriptions; n != 1 {
		t.Fatalf("%d subscriptions after the resubscribe, want 1", n)
	}
}

// TestCentrifugoGoSDKGetStateUnrecoverable: centrifuge-go with GetState
// asks (subscribe flag 2) for error 112 instead of recovered:false. A
// position of another partition (refused at once) and one older than what
// kpush can serve (refused after the resume fails) are each answered 112,
// and the SDK calls GetState again; the third position is recovered
// exactly.
func TestCentrifugoGoSDKGetStateUnrecoverable(t *testing.T) {
	g := startSSEServer(t, nil)
	keep := &router.Retention{Last: true, HistoryRecords: 3, HistoryBytes: 1 << 20, HistoryAge: time.Minute}
	pub := func(o int64) {
		g.srv.Publish(&Message{Channel: "c", Topic: "t", Partition: 0, Offset: o, Epoch: 7, Timestamp: time.Now().UnixMilli(),
			Data: []byte(fmt.Sprintf(`{"o":%d}`, o))}, keep)
	}
	for o := int64(1); o <= 5; o++ {
		pub(o) // the history keeps 3..5
	}
	positions := []centrifuge.StreamPosition{{Offset: 3, Epoch: "t:9:7"}, {Offset: 1, Epoch: "t:0:7"}, {Offset: 3, Epoch: "t:0:7"}}
	var calls atomic.Int32
	cl := cfClient(t, g.addr, centrifuge.Config{})
	ev := sdkSubscribe(t, cl, "c", centrifuge.SubscriptionConfig{
		MinResubscribeDelay: 10 * time.Millisecond, MaxResubscribeDelay: 50 * time.Millisecond,
		GetState: func(centrifuge.SubscriptionGetStateEvent) (centrifuge.StreamPosition, error) {
			i := int(calls.Add(1)) - 1
			return positions[min(i, len(positions)-1)], nil
		},
	})
	if e := recv(t, ev.subscribed, "subscribed event"); !e.WasRecovering || !e.Recovered {
		t.Fatalf("subscribed with %+v", e)
	}
	if n := calls.Load(); n != 3 {
		t.Fatalf("GetState called %d times, want 3 (two positions answered 112)", n)
	}
	pub(6)
	for _, want := range []uint64{4, 5, 6} {
		if e := nextPub(t, ev.pubs); e.Offset != want || string(e.Data) != fmt.Sprintf(`{"o":%d}`, want) {
			t.Fatalf("got offset %d %s, want %d", e.Offset, e.Data, want)
		}
	}
	if n := g.srv.router.Stats().Subscriptions; n != 1 {
		t.Fatalf("%d subscriptions, want 1", n)
	}
}
