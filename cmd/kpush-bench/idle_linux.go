package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"time"

	"github.com/kpush/kpush/cmd/kpush-bench/internal/target"
)

// IdleStep is kpush's memory and goroutines holding Conns idle connections.
type IdleStep struct {
	Conns             int       `json:"conns"`
	OpenSeconds       float64   `json:"open_seconds"` // to open and subscribe the connections added in this step
	RSSBytes          float64   `json:"rss_bytes"`
	HeapAllocBytes    float64   `json:"heap_alloc_bytes"` // live heap after a GC
	Goroutines        float64   `json:"goroutines"`
	RSSPerConn        float64   `json:"rss_per_conn"`  // (RSS(N) − RSS(0)) / N
	HeapPerConn       float64   `json:"heap_per_conn"` // (heap(N) − heap(0)) / N
	GoroutinesPerConn float64   `json:"goroutines_per_conn"`
	Generator         Generator `json:"generator"`
}

// IdleResult is the idle scenario.
type IdleResult struct {
	Protocol string     `json:"protocol"` // what the connections speak (-protocol)
	Channels int        `json:"channels"`
	Settle   string     `json:"settle"`
	Baseline IdleStep   `json:"baseline"`
	Steps    []IdleStep `json:"steps"`
}

func runIdle(ctx context.Context, e *env) (*IdleResult, error) {
	o := e.o
	k, err := e.startKpush(ctx, "idle", 1)
	if err != nil {
		return nil, err
	}
	defer k.stop()
	chans := make([]string, o.idleChannels)
	for i := range chans {
		chans[i] = fmt.Sprintf("%sI%04d", o.channelPrefix, i)
	}
	pool, err := e.newPoolSent(k, chans, o.inFlight, nil, true)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	res := &IdleResult{Protocol: o.protocol, Channels: o.idleChannels, Settle: o.settle.String()}

	tries := 10
	if o.settle == 0 {
		tries = 2 // a quick look, for smoke tests
	}
	base, err := settledMemory(ctx, k.adminURL, tries)
	if err != nil {
		return nil, err
	}
	res.Baseline = IdleStep{RSSBytes: base.RSSBytes, HeapAllocBytes: base.HeapAlloc, Goroutines: base.Goroutines}
	logf("idle baseline: RSS %s, heap %s, %0.f goroutines", mib(base.RSSBytes), mib(base.HeapAlloc), base.Goroutines)

	for _, n := range o.idleSteps {
		if n < pool.Opened() {
			continue
		}
		self := selfUsage()
		start := time.Now()
		from := pool.Opened()
		stop := startProgress(ctx, fmt.Sprintf("idle %d", n), pool, k)
		pool.Open(n-from, func(i int) []int32 { return []int32{int32((from + i) % len(chans))} })
		err := pool.WaitReady(ctx, n)
		opened := time.Since(start)
		if err == nil {
			err = waitMetric(ctx, k, "kpush to count every subscription", func(m target.Metrics) bool {
				return m.Connections == float64(n) && m.Subscriptions == float64(n)
			})
		}
		if err != nil {
			stop()
			return res, err
		}
		// Let kpush's sweeps give back per-connection queue memory left
		// from the subscribe replies, as they do for any idle connection.
		sleep(ctx, o.settle)
		stop()
		m, err := settledMemory(ctx, k.adminURL, tries)
		if err != nil {
			return res, err
		}
		step := IdleStep{
			Conns: n, OpenSeconds: opened.Seconds(),
			RSSBytes: m.RSSBytes, HeapAllocBytes: m.HeapAlloc, Goroutines: m.Goroutines,
			RSSPerConn:        (m.RSSBytes - base.RSSBytes) / float64(n),
			HeapPerConn:       (m.HeapAlloc - base.HeapAlloc) / float64(n),
			GoroutinesPerConn: (m.Goroutines - base.Goroutines) / float64(n),
			Generator:         generatorSince(self),
		}
		res.Steps = append(res.Steps, step)
		logf("idle %d: RSS %s (%.0f B/conn), heap %s (%.0f B/conn), %.0f goroutines (%.4f/conn); generator RSS %s, %d goroutines",
			n, mib(m.RSSBytes), step.RSSPerConn, mib(m.HeapAlloc), step.HeapPerConn, m.Goroutines, step.GoroutinesPerConn,
			mib(float64(step.Generator.RSSBytes)), step.Generator.Goroutines)
	}
	if o.profile {
		path := filepath.Join(o.out, "idle-heap.pprof")
		if f, err := os.Create(path); err == nil {
			if err := target.Heap(ctx, k.adminURL, f); err != nil {
				logf("heap profile: %v", err)
			}
			f.Close()
			logf("kpush heap profile: %s", path)
		}
	}
	return res, nil
}

// settledMemory runs a GC in kpush once a second until its RSS stops
// moving (within 1% or 256 KiB between two reads, at most tries times), so
// memory freed by the collection has had its chance to go back to the OS
// and the figure is not a moment in the middle of a scavenge.
func settledMemory(ctx context.Context, admin string, tries int) (target.Metrics, error) {
	var prev target.Metrics
	for i := 0; i < tries; i++ {
		if err := target.GC(ctx, admin); err != nil {
			return prev, err
		}
		sleep(ctx, time.Second)
		m, err := target.Scrape(ctx, admin)
		if err != nil {
			return prev, err
		}
		if i > 0 && math.Abs(m.RSSBytes-prev.RSSBytes) <= max(0.01*m.RSSBytes, 256<<10) {
			return m, nil
		}
		prev = m
	}
	return prev, nil
}

// waitMetric polls kpush's metrics until cond holds (at most a minute).
func waitMetric(ctx context.Context, k *kpushRef, what string, cond func(target.Metrics) bool) error {
	return waitMetricFor(ctx, k, what, time.Minute, cond)
}

// waitMetricFor polls kpush's metrics until cond holds, at most limit.
func waitMetricFor(ctx context.Context, k *kpushRef, what string, limit time.Duration, cond func(target.Metrics) bool) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for {
		m, err := k.scrape(ctx)
		if err == nil && cond(m) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last: %+v, %v)", what, ctx.Err(), m, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
