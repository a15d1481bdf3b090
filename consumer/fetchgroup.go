package consumer

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	fetchAPI "github.com/segmentio/kafka-go/protocol/fetch"
)

// gatherWait bounds how long a fetch group waits, once a partition of its
// last request has come back, for the others of that request before it
// sends the next one. Partitions route their records in their own
// goroutines between requests; those that take longer join the request
// after.
const gatherWait = 20 * time.Millisecond

// fetchGroup sends the live fetches of every partition one broker leads as
// one Fetch request: each partition reader hands it (partition, offset) and
// waits for its part of the answer. So an idle kpush sends one long poll per
// broker per fetch_max_wait, not one per partition, over one connection.
// Its goroutine (run) is owned by Consumer.Run.
type fetchGroup struct {
	c      *Consumer
	leader int

	mu      sync.Mutex // guards pending, members
	pending map[topicPartition]*fetchCall
	// members are the partitions answered by the last request: the next
	// one waits up to gatherWait for them to come back.
	members map[topicPartition]bool
	wake    chan struct{}
	round   int
}

// fetchCall is one partition reader's fetch, answered by its group.
type fetchCall struct {
	ctx    context.Context
	ps     *partState
	tp     topicPartition
	offset int64
	res    *fetched
	err    error
	done   chan struct{}
}

func newFetchGroup(c *Consumer, leader int) *fetchGroup {
	return &fetchGroup{c: c, leader: leader, pending: map[topicPartition]*fetchCall{},
		members: map[topicPartition]bool{}, wake: make(chan struct{}, 1)}
}

// fetch hands the partition's fetch to the group and waits for the answer
// or ctx.
//
// An answer with nothing new for a partition that is being read (no
// records, the log ends at offset) is not handed back: the call stays in
// the group for its next request, and the group marks the reader's loop as
// turning. So a record on one of many idle partitions wakes one reader, not
// all of them, and the next request goes out without waiting for the rest.
func (g *fetchGroup) fetch(ctx context.Context, ps *partState, tp topicPartition, offset int64) (*fetched, error) {
	call := &fetchCall{ctx: ctx, ps: ps, tp: tp, offset: offset, done: make(chan struct{})}
	g.mu.Lock()
	g.pending[tp] = call
	g.mu.Unlock()
	select {
	case g.wake <- struct{}{}:
	default:
	}
	select {
	case <-call.done:
		return call.res, call.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// run sends the group's requests until ctx ends.
func (g *fetchGroup) run(ctx context.Context) {
	for {
		g.mu.Lock()
		parked := len(g.pending)
		g.mu.Unlock()
		if parked == 0 {
			select {
			case <-ctx.Done():
			case <-g.wake:
			}
		}
		if ctx.Err() != nil {
			g.failAll(ctx.Err())
			return
		}
		calls := g.gather(ctx)
		if len(calls) == 0 {
			continue
		}
		g.send(ctx, calls)
	}
}

// gather takes the pending calls once every member of the last request has
// come back, or gatherWait after it started waiting.
func (g *fetchGroup) gather(ctx context.Context) []*fetchCall {
	t := time.NewTimer(gatherWait)
	defer t.Stop()
	for {
		g.mu.Lock()
		complete := true
		for tp := range g.members {
			if _, ok := g.pending[tp]; !ok {
				complete = false
				break
			}
		}
		if complete {
			break
		}
		g.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil
		case <-g.wake:
		case <-t.C:
			g.mu.Lock()
			goto take
		}
	}
take:
	calls := make([]*fetchCall, 0, len(g.pending))
	for tp, call := range g.pending {
		delete(g.pending, tp)
		if call.ctx.Err() == nil {
			calls = append(calls, call)
		}
	}
	clear(g.members)
	g.round++
	round := g.round
	g.mu.Unlock()
	// A fixed order rotated every request, so the partitions that come
	// first in a response capped by its total size are not always the same.
	slices.SortFunc(calls, func(a, b *fetchCall) int {
		if c := strings.Compare(a.tp.topic, b.tp.topic); c != 0 {
			return c
		}
		return a.tp.partition - b.tp.partition
	})
	if n := len(calls); n > 1 {
		k := round % n
		calls = append(calls[k:], calls[:k]...)
	}
	return calls
}

// send sends one Fetch for calls and answers each.
func (g *fetchGroup) send(ctx context.Context, calls []*fetchCall) {
	c := g.c
	var isolation int8
	if c.committed {
		isolation = 1
	}
	req := &fetchAPI.Request{
		ReplicaID:      -1,
		MaxWaitTime:    int32(c.cfg.FetchMaxWait / time.Millisecond),
		MinBytes:       1,
		MaxBytes:       int32(min(int64(c.cfg.FetchMaxBytes)*int64(len(calls)), math.MaxInt32)),
		IsolationLevel: isolation,
		SessionID:      -1,
		SessionEpoch:   -1,
	}
	for _, call := range calls {
		p := fetchAPI.RequestPartition{Partition: int32(call.tp.partition), CurrentLeaderEpoch: -1,
			FetchOffset: call.offset, LogStartOffset: -1, PartitionMaxBytes: int32(c.cfg.FetchMaxBytes)}
		if n := len(req.Topics); n > 0 && req.Topics[n-1].Topic == call.tp.topic {
			req.Topics[n-1].Partitions = append(req.Topics[n-1].Partitions, p)
		} else {
			req.Topics = append(req.Topics, fetchAPI.RequestTopic{Topic: call.tp.topic, Partitions: []fetchAPI.RequestPartition{p}})
		}
	}
	c.m.fetches.Inc()
	rctx, cancel := context.WithTimeout(ctx, c.cfg.FetchMaxWait+c.cfg.DialTimeout+10*time.Second)
	kc := c.kc.Load()
	msg, err := kc.transport.RoundTrip(rctx, kc.Addr, req)
	cancel()
	var res *fetchAPI.Response
	if err == nil {
		var ok bool
		if res, ok = msg.(*fetchAPI.Response); !ok {
			err = fmt.Errorf("unexpected response %T", msg)
		} else if res.ErrorCode != 0 {
			err = kafka.Error(res.ErrorCode)
		}
	}
	var unroutable *fetchAPI.Error
	if errors.As(err, &unroutable) && len(calls) > 1 {
		// kafka-go could not route the request as one: a partition is
		// missing from its metadata cache (a topic just deleted) or led
		// by another broker now. Send each partition alone this once, so
		// one partition's trouble does not hold up the others.
		g.sendEach(ctx, calls)
		return
	}
	if err != nil {
		for _, call := range calls {
			call.err = fmt.Errorf("consumer: fetch %s[%d] at %d (with %d partitions led by broker %d): %w", call.tp.topic, call.tp.partition, call.offset, len(calls), g.leader, err)
			close(call.done)
		}
		return
	}
	parts := make(map[topicPartition]*fetchAPI.ResponsePartition, len(calls))
	for i := range res.Topics {
		t := &res.Topics[i]
		for j := range t.Partitions {
			p := &t.Partitions[j]
			parts[topicPartition{t.Topic, int(p.Partition)}] = p
		}
	}
	g.mu.Lock()
	now := time.Now().UnixNano()
	answered := calls[:0]
	for _, call := range calls {
		p := parts[call.tp]
		_, newer := g.pending[call.tp] // a reader that replaced this call's one
		if p != nil && p.ErrorCode == 0 && p.RecordSet.Records == nil && p.HighWatermark <= call.offset &&
			(p.LastStableOffset < 0 || p.LastStableOffset <= call.offset) && call.ps.status() == StatusReading &&
			call.ctx.Err() == nil && !newer {
			// Nothing new: keep the call for the next request.
			call.ps.beat.Store(now)
			g.pending[call.tp] = call
			continue
		}
		answered = append(answered, call)
		switch {
		case p == nil:
			call.err = fmt.Errorf("consumer: fetch %s[%d] at %d: partition missing from the response", call.tp.topic, call.tp.partition, call.offset)
		case p.ErrorCode != 0:
			call.err = fmt.Errorf("consumer: fetch %s[%d] at %d: %w", call.tp.topic, call.tp.partition, call.offset, kafka.Error(p.ErrorCode))
		default:
			call.res = &fetched{highWatermark: p.HighWatermark, lastStable: p.LastStableOffset, logStart: p.LogStartOffset,
				aborted: p.AbortedTransactions, records: p.RecordSet.Records}
			if call.res.records == nil {
				call.res.records = kafka.NewRecordReader()
			}
			g.members[call.tp] = true
		}
	}
	g.mu.Unlock()
	for _, call := range answered {
		close(call.done)
	}
}

// sendEach fetches each call's partition in a request of its own, all at
// once, and answers them.
func (g *fetchGroup) sendEach(ctx context.Context, calls []*fetchCall) {
	var wg sync.WaitGroup
	for _, call := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rctx, cancel := context.WithTimeout(ctx, g.c.cfg.FetchMaxWait+g.c.cfg.DialTimeout+10*time.Second)
			defer cancel()
			call.res, call.err = g.c.fetchPartition(rctx, call.tp, call.offset, g.c.cfg.FetchMaxWait)
		}()
	}
	wg.Wait()
	g.mu.Lock()
	for _, call := range calls {
		if call.err == nil {
			g.members[call.tp] = true
		}
	}
	g.mu.Unlock()
	for _, call := range calls {
		close(call.done)
	}
}

// failAll answers every pending call with err.
func (g *fetchGroup) failAll(err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for tp, call := range g.pending {
		delete(g.pending, tp)
		call.err = err
		close(call.done)
	}
}
