package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kpush/kpush/consumer"
	"github.com/kpush/kpush/gateway/client"
	"github.com/twmb/franz-go/pkg/kgo"
)

// txnProducer is a franz-go transactional producer writing to partitions
// chosen per record.
type txnProducer struct {
	t  testing.TB
	cl *kgo.Client
}

func (k *realKafka) txnProducer(t testing.TB, name string) *txnProducer {
	t.Helper()
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(k.brokers...),
		kgo.TransactionalID(fmt.Sprintf("kpush-%s-%d", name, time.Now().UnixNano())),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ProducerLinger(0),
		kgo.TransactionTimeout(time.Minute),
	)
	if err != nil {
		t.Fatalf("transactional producer %s: %v", name, err)
	}
	t.Cleanup(cl.Close)
	return &txnProducer{t: t, cl: cl}
}

func (p *txnProducer) begin() {
	p.t.Helper()
	if err := p.cl.BeginTransaction(); err != nil {
		p.t.Fatalf("begin transaction: %v", err)
	}
}

// produce writes values to partition 0 of topic inside the open
// transaction and returns the offsets they got.
func (p *txnProducer) produce(topic string, values ...string) []int64 {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var recs []*kgo.Record
	for _, v := range values {
		recs = append(recs, rec(topic, 0, "", fmt.Sprintf("%q", v)))
	}
	res := p.cl.ProduceSync(ctx, recs...)
	if err := res.FirstErr(); err != nil {
		p.t.Fatalf("transactional produce: %v", err)
	}
	offsets := make([]int64, len(res))
	for i, r := range res {
		offsets[i] = r.Record.Offset
	}
	return offsets
}

func (p *txnProducer) end(commit bool) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.cl.EndTransaction(ctx, kgo.TransactionEndTry(commit)); err != nil {
		p.t.Fatalf("end transaction (commit %v): %v", commit, err)
	}
}

// valuesOf returns "offset:value" of msgs, the JSON string values unquoted.
func valuesOf(msgs []*client.Frame) string {
	var out []string
	for _, f := range msgs {
		out = append(out, fmt.Sprintf("%d:%s", f.O, strings.Trim(string(f.Data), `"`)))
	}
	return strings.Join(out, " ")
}

// TestRealKafkaReadCommitted: with kafka.isolation read_committed (the
// default) clients see the records of committed transactions only, and
// those of a transaction still open only once it commits, with nothing
// written after it in the partition delivered before it. A resume read back
// from Kafka follows the same rules. Two franz-go transactional producers
// write to one partition: a commit, an abort, the two interleaved with one
// aborting, and an open transaction held for two seconds with a
// non-transactional record written after it.
func TestRealKafkaReadCommitted(t *testing.T) {
	k := startRealKafka(t)
	topic := k.topic(t, "rc", 1)
	// No history: every resume is read back from Kafka.
	app := startApp(t, k.testKafka, []consumer.Route{{Topic: topic, Channel: "rc", Format: consumer.FormatJSON}}, nil)
	live := dial(t, app.wsURL)
	live.subscribe(t, "rc")
	p1, p2 := k.txnProducer(t, "p1"), k.txnProducer(t, "p2")

	var want []string // "offset:value" the clients must see, in order
	add := func(offsets []int64, values ...string) {
		for i, v := range values {
			want = append(want, fmt.Sprintf("%d:%s", offsets[i], v))
		}
	}
	// resume subscribes a new client from after offset and returns what
	// it got with the reply, which must say recovered.
	resume := func(after int64, n int) (*wsClient, string) {
		t.Helper()
		c := dial(t, app.wsURL)
		id, err := c.Send(&client.Request{Op: "subscribe", Channels: []string{"rc"}, Since: since("rc", 0, after)})
		if err != nil {
			t.Fatal(err)
		}
		msgs, _, reply := c.resumeReply(t, id, n)
		if reply.Op != "ok" || !reply.Recovered["rc"] {
			t.Fatalf("resume after %d: reply %+v, want ok with rc recovered", after, reply)
		}
		return c, valuesOf(msgs)
	}
	expectLive := func(step string) {
		t.Helper()
		var got []*client.Frame
		for len(got) < len(want) {
			got = append(got, live.next(t, 20*time.Second))
		}
		if g := valuesOf(got); g != strings.Join(want, " ") {
			t.Fatalf("%s: live client got %q, want %q", step, g, strings.Join(want, " "))
		}
		live.expectNoMsg(t)
		want = want[:0]
	}

	// Commit.
	p1.begin()
	first := p1.produce(topic, "c1", "c2")
	add(first, "c1", "c2")
	p1.end(true)
	expectLive("commit")

	// Abort, then a committed record behind it.
	p1.begin()
	p1.produce(topic, "a1", "a2")
	p1.end(false)
	p1.begin()
	add(p1.produce(topic, "c3"), "c3")
	p1.end(true)
	expectLive("abort")

	// Two producers interleaved on one partition; p2 aborts.
	p1.begin()
	p2.begin()
	x1 := p1.produce(topic, "x1")
	p2.produce(topic, "y1")
	x2 := p1.produce(topic, "x2")
	p2.produce(topic, "y2")
	p2.end(false)
	p1.end(true)
	add(x1, "x1")
	add(x2, "x2")
	expectLive("interleaved")

	// Resume from after the first record, across all of the above.
	_, got := resume(first[0], 4)
	if want := fmt.Sprintf("%d:c2 ", first[1]); !strings.HasPrefix(got+" ", want) || strings.Contains(got, "a1") || strings.Contains(got, "y") {
		t.Fatalf("resume read back %q: want c2, c3, x1, x2 only", got)
	}
	if n := len(strings.Fields(got)); n != 4 {
		t.Fatalf("resume read back %q: want 4 records (c2 c3 x1 x2)", got)
	}

	// An open transaction, then a plain record after it: nothing of
	// either reaches clients while it is open.
	p1.begin()
	open := p1.produce(topic, "o1", "o2")
	plain := k.produce(t, rec(topic, 0, "", `"after"`))[0].Offset
	// A client resuming meanwhile gets the committed records only, then
	// the rest live once committed.
	resumed, got := resume(x2[0], 0)
	if got != "" {
		t.Fatalf("resume during an open transaction read back %q, want nothing past x2", got)
	}
	hold := time.Now().Add(2 * time.Second)
	for time.Now().Before(hold) {
		live.expectNoMsg(t)
		resumed.expectNoMsg(t)
		time.Sleep(200 * time.Millisecond)
	}
	p1.end(true)
	add(open, "o1", "o2")
	want = append(want, fmt.Sprintf("%d:after", plain))
	wantOpen := strings.Join(want, " ")
	var later []*client.Frame
	for len(later) < 3 {
		later = append(later, resumed.next(t, 20*time.Second))
	}
	if g := valuesOf(later); g != wantOpen {
		t.Fatalf("client resumed during the open transaction got %q once it committed, want %q", g, wantOpen)
	}
	expectLive("open transaction committed")

	// A resume across the whole log: committed records only, in order.
	_, got = resume(-1, 8)
	wantAll := fmt.Sprintf("%d:c1 %d:c2", first[0], first[1])
	if !strings.HasPrefix(got, wantAll) || !strings.HasSuffix(got, wantOpen) || strings.Contains(got, "a1") || strings.Contains(got, "y1") {
		t.Fatalf("resume from the start read back %q", got)
	}
}

// Records kcat (librdkafka) writes with its idempotent producer, compressed,
// are delivered exactly under read_committed: an idempotent batch has a
// producer id but is not transactional.
func TestRealKafkaKcatIdempotent(t *testing.T) {
	k := startRealKafka(t)
	topic := k.topic(t, "idem", 1)
	app := startApp(t, k.testKafka, []consumer.Route{{Topic: topic, Channel: "idem", Format: consumer.FormatJSON}}, nil)
	c := dial(t, app.wsURL)
	c.subscribe(t, "idem")
	lines := []string{`k|{"n":0}`, `k|{"n":1}`, `k|{"n":2}`, `k|{"n":3}`}
	if err := k.tryKcat(topic, 0, []string{"-X", "enable.idempotence=true", "-z", "lz4", "-X", "linger.ms=50"}, lines...); err != nil {
		t.Fatal(err)
	}
	for i := range lines {
		f := c.next(t, 10*time.Second)
		if f.Op != "msg" || f.O != int64(i) || string(f.Data) != fmt.Sprintf(`{"n":%d}`, i) {
			t.Fatalf("message %d: %+v", i, f)
		}
	}
	c.expectNoMsg(t)
}
