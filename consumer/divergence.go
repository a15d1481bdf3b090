package consumer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"

	"github.com/kpush/kpush/consumer/internal/leaderepoch"
)

// batchEpochs returns the largest partition leader epoch among the record
// batches of records (-1 when none carries one: empty, or a message set of
// the old formats).
func batchEpochs(records protocol.RecordReader) int32 {
	batches := []protocol.RecordReader{records}
	if s, ok := records.(*protocol.RecordStream); ok {
		batches = s.Records
	}
	epoch := int32(-1)
	for _, b := range batches {
		switch b := b.(type) {
		case *protocol.RecordBatch:
			epoch = max(epoch, b.PartitionLeaderEpoch)
		case *protocol.ControlBatch:
			epoch = max(epoch, b.PartitionLeaderEpoch)
		}
	}
	return epoch
}

// leaderChanged reports whether err means the partition's leadership moved
// or the broker's idea of its leader epoch differs from the client's: the
// next answer may come from a leader with another log.
func leaderChanged(err error) bool {
	return errors.Is(err, kafka.NotLeaderForPartition) || errors.Is(err, kafka.LeaderNotAvailable) ||
		errors.Is(err, kafka.FencedLeaderEpoch) || errors.Is(err, kafka.UnknownLeaderEpoch)
}

// leaderOf returns the broker that metadata last named tp's leader, or -1.
func (c *Consumer) leaderOf(tp topicPartition) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if l, ok := c.leaders[tp]; ok {
		return l
	}
	return -1
}

// epochEnd asks tp's leader where the log of leader epoch ends: the
// largest epoch it knows not above epoch, and that epoch's end offset
// (both -1 when it knows none).
func (c *Consumer) epochEnd(ctx context.Context, tp topicPartition, epoch int32) (int32, int64, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout+5*time.Second)
	defer cancel()
	kc := c.kc.Load()
	msg, err := kc.transport.RoundTrip(ctx, kc.Addr, &leaderepoch.Request{
		ReplicaID: -1,
		Topics: []leaderepoch.RequestTopic{{Topic: tp.topic, Partitions: []leaderepoch.RequestPartition{
			{Partition: int32(tp.partition), CurrentLeaderEpoch: -1, LeaderEpoch: epoch}}}},
	})
	if err != nil {
		return 0, 0, fmt.Errorf("consumer: end of leader epoch %d of %s[%d]: %w", epoch, tp.topic, tp.partition, err)
	}
	res, ok := msg.(*leaderepoch.Response)
	if !ok {
		return 0, 0, fmt.Errorf("consumer: end of leader epoch %d of %s[%d]: unexpected response %T", epoch, tp.topic, tp.partition, msg)
	}
	for _, t := range res.Topics {
		if t.Topic != tp.topic {
			continue
		}
		for _, p := range t.Partitions {
			if int(p.Partition) != tp.partition {
				continue
			}
			if p.ErrorCode != 0 {
				return 0, 0, fmt.Errorf("consumer: end of leader epoch %d of %s[%d]: %w", epoch, tp.topic, tp.partition, kafka.Error(p.ErrorCode))
			}
			return p.LeaderEpoch, p.EndOffset, nil
		}
	}
	return 0, 0, fmt.Errorf("consumer: end of leader epoch %d of %s[%d]: partition missing from the response", epoch, tp.topic, tp.partition)
}

// diverged checks, before records of resp are delivered, that the log
// being read is the one records were delivered from so far. It asks only
// when leadership may have changed: validate set (a leader change seen in
// metadata or in a fetch error), or resp holding a batch written under a
// newer leader epoch than the last one delivered. The log diverged when
// the leader says the last delivered epoch ends before offset, the next
// offset to read, or does not know that epoch: then it is a reset, and
// reading continues where the epoch ends (from the log's first offset for
// an unknown epoch). It returns the offset to continue from and whether
// resp must be dropped (diverged, or the question failed: err).
func (r *partReader) diverged(ctx context.Context, resp *fetched, offset int64) (next int64, drop bool, err error) {
	if r.lastEpoch < 0 || (!r.validate && batchEpochs(resp.records) <= r.lastEpoch) {
		return offset, false, nil
	}
	epoch, end, err := r.c.epochEnd(ctx, r.tp, r.lastEpoch)
	if err != nil {
		r.c.m.epochChecks.WithLabelValues("error").Inc()
		return offset, true, err
	}
	r.validate = false
	if epoch >= 0 && end >= offset {
		r.c.m.epochChecks.WithLabelValues("same").Inc()
		return offset, false, nil
	}
	r.c.m.epochChecks.WithLabelValues("diverged").Inc()
	to := end
	if epoch < 0 || end < 0 {
		first, _, err := r.c.offsetRange(ctx, r.tp)
		if err != nil {
			r.validate = true
			return offset, true, err
		}
		to = first
	}
	r.reset(ResetLeaderEpoch, offset, to)
	return to, true, nil
}
