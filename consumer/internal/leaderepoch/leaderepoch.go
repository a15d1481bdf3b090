// Package leaderepoch is the OffsetForLeaderEpoch request (Kafka API key
// 23, KIP-320) for kafka-go's protocol package, which has no codec for it.
// Importing the package registers the request and response types, so they
// go through kafka-go's Transport.RoundTrip like kafka-go's own messages.
//
// Versions 2 and 3 are encoded (the non-flexible ones that brokers still
// accept: Kafka 4 removed 0 and 1; kafka-go negotiates the highest version
// both sides know). Version 2 adds the request's CurrentLeaderEpoch,
// version 3 its ReplicaID.
//
// Place in kpush: used by consumer to ask a partition's leader where the
// log of a leader epoch ends, to detect a log that diverged from what was
// already delivered.
package leaderepoch

import (
	"fmt"

	"github.com/segmentio/kafka-go/protocol"
)

func init() {
	protocol.Register(&Request{}, &Response{})
}

// Request asks, for each partition, the end offset of LeaderEpoch in the
// leader's log.
type Request struct {
	// ReplicaID is -1 for a consumer.
	ReplicaID int32          `kafka:"min=v3,max=v3"`
	Topics    []RequestTopic `kafka:"min=v2,max=v3"`
}

// RequestTopic lists one topic's partitions.
type RequestTopic struct {
	Topic      string             `kafka:"min=v2,max=v3"`
	Partitions []RequestPartition `kafka:"min=v2,max=v3"`
}

// RequestPartition is one partition's question.
type RequestPartition struct {
	Partition int32 `kafka:"min=v2,max=v3"`
	// CurrentLeaderEpoch fences a request to a stale leader; -1 skips the
	// check.
	CurrentLeaderEpoch int32 `kafka:"min=v2,max=v3"`
	// LeaderEpoch is the epoch whose end offset is asked.
	LeaderEpoch int32 `kafka:"min=v2,max=v3"`
}

// ApiKey implements protocol.Message.
func (r *Request) ApiKey() protocol.ApiKey { return protocol.OffsetForLeaderEpoch }

// Broker implements protocol.BrokerMessage: the leader of the request's
// partitions, which must all have the same one.
func (r *Request) Broker(cluster protocol.Cluster) (protocol.Broker, error) {
	broker := protocol.Broker{ID: -1}
	for _, t := range r.Topics {
		topic, ok := cluster.Topics[t.Topic]
		if !ok {
			return broker, protocol.NewErrNoTopic(t.Topic)
		}
		for _, p := range t.Partitions {
			part, ok := topic.Partitions[p.Partition]
			if !ok {
				return broker, protocol.NewErrNoPartition(t.Topic, p.Partition)
			}
			b, ok := cluster.Brokers[part.Leader]
			switch {
			case !ok:
				return broker, protocol.NewErrNoLeader(t.Topic, p.Partition)
			case broker.ID < 0:
				broker = b
			case b.ID != broker.ID:
				return broker, fmt.Errorf("leaderepoch: partitions of one request led by brokers %d and %d", broker.ID, b.ID)
			}
		}
	}
	return broker, nil
}

// Response answers each partition.
type Response struct {
	ThrottleTimeMs int32           `kafka:"min=v2,max=v3"`
	Topics         []ResponseTopic `kafka:"min=v2,max=v3"`
}

// ResponseTopic is one topic's answers.
type ResponseTopic struct {
	Topic      string              `kafka:"min=v2,max=v3"`
	Partitions []ResponsePartition `kafka:"min=v2,max=v3"`
}

// ResponsePartition is one partition's answer: the largest epoch not above
// the one asked, and the offset its log ends at (the first offset of the
// next epoch, or the log end for the current one). Both are -1 when the
// broker knows no such epoch.
type ResponsePartition struct {
	ErrorCode   int16 `kafka:"min=v2,max=v3"`
	Partition   int32 `kafka:"min=v2,max=v3"`
	LeaderEpoch int32 `kafka:"min=v2,max=v3"`
	EndOffset   int64 `kafka:"min=v2,max=v3"`
}

// ApiKey implements protocol.Message.
func (r *Response) ApiKey() protocol.ApiKey { return protocol.OffsetForLeaderEpoch }
