package consumer

import (
	"context"
	"github.com/kpush/kpush/router"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// fakeKafka is an in-process kfake broker with one topic and a producer.
type fakeKafka struct {
	c  *kfake.Cluster
	cl *kgo.Client
}

func startFake(t *testing.T, topic string, partitions int32) *fakeKafka {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, topic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.ProducerLinger(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return &fakeKafka{c: c, cl: cl}
}

func (k *fakeKafka) produce(t *testing.T, topic string, values ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var recs []*kgo.Record
	for _, v := range values {
		recs = append(recs, &kgo.Record{Topic: topic, Value: []byte(v)})
	}
	if err := k.cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

// runConsumer starts c and stops it when the test ends.
// runFastConsumer runs a consumer of topic t (route t → c, bytes) on
// brokers that reads metadata and waits on fetches for 100 ms at most,
// starting at start ("" for the default), until the test ends, and
// returns it.
func runFastConsumer(t *testing.T, brokers []string, start string, sink Destination) *Consumer {
	t.Helper()
	c, err := New(Config{Brokers: brokers, Start: start, MetadataInterval: 100 * time.Millisecond, FetchMaxWait: 100 * time.Millisecond},
		[]Route{{Topic: "t", Channel: "c", Format: FormatBytes}}, sink, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	runConsumer(t, c)
	return c
}

func runConsumer(t *testing.T, c *Consumer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("consumer did not stop within 20s")
		}
	})
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// chanSink hands copies of delivered values to a channel; block, while
// set, makes Deliver wait for it to be closed (a stuck Destination).
type chanSink struct {
	dropsNothing
	mu    sync.Mutex
	block chan struct{}
	got   chan string
}

func (s *chanSink) Deliver(m *router.Record) {
	s.mu.Lock()
	b := s.block
	s.mu.Unlock()
	if b != nil {
		<-b
	}
	s.got <- strconv.FormatInt(m.Offset, 10) + ":" + string(m.Value)
}

// A metadata error for a routed topic at start-up (no leader yet) must not
// make start: latest read the topic from its beginning once the error
// clears.
func TestStartupMetadataErrorKeepsLatest(t *testing.T) {
	k := startFake(t, "t", 1)
	k.produce(t, "t", "old0", "old1", "old2")
	host, port, _ := net.SplitHostPort(k.c.ListenAddrs()[0])
	portN, _ := strconv.Atoi(port)
	failures := 0
	k.c.ControlKey(int16(kmsg.Metadata), func(req kmsg.Request) (kmsg.Response, error, bool) {
		// Only kafka-go's requests (Metadata v8 at most; franz-go, the
		// test's producer, asks with a newer version).
		if failures >= 3 || req.GetVersion() > 8 {
			return nil, nil, false
		}
		failures++
		k.c.KeepControl()
		resp := req.ResponseKind().(*kmsg.MetadataResponse)
		resp.SetVersion(req.GetVersion())
		b := kmsg.NewMetadataResponseBroker()
		b.NodeID, b.Host, b.Port = 0, host, int32(portN)
		resp.Brokers = append(resp.Brokers, b)
		resp.ControllerID = 0
		mt := kmsg.NewMetadataResponseTopic()
		mt.Topic = kmsg.StringPtr("t")
		mt.ErrorCode = 5 // LEADER_NOT_AVAILABLE
		resp.Topics = append(resp.Topics, mt)
		return resp, nil, true
	})
	sink := &chanSink{got: make(chan string, 100)}
	c, err := New(Config{Brokers: k.c.ListenAddrs(), MetadataInterval: 100 * time.Millisecond, RetryBackoff: 10 * time.Millisecond},
		[]Route{{Topic: "t", Channel: "c", Format: FormatBytes}}, sink, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	runConsumer(t, c)
	waitUntil(t, 20*time.Second, "the partition to be read", func() bool { return len(c.Status()) == 1 && c.Ready() })
	k.produce(t, "t", "new")
	select {
	case got := <-sink.got:
		if got != "3:new" {
			t.Fatalf("first record delivered %q, want 3:new (start: latest; the metadata error must not replay the topic)", got)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the new record was not delivered; status %+v, failed metadata requests %d", c.Status(), failures)
	}
	if failures < 1 {
		t.Fatal("no metadata request was failed: the test tested nothing")
	}
}

// A partition reader stuck in the Destination (this pod's fault) shows as stalled
// once its loop has not turned for the stall bound, and stops being so once
// it turns again. Kafka being down never shows as a stall: every request
// has a deadline shorter than the bound.
func TestStalledReader(t *testing.T) {
	k := startFake(t, "t", 1)
	block := make(chan struct{})
	sink := &chanSink{got: make(chan string, 100), block: block}
	c, err := New(Config{Brokers: k.c.ListenAddrs(), Start: "earliest", MetadataInterval: 100 * time.Millisecond},
		[]Route{{Topic: "t", Channel: "c", Format: FormatBytes}}, sink, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	c.stallLimit = time.Second // above fetch_max_wait (500ms): an idle long poll is no stall
	runConsumer(t, c)
	k.produce(t, "t", "x")
	waitUntil(t, 20*time.Second, "the reader to be reported stalled", func() bool { return len(c.Stalled()) == 1 })
	if st := c.Status(); len(st) != 1 || !st[0].Stalled {
		t.Fatalf("Status() = %+v, want the partition marked stalled", st)
	}
	sink.mu.Lock()
	sink.block = nil
	sink.mu.Unlock()
	close(block)
	if got := <-sink.got; got != "0:x" {
		t.Fatalf("delivered %q, want 0:x", got)
	}
	waitUntil(t, 20*time.Second, "the reader to turn again", func() bool { return len(c.Stalled()) == 0 })
}

// Start-up is finished once every partition has answered a fetch; with no
// broker at all, once kafka.ready_timeout has passed.
func TestStarted(t *testing.T) {
	k := startFake(t, "t", 2)
	c, err := New(Config{Brokers: k.c.ListenAddrs(), MetadataInterval: 100 * time.Millisecond, ReadyTimeout: 10 * time.Minute},
		[]Route{{Topic: "t", Channel: "c"}}, &chanSink{got: make(chan string, 10)}, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Started() {
		t.Fatal("Started before Run")
	}
	runConsumer(t, c)
	waitUntil(t, 20*time.Second, "start-up to finish", c.Started)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close() // nothing listens there now
	c2, err := New(Config{Brokers: []string{dead}, ReadyTimeout: 300 * time.Millisecond, DialTimeout: 100 * time.Millisecond},
		[]Route{{Topic: "t", Channel: "c"}}, &chanSink{got: make(chan string, 10)}, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	runConsumer(t, c2)
	if c2.Started() {
		t.Fatal("Started with no broker before kafka.ready_timeout")
	}
	waitUntil(t, 20*time.Second, "kafka.ready_timeout to pass", c2.Started)
}

// kpush asks brokers for the metadata of its routed topics only, never the
// whole cluster's, also after SetRoutes routes another topic (which is
// then read).
func TestMetadataForRoutedTopicsOnly(t *testing.T) {
	k := startFake(t, "t", 1)
	var mu sync.Mutex
	var asked []string // topics per kafka-go Metadata request, "*" for all
	k.c.ControlKey(int16(kmsg.Metadata), func(req kmsg.Request) (kmsg.Response, error, bool) {
		k.c.KeepControl()
		r := req.(*kmsg.MetadataRequest)
		if r.GetVersion() > 8 { // franz-go, the test's producer
			return nil, nil, false
		}
		var names []string
		if r.Topics == nil {
			names = []string{"*"}
		}
		for _, tp := range r.Topics {
			if tp.Topic != nil {
				names = append(names, *tp.Topic)
			}
		}
		mu.Lock()
		asked = append(asked, strings.Join(names, ","))
		mu.Unlock()
		return nil, nil, false
	})
	if _, err := k.cl.Request(context.Background(), &kmsg.CreateTopicsRequest{Topics: []kmsg.CreateTopicsRequestTopic{{Topic: "u", NumPartitions: 1, ReplicationFactor: 1}}}); err != nil {
		t.Fatal(err)
	}
	sink := &chanSink{got: make(chan string, 10)}
	c, err := New(Config{Brokers: k.c.ListenAddrs(), MetadataInterval: 100 * time.Millisecond},
		[]Route{{Topic: "t", Channel: "c", Format: FormatBytes}}, sink, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	runConsumer(t, c)
	waitUntil(t, 20*time.Second, "t to be read", func() bool { return len(c.Status()) == 1 && c.Ready() })
	if err := c.SetRoutes([]Route{{Topic: "t", Channel: "c", Format: FormatBytes}, {Topic: "u", Channel: "d", Format: FormatBytes}}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "u to be read", func() bool { return len(c.Status()) == 2 && c.Ready() })
	k.produce(t, "u", "hello")
	select {
	case got := <-sink.got:
		if got != "0:hello" {
			t.Fatalf("delivered %q, want 0:hello from u", got)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the record of the newly routed topic was not delivered")
	}
	mu.Lock()
	defer mu.Unlock()
	sawU := false
	for _, a := range asked {
		if a != "t" && a != "t,u" {
			t.Errorf("metadata request for %q, want only the routed topics (t, then t,u)", a)
		}
		sawU = sawU || a == "t,u"
	}
	if !sawU {
		t.Errorf("no metadata request for t,u after SetRoutes: %q", asked)
	}
}

// The partitions one broker leads are fetched with one request: an idle
// consumer of 8 partitions sends Fetch requests that carry all 8, and a
// record on any of them is still delivered.
func TestOneFetchPerBroker(t *testing.T) {
	k := startFake(t, "t", 8)
	var mu sync.Mutex
	widest := 0
	// covered is what one request fetches: the partitions it lists, or
	// with a fetch session (KIP-227) those the session holds after it
	// (an incremental request lists only changes).
	covered := map[int32]bool{}
	k.c.ControlKey(int16(kmsg.Fetch), func(req kmsg.Request) (kmsg.Response, error, bool) {
		k.c.KeepControl()
		r := req.(*kmsg.FetchRequest)
		mu.Lock()
		defer mu.Unlock()
		if r.SessionEpoch <= 0 {
			clear(covered)
		}
		for _, tp := range r.Topics {
			for _, p := range tp.Partitions {
				covered[p.Partition] = true
			}
		}
		for _, ft := range r.ForgottenTopics {
			for _, p := range ft.Partitions {
				delete(covered, p)
			}
		}
		widest = max(widest, len(covered))
		return nil, nil, false
	})
	sink := &chanSink{got: make(chan string, 10)}
	runFastConsumer(t, k.c.ListenAddrs(), "", sink)
	waitUntil(t, 20*time.Second, "a fetch request carrying all 8 partitions", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return widest == 8
	})
	k.produce(t, "t", "hello") // partition 0 (manual partitioner)
	select {
	case got := <-sink.got:
		if got != "0:hello" {
			t.Fatalf("delivered %q, want 0:hello", got)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the record was not delivered")
	}
}
