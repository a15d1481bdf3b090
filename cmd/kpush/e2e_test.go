package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/kpush/kpush/consumer"
	"github.com/kpush/kpush/gateway/client"
	"github.com/twmb/franz-go/pkg/kgo"
)

func tickRoute(topic string) []consumer.Route {
	return []consumer.Route{{Topic: topic, Channel: "ticks.{key}", Format: consumer.FormatJSON}}
}

// checkMsg verifies a msg frame against the record it came from.
func checkMsg(t *testing.T, f *client.Frame, ch string, r *kgo.Record) {
	t.Helper()
	if f.Op != "msg" {
		t.Fatalf("got %+v, want a msg frame", f)
	}
	if f.Ch != ch || f.P != r.Partition || f.O != r.Offset || f.TS != r.Timestamp.UnixMilli() {
		t.Fatalf("msg ch=%s p=%d o=%d ts=%d, want ch=%s p=%d o=%d ts=%d",
			f.Ch, f.P, f.O, f.TS, ch, r.Partition, r.Offset, r.Timestamp.UnixMilli())
	}
	var got, want any
	if err := json.Unmarshal(f.Data, &got); err != nil {
		t.Fatalf("msg data %q is not JSON: %v", f.Data, err)
	}
	_ = json.Unmarshal(r.Value, &want)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("msg data %s, want %s", f.Data, r.Value)
	}
}

func TestDeliveryReachesExactlySubscribers(t *testing.T) {
	k := startKafka(t)
	topic := k.topic(t, "ticks", 4)
	app := startApp(t, k, tickRoute(topic), nil)

	a, b, c := dial(t, app.wsURL), dial(t, app.wsURL), dial(t, app.wsURL)
	a.subscribe(t, "ticks.AAPL")
	b.subscribe(t, "ticks.MSFT")
	c.subscribe(t, "ticks.AAPL", "ticks.MSFT")

	r := k.produce(t, rec(topic, 2, "AAPL", `{"sym":"AAPL","price":189.5}`))[0]
	checkMsg(t, a.next(t, 10*time.Second), "ticks.AAPL", r)
	checkMsg(t, c.next(t, 10*time.Second), "ticks.AAPL", r)
	b.expectNoMsg(t)

	// Unsubscribe stops delivery to a, not to c.
	if f := a.request(t, &client.Request{Op: "unsubscribe", Channels: []string{"ticks.AAPL"}}); f.Op != "ok" {
		t.Fatalf("unsubscribe: %+v", f)
	}
	r2 := k.produce(t, rec(topic, 2, "AAPL", `{"sym":"AAPL","price":190}`))[0]
	checkMsg(t, c.next(t, 10*time.Second), "ticks.AAPL", r2)
	a.expectNoMsg(t)

	r3 := k.produce(t, rec(topic, 1, "MSFT", `[1,2,3]`))[0]
	checkMsg(t, b.next(t, 10*time.Second), "ticks.MSFT", r3)
	checkMsg(t, c.next(t, 10*time.Second), "ticks.MSFT", r3)
	a.expectNoMsg(t)
}

func TestManyClientsPerPartitionOrder(t *testing.T) {
	const (
		clients    = 500
		channels   = 50
		perChannel = 20
		partitions = 4
	)
	k := startKafka(t)
	topic := k.topic(t, "fan", partitions)
	app := startApp(t, k, tickRoute(topic), nil)

	conns := make([]*wsClient, clients)
	for i := range conns {
		conns[i] = dial(t, app.wsURL)
		conns[i].subscribe(t, fmt.Sprintf("ticks.S%d", i%channels))
	}
	var recs []*kgo.Record
	for n := 0; n < perChannel; n++ {
		for ch := 0; ch < channels; ch++ {
			recs = append(recs, rec(topic, int32(ch%partitions), fmt.Sprintf("S%d", ch), fmt.Sprintf(`{"n":%d}`, n)))
		}
	}
	produced := k.produce(t, recs...)
	want := make(map[string][]int64) // channel → offsets in produce order
	for _, r := range produced {
		ch := "ticks." + string(r.Key)
		want[ch] = append(want[ch], r.Offset)
	}

	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ch := fmt.Sprintf("ticks.S%d", i%channels)
			for j, o := range want[ch] {
				select {
				case f, ok := <-c.frames:
					if !ok {
						errs <- fmt.Errorf("client %d: closed after %d messages", i, j)
						return
					}
					if f.Op != "msg" || f.Ch != ch || f.O != o {
						errs <- fmt.Errorf("client %d message %d: got %s %s o=%d, want msg %s o=%d", i, j, f.Op, f.Ch, f.O, ch, o)
						return
					}
				case <-time.After(20 * time.Second):
					errs <- fmt.Errorf("client %d: only %d of %d messages", i, j, len(want[ch]))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := app.metric(t, "kpush_deliveries_total"); got < clients*perChannel {
		t.Errorf("kpush_deliveries_total = %v, want at least %d", got, clients*perChannel)
	}
}

func TestBadInputGetsDocumentedAnswers(t *testing.T) {
	k := startKafka(t)
	topic := k.topic(t, "bad", 1)
	app := startApp(t, k, tickRoute(topic), func(c *Config) { c.Gateway.MaxMessageBytes = 1024 })

	good := dial(t, app.wsURL)
	good.subscribe(t, "ticks.AAPL")

	// Errors that keep the connection open.
	c := dial(t, app.wsURL)
	cases := []struct {
		name, send, code string
	}{
		{"garbage", `not json at all`, "bad_request"},
		{"wrong type", `{"op":"subscribe","id":1,"channels":"ticks.AAPL"}`, "bad_request"},
		{"unknown field", `{"op":"ping","id":1,"extra":true}`, "bad_request"},
		{"missing op", `{"id":4}`, "bad_request"},
		{"unknown op", `{"op":"dance","id":5}`, "unknown_op"},
		{"invalid channel", `{"op":"subscribe","id":6,"channels":["bad channel"]}`, "invalid_channel"},
		{"empty channels", `{"op":"subscribe","id":7,"channels":[]}`, "bad_request"},
		{"too many", `{"op":"subscribe","id":8,"channels":[` + strings.Repeat(`"a",`, 100) + `"b"]}`, "too_many_subscriptions"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := c.WriteText([]byte(tc.send)); err != nil {
				t.Fatal(err)
			}
			f := c.next(t, 5*time.Second)
			if f.Op != "error" || f.Code != tc.code || f.Message == "" {
				t.Fatalf("got %+v, want error %s with a message", f, tc.code)
			}
		})
	}
	c.expectNoMsg(t) // still open and answering

	// Errors that close the connection with a documented code.
	closers := []struct {
		name string
		op   ws.OpCode
		body []byte
		code int
	}{
		{"oversize", ws.OpText, bytes.Repeat([]byte("x"), 2048), 1009},
		{"binary", ws.OpBinary, []byte{1, 2, 3}, 1003},
		{"invalid utf8", ws.OpText, []byte{0xff, 0xfe, '{', '}'}, 1007},
	}
	for _, tc := range closers {
		t.Run(tc.name, func(t *testing.T) {
			bad := dial(t, app.wsURL)
			bad.subscribe(t, "ticks.AAPL")
			if err := bad.WriteFrame(tc.op, tc.body); err != nil {
				t.Fatal(err)
			}
			if code := bad.closeCode(t, 5*time.Second); code != tc.code {
				t.Fatalf("close code %d, want %d", code, tc.code)
			}
		})
	}

	// The well-behaved client kept receiving throughout.
	r := k.produce(t, rec(topic, 0, "AAPL", `{"ok":true}`))[0]
	checkMsg(t, good.next(t, 10*time.Second), "ticks.AAPL", r)
	if got := app.metric(t, "kpush_client_errors_total", `code="bad_request"`); got < 4 {
		t.Errorf("kpush_client_errors_total{code=bad_request} = %v, want >= 4", got)
	}
}

func TestFormatsAndSkippedRecords(t *testing.T) {
	k := startKafka(t)
	jsonTopic := k.topic(t, "json", 1)
	binTopic := k.topic(t, "bin", 1)
	app := startApp(t, k, []consumer.Route{
		{Topic: jsonTopic, Channel: "j.{key}", Format: consumer.FormatJSON},
		{Topic: binTopic, Channel: "b.{header:user}", Format: consumer.FormatBytes},
	}, nil)
	c := dial(t, app.wsURL)
	c.subscribe(t, "j.k", "b.42")

	// Invalid JSON and a record without a key are skipped and counted; the
	// valid record after them arrives.
	k.produce(t, rec(jsonTopic, 0, "k", `{not json`), rec(jsonTopic, 0, "", `{"a":1}`))
	good := k.produce(t, rec(jsonTopic, 0, "k", `{"a":2}`))[0]
	checkMsg(t, c.next(t, 10*time.Second), "j.k", good)
	waitFor(t, 5*time.Second, "skip counters", func() bool {
		return app.metric(t, "kpush_consumer_records_skipped_total", `reason="invalid_json"`) == 1 &&
			app.metric(t, "kpush_consumer_records_skipped_total", `reason="template"`) == 1
	})

	// Bytes route: base64 data with "enc":"base64", channel from a header.
	payload := []byte{0, 1, 2, 0xff, 'h', 'i'}
	r := &kgo.Record{Topic: binTopic, Partition: 0, Value: payload, Headers: []kgo.RecordHeader{{Key: "user", Value: []byte("42")}}}
	r = k.produce(t, r)[0]
	f := c.next(t, 10*time.Second)
	if f.Op != "msg" || f.Ch != "b.42" || f.Enc != "base64" || f.O != r.Offset {
		t.Fatalf("got %+v, want base64 msg on b.42 at offset %d", f, r.Offset)
	}
	var s string
	if err := json.Unmarshal(f.Data, &s); err != nil {
		t.Fatalf("data %s is not a JSON string: %v", f.Data, err)
	}
	if got, _ := base64.StdEncoding.DecodeString(s); !bytes.Equal(got, payload) {
		t.Fatalf("decoded data %v, want %v", got, payload)
	}
}

func TestFollowsNewTopicsAndPartitions(t *testing.T) {
	k := startKafka(t)
	topic := fmt.Sprintf("later-%d", time.Now().UnixNano())
	// The routed topic does not exist yet when kpush starts.
	app := startApp(t, k, tickRoute(topic), nil)
	c := dial(t, app.wsURL)
	c.subscribe(t, "ticks.K")

	k.createTopic(t, topic, 1)
	// Produced right after creation: read from the first offset, not
	// skipped as "before latest".
	first := k.produce(t, rec(topic, 0, "K", `{"n":1}`))[0]
	checkMsg(t, c.next(t, 15*time.Second), "ticks.K", first)

	k.addPartitions(t, topic, 3)
	waitFor(t, 15*time.Second, "kpush to read the added partitions", func() bool {
		return app.metric(t, "kpush_consumer_partitions") == 3
	})
	r := k.produce(t, rec(topic, 2, "K", `{"n":2}`))[0]
	checkMsg(t, c.next(t, 15*time.Second), "ticks.K", r)
}
