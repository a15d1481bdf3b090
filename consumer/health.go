package consumer

import (
	"slices"
	"strconv"
	"strings"
	"time"
)

// Health of the consumer, as readiness, liveness, metrics and the status
// endpoint see it.
//
// Every kpush pod reads the same partitions, so a Kafka fault (a broker
// down, a partition without leader, a routed topic deleted) hits every pod
// at once. It shows in kpush_consumer_ready, kpush_consumer_partitions
// {state} and Status, never in readiness: a readiness check that fails on
// every pod at once leaves the Service with no endpoints. Readiness only
// waits for start-up (Started). A fault of this pod alone, a partition
// reader that stopped turning while Kafka answers (Stalled), is a liveness
// failure: the reader will not recover by itself, and a restart moves its
// clients to pods that deliver.

// Started reports whether Kafka start-up has finished: metadata was read
// and every partition found has had a fetch answered (or its topic was
// found deleted), or kafka.ready_timeout has passed since Run began. Once
// true it stays true.
func (c *Consumer) Started() bool {
	if c.started.Load() {
		return true
	}
	if at := c.runStart.Load(); at != 0 && time.Since(time.Unix(0, at)) >= c.cfg.ReadyTimeout {
		c.started.Store(true)
		c.log.Warn("consumer: kafka.ready_timeout passed before every partition was read; reporting ready, see the status endpoint", "ready_timeout", c.cfg.ReadyTimeout.String())
		return true
	}
	c.mu.Lock()
	done := c.metadataOK
	for _, p := range c.partitions {
		if st := p.status(); st != StatusReading && st != StatusDeleted {
			done = false
		}
	}
	c.mu.Unlock()
	if done {
		c.started.Store(true)
	}
	return done
}

// stallAfter is how long a partition reader's loop may go without turning
// before it counts as stalled. Every step of the loop has a deadline: a
// fetch at most fetch_max_wait + dial_timeout + 10s, a backoff at most
// retry_backoff_max, a listing of offsets or metadata dial_timeout + 5s;
// delivering to the Destination must not block. Twice the longest step, so Kafka
// being slow or down never looks like a stall.
func (c *Consumer) stallAfter() time.Duration {
	if c.stallLimit > 0 {
		return c.stallLimit
	}
	step := max(c.cfg.FetchMaxWait+c.cfg.DialTimeout+10*time.Second, c.cfg.RetryBackoffMax, c.cfg.DialTimeout+5*time.Second)
	return 2 * step
}

// Stalled returns the partitions whose reader's loop has not turned for
// longer than any Kafka request or backoff can take: this pod's own
// fault (a Destination that blocks, a deadlock), not Kafka's.
func (c *Consumer) Stalled() []string {
	limit := c.stallAfter()
	now := time.Now()
	var out []string
	c.mu.Lock()
	defer c.mu.Unlock()
	for tp, p := range c.partitions {
		if now.Sub(time.Unix(0, p.beat.Load())) > limit {
			out = append(out, tp.String())
		}
	}
	slices.Sort(out)
	return out
}

func (tp topicPartition) String() string {
	return tp.topic + "[" + strconv.Itoa(tp.partition) + "]"
}

// PartitionStatus is one partition reader as the status endpoint shows it.
type PartitionStatus struct {
	Topic     string    `json:"topic"`
	Partition int       `json:"partition"`
	State     string    `json:"state"` // one of the Status* constants
	Since     time.Time `json:"since"` // when it entered State
	// Error is why requests fail, while State is StatusError.
	Error string `json:"error,omitempty"`
	// NextOffset is the next offset the reader will read (-1 before the
	// first is known).
	NextOffset int64 `json:"next_offset"`
	// Stalled: the reader's loop has not turned for longer than any Kafka
	// request can take (see Stalled).
	Stalled bool `json:"stalled,omitempty"`
}

// Status lists every partition reader, by topic and partition.
func (c *Consumer) Status() []PartitionStatus {
	limit := c.stallAfter()
	now := time.Now()
	c.mu.Lock()
	out := make([]PartitionStatus, 0, len(c.partitions))
	for tp, p := range c.partitions {
		s := PartitionStatus{
			Topic:      tp.topic,
			Partition:  tp.partition,
			State:      p.status(),
			Since:      time.Unix(0, p.since.Load()).UTC(),
			NextOffset: p.next.Load(),
			Stalled:    now.Sub(time.Unix(0, p.beat.Load())) > limit,
		}
		if e := p.err.Load(); e != nil && s.State == StatusError {
			s.Error = *e
		}
		out = append(out, s)
	}
	c.mu.Unlock()
	slices.SortFunc(out, func(a, b PartitionStatus) int {
		if a.Topic != b.Topic {
			return strings.Compare(a.Topic, b.Topic)
		}
		return a.Partition - b.Partition
	})
	return out
}
