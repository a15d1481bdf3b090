package consumer

import (
	"bytes"
	"fmt"
	"github.com/kpush/kpush/router"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	fetchAPI "github.com/segmentio/kafka-go/protocol/fetch"
)

// dropsNothing is a test Destination's DropRetention: these tests retain
// nothing.
type dropsNothing struct{}

func (dropsNothing) DropRetention(...*router.Retention) {}

// recordingSink keeps a copy of every record (the consumer reuses the
// Record and its Value after Deliver returns).
type recordingSink struct {
	dropsNothing
	msgs []router.Record
}

func (s *recordingSink) Deliver(m *router.Record) {
	c := *m
	c.Value = bytes.Clone(m.Value)
	s.msgs = append(s.msgs, c)
}

func newTestReader(t testing.TB, routes []Route, sink Destination) *partReader {
	t.Helper()
	c, err := New(Config{}, routes, sink, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return c.newPartReader(topicPartition{"t", 3}, &partState{})
}

func kr(offset int64, key, value string, headers ...string) kafka.Record {
	r := kafka.Record{Offset: offset, Time: time.UnixMilli(1_700_000_000_000 + offset)}
	if key != "" {
		r.Key = kafka.NewBytes([]byte(key))
	}
	if value != "" {
		r.Value = kafka.NewBytes([]byte(value))
	}
	for i := 0; i+1 < len(headers); i += 2 {
		r.Headers = append(r.Headers, kafka.Header{Key: headers[i], Value: []byte(headers[i+1])})
	}
	return r
}

// stream is a fetch response's records: batches, some of them control
// batches (transaction markers), as kafka-go decodes them.
func stream(batches ...kafka.RecordReader) kafka.RecordReader {
	return &protocol.RecordStream{Records: batches}
}

func data(recs ...kafka.Record) kafka.RecordReader {
	return &protocol.RecordBatch{Records: kafka.NewRecordReader(recs...)}
}

func control(offset int64) kafka.RecordReader {
	return &protocol.ControlBatch{Records: kafka.NewRecordReader(kr(offset, "\x00\x00\x00\x01", "\x00\x00\x00\x00\x00\x00"))}
}

// txn is a batch of a transactional producer.
func txn(pid int64, recs ...kafka.Record) kafka.RecordReader {
	return &protocol.RecordBatch{Attributes: protocol.Transactional, BaseOffset: recs[0].Offset, ProducerID: pid, Records: kafka.NewRecordReader(recs...)}
}

// marker is a transaction marker of producer pid: commit or abort.
func marker(pid, offset int64, commit bool) kafka.RecordReader {
	key := "\x00\x00\x00\x00"
	if commit {
		key = "\x00\x00\x00\x01"
	}
	return &protocol.ControlBatch{Attributes: protocol.Transactional | protocol.Control, BaseOffset: offset, ProducerID: pid,
		Records: kafka.NewRecordReader(kr(offset, key, "\x00\x00\x00\x00\x00\x00"))}
}

// Under read_committed, records of aborted transactions are never
// delivered, whatever the batches around them; under read_uncommitted all
// data records are.
func TestDispatchTransactions(t *testing.T) {
	routes := []Route{{Topic: "t", Channel: "c", Format: FormatBytes}}
	abortedAt := func(pid, first int64) fetchAPI.ResponseTransaction {
		return fetchAPI.ResponseTransaction{ProducerID: pid, FirstOffset: first}
	}
	cases := []struct {
		name      string
		isolation string
		from      int64
		records   kafka.RecordReader
		aborted   []fetchAPI.ResponseTransaction
		next      int64
		want      string // offsets:values delivered
	}{
		{"commit", ReadCommitted, 0,
			stream(txn(7, kr(0, "", "a"), kr(1, "", "b")), marker(7, 2, true)), nil, 3, "0:a 1:b"},
		{"abort", ReadCommitted, 0,
			stream(txn(7, kr(0, "", "a"), kr(1, "", "b")), marker(7, 2, false), data(kr(3, "", "plain"))),
			[]fetchAPI.ResponseTransaction{abortedAt(7, 0)}, 4, "3:plain"},
		{"two producers interleaved, one aborted", ReadCommitted, 0,
			stream(txn(7, kr(0, "", "x1")), txn(8, kr(1, "", "y1")), txn(7, kr(2, "", "x2")), txn(8, kr(3, "", "y2")),
				marker(8, 4, false), marker(7, 5, true)),
			[]fetchAPI.ResponseTransaction{abortedAt(8, 1)}, 6, "0:x1 2:x2"},
		{"aborted then a new transaction of the same producer", ReadCommitted, 0,
			stream(txn(7, kr(0, "", "gone")), marker(7, 1, false), txn(7, kr(2, "", "kept")), marker(7, 3, true)),
			[]fetchAPI.ResponseTransaction{abortedAt(7, 0)}, 4, "2:kept"},
		{"fetch starting inside an aborted transaction", ReadCommitted, 1,
			stream(txn(7, kr(0, "", "a"), kr(1, "", "b")), marker(7, 2, false), txn(7, kr(3, "", "c"))),
			[]fetchAPI.ResponseTransaction{abortedAt(7, 0)}, 4, "3:c"},
		{"read_uncommitted delivers aborted records, never markers", ReadUncommitted, 0,
			stream(txn(7, kr(0, "", "a")), marker(7, 1, false)),
			[]fetchAPI.ResponseTransaction{abortedAt(7, 0)}, 2, "0:a"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			sink := sinkFunc(func(m *router.Record) { got = append(got, fmt.Sprintf("%d:%s", m.Offset, m.Value)) })
			c, err := New(Config{Isolation: tc.isolation}, routes, sink, prometheus.NewRegistry(), nil)
			if err != nil {
				t.Fatal(err)
			}
			r := c.newPartReader(topicPartition{"t", 0}, &partState{})
			if next := r.dispatch(&fetched{records: tc.records, aborted: tc.aborted}, tc.from); next != tc.next {
				t.Errorf("next offset %d, want %d", next, tc.next)
			}
			if strings.Join(got, " ") != tc.want {
				t.Errorf("delivered %q, want %q", strings.Join(got, " "), tc.want)
			}
		})
	}
}

func TestIsolationConfig(t *testing.T) {
	c := Config{}
	c.SetDefaults()
	if c.Isolation != ReadCommitted {
		t.Fatalf("default isolation %q, want read_committed", c.Isolation)
	}
	c.Isolation = "serializable"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "kafka.isolation") {
		t.Fatalf("Validate() = %v, want an error naming kafka.isolation", err)
	}
}

func TestDispatch(t *testing.T) {
	ticks := []Route{{Topic: "t", Channel: "ticks.{key}", Format: FormatJSON}}
	cases := []struct {
		name    string
		routes  []Route
		from    int64
		records kafka.RecordReader
		next    int64
		want    []string // "channel offset value"
		skipped map[string]float64
	}{
		{
			name:    "records in order",
			routes:  ticks,
			from:    5,
			records: stream(data(kr(5, "A", `{"p":1}`), kr(6, "B", `{"p":2}`))),
			next:    7,
			want:    []string{`ticks.A 5 {"p":1}`, `ticks.B 6 {"p":2}`},
		},
		{
			name:    "batch starting before the fetch offset",
			routes:  ticks,
			from:    6,
			records: stream(data(kr(4, "A", `1`), kr(5, "A", `2`), kr(6, "A", `3`))),
			next:    7,
			want:    []string{`ticks.A 6 3`},
		},
		{
			name:    "commit marker between batches is stepped over",
			routes:  ticks,
			from:    0,
			records: stream(data(kr(0, "A", `1`)), control(1), data(kr(2, "A", `2`))),
			next:    3,
			want:    []string{`ticks.A 0 1`, `ticks.A 2 2`},
		},
		{
			name:    "response ending in a commit marker moves past it",
			routes:  []Route{{Topic: "t", Channel: "static", Format: FormatBytes}},
			from:    3,
			records: stream(control(3)),
			next:    4,
		},
		{
			name:    "skipped records still advance the offset",
			routes:  ticks,
			from:    0,
			records: stream(data(kr(0, "", `{}`), kr(1, "A", `{not json`), kr(2, "bad key", `{}`), kr(3, "A", `true`))),
			next:    4,
			want:    []string{`ticks.A 3 true`},
			skipped: map[string]float64{"template": 1, "invalid_json": 1, "invalid_channel": 1},
		},
		{
			name: "two routes, header and bytes",
			routes: []Route{
				{Topic: "t", Channel: "user.{header:uid}", Format: FormatBytes},
				{Topic: "t", Channel: "all.{topic}.{partition}", Format: FormatBytes},
			},
			from:    0,
			records: stream(data(kr(0, "k", "\x00\xff", "uid", "42"), kr(1, "k", "x"))),
			next:    2,
			want:    []string{"user.42 0 \x00\xff", "all.t.3 0 \x00\xff", "all.t.3 1 x"},
			skipped: map[string]float64{"template": 1},
		},
		{
			name:    "empty response",
			routes:  ticks,
			from:    9,
			records: kafka.NewRecordReader(),
			next:    9,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sink := &recordingSink{}
			r := newTestReader(t, tc.routes, sink)
			if next := r.dispatch(&fetched{records: tc.records}, tc.from); next != tc.next {
				t.Errorf("next offset %d, want %d", next, tc.next)
			}
			var got []string
			for _, m := range sink.msgs {
				got = append(got, fmt.Sprintf("%s %d %s", m.Channel, m.Offset, m.Value))
				if m.Topic != "t" || m.Partition != 3 || m.Timestamp != 1_700_000_000_000+m.Offset || m.Policy == nil {
					t.Errorf("message %+v: wrong topic, partition, timestamp or route", m)
				}
			}
			if strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Errorf("delivered %q, want %q", got, tc.want)
			}
			for reason, n := range tc.skipped {
				if v := counterValue(r.c.m.skipped.WithLabelValues(reason)); v != n {
					t.Errorf("skipped{reason=%s} = %v, want %v", reason, v, n)
				}
			}
		})
	}
}

// The Record handed to the Destination is reused: its Value holds the
// current record only during Deliver.
func TestDispatchReusesRecord(t *testing.T) {
	var seen []*router.Record
	var values []string
	sink := sinkFunc(func(m *router.Record) {
		seen = append(seen, m)
		values = append(values, string(m.Value))
	})
	r := newTestReader(t, []Route{{Topic: "t", Channel: "c", Format: FormatBytes}}, sink)
	r.dispatch(&fetched{records: stream(data(kr(0, "", "first"), kr(1, "", "second")))}, 0)
	if len(seen) != 2 || seen[0] != seen[1] {
		t.Fatalf("got %d messages, want the same *router.Record twice", len(seen))
	}
	if values[0] != "first" || values[1] != "second" {
		t.Fatalf("values during Deliver %q, want first, second", values)
	}
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

type sinkFunc func(m *router.Record)

func (f sinkFunc) Deliver(m *router.Record)           { f(m) }
func (f sinkFunc) DropRetention(...*router.Retention) {}

// BenchmarkDispatch routes a fetch of 1,000 100-byte JSON records over 100
// channels: the consumer's own per-record cost, without the network.
func BenchmarkDispatch(b *testing.B) {
	const n = 1000
	value := `{"sym":"S000","px":123.45,"pad":"` + strings.Repeat("x", 100-37) + `"}`
	r := newTestReader(b, []Route{{Topic: "t", Channel: "ticks.{key}", Format: FormatJSON}}, sinkFunc(func(*router.Record) {}))
	recs := make([]kafka.Record, n)
	b.ReportAllocs()
	b.SetBytes(n * int64(len(value)))
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		for j := range recs {
			recs[j] = kr(int64(i*n+j), fmt.Sprintf("S%03d", j%100), value)
		}
		batch := stream(data(recs...))
		b.StartTimer()
		r.dispatch(&fetched{records: batch}, int64(i*n))
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/record")
}

// After a reset the first record of each channel is marked Reset and has a
// new epoch; later records are not marked; Replay refuses positions below
// the old log's next offset.
func TestResetMarksFirstRecordPerChannel(t *testing.T) {
	sink := &recordingSink{}
	r := newTestReader(t, []Route{{Topic: "t", Channel: "c.{key}", Format: FormatBytes}}, sink)
	r.router.epoch = nextEpoch()
	r.dispatch(&fetched{records: stream(data(kr(0, "a", "1"), kr(1, "b", "2")))}, 0)
	before := r.router.epoch
	r.reset(ResetRecreated, 2, 0)
	r.dispatch(&fetched{records: stream(data(kr(0, "a", "x"), kr(1, "a", "y"), kr(2, "b", "z")))}, 0)
	var got []string
	for _, m := range sink.msgs {
		got = append(got, fmt.Sprintf("%s@%d:%v", m.Channel, m.Offset, m.Reset))
		if m.Offset >= 0 && string(m.Value) >= "x" && m.Epoch == before {
			t.Errorf("record %s@%d after the reset kept the old epoch", m.Channel, m.Offset)
		}
	}
	if want := "c.a@0:false c.b@1:false c.a@0:true c.a@1:false c.b@2:true"; strings.Join(got, " ") != want {
		t.Fatalf("delivered %q, want %q", strings.Join(got, " "), want)
	}
	if v := counterValue(r.c.m.resets.WithLabelValues(ResetRecreated)); v != 1 {
		t.Errorf("resets{reason=recreated} = %v, want 1", v)
	}
	for _, tc := range []struct {
		after int64
		spans bool
	}{{-1, true}, {0, true}, {1, true}, {2, false}, {10, false}} {
		if got := r.c.resetAbove(r.tp, tc.after+1); got != tc.spans {
			t.Errorf("read-back after %d spans the reset = %v, want %v", tc.after, got, tc.spans)
		}
	}
	if r.c.resetAbove(topicPartition{"t", 4}, 0) {
		t.Error("a partition without a reset refuses read-backs")
	}
}
