package main

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/kpush/kpush/cmd/kpush-bench/internal/hist"
	"github.com/kpush/kpush/cmd/kpush-bench/internal/target"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TrimResult is the delivery latency of a few probe connections, with
// every other connection open, first while kpush retains almost nothing
// and then while it retains a snapshot for each of -trim-channels channels
// that its once-a-second sweep walks (router.Trim). A Trim that holds a
// shard's lock across the whole shard shows up in the probes' p99 and max.
type TrimResult struct {
	Conns       int `json:"conns"`
	SubsPerConn int `json:"subs_per_conn"`
	Probes      int `json:"probes"`
	// ProbeChannels is how many channels every probe subscribes to; the
	// records go to them in turn.
	ProbeChannels int     `json:"probe_channels"`
	Rate          float64 `json:"rate"` // probe records/s
	Retained      int     `json:"retained"`
	Seconds       float64 `json:"seconds"` // of each measured phase
	// Baseline is the probes' latency before the fill; Retained with the
	// channels retained.
	Baseline TrimPhase `json:"baseline"`
	Trim     TrimPhase `json:"trim"`
	// FillSeconds is the first fill record until kpush counts every
	// channel; HeapAlloc kpush's live heap after it.
	FillSeconds float64 `json:"fill_seconds"`
	HeapAlloc   float64 `json:"heap_alloc"`
}

// TrimPhase is one measured phase.
type TrimPhase struct {
	Channels float64      `json:"channels"` // kpush_channels at the end
	Latency  hist.Summary `json:"latency"`
	// KpushCores is kpush's user+system CPU over the phase, per second.
	KpushCores float64 `json:"kpush_cores"`
}

func runTrim(ctx context.Context, e *env) (*TrimResult, error) {
	o := e.o
	snap := o.snapshot
	o.snapshot = true // the fill is retained as snapshots
	k, err := e.startKpush(ctx, "trim", 1)
	o.snapshot = snap
	if err != nil {
		return nil, err
	}
	defer k.stop()
	res := &TrimResult{Conns: o.closeConns, SubsPerConn: o.marketSubs, Probes: o.closeProbes, ProbeChannels: o.trimProbeChannels, Rate: o.closeRate,
		Retained: o.trimChannels, Seconds: o.trimPhase.Seconds()}
	keys, chans := symbolNames(o.channelPrefix, o.marketSymbols)
	subs, perSymbol := assignSymbols(o.closeConns, o.marketSubs, o.marketSymbols, o.marketZipf)
	// The probes' records go round-robin to -trim-probe-channels channels,
	// which hash to many of the router's shards, so that a Trim holding
	// any shard's lock delays some of them (as in the router's and the
	// gateway's Trim benchmarks).
	first := len(keys)
	var probeSubs []int32
	for i := 0; i < o.trimProbeChannels; i++ {
		key := fmt.Sprintf("PROBE%02d", i)
		keys, chans = append(keys, key), append(chans, o.channelPrefix+key)
		perSymbol = append(perSymbol, int64(o.closeProbes))
		probeSubs = append(probeSubs, int32(first+i))
	}

	probes, mass, err := e.openProbesAndMass(ctx, k, chans, probeSubs, subs)
	if err != nil {
		return res, err
	}
	defer probes.Close()
	defer mass.Close()
	total := o.closeProbes + o.closeConns
	if err := waitMetric(ctx, k, "kpush to hold every connection", func(m target.Metrics) bool {
		return m.Connections == float64(total)
	}); err != nil {
		return res, err
	}
	// Let kpush finish with the opening (sweeps returning the subscribe
	// replies' queue memory, the garbage of 15,000 handshakes) before the
	// baseline, so that it is not charged to the baseline.
	sleep(ctx, o.trimSettle)
	prod := e.newProducer(k.topic, keys, perSymbol)
	next := 0
	pick := func() int {
		next++
		return first + next%o.trimProbeChannels
	}
	phase := func(name string) (TrimPhase, error) {
		var ph TrimPhase
		l0, c0, t0 := probes.Latency(), k.cpu(), time.Now()
		prod.run(ctx, o.closeRate, o.trimPhase, pick)
		if err := prod.flush(ctx); err != nil {
			return ph, err
		}
		sleep(ctx, 200*time.Millisecond)
		c1, el := k.cpu(), time.Since(t0).Seconds()
		d := probes.Latency().Sub(l0)
		ph.Latency = d.Summary()
		ph.KpushCores = (c1.User + c1.System - c0.User - c0.System) / el
		if m, err := k.scrape(ctx); err == nil {
			ph.Channels = m.Channels
		}
		logf("trim %s: %.0f channels; probe latency p50 %s p99 %s p99.9 %s max %s (%d samples); kpush %.2f cores",
			name, ph.Channels, ms(ph.Latency.P50), ms(ph.Latency.P99), ms(ph.Latency.P999), ms(ph.Latency.Max), ph.Latency.Count, ph.KpushCores)
		return ph, nil
	}
	if res.Baseline, err = phase("baseline"); err != nil {
		return res, err
	}
	m0, err := k.scrape(ctx)
	if err != nil {
		return res, err
	}
	start := time.Now()
	if err := e.fill(ctx, k, o.trimChannels); err != nil {
		return res, err
	}
	err = waitMetricFor(ctx, k, "kpush to retain every fill channel", 5*time.Minute, func(m target.Metrics) bool {
		return m.Channels >= m0.Channels+float64(o.trimChannels)
	})
	if err != nil {
		return res, err
	}
	res.FillSeconds = time.Since(start).Seconds()
	// Let the fill's garbage be collected and a few Trims pass before
	// measuring.
	sleep(ctx, 3*time.Second)
	if m, err := k.scrape(ctx); err == nil {
		res.HeapAlloc = m.HeapAlloc
	}
	logf("trim: %d channels retained in %.1fs, kpush heap %s", o.trimChannels, res.FillSeconds, mib(res.HeapAlloc))
	if res.Trim, err = phase("retained"); err != nil {
		return res, err
	}
	return res, nil
}

// fill produces one small record for each of n distinct keys.
func (e *env) fill(ctx context.Context, k *kpushRef, n int) error {
	logf("trim: producing %d records with distinct keys", n)
	val := wsloadValue(0, time.Now().UnixNano(), 16)
	var failed atomic.Int64
	var first atomic.Value
	done := func(_ *kgo.Record, err error) {
		if err != nil && failed.Add(1) == 1 {
			first.Store(err)
		}
	}
	for i := 0; i < n && ctx.Err() == nil; i++ {
		e.cl.Produce(ctx, &kgo.Record{Topic: k.topic, Key: fmt.Appendf(nil, "F%07d", i), Value: val}, done)
	}
	fctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := e.cl.Flush(fctx); err != nil {
		return fmt.Errorf("flush the fill: %w", err)
	}
	if err, _ := first.Load().(error); err != nil {
		return fmt.Errorf("%d fill records failed to produce, first: %w", failed.Load(), err)
	}
	return ctx.Err()
}
