package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kpush/kpush/consumer"
	"github.com/kpush/kpush/gateway/client"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Fault tests against the real broker of deployments/local-kafka. They skip
// unless KPUSH_TEST_KAFKA is set (make test-kafka). Some records in each are
// produced by kcat, an outside client, so kpush's reading of the wire format
// is checked against a producer kpush's authors did not write.

// discoveryBound is the promise configs/kpush.yaml makes for
// kafka.metadata_interval (default 5s): a routed topic or partition that
// appears while kpush runs is read within it. The tests run with the
// default interval and allow twice that.
const discoveryBound = 10 * time.Second

// flow produces records to partitions 0 and 1 of a topic every few
// milliseconds from its own client, through whatever happens to the broker,
// and remembers the ones the broker acknowledged.
type flow struct {
	cl     *kgo.Client
	cancel context.CancelFunc
	done   chan struct{}

	mu    sync.Mutex
	acked []*kgo.Record // guarded by mu
	errs  []error       // guarded by mu
}

func startFlow(t *testing.T, k *realKafka, topic string) *flow {
	t.Helper()
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(k.brokers...),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ProducerLinger(0),
		kgo.RecordDeliveryTimeout(90*time.Second),
	)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	ctx, cancel := context.WithCancel(context.Background())
	f := &flow{cl: cl, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(f.done)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for n := 0; ; n++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			p := int32(n % 2)
			r := rec(topic, p, fmt.Sprintf("p%d", p), fmt.Sprintf(`{"src":"flow","n":%d}`, n))
			cl.Produce(context.Background(), r, func(r *kgo.Record, err error) {
				f.mu.Lock()
				defer f.mu.Unlock()
				if err != nil {
					f.errs = append(f.errs, err)
					return
				}
				f.acked = append(f.acked, r)
			})
		}
	}()
	t.Cleanup(func() { cancel(); <-f.done })
	return f
}

func (f *flow) ackedCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.acked)
}

// stop ends the flow, waits until every buffered record is acknowledged
// or failed, and returns the acknowledged ones.
func (f *flow) stop(t *testing.T) []*kgo.Record {
	t.Helper()
	f.cancel()
	<-f.done
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := f.cl.Flush(ctx); err != nil {
		t.Fatalf("flush the flow producer: %v", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.errs) > 0 {
		t.Logf("flow producer: %d records failed (they need not arrive), first: %v", len(f.errs), f.errs[0])
	}
	return f.acked
}

func TestRealKafkaBrokerKill9(t *testing.T) {
	k := startRealKafka(t)
	topic := k.topic(t, "kill9", 2)
	app := startApp(t, k.testKafka, []consumer.Route{{Topic: topic, Channel: "k.{key}", Format: consumer.FormatJSON}}, nil)
	chOf := func(p int32) string { return fmt.Sprintf("k.p%d", p) }
	both, one := dial(t, app.wsURL), dial(t, app.wsURL)
	both.subscribe(t, "k.p0", "k.p1")
	one.subscribe(t, "k.p1")
	bothLog, oneLog := collect(both), collect(one)

	// Before the kill: records from franz-go and from kcat, all delivered.
	var acked []*kgo.Record
	for n := range 10 {
		p := int32(n % 2)
		acked = append(acked, k.produce(t, rec(topic, p, chOf(p)[2:], fmt.Sprintf(`{"src":"kgo","n":%d}`, n)))...)
	}
	k.kcat(t, topic, 0, `p0|{"src":"kcat","n":0}`, `p0|{"src":"kcat","n":1}`)
	k.kcat(t, topic, 1, `p1|{"src":"kcat","n":2}`)
	bothLog.waitMsgs(t, 13, 10*time.Second)

	// Records keep flowing from a producer that outlives the outage.
	fl := startFlow(t, k, topic)
	waitFor(t, 10*time.Second, "the flow to be acknowledged", func() bool { return fl.ackedCount() >= 20 })
	errsBefore := app.metric(t, "kpush_consumer_errors_total")

	k.ctl(t, "kill9")
	killed := time.Now()
	// The outage shows while it lasts in the metrics and /status: both
	// partitions in state error, the ready gauge 0, the error counter
	// rising (the broker is still down: it only comes back on
	// kafka-ctl.sh start below). /readyz stays 200: every pod shares the
	// fault, and failing readiness on all of them would empty the Service.
	waitFor(t, 15*time.Second, "both partitions in state error during the outage", func() bool {
		return app.metric(t, "kpush_consumer_partitions", `state="error"`) == 2
	})
	if got := app.metric(t, "kpush_consumer_errors_total"); got <= errsBefore {
		t.Errorf("kpush_consumer_errors_total = %v during the outage, want above %v", got, errsBefore)
	}
	if got := app.metric(t, "kpush_consumer_ready"); got != 0 {
		t.Errorf("kpush_consumer_ready = %v during the outage, want 0", got)
	}
	if got := httpStatus(app.adminURL + "/readyz"); got != http.StatusOK {
		t.Errorf("/readyz = %d during the outage, want 200 (a Kafka fault is every pod's, not this pod's)", got)
	}
	if got := httpStatus(app.adminURL + "/healthz"); got != http.StatusOK {
		t.Errorf("/healthz = %d during the outage, want 200 (kpush itself is alive)", got)
	}
	st := adminStatus(t, app.adminURL)
	if len(st.NotReading) != 2 || st.NotReading[0].State != consumer.StatusError || st.NotReading[0].Error == "" {
		t.Errorf("/status during the outage lists %+v, want both partitions in state error with the error", st.NotReading)
	}
	t.Logf("outage visible %s after kill -9", time.Since(killed).Round(time.Millisecond))
	ackedAtRestart := fl.ackedCount()

	k.ctl(t, "start")
	waitFor(t, 60*time.Second, "kpush_consumer_ready to return to 1 after the restart", func() bool {
		return app.metric(t, "kpush_consumer_ready") == 1
	})
	if st := adminStatus(t, app.adminURL); len(st.NotReading) != 0 || st.Partitions[consumer.StatusReading] != 2 {
		t.Errorf("/status after the restart: %+v, want both partitions reading", st)
	}
	t.Logf("ready again %s after kill -9", time.Since(killed).Round(time.Millisecond))

	// After the restart: more from both producers; the flow must have
	// got records through after the restart too.
	for n := 10; n < 20; n++ {
		p := int32(n % 2)
		acked = append(acked, k.produce(t, rec(topic, p, chOf(p)[2:], fmt.Sprintf(`{"src":"kgo","n":%d}`, n)))...)
	}
	k.kcat(t, topic, 0, `p0|{"src":"kcat","n":3}`)
	k.kcat(t, topic, 1, `p1|{"src":"kcat","n":4}`, `p1|{"src":"kcat","n":5}`)
	waitFor(t, 30*time.Second, "the flow to get records through after the restart", func() bool {
		return fl.ackedCount() > ackedAtRestart+20
	})
	// The restart gave the partitions a new leader epoch: before delivering
	// records written under it, kpush asked the broker where the epoch it
	// last delivered ends (OffsetForLeaderEpoch, KIP-320). Same log: no reset.
	waitFor(t, 30*time.Second, "a leader-epoch check after the restart", func() bool {
		return app.metric(t, "kpush_consumer_epoch_checks_total", `result="same"`) >= 2
	})
	if got := app.metric(t, "kpush_consumer_resets_total", `reason="leader_epoch"`); got != 0 {
		t.Errorf("kpush_consumer_resets_total{reason=\"leader_epoch\"} = %v after a clean restart, want 0", got)
	}
	acked = append(acked, fl.stop(t)...)

	// What kpush must have delivered is exactly the log, as an independent
	// consumer reads it, and the log holds every acknowledged record.
	logRecs := k.readLog(t, topic, 2)
	inLog := make(map[string]bool)
	kcatSeen := 0
	for _, recs := range logRecs {
		for _, r := range recs {
			inLog[fmt.Sprintf("%d/%d/%s", r.Partition, r.Offset, r.Value)] = true
			if strings.Contains(string(r.Value), `"kcat"`) {
				kcatSeen++
			}
		}
	}
	for _, r := range acked {
		if !inLog[fmt.Sprintf("%d/%d/%s", r.Partition, r.Offset, r.Value)] {
			t.Fatalf("acknowledged record %s at %d/%d is not in the log", r.Value, r.Partition, r.Offset)
		}
	}
	if kcatSeen != 6 {
		t.Fatalf("the log holds %d kcat records, want 6", kcatSeen)
	}
	total := len(logRecs[0]) + len(logRecs[1])
	t.Logf("log: %d records (%d acknowledged to producers), kcat: %d", total, len(acked), kcatSeen)

	sameAsLog(t, "client on both channels", bothLog.waitMsgs(t, total, 30*time.Second),
		map[int32][]*kgo.Record{0: logRecs[0], 1: logRecs[1]}, chOf)
	sameAsLog(t, "client on k.p1", oneLog.waitMsgs(t, len(logRecs[1]), 30*time.Second),
		map[int32][]*kgo.Record{1: logRecs[1]}, chOf)
	// Nothing more arrives, and both connections lived through it all.
	bothLog.stillOpen(t)
	oneLog.stillOpen(t)
	if n := len(bothLog.msgs()); n != total {
		t.Errorf("client on both channels got %d messages, the log holds %d", n, total)
	}
}

func TestRealKafkaTopicCreatedAfterStart(t *testing.T) {
	k := startRealKafka(t)
	topic := fmt.Sprintf("late-%d", time.Now().UnixNano())
	app := startApp(t, k.testKafka, []consumer.Route{{Topic: topic, Channel: "late.{key}", Format: consumer.FormatJSON}},
		func(c *Config) { c.Kafka.MetadataInterval = 0 }) // the default
	c := dial(t, app.wsURL)
	c.subscribe(t, "late.a", "late.b")
	l := collect(c)

	created := time.Now()
	k.createTopic(t, topic, 2)
	// Produced at once, before kpush can have noticed the topic, and still
	// delivered: new topics are read from their first offset. The timed
	// record comes from the in-process client (kcat takes seconds to exit on
	// a loaded machine); kcat writes the other.
	k.produce(t, rec(topic, 0, "a", `{"n":0}`))
	k.kcat(t, topic, 1, `b|{"n":1}`)
	l.waitFor(t, time.Until(created.Add(discoveryBound)), "the record produced right after the topic was created", func(msgs []*client.Frame) bool {
		return hasMsg(msgs, "late.a", 0, 0, `{"n":0}`)
	})
	t.Logf("topic created after start: its first record delivered %s after the topic was created", time.Since(created).Round(time.Millisecond))
	l.waitFor(t, 30*time.Second, "the kcat record", func(msgs []*client.Frame) bool {
		return hasMsg(msgs, "late.b", 1, 0, `{"n":1}`)
	})
	if got := app.metric(t, "kpush_consumer_partitions"); got != 2 {
		t.Errorf("kpush_consumer_partitions = %v, want 2", got)
	}
	app.waitReady(t)
}

func TestRealKafkaPartitionsAddedAfterStart(t *testing.T) {
	k := startRealKafka(t)
	topic := k.topic(t, "grow", 1)
	app := startApp(t, k.testKafka, []consumer.Route{{Topic: topic, Channel: "grow.{partition}", Format: consumer.FormatJSON}},
		func(c *Config) { c.Kafka.MetadataInterval = 0 }) // the default
	c := dial(t, app.wsURL)
	c.subscribe(t, "grow.0", "grow.1", "grow.2")
	l := collect(c)
	k.kcat(t, topic, 0, `x|{"p":0}`)
	l.waitMsgs(t, 1, 10*time.Second)

	added := time.Now()
	k.addPartitions(t, topic, 3) // returns once the producer sees them
	k.produce(t, rec(topic, 1, "x", `{"p":1}`))
	l.waitFor(t, time.Until(added.Add(discoveryBound)), "the first record of new partition 1", func(msgs []*client.Frame) bool {
		return hasMsg(msgs, "grow.1", 1, 0, `{"p":1}`)
	})
	t.Logf("partitions added after start: the first record of one delivered %s after they were added", time.Since(added).Round(time.Millisecond))
	// kcat fails while its metadata does not show the new partition yet;
	// a failed kcat produced nothing, so trying again is safe.
	waitFor(t, 20*time.Second, "kcat to produce to new partition 2", func() bool {
		return k.tryKcat(topic, 2, nil, `x|{"p":2}`) == nil
	})
	l.waitFor(t, 30*time.Second, "the kcat record in new partition 2", func(msgs []*client.Frame) bool {
		return hasMsg(msgs, "grow.2", 2, 0, `{"p":2}`)
	})
	if got := app.metric(t, "kpush_consumer_partitions"); got != 3 {
		t.Errorf("kpush_consumer_partitions = %v, want 3", got)
	}
	if n := len(l.msgs()); n != 3 {
		t.Errorf("%d messages, want 3", n)
	}
}

func TestRealKafkaStartWhileBrokerDown(t *testing.T) {
	k := startRealKafka(t)
	topic := k.topic(t, "down", 1)
	k.ctl(t, "stop")

	p := startKpushProcess(t, fmt.Sprintf(`
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
gateway:
  drain_timeout: 1s
kafka:
  brokers: [%q]
  retry_backoff: 100ms
  retry_backoff_max: 2s
routes:
  - topic: %s
    channel: "down.{key}"
log:
  format: json
`, k.addr, topic))

	// Down: alive, not ready, retrying.
	waitFor(t, 20*time.Second, "kpush to fail metadata requests a few times", func() bool {
		return p.metric(t, "kpush_consumer_errors_total", `op="metadata"`) >= 3
	})
	if got := httpStatus(p.adminURL + "/healthz"); got != http.StatusOK {
		t.Errorf("/healthz = %d while the broker is down, want 200", got)
	}
	// Start-up has not finished (kafka.ready_timeout, 30s, has not passed):
	// not ready yet.
	if got := httpStatus(p.adminURL + "/readyz"); got != http.StatusServiceUnavailable {
		t.Errorf("/readyz = %d while the broker is down at start-up, want 503", got)
	}
	// Waiting must cost next to nothing: with backoff the process sleeps
	// between attempts; a retry loop without it would burn a whole core.
	errs0 := p.metric(t, "kpush_consumer_errors_total", `op="metadata"`)
	const window = 3 * time.Second
	share := p.cpuShare(t, window)
	retries := p.metric(t, "kpush_consumer_errors_total", `op="metadata"`) - errs0
	t.Logf("broker down: kpush used %.1f%% of one core over %s, %v metadata retries", share*100, window, retries)
	if share > 0.05 {
		t.Errorf("kpush used %.1f%% of one core while waiting for the broker, want < 5%%", share*100)
	}
	// retry_backoff_max is 2s: a handful of attempts in the window, not
	// hundreds, and still at least one (it keeps trying).
	if retries < 1 || retries > 10 {
		t.Errorf("%v metadata retries in %s, want between 1 and 10 (backoff 100ms to 2s)", retries, window)
	}
	select {
	case <-p.exited:
		t.Fatalf("kpush exited while the broker was down: %v", p.err)
	default:
	}

	// Up: kpush notices, becomes ready and serves.
	k.ctl(t, "start")
	waitFor(t, 30*time.Second, "kpush /readyz to answer 200 once the broker is up", func() bool {
		return httpStatus(p.adminURL+"/readyz") == http.StatusOK
	})
	c := dial(t, p.wsURL)
	c.subscribe(t, "down.k")
	k.kcat(t, topic, 0, `k|{"after":"restart"}`)
	f := c.next(t, 10*time.Second)
	if f.Op != "msg" || f.Ch != "down.k" || string(f.Data) != `{"after":"restart"}` {
		t.Fatalf("got %+v, want the kcat record on down.k", f)
	}
	p.stop(t)
}

// Records a transactional producer writes end with a commit marker (a
// control record) that is not data: kpush must deliver the records, not the
// marker, and must step past the marker instead of fetching it forever.
func TestRealKafkaTransactionalProducer(t *testing.T) {
	k := startRealKafka(t)
	topic := k.topic(t, "txn", 1)
	p := startKpushProcess(t, fmt.Sprintf(`
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
gateway:
  drain_timeout: 1s
kafka:
  brokers: [%q]
  metadata_interval: 1s
routes:
  - topic: %s
    channel: txn
    format: bytes
log:
  format: json
`, k.addr, topic))
	waitFor(t, 30*time.Second, "kpush /readyz", func() bool { return httpStatus(p.adminURL+"/readyz") == http.StatusOK })
	c := dial(t, p.wsURL)
	c.subscribe(t, "txn")
	// Right after a broker restart (an earlier test's) the transaction
	// coordinator may still be loading its log: kcat then fails in
	// init_transactions, before writing anything, so trying again is safe.
	var kcatErr error
	waitFor(t, 90*time.Second, "kcat's transactional produce", func() bool {
		kcatErr = k.tryKcat(topic, 0, []string{"-X", fmt.Sprintf("transactional.id=kpush-test-%d", time.Now().UnixNano())},
			"k|one", "k|two", "k|three")
		if kcatErr != nil && !strings.Contains(kcatErr.Error(), "init_transactions") {
			t.Fatal(kcatErr)
		}
		return kcatErr == nil
	})
	for i, want := range []string{"one", "two", "three"} {
		f := c.next(t, 10*time.Second)
		if f.Op != "msg" || f.O != int64(i) {
			t.Fatalf("message %d: %+v, want the record at offset %d", i, f, i)
		}
		if got := decodeB64(t, f.Data); got != want {
			t.Fatalf("message %d: %q, want %q", i, got, want)
		}
	}
	// The marker follows at offset 3. It is never delivered, and kpush
	// is idle after it rather than fetching it again and again.
	share := p.cpuShare(t, 2*time.Second)
	t.Logf("after the commit marker: kpush used %.1f%% of one core", share*100)
	if share > 0.05 {
		t.Errorf("kpush used %.1f%% of one core on an idle topic ending in a commit marker, want < 5%%", share*100)
	}
	c.expectNoMsg(t)
	if got := p.metric(t, "kpush_consumer_records_total"); got != 3 {
		t.Errorf("kpush_consumer_records_total = %v, want 3 (the marker is not a record)", got)
	}

	// A client resuming after offset 0 gets the rest read back from Kafka:
	// the read-back also steps over the marker that ends the log, and so
	// completes (recovered) instead of stalling on it.
	r := dial(t, p.wsURL)
	id, err := r.Send(&client.Request{Op: "subscribe", Channels: []string{"txn"}, Since: map[string]map[string]int64{"txn": {"0": 0}}})
	if err != nil {
		t.Fatal(err)
	}
	var replayed []string
	for {
		f := r.next(t, 15*time.Second)
		if f.Op == "msg" {
			replayed = append(replayed, fmt.Sprintf("%d:%s", f.O, decodeB64(t, f.Data)))
			continue
		}
		if f.Op != "ok" || f.ID != id {
			t.Fatalf("got %+v, want the ok for the resume", f)
		}
		if !f.Recovered["txn"] {
			t.Errorf("resume reply %+v: txn not recovered", f)
		}
		break
	}
	if strings.Join(replayed, ",") != "1:two,2:three" {
		t.Errorf("replayed %v, want 1:two,2:three", replayed)
	}
	p.stop(t)
}

// Records kcat (librdkafka) writes with each compression codec and with
// headers are read back exactly: a wire-format check against a producer
// kpush's authors did not write.
func TestRealKafkaKcatCodecsAndHeaders(t *testing.T) {
	k := startRealKafka(t)
	topic := k.topic(t, "kcat", 1)
	app := startApp(t, k.testKafka, []consumer.Route{
		{Topic: topic, Channel: "codec.{key}", Format: consumer.FormatJSON},
		{Topic: topic, Channel: "user.{header:user}", Format: consumer.FormatJSON},
	}, nil)
	c := dial(t, app.wsURL)
	codecs := []string{"none", "gzip", "snappy", "lz4", "zstd"}
	for _, codec := range codecs {
		c.subscribe(t, "codec."+codec)
	}
	c.subscribe(t, "user.42")
	for i, codec := range codecs {
		t.Run(codec, func(t *testing.T) {
			// Several records per batch, so the codec compresses a batch.
			lines := make([]string, 5)
			for j := range lines {
				lines[j] = fmt.Sprintf(`%s|{"codec":%q,"n":%d,"pad":"%s"}`, codec, codec, j, strings.Repeat("ab", 40))
			}
			if err := k.tryKcat(topic, 0, []string{"-z", codec, "-X", "linger.ms=50"}, lines...); err != nil {
				t.Fatal(err)
			}
			for j := range lines {
				f := c.next(t, 10*time.Second)
				want := lines[j][len(codec)+1:]
				if f.Op != "msg" || f.Ch != "codec."+codec || string(f.Data) != want || f.O != int64(i*len(lines)+j) {
					t.Fatalf("got %s %s o=%d %s, want msg codec.%s o=%d %s", f.Op, f.Ch, f.O, f.Data, codec, i*len(lines)+j, want)
				}
			}
		})
	}
	t.Run("headers", func(t *testing.T) {
		if err := k.tryKcat(topic, 0, []string{"-H", "user=42", "-H", "trace=x"}, `h|{"hello":"header"}`); err != nil {
			t.Fatal(err)
		}
		// One record, two routes: codec.h has no subscriber; user.42 has.
		f := c.next(t, 10*time.Second)
		if f.Op != "msg" || f.Ch != "user.42" || string(f.Data) != `{"hello":"header"}` {
			t.Fatalf("got %+v, want the record on user.42", f)
		}
	})
	c.expectNoMsg(t)
}
