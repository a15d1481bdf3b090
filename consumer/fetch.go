package consumer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	fetchAPI "github.com/segmentio/kafka-go/protocol/fetch"
)

// Isolation levels, the values of kafka.isolation.
const (
	// ReadCommitted delivers only records of committed transactions (and
	// records written outside transactions), up to the last stable offset.
	ReadCommitted = "read_committed"
	// ReadUncommitted delivers every data record up to the high watermark,
	// those of aborted and still-open transactions included.
	ReadUncommitted = "read_uncommitted"
)

// fetched is one partition's part of a fetch response.
type fetched struct {
	highWatermark int64
	// lastStable is the last stable offset: under read_committed the broker
	// returns nothing at or past it (a transaction still open there).
	lastStable int64
	logStart   int64
	// aborted lists the transactions in the returned range that were
	// aborted, by producer and first offset.
	aborted []fetchAPI.ResponseTransaction
	records protocol.RecordReader
}

// end is the offset reading stops at for now: the last stable offset under
// read_committed, the high watermark otherwise.
func (f *fetched) end(committed bool) int64 {
	if committed && f.lastStable >= 0 {
		return f.lastStable
	}
	return f.highWatermark
}

// fetchPartition sends one Fetch request for tp from offset with the
// configured isolation level and returns the partition's answer. A
// partition-level error (offset out of range, not leader, unknown topic) is
// returned as a kafka.Error, so errors.Is works on it.
func (c *Consumer) fetchPartition(ctx context.Context, tp topicPartition, offset int64, maxWait time.Duration) (*fetched, error) {
	var isolation int8
	if c.committed {
		isolation = 1
	}
	c.m.fetches.Inc()
	kc := c.kc.Load()
	msg, err := kc.transport.RoundTrip(ctx, kc.Addr, &fetchAPI.Request{
		ReplicaID:   -1,
		MaxWaitTime: int32(maxWait / time.Millisecond),
		// MinBytes 1: the broker answers as soon as one record is there,
		// so latency is not traded for batching; under load each answer
		// still carries everything up to MaxBytes.
		MinBytes:       1,
		MaxBytes:       int32(c.cfg.FetchMaxBytes),
		IsolationLevel: isolation,
		SessionID:      -1,
		SessionEpoch:   -1,
		Topics: []fetchAPI.RequestTopic{{
			Topic: tp.topic,
			Partitions: []fetchAPI.RequestPartition{{
				Partition:          int32(tp.partition),
				CurrentLeaderEpoch: -1,
				FetchOffset:        offset,
				LogStartOffset:     -1,
				PartitionMaxBytes:  int32(c.cfg.FetchMaxBytes),
			}},
		}},
	})
	if err != nil {
		return nil, fmt.Errorf("consumer: fetch %s[%d] at %d: %w", tp.topic, tp.partition, offset, err)
	}
	res, ok := msg.(*fetchAPI.Response)
	if !ok {
		return nil, fmt.Errorf("consumer: fetch %s[%d] at %d: unexpected response %T", tp.topic, tp.partition, offset, msg)
	}
	if res.ErrorCode != 0 {
		return nil, fmt.Errorf("consumer: fetch %s[%d] at %d: %w", tp.topic, tp.partition, offset, kafka.Error(res.ErrorCode))
	}
	for i := range res.Topics {
		t := &res.Topics[i]
		if t.Topic != tp.topic {
			continue
		}
		for j := range t.Partitions {
			p := &t.Partitions[j]
			if int(p.Partition) != tp.partition {
				continue
			}
			if p.ErrorCode != 0 {
				return nil, fmt.Errorf("consumer: fetch %s[%d] at %d: %w", tp.topic, tp.partition, offset, kafka.Error(p.ErrorCode))
			}
			f := &fetched{
				highWatermark: p.HighWatermark,
				lastStable:    p.LastStableOffset,
				logStart:      p.LogStartOffset,
				aborted:       p.AbortedTransactions,
				records:       p.RecordSet.Records,
			}
			if f.records == nil {
				f.records = kafka.NewRecordReader()
			}
			return f, nil
		}
	}
	return nil, fmt.Errorf("consumer: fetch %s[%d] at %d: partition missing from the response", tp.topic, tp.partition, offset)
}

// txnFilter decides, batch by batch, which records of a fetch response are
// delivered under the isolation level. Under read_committed a batch that
// belongs to an aborted transaction is stepped over: the response lists the
// aborted transactions of its range (producer id and first offset), a
// producer's transaction becomes "aborted" once the walk reaches its first
// offset, and stops being so at the producer's abort marker. Control
// batches (commit and abort markers) are never delivered. It keeps its
// storage from fetch to fetch, so it allocates nothing once warm.
type txnFilter struct {
	committed bool
	pending   []fetchAPI.ResponseTransaction // aborted, sorted by first offset, not yet reached
	open      map[int64]bool                 // producers whose aborted transaction the walk is inside
}

// reset prepares the filter for the next fetch response.
func (f *txnFilter) reset(committed bool, aborted []fetchAPI.ResponseTransaction) {
	f.committed = committed
	f.pending = append(f.pending[:0], aborted...)
	slices.SortFunc(f.pending, func(a, b fetchAPI.ResponseTransaction) int {
		switch {
		case a.FirstOffset < b.FirstOffset:
			return -1
		case a.FirstOffset > b.FirstOffset:
			return 1
		}
		return 0
	})
	if f.open == nil {
		f.open = make(map[int64]bool)
	}
	clear(f.open)
}

// reach marks the aborted transactions that start at or before offset.
func (f *txnFilter) reach(offset int64) {
	n := 0
	for n < len(f.pending) && f.pending[n].FirstOffset <= offset {
		f.open[f.pending[n].ProducerID] = true
		n++
	}
	f.pending = f.pending[n:]
}

// skip reports whether the records of batch must not be delivered.
func (f *txnFilter) skip(batch protocol.RecordReader) bool {
	switch b := batch.(type) {
	case *protocol.ControlBatch:
		if f.committed {
			f.reach(b.BaseOffset)
		}
		return true
	case *protocol.RecordBatch:
		if !f.committed || !b.Attributes.Transactional() {
			return false
		}
		// A transaction's first offset is the base offset of its first
		// batch, so reaching the base offset is enough.
		f.reach(b.BaseOffset)
		return f.open[b.ProducerID]
	}
	return false
}

// endControl is told each record of a control batch: an abort marker ends
// its producer's aborted transaction, so later batches of the producer (a
// new transaction) are delivered.
func (f *txnFilter) endControl(batch *protocol.ControlBatch, rec *protocol.Record) {
	if !f.committed || rec.Key == nil || rec.Key.Len() != 4 {
		return
	}
	var k [4]byte
	if _, err := io.ReadFull(rec.Key, k[:]); err != nil {
		return
	}
	// Key: version int16, type int16 (0 abort, 1 commit).
	if k[2] == 0 && k[3] == 0 {
		delete(f.open, batch.ProducerID)
	}
}

// walk calls fn, in offset order, with every record of a fetch response at
// or after offset that filter lets through, and returns the offset after
// the last record it went past. Records of control batches and, under
// read_committed, of aborted transactions are stepped over without calling
// fn: were they not, a log ending in a marker would be fetched again and
// again. When fn returns false walk stops there and returns that record's
// offset, with stopped set. Each record's pages go back to kafka-go's pool
// after fn. A record that fails to decode ends the walk (counted in m); the
// next fetch starts again after the last good one.
func walk(m *metrics, filter *txnFilter, records protocol.RecordReader, offset int64, fn func(*kafka.Record) bool) (next int64, stopped bool) {
	batches := []protocol.RecordReader{records}
	if s, ok := records.(*protocol.RecordStream); ok {
		batches = s.Records
	}
	for _, batch := range batches {
		skip := filter.skip(batch)
		control, _ := batch.(*protocol.ControlBatch)
		for {
			rec, err := batch.ReadRecord()
			if err != nil {
				if !errors.Is(err, io.EOF) {
					m.errDecode.Inc()
					return offset, false
				}
				break
			}
			if control != nil {
				filter.endControl(control, rec)
			}
			// Compressed batches may start before the fetch offset.
			if rec.Offset >= offset && !skip && !fn(rec) {
				closeBytes(rec.Key)
				closeBytes(rec.Value)
				return rec.Offset, true
			}
			closeBytes(rec.Key)
			closeBytes(rec.Value)
			offset = max(offset, rec.Offset+1)
		}
	}
	return offset, false
}

func closeBytes(b kafka.Bytes) {
	if b != nil {
		b.Close()
	}
}
