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

	// sess is the group's fetch session with its broker; only run's
	// goroutine (send) uses it.
	sess fetchSession
}

// fetchSession is a fetch session (KIP-227): the broker keeps the
// partitions of the group's last full request and their fetch offsets, so
// a request after it (incremental) lists only partitions added or moved to
// another offset and names those dropped, and the answer carries only
// partitions with something new (records, or a changed high watermark,
// last stable or log start offset). An idle group's long poll then lists
// one partition (kafka-go routes a Fetch by its partitions' leader), not
// all of them.
type fetchSession struct {
	id    int32 // 0: none; the next request is a full one
	epoch int32 // of the next incremental request
	parts map[topicPartition]*sessPart
}

// sessPart is what the broker's session holds for a partition, and the
// partition's offsets as last answered, which an answer that leaves the
// partition out leaves unchanged.
type sessPart struct {
	offset                   int64
	hw, lastStable, logStart int64
	answered                 bool // hw, lastStable and logStart are from an answer
}

func (s *fetchSession) reset() {
	s.id, s.epoch = 0, 0
	clear(s.parts)
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
	if g.sess.parts == nil {
		g.sess.parts = make(map[topicPartition]*sessPart)
	}
	full := g.sess.id == 0
	req.SessionID, req.SessionEpoch = g.sess.id, g.sess.epoch
	add := func(tp topicPartition, offset int64) {
		p := fetchAPI.RequestPartition{Partition: int32(tp.partition), CurrentLeaderEpoch: -1,
			FetchOffset: offset, LogStartOffset: -1, PartitionMaxBytes: int32(c.cfg.FetchMaxBytes)}
		if n := len(req.Topics); n > 0 && req.Topics[n-1].Topic == tp.topic {
			req.Topics[n-1].Partitions = append(req.Topics[n-1].Partitions, p)
		} else {
			req.Topics = append(req.Topics, fetchAPI.RequestTopic{Topic: tp.topic, Partitions: []fetchAPI.RequestPartition{p}})
		}
	}
	inRequest := make(map[topicPartition]bool, len(calls))
	for _, call := range calls {
		inRequest[call.tp] = true
		if sp := g.sess.parts[call.tp]; full || sp == nil || sp.offset != call.offset {
			add(call.tp, call.offset)
		}
	}
	if !full {
		for tp := range g.sess.parts {
			if inRequest[tp] {
				continue
			}
			if n := len(req.ForgottenTopics); n > 0 && req.ForgottenTopics[n-1].Topic == tp.topic {
				req.ForgottenTopics[n-1].Partitions = append(req.ForgottenTopics[n-1].Partitions, int32(tp.partition))
			} else {
				req.ForgottenTopics = append(req.ForgottenTopics, fetchAPI.RequestForgottenTopic{Topic: tp.topic, Partitions: []int32{int32(tp.partition)}})
			}
		}
		if len(req.Topics) == 0 {
			// Nothing changed: list one partition unchanged anyway, so
			// kafka-go sends the request to the partitions' leader (the
			// session's broker) rather than to a bootstrap broker.
			add(calls[0].tp, calls[0].offset)
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
	if err != nil {
		// The broker's session, if any, no longer matches what the group
		// thinks it holds: start a new one with the next request.
		g.sess.reset()
		if (errors.Is(err, kafka.FetchSessionIDNotFound) || errors.Is(err, kafka.InvalidFetchSessionEpoch)) && !full {
			// The broker dropped the session (evicted, restarted): fetch
			// again at once, in full.
			c.m.fetchSessionResets.Inc()
			g.send(ctx, calls)
			return
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
	// The session now holds exactly this request's partitions at their
	// offsets; an answer leaving one of them out means nothing changed
	// for it since the last answer that carried it.
	if full {
		clear(g.sess.parts)
	}
	for tp := range g.sess.parts {
		if !inRequest[tp] {
			delete(g.sess.parts, tp)
		}
	}
	known := make(map[topicPartition]*sessPart, len(calls))
	for _, call := range calls {
		sp := g.sess.parts[call.tp]
		if sp == nil {
			sp = &sessPart{}
			g.sess.parts[call.tp] = sp
		}
		sp.offset = call.offset
		if p := parts[call.tp]; p != nil {
			if p.ErrorCode != 0 {
				// Listed again, as if new, in the next request.
				delete(g.sess.parts, call.tp)
				continue
			}
			sp.hw, sp.lastStable, sp.logStart = p.HighWatermark, p.LastStableOffset, p.LogStartOffset
			sp.answered = true
		}
		if sp.answered {
			known[call.tp] = sp
		}
	}
	switch {
	case res.SessionID == 0:
		// The broker keeps no session (none offered, or it declined).
		g.sess.reset()
	case full:
		g.sess.id, g.sess.epoch = res.SessionID, 1
	default:
		g.sess.epoch++
		if g.sess.epoch <= 0 {
			g.sess.epoch = 1 // wraps past the largest int32 to 1, not 0
		}
	}
	g.mu.Lock()
	now := time.Now().UnixNano()
	answered := calls[:0]
	for _, call := range calls {
		p := parts[call.tp]
		if sp := known[call.tp]; p == nil && !full && sp != nil {
			// Left out of an incremental answer: unchanged.
			p = &fetchAPI.ResponsePartition{Partition: int32(call.tp.partition), HighWatermark: sp.hw,
				LastStableOffset: sp.lastStable, LogStartOffset: sp.logStart}
		}
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
	g.sess.reset()
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
