package consumer

import (
	"context"
	"fmt"
	"github.com/kpush/kpush/router"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// msgSink keeps a copy of every delivered message, for a test goroutine to
// read while partition goroutines deliver.
type msgSink struct {
	dropsNothing
	mu   sync.Mutex
	msgs []router.Record
}

func (s *msgSink) Deliver(m *router.Record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := *m
	c.Value = append([]byte(nil), m.Value...)
	s.msgs = append(s.msgs, c)
}

func (s *msgSink) snapshot() []router.Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]router.Record(nil), s.msgs...)
}

// A new leader epoch in the fetched batches makes the reader ask the leader
// where its last delivered epoch ends (OffsetForLeaderEpoch, through this
// package's codec, answered by kfake): at or past the next offset, the log
// is the same and reading goes on; before it, the log diverged: a
// leader_epoch reset, reading again from the divergence point with the
// first record marked Reset under a new continuity epoch, and Replay
// refusing positions from before it; an epoch the leader does not know is
// a divergence from the log's first offset.
func TestLeaderEpochDivergence(t *testing.T) {
	k := startFake(t, "t", 1)
	var mu sync.Mutex
	asked := []int32{} // LeaderEpoch of each OffsetForLeaderEpoch request
	var answer func(*kmsg.OffsetForLeaderEpochRequest) kmsg.Response
	k.c.ControlKey(int16(kmsg.OffsetForLeaderEpoch), func(req kmsg.Request) (kmsg.Response, error, bool) {
		k.c.KeepControl()
		r := req.(*kmsg.OffsetForLeaderEpochRequest)
		mu.Lock()
		defer mu.Unlock()
		for _, tp := range r.Topics {
			for _, p := range tp.Partitions {
				asked = append(asked, p.LeaderEpoch)
			}
		}
		if answer != nil {
			res := answer(r)
			answer = nil
			return res, nil, true
		}
		return nil, nil, false
	})
	fakeAnswer := func(epoch int32, end int64) func(*kmsg.OffsetForLeaderEpochRequest) kmsg.Response {
		return func(r *kmsg.OffsetForLeaderEpochRequest) kmsg.Response {
			res := kmsg.NewPtrOffsetForLeaderEpochResponse()
			res.Version = r.Version
			rt := kmsg.NewOffsetForLeaderEpochResponseTopic()
			rt.Topic = "t"
			rp := kmsg.NewOffsetForLeaderEpochResponseTopicPartition()
			rp.Partition, rp.LeaderEpoch, rp.EndOffset = 0, epoch, end
			rt.Partitions = append(rt.Partitions, rp)
			res.Topics = append(res.Topics, rt)
			return res
		}
	}
	askedCount := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(asked)
	}
	k.produce(t, "t", "a", "b", "c") // offsets 0-2, leader epoch 0
	sink := &msgSink{}
	c := runFastConsumer(t, k.c.ListenAddrs(), "earliest", sink)
	delivered := func(n int) []router.Record {
		t.Helper()
		waitUntil(t, 20*time.Second, fmt.Sprintf("%d records delivered", n), func() bool { return len(sink.snapshot()) >= n })
		return sink.snapshot()
	}
	delivered(3)
	if n := askedCount(); n != 0 {
		t.Fatalf("asked OffsetForLeaderEpoch %d times with no leader change", n)
	}
	moveLeader := func() {
		t.Helper()
		// One broker: "moving" the partition to it again bumps its leader epoch.
		if err := k.c.MoveTopicPartition("t", 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	resets := func() float64 { return testutil.ToFloat64(c.m.resets.WithLabelValues(ResetLeaderEpoch)) }

	// Same log: kfake answers truthfully (epoch 0 ends at 3, the next offset).
	moveLeader()
	k.produce(t, "t", "d") // offset 3, epoch 1
	msgs := delivered(4)
	if got := fmt.Sprintf("%d:%s reset=%v", msgs[3].Offset, msgs[3].Value, msgs[3].Reset); got != "3:d reset=false" {
		t.Fatalf("after a leader change with the same log: %s", got)
	}
	if n := askedCount(); n != 1 || asked[0] != 0 {
		t.Fatalf("OffsetForLeaderEpoch asked %v, want once for epoch 0", asked)
	}
	if resets() != 0 || msgs[3].Epoch != msgs[0].Epoch {
		t.Fatalf("a leader change without divergence counted %v resets or changed the continuity epoch", resets())
	}

	// Diverged: the new leader says epoch 1 ends at 2, below the next offset 4.
	mu.Lock()
	answer = fakeAnswer(1, 2)
	mu.Unlock()
	moveLeader()
	k.produce(t, "t", "e") // offset 4, epoch 2
	msgs = delivered(7)
	var got []string
	for _, m := range msgs[4:] {
		got = append(got, fmt.Sprintf("%d:%s reset=%v", m.Offset, m.Value, m.Reset))
	}
	if want := []string{"2:c reset=true", "3:d reset=false", "4:e reset=false"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after divergence delivered %v, want %v", got, want)
	}
	if msgs[4].Epoch == msgs[3].Epoch || msgs[5].Epoch != msgs[4].Epoch {
		t.Fatalf("continuity epochs %d, %d, %d: want a new one from the divergence on", msgs[3].Epoch, msgs[4].Epoch, msgs[5].Epoch)
	}
	if resets() != 1 {
		t.Fatalf("kpush_consumer_resets_total{reason=leader_epoch} = %v, want 1", resets())
	}
	mu.Lock()
	if asked[len(asked)-1] != 1 {
		t.Fatalf("asked for epochs %v, want the last delivered one (1) last", asked)
	}
	mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, result, err := c.Replay(ctx, "c", 0, 2, func(*router.Record) bool { return true }); err != nil || result != ReplayReset {
		t.Fatalf("Replay after offset 2 (before the divergence) = %q, %v; want %q", result, err, ReplayReset)
	}

	// An epoch the leader does not know: read again from the first offset.
	mu.Lock()
	answer = fakeAnswer(-1, -1)
	mu.Unlock()
	moveLeader()
	k.produce(t, "t", "f") // offset 5, epoch 3
	msgs = delivered(13)
	got = got[:0]
	for _, m := range msgs[7:] {
		got = append(got, fmt.Sprintf("%d:%s reset=%v", m.Offset, m.Value, m.Reset))
	}
	if want := []string{"0:a reset=true", "1:b reset=false", "2:c reset=false", "3:d reset=false", "4:e reset=false", "5:f reset=false"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after an unknown epoch delivered %v, want %v", got, want)
	}
	if resets() != 2 {
		t.Fatalf("kpush_consumer_resets_total{reason=leader_epoch} = %v, want 2", resets())
	}
	for result, want := range map[string]float64{"same": 1, "diverged": 2} {
		if got := testutil.ToFloat64(c.m.epochChecks.WithLabelValues(result)); got != want {
			t.Errorf("kpush_consumer_epoch_checks_total{result=%q} = %v, want %v", result, got, want)
		}
	}
}
