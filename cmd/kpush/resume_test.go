package main

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/kpush/kpush/consumer"
	"github.com/kpush/kpush/gateway/client"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// deleteRecords deletes the records of topic[partition] below offset, as
// retention would.
func (k *testKafka) deleteRecords(t testing.TB, topic string, partition int32, before int64) {
	t.Helper()
	req := kmsg.NewPtrDeleteRecordsRequest()
	rt := kmsg.NewDeleteRecordsRequestTopic()
	rt.Topic = topic
	rp := kmsg.NewDeleteRecordsRequestTopicPartition()
	rp.Partition = partition
	rp.Offset = before
	rt.Partitions = append(rt.Partitions, rp)
	req.Topics = append(req.Topics, rt)
	req.TimeoutMillis = 10000
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := req.RequestWith(ctx, k.cl)
	if err != nil {
		t.Fatalf("delete records of %s[%d] below %d: %v", topic, partition, before, err)
	}
	for _, tr := range resp.Topics {
		for _, pr := range tr.Partitions {
			if pr.ErrorCode != 0 {
				t.Fatalf("delete records of %s[%d]: error code %d", topic, partition, pr.ErrorCode)
			}
		}
	}
}

// waitConsumed waits until kpush has consumed n records in all.
func (a *testApp) waitConsumed(t testing.TB, n int) {
	t.Helper()
	waitFor(t, 30*time.Second, fmt.Sprintf("kpush to consume %d records", n), func() bool {
		return a.metric(t, "kpush_consumer_records_total") >= float64(n)
	})
}

// ticks returns n tick records for key on topic[partition], numbered from
// seq.
func ticks(topic string, partition int32, key string, seq, n int) []*kgo.Record {
	out := make([]*kgo.Record, n)
	for i := range out {
		out[i] = rec(topic, partition, key, fmt.Sprintf(`{"sym":%q,"seq":%d}`, key, seq+i))
	}
	return out
}

// only keeps the records of key.
func only(recs []*kgo.Record, key string) []*kgo.Record {
	var out []*kgo.Record
	for _, r := range recs {
		if string(r.Key) == key {
			out = append(out, r)
		}
	}
	return out
}

func since(ch string, partition int32, offset int64) map[string]map[string]int64 {
	return map[string]map[string]int64{ch: {strconv.Itoa(int(partition)): offset}}
}

// resumeReply reads until the ok (or error) for id has arrived and want
// messages have been seen; it returns the messages and how many came before
// the reply.
func (w *wsClient) resumeReply(t testing.TB, id int64, want int) (msgs []*client.Frame, before int, reply *client.Frame) {
	t.Helper()
	for reply == nil || len(msgs) < want {
		f := w.next(t, 20*time.Second)
		switch {
		case f.Op == "msg":
			msgs = append(msgs, f)
		case f.ID == id && reply == nil:
			reply, before = f, len(msgs)
		default:
			t.Fatalf("unexpected frame %+v", f)
		}
	}
	return msgs, before, reply
}

// checkOffsets fails unless msgs are exactly want, in order.
func checkOffsets(t testing.TB, msgs []*client.Frame, ch string, want []*kgo.Record) {
	t.Helper()
	if len(msgs) != len(want) {
		t.Fatalf("got %d messages, want %d", len(msgs), len(want))
	}
	for i, f := range msgs {
		if f.Ch != ch || f.P != want[i].Partition || f.O != want[i].Offset {
			t.Fatalf("message %d: %s p=%d o=%d, want %s p=%d o=%d", i, f.Ch, f.P, f.O, ch, want[i].Partition, want[i].Offset)
		}
	}
}

// TestResumeSameInstance: a client has offsets up to N, 500 records of its
// channel are produced while it is away (between records of another channel
// on the same partition), and it resumes: it gets exactly those 500 in
// order, then the records produced while it resumes, each once. Served from
// the in-memory history, and from Kafka when the history is too short.
func TestResumeSameInstance(t *testing.T) {
	cases := []struct {
		name    string
		history int
		source  string
	}{
		{"from memory", 1000, "memory"},
		{"from kafka beyond memory", 100, "kafka"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			k := startKafka(t)
			topic := k.topic(t, "resume", 2)
			app := startApp(t, k, []consumer.Route{{
				Topic: topic, Channel: "ticks.{key}", Format: consumer.FormatJSON,
				History: consumer.History{MaxRecords: tc.history},
			}}, nil)

			c := dial(t, app.wsURL)
			c.subscribe(t, "ticks.AAPL")
			seen := k.produce(t, ticks(topic, 1, "AAPL", 0, 10)...)
			for _, r := range seen {
				checkMsg(t, c.next(t, 10*time.Second), "ticks.AAPL", r)
			}
			c.NetConn().Close()

			var away []*kgo.Record
			for i := 0; i < 500; i++ {
				away = append(away, ticks(topic, 1, "AAPL", 10+i, 1)[0], ticks(topic, 1, "MSFT", i, 1)[0])
			}
			away = only(k.produce(t, away...), "AAPL")
			app.waitConsumed(t, 10+1000)

			c2 := dial(t, app.wsURL)
			id, err := c2.Send(&client.Request{Op: "subscribe", Channels: []string{"ticks.AAPL"},
				Since: since("ticks.AAPL", 1, seen[len(seen)-1].Offset)})
			if err != nil {
				t.Fatal(err)
			}
			// Records keep coming while the resume runs: the seam between
			// replayed and live must have no gap and no duplicate.
			live := only(k.produce(t, append(ticks(topic, 1, "AAPL", 510, 100), ticks(topic, 1, "MSFT", 500, 100)...)...), "AAPL")
			msgs, before, reply := c2.resumeReply(t, id, len(away)+len(live))
			if reply.Op != "ok" || !reply.Recovered["ticks.AAPL"] {
				t.Fatalf("reply %+v, want ok with recovered ticks.AAPL true", reply)
			}
			if before < len(away) {
				t.Fatalf("ok came after %d messages, before the %d replayed ones were all sent", before, len(away))
			}
			checkOffsets(t, msgs, "ticks.AAPL", append(away, live...))
			c2.expectNoMsg(t)
			if got := app.metric(t, "kpush_resumes_total", `source="`+tc.source+`"`, `result="recovered"`); got != 1 {
				t.Errorf("kpush_resumes_total{source=%s,result=recovered} = %v, want 1", tc.source, got)
			}
			if got := app.metric(t, "kpush_resume_records_total", `source="`+tc.source+`"`); got < 500 {
				t.Errorf("kpush_resume_records_total{source=%s} = %v, want at least 500", tc.source, got)
			}
		})
	}
}

// TestResumeNotRecovered: records gone from Kafka, a resume beyond the
// replay scan limit, and one larger than the connection's queue are
// answered recovered:false, after the channel's last record as a snapshot.
func TestResumeNotRecovered(t *testing.T) {
	cases := []struct {
		name      string
		history   int
		deleted   bool
		partition int32
		mutate    func(*Config)
	}{
		{"records deleted from kafka", 0, true, 0, nil},
		{"beyond the replay scan limit", 0, false, 0, func(c *Config) { c.Kafka.ReplayMaxScanned = 20 }},
		{"more than the queue holds", 1000, false, 0, func(c *Config) { c.Gateway.MaxQueueMessages = 16 }},
		{"a partition that does not exist", 0, false, 7, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			k := startKafka(t)
			topic := k.topic(t, "gone", 1)
			app := startApp(t, k, []consumer.Route{{
				Topic: topic, Channel: "ticks.{key}", Format: consumer.FormatJSON, Snapshot: true,
				History: consumer.History{MaxRecords: tc.history},
			}}, tc.mutate)
			recs := k.produce(t, ticks(topic, 0, "AAPL", 0, 50)...)
			app.waitConsumed(t, 50)
			if tc.deleted {
				k.deleteRecords(t, topic, 0, recs[30].Offset)
			}

			c := dial(t, app.wsURL)
			id, err := c.Send(&client.Request{Op: "subscribe", Channels: []string{"ticks.AAPL"},
				Since: since("ticks.AAPL", tc.partition, recs[9].Offset)})
			if err != nil {
				t.Fatal(err)
			}
			msgs, before, reply := c.resumeReply(t, id, 1)
			if reply.Op != "ok" || reply.Recovered["ticks.AAPL"] || len(reply.Recovered) != 1 {
				t.Fatalf("reply %+v, want ok with recovered ticks.AAPL false", reply)
			}
			if len(msgs) != 1 || before != 1 || !msgs[0].Snap {
				t.Fatalf("got %d messages (%d before the reply), want only the snapshot before it: %+v", len(msgs), before, msgs)
			}
			checkMsg(t, msgs[0], "ticks.AAPL", recs[49])
			c.expectNoMsg(t)
			next := k.produce(t, ticks(topic, 0, "AAPL", 50, 1)...)[0]
			checkMsg(t, c.next(t, 10*time.Second), "ticks.AAPL", next)
			if got := app.metric(t, "kpush_resumes_total", `result="not_recovered"`); got != 1 {
				t.Errorf("kpush_resumes_total{result=not_recovered} = %v, want 1", got)
			}
		})
	}
}

// TestResumeAcrossInstances: two kpush processes on one broker. A client on
// A is cut off, records are produced while it cannot connect, and it
// reconnects to B with its positions: it gets everything it missed exactly
// once, in order.
func TestResumeAcrossInstances(t *testing.T) {
	k := startKafka(t)
	topic := k.topic(t, "pods", 2)
	routes := func() []consumer.Route {
		return []consumer.Route{{Topic: topic, Channel: "ticks.{key}", Format: consumer.FormatJSON,
			History: consumer.History{MaxRecords: 1000}}}
	}
	a := startApp(t, k, routes(), nil)
	b := startApp(t, k, routes(), nil)

	gate := newGate()
	var mu sync.Mutex
	got := map[string][]*client.Frame{}
	var recovered []bool
	connected := make(chan string, 8)
	cl, err := client.NewClient(client.Options{
		URLs:       []string{a.wsURL, b.wsURL},
		Dial:       &client.DialOptions{NetDial: gate.dial},
		MinBackoff: 10 * time.Millisecond,
		MaxBackoff: 50 * time.Millisecond,
		OnMessage: func(f *client.Frame) {
			mu.Lock()
			got[f.Ch] = append(got[f.Ch], f)
			mu.Unlock()
		},
		OnRecovered: func(ch string, ok bool) {
			mu.Lock()
			recovered = append(recovered, ok)
			mu.Unlock()
		},
		OnConnect: func(url string) { connected <- url },
	})
	if err != nil {
		t.Fatal(err)
	}
	cl.Subscribe("ticks.AAPL", "ticks.MSFT")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cl.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	if url := <-connected; url != a.wsURL {
		t.Fatalf("connected to %s first, want A %s", url, a.wsURL)
	}
	// Subscriptions are in place once a record arrives on each; the test
	// then looks only at records from `from` on.
	from := map[string]int64{}
	waitFor(t, 10*time.Second, "both subscriptions on A", func() bool {
		w := k.produce(t, ticks(topic, 0, "AAPL", -1, 1)[0], ticks(topic, 1, "MSFT", -1, 1)[0])
		from["ticks.AAPL"], from["ticks.MSFT"] = w[0].Offset+1, w[1].Offset+1
		mu.Lock()
		defer mu.Unlock()
		return len(got["ticks.AAPL"]) > 0 && len(got["ticks.MSFT"]) > 0
	})
	since := func(ch string) []*client.Frame {
		mu.Lock()
		defer mu.Unlock()
		var out []*client.Frame
		for _, f := range got[ch] {
			if f.O >= from[ch] {
				out = append(out, f)
			}
		}
		return out
	}
	count := func(ch string) int { return len(since(ch)) }
	var want []*kgo.Record
	produce := func(seq, n int) {
		var recs []*kgo.Record
		for i := 0; i < n; i++ {
			recs = append(recs, ticks(topic, 0, "AAPL", seq+i, 1)[0], ticks(topic, 1, "MSFT", seq+i, 1)[0])
		}
		want = append(want, k.produce(t, recs...)...)
	}
	produce(0, 100)
	waitFor(t, 10*time.Second, "the first 100 records on A", func() bool {
		return count("ticks.AAPL") == 100 && count("ticks.MSFT") == 100
	})

	gate.close()
	cl.Drop() // cut off from A; it cannot reconnect until the gate opens
	produce(100, 300)
	waitFor(t, 30*time.Second, "B to consume everything", func() bool {
		return b.metric(t, "kpush_consumer_records_total") >= a.metric(t, "kpush_consumer_records_total")
	})
	gate.open()
	if url := <-connected; url != b.wsURL {
		t.Fatalf("reconnected to %s, want B %s", url, b.wsURL)
	}
	produce(400, 50) // and some live on B
	waitFor(t, 20*time.Second, "every record on B", func() bool {
		return count("ticks.AAPL") == 450 && count("ticks.MSFT") == 450
	})
	for _, key := range []string{"AAPL", "MSFT"} {
		ch := "ticks." + key
		checkOffsets(t, since(ch), ch, only(want, key))
	}
	mu.Lock()
	defer mu.Unlock()
	if st := cl.Stats(); st.Duplicates != 0 || st.Connects != 2 {
		t.Errorf("client stats %+v, want no duplicates and 2 connections", st)
	}
	if len(recovered) != 2 || !recovered[0] || !recovered[1] {
		t.Errorf("recovered verdicts %v, want two true", recovered)
	}
	if b.metric(t, "kpush_resumes_total", `result="recovered"`) != 2 {
		t.Errorf("B did not count two recovered resumes")
	}
}

// gate blocks new connections while closed.
type gate struct {
	mu   sync.Mutex
	shut bool
	wake chan struct{} // closed when the gate opens
}

func newGate() *gate { return &gate{wake: make(chan struct{})} }

func (g *gate) close() {
	g.mu.Lock()
	g.shut = true
	g.wake = make(chan struct{})
	g.mu.Unlock()
}

func (g *gate) open() {
	g.mu.Lock()
	g.shut = false
	close(g.wake)
	g.mu.Unlock()
}

func (g *gate) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	g.mu.Lock()
	shut, wake := g.shut, g.wake
	g.mu.Unlock()
	if shut {
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// TestSnapshotStitch: under a steady 1,000 records/s on one channel,
// clients subscribe with snapshot at different moments; each gets the last
// record (marked snap) and then every later record, none missing or
// repeated.
func TestSnapshotStitch(t *testing.T) {
	k := startKafka(t)
	topic := k.topic(t, "snap", 1)
	app := startApp(t, k, []consumer.Route{{Topic: topic, Channel: "ticks.{key}", Format: consumer.FormatJSON, Snapshot: true}}, nil)

	const (
		rate     = 1000
		duration = 2 * time.Second
		clients  = 20
	)
	var mu sync.Mutex
	var produced []int64 // offsets of ticks.S in order (one partition)
	var prodErr error
	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		seq := 0
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			for i := 0; i < rate/100; i++ {
				r := ticks(topic, 0, "S", seq, 1)[0]
				seq++
				k.cl.Produce(context.Background(), r, func(r *kgo.Record, err error) {
					mu.Lock()
					defer mu.Unlock()
					if err != nil {
						prodErr = err
						return
					}
					produced = append(produced, r.Offset)
				})
			}
		}
	}()
	// The first record is there before anyone subscribes.
	waitFor(t, 10*time.Second, "the first record", func() bool { return app.metric(t, "kpush_published_total") > 0 })

	subs := make([]*wsClient, clients)
	ids := make([]int64, clients)
	for i := range subs {
		subs[i] = dial(t, app.wsURL)
		var err error
		if ids[i], err = subs[i].Send(&client.Request{Op: "subscribe", Channels: []string{"ticks.S"}, Snapshot: true}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(duration / 2 / clients) // spread the subscribes over the stream (pacing)
	}
	wg.Wait()
	if err := k.cl.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if prodErr != nil {
		t.Fatalf("produce: %v", prodErr)
	}
	want := append([]int64(nil), produced...)
	mu.Unlock()
	index := make(map[int64]int, len(want))
	for i, o := range want {
		index[o] = i
	}
	for i, c := range subs {
		// The ok may come anywhere after the snapshot; the rest are msgs.
		sawOK := false
		next := func() *client.Frame {
			f := c.next(t, 10*time.Second)
			if f.Op == "ok" && f.ID == ids[i] && !sawOK {
				sawOK = true
				f = c.next(t, 10*time.Second)
			}
			return f
		}
		first := next()
		if first.Op != "msg" || !first.Snap {
			t.Fatalf("client %d: first frame %+v, want the snapshot", i, first)
		}
		at, ok := index[first.O]
		if !ok {
			t.Fatalf("client %d: snapshot offset %d was never produced", i, first.O)
		}
		for j, o := range want[at+1:] {
			f := next()
			if f.Op != "msg" || f.O != o || f.Snap {
				t.Fatalf("client %d: after snapshot %d, message %d is %s o=%d snap=%v, want o=%d", i, first.O, j, f.Op, f.O, f.Snap, o)
			}
		}
		if !sawOK {
			if f := c.next(t, 10*time.Second); f.Op != "ok" {
				t.Fatalf("client %d: %+v, want the subscribe's ok", i, f)
			}
		}
		c.expectNoMsg(t)
	}
	t.Logf("%d records at %d/s; %d clients stitched snapshot and live", len(want), rate, clients)
}
