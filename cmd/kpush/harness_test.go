package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kpush/kpush/consumer"
	"github.com/kpush/kpush/gateway/client"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// The end-to-end suite runs against kfake in-process by default, and against
// a real broker when KPUSH_TEST_KAFKA names one (make test-kafka).

type testKafka struct {
	brokers []string
	cl      *kgo.Client
	real    bool
}

func startKafka(t testing.TB) *testKafka {
	t.Helper()
	k := &testKafka{}
	if addr := os.Getenv("KPUSH_TEST_KAFKA"); addr != "" {
		k.brokers = strings.Split(addr, ",")
		k.real = true
	} else {
		c, err := kfake.NewCluster(kfake.NumBrokers(1))
		if err != nil {
			t.Fatalf("start kfake: %v", err)
		}
		t.Cleanup(c.Close)
		k.brokers = c.ListenAddrs()
	}
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(k.brokers...),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ProducerLinger(0),
		kgo.AllowAutoTopicCreation(),
		kgo.MetadataMinAge(100*time.Millisecond),
	)
	if err != nil {
		t.Fatalf("kafka client: %v", err)
	}
	t.Cleanup(cl.Close)
	k.cl = cl
	return k
}

// topic creates a topic with a unique name and returns the name.
func (k *testKafka) topic(t testing.TB, prefix string, partitions int32) string {
	t.Helper()
	name := fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano())
	k.createTopic(t, name, partitions)
	return name
}

func (k *testKafka) createTopic(t testing.TB, name string, partitions int32) {
	t.Helper()
	req := kmsg.NewPtrCreateTopicsRequest()
	rt := kmsg.NewCreateTopicsRequestTopic()
	rt.Topic = name
	rt.NumPartitions = partitions
	rt.ReplicationFactor = 1
	req.Topics = append(req.Topics, rt)
	req.TimeoutMillis = 10000
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := req.RequestWith(ctx, k.cl)
	if err != nil {
		t.Fatalf("create topic %s: %v", name, err)
	}
	for _, tr := range resp.Topics {
		if tr.ErrorCode != 0 && tr.ErrorCode != 36 { // 36: already exists
			t.Fatalf("create topic %s: error code %d", name, tr.ErrorCode)
		}
	}
}

// addPartitions grows a topic to total partitions.
func (k *testKafka) addPartitions(t testing.TB, topic string, total int32) {
	t.Helper()
	req := kmsg.NewPtrCreatePartitionsRequest()
	rt := kmsg.NewCreatePartitionsRequestTopic()
	rt.Topic = topic
	rt.Count = total
	req.Topics = append(req.Topics, rt)
	req.TimeoutMillis = 10000
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := req.RequestWith(ctx, k.cl)
	if err != nil {
		t.Fatalf("add partitions to %s: %v", topic, err)
	}
	for _, tr := range resp.Topics {
		if tr.ErrorCode != 0 {
			t.Fatalf("add partitions to %s: error code %d", topic, tr.ErrorCode)
		}
	}
	// Let the producer see the new partitions before the test writes to them.
	waitFor(t, 20*time.Second, "the producer to see the added partitions", func() bool {
		k.cl.ForceMetadataRefresh()
		mreq := kmsg.NewPtrMetadataRequest()
		mt := kmsg.NewMetadataRequestTopic()
		mt.Topic = kmsg.StringPtr(topic)
		mreq.Topics = append(mreq.Topics, mt)
		mresp, err := mreq.RequestWith(ctx, k.cl)
		return err == nil && len(mresp.Topics) == 1 && int32(len(mresp.Topics[0].Partitions)) == total
	})
	k.cl.ForceMetadataRefresh()
}

// produce writes records synchronously and returns them with partition,
// offset and timestamp filled in.
func (k *testKafka) produce(t testing.TB, recs ...*kgo.Record) []*kgo.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res := k.cl.ProduceSync(ctx, recs...)
	// Right after partitions are added the producer's metadata may lag;
	// that refusal happens before anything is written, so retrying is safe.
	for tries := 0; tries < 50 && res.FirstErr() != nil && strings.Contains(res.FirstErr().Error(), "invalid record partitioning"); tries++ {
		k.cl.ForceMetadataRefresh()
		time.Sleep(100 * time.Millisecond)
		res = k.cl.ProduceSync(ctx, recs...)
	}
	if err := res.FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
	out := make([]*kgo.Record, len(res))
	for i, r := range res {
		out[i] = r.Record
	}
	return out
}

func rec(topic string, partition int32, key, value string) *kgo.Record {
	r := &kgo.Record{Topic: topic, Partition: partition, Value: []byte(value)}
	if key != "" {
		r.Key = []byte(key)
	}
	return r
}

// testApp is kpush running in-process on random loopback ports.
type testApp struct {
	*app
	wsURL    string
	adminURL string
	cancel   context.CancelFunc
	done     chan error
}

func startApp(t testing.TB, k *testKafka, routes []consumer.Route, mutate func(*Config)) *testApp {
	t.Helper()
	cfg := &Config{
		Listen:      "127.0.0.1:0",
		AdminListen: "127.0.0.1:0",
		Routes:      routes,
		Log:         LogConfig{Level: "warn", Format: "text"},
	}
	cfg.Kafka.Brokers = k.brokers
	cfg.Kafka.MetadataInterval = 500 * time.Millisecond
	cfg.Kafka.RetryBackoff = 50 * time.Millisecond
	cfg.Kafka.RetryBackoffMax = time.Second
	cfg.Gateway.DrainTimeout = time.Second
	if mutate != nil {
		mutate(cfg)
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("test config: %v", err)
	}
	var logOut io.Writer = io.Discard
	if testing.Verbose() {
		logOut = os.Stderr
	}
	a, err := newApp(cfg, newLogger(cfg.Log, logOut).With("test", t.Name()))
	if err != nil {
		t.Fatalf("start kpush: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ta := &testApp{
		app:      a,
		wsURL:    "ws://" + a.gwLn.Addr().String() + cfg.Gateway.Path,
		adminURL: "http://" + a.adminLn.Addr().String(),
		cancel:   cancel,
		done:     make(chan error, 1),
	}
	go func() { ta.done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-ta.done:
		case <-time.After(15 * time.Second):
			t.Errorf("kpush did not stop within 15s of cancel")
		}
	})
	ta.waitReady(t)
	return ta
}

func (a *testApp) waitReady(t testing.TB) {
	t.Helper()
	waitFor(t, 30*time.Second, "kpush /readyz to answer 200", func() bool {
		return httpStatus(a.adminURL+"/readyz") == http.StatusOK
	})
}

func httpStatus(url string) int {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// metric returns the sum of a metric's samples whose line contains every
// filter (e.g. `reason="invalid_json"`).
func (a *testApp) metric(t testing.TB, name string, filters ...string) float64 {
	t.Helper()
	return metricAt(t, a.adminURL, name, filters...)
}

// metricAt is metric for the kpush whose admin server is at adminURL.
func metricAt(t testing.TB, adminURL, name string, filters ...string) float64 {
	t.Helper()
	resp, err := http.Get(adminURL + "/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var sum float64
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		ok := true
		for _, f := range filters {
			ok = ok && strings.Contains(line, f)
		}
		if !ok {
			continue
		}
		var v float64
		fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v)
		sum += v
	}
	return sum
}

func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// wsClient is a test WebSocket client whose frames arrive on a channel.
type wsClient struct {
	*client.Conn
	frames chan *client.Frame
	closed chan error // receives the read error (a CloseError when closed by the server)
}

func dial(t testing.TB, url string) *wsClient { return dialWith(t, url, nil) }

// dialWith is dial with dial options (TLS, headers, subprotocols).
func dialWith(t testing.TB, url string, o *client.DialOptions) *wsClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, url, o)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	w := &wsClient{Conn: c, frames: make(chan *client.Frame, 4096), closed: make(chan error, 1)}
	go func() {
		for {
			f, err := c.Read()
			if err != nil {
				w.closed <- err
				close(w.frames)
				return
			}
			w.frames <- f
		}
	}()
	t.Cleanup(func() { c.NetConn().Close() })
	return w
}

// next returns the next frame or fails after d.
func (w *wsClient) next(t testing.TB, d time.Duration) *client.Frame {
	t.Helper()
	select {
	case f, ok := <-w.frames:
		if !ok {
			t.Fatalf("connection closed while waiting for a frame: %v", <-w.closed)
		}
		return f
	case <-time.After(d):
		t.Fatalf("no frame within %s", d)
	}
	return nil
}

// request sends r and returns the reply with its id, failing on anything
// else arriving first (msg frames are returned through skipped, if non-nil).
func (w *wsClient) request(t testing.TB, r *client.Request) *client.Frame {
	t.Helper()
	id, err := w.Send(r)
	if err != nil {
		t.Fatalf("send %s: %v", r.Op, err)
	}
	for {
		f := w.next(t, 10*time.Second)
		if f.Op != "msg" && f.ID == id {
			return f
		}
		if f.Op != "msg" {
			t.Fatalf("reply for id %d, want id %d: %+v", f.ID, id, f)
		}
	}
}

func (w *wsClient) subscribe(t testing.TB, chs ...string) {
	t.Helper()
	if f := w.request(t, &client.Request{Op: "subscribe", Channels: chs}); f.Op != "ok" {
		t.Fatalf("subscribe %v: %+v", chs, f)
	}
}

// expectNoMsg checks that nothing but the reply to a ping is pending: frames
// for a record are queued before any later reply, so a pong with no msg
// ahead of it proves none was delivered.
func (w *wsClient) expectNoMsg(t testing.TB) {
	t.Helper()
	id, err := w.Send(&client.Request{Op: "ping"})
	if err != nil {
		t.Fatalf("ping: %v", err)
	}
	f := w.next(t, 10*time.Second)
	if f.Op != "pong" || f.ID != id {
		t.Fatalf("got %+v, want only the pong for id %d", f, id)
	}
}

// closeCode waits for the server to close the connection and returns the
// close code.
func (w *wsClient) closeCode(t testing.TB, d time.Duration) int {
	t.Helper()
	code, err := w.waitClose(d)
	if err != nil {
		t.Fatal(err)
	}
	return code
}

// waitClose is closeCode for use off the test goroutine.
func (w *wsClient) waitClose(d time.Duration) (int, error) {
	deadline := time.After(d)
	for {
		select {
		case _, ok := <-w.frames:
			if ok {
				continue
			}
			err := <-w.closed
			var ce client.CloseError
			if errors.As(err, &ce) {
				return int(ce.Code), nil
			}
			return 0, fmt.Errorf("connection ended without a close frame: %v", err)
		case <-deadline:
			return 0, fmt.Errorf("connection not closed within %s", d)
		}
	}
}
