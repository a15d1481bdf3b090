package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/kpush/kpush/cmd/kpush-bench/internal/hist"
	"github.com/kpush/kpush/cmd/kpush-bench/internal/target"
	"github.com/kpush/kpush/cmd/kpush-bench/internal/wsload"
)

// CloseAllResult is the delivery latency of a few probe connections while
// every other connection closes at once: a stall in kpush that grows with
// the number of connections (a lock held across all of them) shows up in
// the probes' p99 and max.
type CloseAllResult struct {
	Conns       int     `json:"conns"`
	SubsPerConn int     `json:"subs_per_conn"`
	Probes      int     `json:"probes"`
	Rate        float64 `json:"rate"` // probe records/s
	Cycles      int     `json:"cycles"`
	// Steady is the probes' latency with every connection open; Closing
	// from the drop until kpush has released them all, plus one second.
	Steady  hist.Summary `json:"steady"`
	Closing hist.Summary `json:"closing"`
	// ReleaseSeconds is, per cycle, the drop until kpush holds only the
	// probes.
	ReleaseSeconds []float64 `json:"release_seconds"`
}

// closeWindow is how long the probes' records flow in a closing phase; the
// drop comes 0.5 s into it.
const closeWindow = 5 * time.Second

func runCloseAll(ctx context.Context, e *env) (*CloseAllResult, error) {
	o := e.o
	k, err := e.startKpush(ctx, "closeall", 1)
	if err != nil {
		return nil, err
	}
	defer k.stop()
	res := &CloseAllResult{Conns: o.closeConns, SubsPerConn: o.marketSubs, Probes: o.closeProbes, Rate: o.closeRate, Cycles: o.closeCycles}
	keys, chans := symbolNames(o.channelPrefix, o.marketSymbols)
	probe := len(keys)
	keys, chans = append(keys, "PROBE"), append(chans, o.channelPrefix+"PROBE")
	subs, perSymbol := assignSymbols(o.closeConns, o.marketSubs, o.marketSymbols, o.marketZipf)
	perSymbol = append(perSymbol, int64(o.closeProbes))

	probes, mass, err := e.openProbesAndMass(ctx, k, chans, []int32{int32(probe)}, subs)
	if err != nil {
		return res, err
	}
	defer probes.Close()
	defer mass.Close()
	total := o.closeProbes + o.closeConns
	prod := e.newProducer(k.topic, keys, perSymbol)
	pick := func() int { return probe }
	var steady, closing hist.Snapshot
	for cycle := 1; cycle <= o.closeCycles && ctx.Err() == nil; cycle++ {
		if err := waitMetric(ctx, k, "kpush to hold every connection", func(m target.Metrics) bool {
			return m.Connections == float64(total)
		}); err != nil {
			return res, err
		}
		// Steady: every connection open.
		l0 := probes.Latency()
		prod.run(ctx, o.closeRate, 3*time.Second, pick)
		sleep(ctx, 200*time.Millisecond)
		steady.Add(probes.Latency().Sub(l0))

		// Closing: the probes' records keep flowing (for a fixed window)
		// while every other connection is reset at once.
		l0 = probes.Latency()
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			prod.run(ctx, o.closeRate, closeWindow, pick)
		}()
		sleep(ctx, 500*time.Millisecond)
		start := time.Now()
		mass.Drop(false)
		err := waitMetric(ctx, k, "kpush to release the dropped connections", func(m target.Metrics) bool {
			return m.Connections == float64(o.closeProbes)
		})
		released := time.Since(start)
		wg.Wait()
		sleep(ctx, 200*time.Millisecond)
		if err != nil {
			return res, err
		}
		if released > closeWindow-time.Second {
			logf("close-all cycle %d: the release (%s) outlasted the measured window", cycle, released.Round(time.Millisecond))
		}
		d := probes.Latency().Sub(l0)
		closing.Add(d)
		res.ReleaseSeconds = append(res.ReleaseSeconds, released.Seconds())
		logf("close-all cycle %d: %d connections released in %s; probe latency while closing p50 %s p99 %s max %s (%d samples)",
			cycle, o.closeConns, released.Round(time.Millisecond), ms(d.Quantile(0.5)), ms(d.Quantile(0.99)), ms(d.Max()), d.Count())
		if err := prod.flush(ctx); err != nil {
			return res, err
		}
		if cycle < o.closeCycles {
			mass.Revive()
			if err := mass.WaitReady(ctx, o.closeConns); err != nil {
				return res, fmt.Errorf("reopening: %w", err)
			}
		}
	}
	res.Steady, res.Closing = steady.Summary(), closing.Summary()
	logf("close-all: %d connections × %d channels, %d probes at %g records/s over %d cycles: steady p50 %s p99 %s max %s; closing p50 %s p99 %s max %s",
		o.closeConns, o.marketSubs, o.closeProbes, o.closeRate, o.closeCycles,
		ms(res.Steady.P50), ms(res.Steady.P99), ms(res.Steady.Max), ms(res.Closing.P50), ms(res.Closing.P99), ms(res.Closing.Max))
	return res, nil
}

// openProbesAndMass opens, on two pools over chans, e.o.closeProbes probe
// connections subscribed to probeSubs (waiting until kpush counts them)
// and then e.o.closeConns mass connections, connection i subscribed to
// subs[i] (waiting until each has its subscribe replies). The caller
// closes both pools; on an error none is left open.
func (e *env) openProbesAndMass(ctx context.Context, k *kpushRef, chans []string, probeSubs []int32, subs [][]int32) (probes, mass *wsload.Pool, err error) {
	o := e.o
	probes, err = e.newPool(k, chans, o.inFlight)
	if err != nil {
		return nil, nil, err
	}
	if err := openAll(ctx, probes, k, o.closeProbes, func(int) []int32 { return probeSubs }); err != nil {
		probes.Close()
		return nil, nil, err
	}
	mass, err = e.newPool(k, chans, o.inFlight)
	if err != nil {
		probes.Close()
		return nil, nil, err
	}
	mass.Open(o.closeConns, func(i int) []int32 { return subs[i] })
	if err := mass.WaitReady(ctx, o.closeConns); err != nil {
		probes.Close()
		mass.Close()
		return nil, nil, err
	}
	return probes, mass, nil
}
