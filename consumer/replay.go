package consumer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/kpush/kpush/router"
	"github.com/segmentio/kafka-go"
)

// Replay results, the label values of kpush_consumer_replays_total.
const (
	ReplayComplete  = "complete"
	ReplayGone      = "gone"      // records deleted by retention, the position past the log's end, or no such partition
	ReplayReset     = "reset"     // the partition's log was replaced (truncated or recreated) after the position
	ReplayLimit     = "limit"     // kafka.replay_max_scanned reached
	ReplayStopped   = "stopped"   // the caller's emit stopped it, or its context ended
	ReplayNoRoute   = "no_route"  // no route produces the channel
	ReplayAmbiguous = "ambiguous" // routes of several topics may produce the channel
	ReplayError     = "error"     // a Kafka request failed
)

// Replay reads partition p of the topic that produces channel ch back from
// offset after+1 up to the partition's high watermark as its first fetch
// sees it (the last stable offset under read_committed), and calls emit, in offset order, with every record routed to ch.
// It stops when emit returns false, after kafka.replay_max_scanned records,
// or when ctx ends. It reports whether every such record was emitted, and
// why not (one of the Replay* results). The Record handed to emit is
// reused once emit returns: emit must copy what it keeps.
//
// The topic is found from the routes whose channel template can produce ch;
// positions are per partition, so a channel must come from
// a single topic to be replayed. Replay is safe for concurrent use and
// independent of the live partition readers.
func (c *Consumer) Replay(ctx context.Context, ch string, p int32, after int64, emit func(*router.Record) bool) (complete bool, result string, err error) {
	defer func() { c.m.replays.WithLabelValues(result).Inc() }()
	var topic string
	var routes []*compiledRoute
	table := c.table.Load()
	for _, t := range table.topics {
		for _, r := range table.byTopic[t] {
			if !r.tmpl.Match(ch, t) {
				continue
			}
			if topic != "" && topic != t {
				return false, ReplayAmbiguous, nil
			}
			topic = t
			routes = append(routes, r)
		}
	}
	if topic == "" {
		return false, ReplayNoRoute, nil
	}
	tp := topicPartition{topic, int(p)}
	offset := after + 1
	if c.resetAbove(tp, offset) {
		// The position may name a record of a log that is gone, and the
		// offsets after it records of the new one: never stitch the two.
		return false, ReplayReset, nil
	}
	end := int64(-1) // the high watermark when the replay began
	scanned := 0
	stalls := 0
	emitStopped := false
	rr := newRecordRouter(c.m, tp, routes, func(m *router.Record) {
		if !emitStopped && !emit(m) {
			emitStopped = true
		}
	})
	rr.only, rr.live = ch, false
	var filter txnFilter
	for {
		if ctx.Err() != nil {
			return false, ReplayStopped, nil
		}
		fctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout+5*time.Second)
		resp, err := c.fetchPartition(fctx, tp, offset, 50*time.Millisecond)
		cancel()
		if err != nil {
			if errors.Is(err, kafka.OffsetOutOfRange) || errors.Is(err, kafka.UnknownTopicOrPartition) {
				// Deleted by retention, or a partition that does not
				// exist (a position from a client, not from kpush).
				return false, ReplayGone, nil
			}
			if ctx.Err() != nil {
				return false, ReplayStopped, nil
			}
			return false, ReplayError, fmt.Errorf("consumer: replay %s[%d] at %d: %w", topic, p, offset, err)
		}
		if end < 0 {
			// Under read_committed the read-back ends at the last stable
			// offset: what follows is delivered live once committed.
			end = resp.end(c.committed)
			if offset > end {
				return false, ReplayGone, nil
			}
		}
		if offset >= end {
			return c.replayDone(tp, after)
		}
		start := offset
		result, routed := "", 0
		filter.reset(c.committed, resp.aborted)
		next, _ := walk(c.m, &filter, resp.records, offset, func(rec *kafka.Record) bool {
			if rec.Offset >= end {
				result = ReplayComplete
				return false
			}
			if scanned++; scanned > c.cfg.ReplayMaxScanned {
				result = ReplayLimit
				return false
			}
			routed++
			rr.route(rec)
			if emitStopped {
				result = ReplayStopped
				return false
			}
			return true
		})
		c.m.replayScanned.Add(float64(routed))
		switch result {
		case ReplayComplete:
			return c.replayDone(tp, after)
		case ReplayLimit, ReplayStopped:
			return false, result, nil
		}
		offset = next
		if offset >= end {
			return c.replayDone(tp, after)
		}
		if offset == start {
			// Nothing readable at this offset (a gap the broker keeps
			// answering empty): give up rather than spin.
			if stalls++; stalls > 3 {
				return false, ReplayError, fmt.Errorf("consumer: replay %s[%d] at %d: no progress below the high watermark %d", topic, p, offset, end)
			}
		} else {
			stalls = 0
		}
	}
}

// replayDone is the result of a read-back of tp after position after that
// reached its end: complete, unless a reset of the partition was found
// while it ran.
func (c *Consumer) replayDone(tp topicPartition, after int64) (bool, string, error) {
	if c.resetAbove(tp, after+1) {
		return false, ReplayReset, nil
	}
	return true, ReplayComplete, nil
}
