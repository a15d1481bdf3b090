package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
)

// partReader reads one partition in offset order and hands its records to
// the Destination through a recordRouter, which allocates nothing per record.
type partReader struct {
	c      *Consumer
	tp     topicPartition
	state  *partState
	router *recordRouter
	filter txnFilter
	m      *partMetrics
	log    *slog.Logger

	// lastEpoch is the partition leader epoch of the last record batch
	// delivered (-1: none yet in this log); validate asks diverged to
	// check it with the leader before the next records are delivered;
	// leader is the last leader metadata named (-1: none yet).
	lastEpoch int32
	validate  bool
	leader    int
}

func (c *Consumer) newPartReader(tp topicPartition, ps *partState) *partReader {
	return &partReader{
		c:      c,
		tp:     tp,
		state:  ps,
		router: newRecordRouter(c.m, tp, c.table.Load().byTopic[tp.topic], c.dest.Deliver),
		m:      c.m.forPartition(tp),
		log:    c.log.With("topic", tp.topic, "partition", tp.partition),

		lastEpoch: -1,
		leader:    -1,
	}
}

// run fetches from start (an offset, or kafka.FirstOffset /
// kafka.LastOffset) until ctx ends. After a failed request it retries with
// backoff from the next offset it has not delivered, so a broker restart
// neither skips nor repeats a record.
//
// A log that goes back under it (truncated by an unclean leader election,
// or its topic deleted and created again) is a reset: counted, logged, and
// the records that follow get a new continuity epoch, the first of each
// channel marked Reset, and Replay refuses read-backs from before it.
func (r *partReader) run(ctx context.Context, start int64) {
	defer r.m.drop()
	backoff := r.c.newBackoff()
	offset := start
	// A reader's first record may follow a hole (it started at the log's
	// end, or its topic was routed before): a new continuity epoch.
	r.router.epoch = nextEpoch()
	wait := func() bool {
		t := time.NewTimer(backoff.next())
		defer t.Stop()
		select {
		case <-t.C:
			r.state.beat.Store(time.Now().UnixNano())
			return true
		case <-ctx.Done():
			return false
		}
	}
	// retry marks the partition failing, counts and logs err, and waits
	// out the backoff; it returns false if ctx ended meanwhile.
	retry := func(op string, err error) bool {
		r.state.set(StatusError, err)
		r.c.m.errors.WithLabelValues(op).Inc()
		r.log.Warn("consumer: request failed; retrying", "op", op, "offset", offset, "err", err, "retry_in_max", backoff.peek().String())
		return wait()
	}
	// deleted is true once the partition's topic was seen deleted: it is
	// read again, from its first offset, once it exists again.
	deleted := false
	// goneSince is when a fetch first found the topic gone, while that
	// is not yet confirmed.
	var goneSince time.Time
	for ctx.Err() == nil {
		r.state.beat.Store(time.Now().UnixNano())
		if l := r.c.leaderOf(r.tp); l >= 0 {
			// A new leader may hold another log: check before delivering.
			if r.leader >= 0 && l != r.leader {
				r.validate = true
			}
			r.leader = l
		}
		if offset < 0 || deleted {
			first, last, err := r.c.offsetRange(ctx, r.tp)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				if deleted && r.c.topicGone(ctx, r.tp.topic) {
					if !wait() {
						return
					}
					continue
				}
				if !retry("list_offsets", err) {
					return
				}
				continue
			}
			switch {
			case deleted:
				// The topic was created again: a new log. Read all of it.
				deleted = false
				r.reset(ResetRecreated, offset, first)
				offset = first
			case offset == kafka.FirstOffset:
				offset = first
			default:
				offset = last
			}
			r.state.next.Store(offset)
		}
		resp, err := r.c.fetch(ctx, r.state, r.tp, offset)
		r.state.beat.Store(time.Now().UnixNano())
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if unknownTopic(err) && r.c.topicGone(ctx, r.tp.topic) {
				// Deleted only if metadata still says so after a refresh: a
				// topic just created can look gone for a moment, and taking
				// that for a deletion would read it again from its start.
				if goneSince.IsZero() {
					goneSince = time.Now()
				}
				if time.Since(goneSince) >= r.c.cfg.MetadataInterval/2 {
					deleted, goneSince = true, time.Time{}
					r.state.set(StatusDeleted, nil)
					r.log.Debug("consumer: topic deleted; waiting for it to be created again", "offset", offset)
				}
				if !wait() {
					return
				}
				continue
			}
			goneSince = time.Time{}
			if leaderChanged(err) {
				r.validate = true
			}
			op := "fetch"
			if errors.Is(err, kafka.OffsetOutOfRange) {
				next, rerr := r.outOfRange(ctx, offset)
				if rerr == nil {
					if next != offset {
						// Records were skipped or the log went back: what
						// follows is not continuous with what came before.
						r.router.epoch = nextEpoch()
					}
					offset = next
					r.state.next.Store(offset)
					continue
				}
				op, err = "list_offsets", rerr
			}
			if !retry(op, err) {
				return
			}
			continue
		}
		if to, drop, err := r.diverged(ctx, resp, offset); drop {
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				if !retry("offset_for_leader_epoch", err) {
					return
				}
				continue
			}
			offset = to
			r.state.next.Store(offset)
			continue
		}
		next := r.dispatch(resp, offset)
		if end := resp.end(r.c.committed); next == offset && end > offset {
			// The broker answered at once with bytes that hold no record at
			// or after offset (nothing kafka-go can decode). Fetching again
			// would spin; back off and say so.
			if !retry("fetch", fmt.Errorf("consumer: fetch %s[%d] at %d: no record below the end of the log %d", r.tp.topic, r.tp.partition, offset, end)) {
				return
			}
			continue
		}
		if r.state.status() != StatusReading {
			if backoff.failures > 0 {
				r.log.Info("consumer: partition readable again", "offset", offset, "after_failures", backoff.failures)
			}
			r.state.set(StatusReading, nil)
		}
		backoff.reset()
		offset = next
		r.state.next.Store(offset)
		if resp.highWatermark >= offset {
			r.m.lag.Set(float64(resp.highWatermark - offset))
		}
	}
}

// Reset reasons, the label values of kpush_consumer_resets_total.
const (
	// ResetTruncated: the log now ends before the next offset to read (an
	// unclean leader election truncated it).
	ResetTruncated = "truncated"
	// ResetRecreated: the topic was deleted and created again.
	ResetRecreated = "recreated"
	// ResetLeaderEpoch: the partition's leader holds a log that diverged
	// from the one records were delivered from (KIP-320: the last
	// delivered leader epoch ends there before the next offset to read,
	// or is unknown there; see partReader.diverged).
	ResetLeaderEpoch = "leader_epoch"
)

// reset records that the partition's log went back: reading continues at
// to, where from was the next offset of the old log.
func (r *partReader) reset(reason string, from, to int64) {
	r.c.m.resets.WithLabelValues(reason).Inc()
	r.log.Warn("consumer: partition log reset; records from here on may reuse offsets already delivered",
		"reason", reason, "offset", from, "new_offset", to)
	r.router.epoch = nextEpoch()
	r.router.markReset()
	r.c.noteReset(r.tp, from)
	// A new log: its leader epochs say nothing about the old one.
	r.lastEpoch, r.validate = -1, false
}

// outOfRange decides where to continue after the broker said offset is not
// in the partition's log. An error means "retry at the same offset".
func (r *partReader) outOfRange(ctx context.Context, offset int64) (int64, error) {
	first, last, err := r.c.offsetRange(ctx, r.tp)
	if err != nil {
		return offset, err
	}
	switch {
	case offset < first:
		// Retention deleted records before they were read: continue
		// from the oldest one still there, and count the loss.
		r.c.m.skipped.WithLabelValues("offset_out_of_range").Add(float64(first - offset))
		r.log.Warn("consumer: records deleted before they were read; continuing from the first retained offset", "offset", offset, "first", first)
		return first, nil
	case offset > last:
		// The log now ends before records already delivered (it was
		// truncated, e.g. by an unclean leader election). Continue from
		// its end, telling clients the offsets that follow may repeat
		// ones they saw.
		r.reset(ResetTruncated, offset, last)
		return last, nil
	default:
		// Back in range (a leader change raced the fetch).
		return offset, fmt.Errorf("consumer: fetch %s[%d] at %d: %w", r.tp.topic, r.tp.partition, offset, kafka.OffsetOutOfRange)
	}
}

// unknownTopic reports whether err says the topic or partition does not
// exist (on the broker, or in the client's metadata cache, which keeps a
// deleted routed topic as an entry without partitions).
func unknownTopic(err error) bool {
	return errors.Is(err, kafka.UnknownTopicOrPartition) || errors.Is(err, kafka.UnknownTopicID) ||
		errors.Is(err, protocol.ErrNoTopic) || errors.Is(err, protocol.ErrNoPartition)
}

// dispatch routes every deliverable record of a fetch response at or
// after offset and returns the next offset to fetch. It takes the routes in
// force now, so a SetRoutes applies from the next fetch.
func (r *partReader) dispatch(resp *fetched, offset int64) int64 {
	r.router.routes = r.c.table.Load().byTopic[r.tp.topic]
	r.filter.reset(r.c.committed, resp.aborted)
	n := 0
	next, _ := walk(r.c.m, &r.filter, resp.records, offset, func(rec *kafka.Record) bool {
		n++
		r.router.route(rec)
		return true
	})
	if n > 0 {
		r.m.records.Add(float64(n))
	}
	if e := batchEpochs(resp.records); e > r.lastEpoch {
		r.lastEpoch = e
	}
	return next
}

// fetch reads from offset: through the fetch group of the partition's
// leader, in one request with the leader's other partitions, until there is
// something new (see fetchGroup.fetch); or alone, waiting up to
// fetch_max_wait for a first record, while the leader is not known.
func (c *Consumer) fetch(ctx context.Context, ps *partState, tp topicPartition, offset int64) (*fetched, error) {
	if g := c.groupOf(tp); g != nil {
		// The group's requests have deadlines and it answers every call
		// of a failed one.
		return g.fetch(ctx, ps, tp, offset)
	}
	// The deadline covers a dial, the broker's wait and the transfer; a
	// broker that dies mid-request fails it at once (the connection resets).
	ctx, cancel := context.WithTimeout(ctx, c.cfg.FetchMaxWait+c.cfg.DialTimeout+10*time.Second)
	defer cancel()
	return c.fetchPartition(ctx, tp, offset, c.cfg.FetchMaxWait)
}

// offsetRange returns the partition's first retained offset and its end
// (the offset the next record will get).
func (c *Consumer) offsetRange(ctx context.Context, tp topicPartition) (first, last int64, err error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout+5*time.Second)
	defer cancel()
	res, err := c.kc.Load().ListOffsets(ctx, &kafka.ListOffsetsRequest{
		Topics: map[string][]kafka.OffsetRequest{tp.topic: {
			kafka.FirstOffsetOf(tp.partition),
			kafka.LastOffsetOf(tp.partition),
		}},
	})
	if err != nil {
		return 0, 0, fmt.Errorf("consumer: list offsets of %s[%d]: %w", tp.topic, tp.partition, err)
	}
	for _, p := range res.Topics[tp.topic] {
		if p.Partition != tp.partition {
			continue
		}
		if p.Error != nil {
			return 0, 0, fmt.Errorf("consumer: list offsets of %s[%d]: %w", tp.topic, tp.partition, p.Error)
		}
		return p.FirstOffset, p.LastOffset, nil
	}
	return 0, 0, fmt.Errorf("consumer: list offsets of %s[%d]: partition missing from the response", tp.topic, tp.partition)
}
