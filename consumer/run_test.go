package consumer

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kpush/kpush/router"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Tests of Consumer.Run on kfake: exactly which records reach the
// Destination, from which offsets, with which policy, as partitions,
// topics and routes come and go.

// delivered is one record as the Destination saw it, copied.
type delivered struct {
	topic, channel string
	partition      int32
	offset         int64
	value          string
	epoch          uint64
	policy         *router.Policy
}

func (d delivered) String() string {
	return fmt.Sprintf("%s/%d@%d→%s=%s", d.topic, d.partition, d.offset, d.channel, d.value)
}

// recordLog is a Destination that keeps a copy of every record.
type recordLog struct {
	dropsNothing
	mu   sync.Mutex
	recs []delivered
}

func (l *recordLog) Deliver(r *router.Record) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = append(l.recs, delivered{r.Topic, r.Channel, r.Partition, r.Offset, string(r.Value), r.Epoch, r.Policy})
}

func (l *recordLog) all() []delivered {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.recs)
}

// strings returns every record delivered so far, sorted.
func (l *recordLog) strings() []string {
	var out []string
	for _, d := range l.all() {
		out = append(out, d.String())
	}
	slices.Sort(out)
	return out
}

// waitValue waits until a record of the given value has been delivered.
func (l *recordLog) waitValue(t *testing.T, value string) {
	t.Helper()
	waitUntil(t, 20*time.Second, "record "+value, func() bool {
		for _, s := range l.strings() {
			if strings.HasSuffix(s, "="+value) {
				return true
			}
		}
		return false
	})
}

// expect waits until every record of want has been delivered, then checks
// that nothing else was. With want holding the last record produced to
// each partition, anything delivered that should not have been is seen:
// a partition's records are delivered in offset order.
func (l *recordLog) expect(t *testing.T, want ...string) {
	t.Helper()
	want = slices.Clone(want)
	slices.Sort(want)
	waitUntil(t, 20*time.Second, fmt.Sprintf("%d records", len(want)), func() bool {
		got := l.strings()
		for _, w := range want {
			if !slices.Contains(got, w) {
				return false
			}
		}
		return true
	})
	if got := l.strings(); !slices.Equal(got, want) {
		t.Fatalf("delivered:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// produceTo writes key=value records to one partition of topic. A
// partition or topic the producer does not know yet (just created) is
// waited for, up to 20 seconds.
func (k *fakeKafka) produceTo(t *testing.T, topic string, partition int32, kvs ...string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		var recs []*kgo.Record
		for _, kv := range kvs {
			key, value, _ := strings.Cut(kv, "=")
			recs = append(recs, &kgo.Record{Topic: topic, Partition: partition, Key: []byte(key), Value: []byte(value)})
		}
		err := k.cl.ProduceSync(ctx, recs...).FirstErr()
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) || !strings.Contains(err.Error(), "invalid record partitioning") {
			t.Fatalf("produce to %s/%d: %v", topic, partition, err)
		}
		k.cl.ForceMetadataRefresh()
		time.Sleep(10 * time.Millisecond) // then try again: polling the producer's metadata
	}
}

func (k *fakeKafka) createTopic(t *testing.T, topic string, partitions int32) {
	t.Helper()
	req := kmsg.NewPtrCreateTopicsRequest()
	rt := kmsg.NewCreateTopicsRequestTopic()
	rt.Topic, rt.NumPartitions, rt.ReplicationFactor = topic, partitions, 1
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(context.Background(), k.cl)
	if err == nil && resp.Topics[0].ErrorCode != 0 {
		err = fmt.Errorf("error code %d", resp.Topics[0].ErrorCode)
	}
	if err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
}

func (k *fakeKafka) addPartitions(t *testing.T, topic string, total int32) {
	t.Helper()
	req := kmsg.NewPtrCreatePartitionsRequest()
	rt := kmsg.NewCreatePartitionsRequestTopic()
	rt.Topic, rt.Count = topic, total
	req.Topics = append(req.Topics, rt)
	req.TimeoutMillis = 10000
	resp, err := req.RequestWith(context.Background(), k.cl)
	if err == nil && resp.Topics[0].ErrorCode != 0 {
		err = fmt.Errorf("error code %d", resp.Topics[0].ErrorCode)
	}
	if err != nil {
		t.Fatalf("grow %s to %d partitions: %v", topic, total, err)
	}
}

func newRunning(t *testing.T, k *fakeKafka, cfg Config, routes []Route) (*Consumer, *recordLog) {
	t.Helper()
	log := &recordLog{}
	cfg.Brokers = k.c.ListenAddrs()
	cfg.MetadataInterval = 100 * time.Millisecond
	cfg.FetchMaxWait = 100 * time.Millisecond
	c, err := New(cfg, routes, log, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	runConsumer(t, c)
	return c, log
}

// Run delivers every record of every partition once per route that routes
// it, in offset order per partition, with the route's compiled policy and
// one continuity epoch per partition reader.
func TestRunDeliversEveryRoutedRecord(t *testing.T) {
	k := startFake(t, "t", 2)
	k.produceTo(t, "t", 0, "a={\"n\":1}", "b={\"n\":2}")
	k.produceTo(t, "t", 1, "a=not json")
	c, log := newRunning(t, k, Config{Start: "earliest"}, []Route{
		{Topic: "t", Channel: "j.{key}"},
		{Topic: "t", Channel: "raw.{partition}", Format: FormatBytes, Slow: SlowConflate},
	})
	waitUntil(t, 20*time.Second, "both partitions read", func() bool { return len(c.Status()) == 2 && c.Ready() })
	k.produceTo(t, "t", 1, "c=3")
	log.expect(t,
		`t/0@0→j.a={"n":1}`, `t/0@0→raw.0={"n":1}`,
		`t/0@1→j.b={"n":2}`, `t/0@1→raw.0={"n":2}`,
		`t/1@0→raw.1=not json`, // not JSON: the json route skips it
		`t/1@1→j.c=3`, `t/1@1→raw.1=3`,
	)
	pols := c.table.Load().all
	epochs := map[int32]uint64{}
	lastOffset := map[string]int64{}
	for _, d := range log.all() {
		want := pols[0].policy
		if strings.HasPrefix(d.channel, "raw.") {
			want = pols[1].policy
		}
		if d.policy != want {
			t.Errorf("%v carries policy %+v, want its route's %+v", d, d.policy, want)
		}
		if e, ok := epochs[d.partition]; d.epoch == 0 || ok && e != d.epoch {
			t.Errorf("%v: epoch %d, want one non-zero epoch per partition (%d)", d, d.epoch, e)
		}
		epochs[d.partition] = d.epoch
		key := fmt.Sprint(d.partition, d.channel[:2])
		if o, ok := lastOffset[key]; ok && d.offset <= o {
			t.Errorf("%v delivered after offset %d: not in offset order", d, o)
		}
		lastOffset[key] = d.offset
	}
	if epochs[0] == epochs[1] {
		t.Error("two partitions share a continuity epoch")
	}
	if !pols[1].policy.Binary || !pols[1].policy.Conflate || pols[0].policy.Binary {
		t.Errorf("policies %+v %+v do not say the routes' format and slow policy", *pols[0].policy, *pols[1].policy)
	}
}

// Partitions added to a routed topic, and a routed topic created after
// start-up, are read from their first offset, so nothing produced to them
// before their readers start is missed; topics known at start-up begin at
// kafka.start (latest).
func TestRunFollowsNewPartitionsAndTopics(t *testing.T) {
	k := startFake(t, "t", 1)
	k.produceTo(t, "t", 0, "k=old")
	c, log := newRunning(t, k, Config{}, []Route{
		{Topic: "t", Channel: "t.{partition}", Format: FormatBytes},
		{Topic: "late", Channel: "l.{key}", Format: FormatBytes},
	})
	waitUntil(t, 20*time.Second, "t/0 read", func() bool { return len(c.Status()) == 1 && c.Ready() })

	k.addPartitions(t, "t", 3)
	k.produceTo(t, "t", 2, "k=p2-first") // before its reader can exist
	k.createTopic(t, "late", 2)
	k.produceTo(t, "late", 1, "x=late-first")
	waitUntil(t, 20*time.Second, "5 partition readers", func() bool { return len(c.Status()) == 5 })
	k.produceTo(t, "t", 0, "k=p0")
	k.produceTo(t, "t", 1, "k=p1")
	k.produceTo(t, "late", 0, "y=late0")
	k.produceTo(t, "t", 2, "k=done")
	log.expect(t,
		"t/0@1→t.0=p0", // t/0@0 was there at start: latest skips it
		"t/1@0→t.1=p1",
		"t/2@0→t.2=p2-first",
		"t/2@1→t.2=done",
		"late/0@0→l.y=late0",
		"late/1@0→l.x=late-first",
	)
}

// SetRoutes at runtime: a route added to a topic being read applies from
// the topic's current position (no record read twice); a newly routed topic
// starts at kafka.start; a removed route's topic stops being delivered.
func TestSetRoutesAtRuntime(t *testing.T) {
	k := startFake(t, "t", 1)
	k.createTopic(t, "u", 1)
	k.produceTo(t, "u", 0, "k=u-before")
	a := Route{Topic: "t", Channel: "a.{key}", Format: FormatBytes}
	c, log := newRunning(t, k, Config{}, []Route{a})
	waitUntil(t, 20*time.Second, "t read", func() bool { return len(c.Status()) == 1 && c.Ready() })
	k.produceTo(t, "t", 0, "k=1")
	log.expect(t, "t/0@0→a.k=1")

	b := Route{Topic: "t", Channel: "b.{key}", Format: FormatBytes, Slow: SlowConflate}
	u := Route{Topic: "u", Channel: "u.{key}", Format: FormatBytes}
	if err := c.SetRoutes([]Route{a, b, u}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "u read", func() bool { return len(c.Status()) == 2 && c.Ready() })
	k.produceTo(t, "u", 0, "k=u1")
	k.produceTo(t, "t", 0, "k=2")
	// The fetch that carries 2 may have been dispatched before the new
	// routes: 2 reaches b once a fetch after SetRoutes carries it. Produce
	// until one does, then check that nothing was delivered twice.
	polls := 0
	waitUntil(t, 20*time.Second, "route b to deliver", func() bool {
		for _, s := range log.strings() {
			if strings.Contains(s, "→b.k=") {
				return true
			}
		}
		if polls++; polls%20 == 0 {
			k.produceTo(t, "t", 0, "k=more")
		}
		return false
	})
	k.produceTo(t, "t", 0, "k=3")
	log.waitValue(t, "3")
	seen := map[string]bool{}
	var bPolicy *router.Policy
	for _, d := range log.all() {
		if seen[d.String()] {
			t.Errorf("%v delivered twice", d)
		}
		seen[d.String()] = true
		if d.channel == "b.k" {
			bPolicy = d.policy
		}
		if d.value == "u-before" {
			t.Errorf("%v: a newly routed topic starts at kafka.start (latest)", d)
		}
	}
	for _, want := range []string{"t/0@0→a.k=1", "u/0@1→u.k=u1", "t/0@1→a.k=2"} {
		if !seen[want] {
			t.Errorf("%s not delivered", want)
		}
	}
	if bPolicy == nil || !bPolicy.Conflate {
		t.Errorf("route b's records carry policy %+v, want its own (conflate)", bPolicy)
	}
	if seen["t/0@0→b.k=1"] {
		t.Error("the added route got a record read before it was added")
	}

	// Remove t's routes: its reader stops, and records produced to t are
	// no longer delivered.
	if err := c.SetRoutes([]Route{u}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "t's reader to stop", func() bool { return len(c.Status()) == 1 })
	before := len(log.all())
	k.produceTo(t, "t", 0, "k=unrouted")
	k.produceTo(t, "u", 0, "k=u2")
	waitUntil(t, 20*time.Second, "u2", func() bool { return len(log.all()) > before })
	for _, d := range log.all()[before:] {
		if d.String() != "u/0@2→u.k=u2" {
			t.Errorf("after t was unrouted, delivered %v", d)
		}
	}
}
