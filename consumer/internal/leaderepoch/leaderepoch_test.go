package leaderepoch

import (
	"bytes"
	"encoding/binary"
	"reflect"
	"testing"

	"github.com/segmentio/kafka-go/protocol"
)

// be is a big-endian byte builder for messages written by hand from the
// protocol's field list.
type be struct{ bytes.Buffer }

func (b *be) i16(v int16) *be { b.Write(binary.BigEndian.AppendUint16(nil, uint16(v))); return b }
func (b *be) i32(v int32) *be { b.Write(binary.BigEndian.AppendUint32(nil, uint32(v))); return b }
func (b *be) i64(v int64) *be { b.Write(binary.BigEndian.AppendUint64(nil, uint64(v))); return b }
func (b *be) str(s string) *be {
	b.i16(int16(len(s)))
	b.WriteString(s)
	return b
}

// sized prefixes body with its length, as every Kafka message is.
func sized(body []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...)
}

// The request is encoded field by field as the protocol defines it:
// header (api key 23, version, correlation id, client id), then
// [v3: replica_id] topics [topic, partitions [partition,
// current_leader_epoch, leader_epoch]].
func TestRequestEncoding(t *testing.T) {
	req := &Request{ReplicaID: -1, Topics: []RequestTopic{{Topic: "orders", Partitions: []RequestPartition{
		{Partition: 3, CurrentLeaderEpoch: 7, LeaderEpoch: 5},
		{Partition: 9, CurrentLeaderEpoch: -1, LeaderEpoch: 0},
	}}}}
	for _, v := range []int16{2, 3} {
		var want be
		want.i16(23).i16(v).i32(42).str("kpush")
		if v >= 3 {
			want.i32(-1)
		}
		want.i32(1).str("orders").i32(2)
		want.i32(3).i32(7).i32(5)
		want.i32(9).i32(-1).i32(0)
		var got bytes.Buffer
		if err := protocol.WriteRequest(&got, v, 42, "kpush", req); err != nil {
			t.Fatalf("v%d: %v", v, err)
		}
		if !bytes.Equal(got.Bytes(), sized(want.Bytes())) {
			t.Fatalf("v%d:\n got %x\nwant %x", v, got.Bytes(), sized(want.Bytes()))
		}
		// And back: a broker's decoder (kafka-go's) reads what was sent.
		_, corr, client, msg, err := protocol.ReadRequest(bytes.NewReader(got.Bytes()))
		if err != nil || corr != 42 || client != "kpush" {
			t.Fatalf("v%d: read back: %v %d %q", v, err, corr, client)
		}
		back := *req
		if v < 3 {
			back.ReplicaID = 0 // not on the wire before v3
		}
		if !reflect.DeepEqual(msg, &back) {
			t.Fatalf("v%d: read back %+v, want %+v", v, msg, &back)
		}
	}
}

// The response is decoded from bytes written by hand: correlation id, then
// throttle_time_ms, topics [topic, partitions [error_code, partition,
// leader_epoch, end_offset]].
func TestResponseDecoding(t *testing.T) {
	for _, v := range []int16{2, 3} {
		var body be
		body.i32(42).i32(10).i32(1).str("orders").i32(2)
		body.i16(0).i32(3).i32(4).i64(1234)
		body.i16(74).i32(9).i32(-1).i64(-1) // FENCED_LEADER_EPOCH
		corr, msg, err := protocol.ReadResponse(bytes.NewReader(sized(body.Bytes())), protocol.OffsetForLeaderEpoch, v)
		if err != nil || corr != 42 {
			t.Fatalf("v%d: %v (correlation %d)", v, err, corr)
		}
		want := &Response{ThrottleTimeMs: 10, Topics: []ResponseTopic{{Topic: "orders", Partitions: []ResponsePartition{
			{ErrorCode: 0, Partition: 3, LeaderEpoch: 4, EndOffset: 1234},
			{ErrorCode: 74, Partition: 9, LeaderEpoch: -1, EndOffset: -1},
		}}}}
		if !reflect.DeepEqual(msg, want) {
			t.Fatalf("v%d: got %+v, want %+v", v, msg, want)
		}
	}
	// A truncated response is an error, not a panic or a partial answer.
	var body be
	body.i32(42).i32(10).i32(1).str("orders").i32(1).i16(0)
	if _, _, err := protocol.ReadResponse(bytes.NewReader(sized(body.Bytes())), protocol.OffsetForLeaderEpoch, 3); err == nil {
		t.Fatal("truncated response decoded without error")
	}
}

func TestBrokerRouting(t *testing.T) {
	cluster := protocol.Cluster{
		Brokers: map[int32]protocol.Broker{1: {ID: 1}, 2: {ID: 2}},
		Topics: map[string]protocol.Topic{"orders": {Name: "orders", Partitions: map[int32]protocol.Partition{
			0: {ID: 0, Leader: 2}, 1: {ID: 1, Leader: 1}, 2: {ID: 2, Leader: 2}}}},
	}
	req := &Request{Topics: []RequestTopic{{Topic: "orders", Partitions: []RequestPartition{{Partition: 0}, {Partition: 2}}}}}
	if b, err := req.Broker(cluster); err != nil || b.ID != 2 {
		t.Fatalf("got broker %d, %v; want 2", b.ID, err)
	}
	for name, r := range map[string]*Request{
		"two leaders":  {Topics: []RequestTopic{{Topic: "orders", Partitions: []RequestPartition{{Partition: 0}, {Partition: 1}}}}},
		"no topic":     {Topics: []RequestTopic{{Topic: "gone", Partitions: []RequestPartition{{Partition: 0}}}}},
		"no partition": {Topics: []RequestTopic{{Topic: "orders", Partitions: []RequestPartition{{Partition: 7}}}}},
	} {
		if _, err := r.Broker(cluster); err == nil {
			t.Errorf("%s: routed without error", name)
		}
	}
}
