package main

import (
	"context"
	"fmt"
	"time"

	"github.com/kpush/kpush/cmd/kpush-bench/internal/hist"
	"github.com/kpush/kpush/cmd/kpush-bench/internal/target"
)

// HandshakeRound opens Conns connections with InFlight handshakes at once.
type HandshakeRound struct {
	InFlight          int          `json:"in_flight"`
	Conns             int          `json:"conns"`
	Seconds           float64      `json:"seconds"` // first dial to last upgrade
	PerSec            float64      `json:"per_sec"`
	KpushCPUSeconds   float64      `json:"kpush_cpu_seconds"`
	PerKpushCPUSecond float64      `json:"per_kpush_cpu_second"` // handshakes per second per core
	Failed            int64        `json:"failed"`
	Latency           hist.Summary `json:"latency"` // dial to upgrade response
	Generator         Generator    `json:"generator"`
}

// StormResult is every subscribed connection dropping at once and coming
// back.
type StormResult struct {
	Conns           int       `json:"conns"`
	SubsPerConn     int       `json:"subs_per_conn"`
	InFlight        int       `json:"in_flight"`
	Seconds         float64   `json:"seconds"`       // drop → every connection subscribed again
	KpushSeconds    float64   `json:"kpush_seconds"` // drop → kpush holds exactly the new connections and subscriptions
	KpushCPUSeconds float64   `json:"kpush_cpu_seconds"`
	Failed          int64     `json:"failed"`
	Generator       Generator `json:"generator"`
}

// HandshakeResult is the handshake scenario.
type HandshakeResult struct {
	Rounds          []HandshakeRound `json:"rounds"`
	MaxPerSec       float64          `json:"max_per_sec"`
	BestPerKpushCPU float64          `json:"best_per_kpush_cpu_second"`
	Storm           *StormResult     `json:"storm,omitempty"`
}

func runHandshake(ctx context.Context, e *env) (*HandshakeResult, error) {
	o := e.o
	k, err := e.startKpush(ctx, "handshake", 1)
	if err != nil {
		return nil, err
	}
	defer k.stop()
	res := &HandshakeResult{}
	for _, c := range o.hsInFlight {
		r, err := handshakeRound(ctx, e, k, c, o.hsConns)
		if err != nil {
			return res, err
		}
		res.Rounds = append(res.Rounds, r)
		res.MaxPerSec = max(res.MaxPerSec, r.PerSec)
		res.BestPerKpushCPU = max(res.BestPerKpushCPU, r.PerKpushCPUSecond)
	}
	st, err := storm(ctx, e, k)
	res.Storm = st
	return res, err
}

func handshakeRound(ctx context.Context, e *env, k *kpushRef, inFlight, n int) (HandshakeRound, error) {
	r := HandshakeRound{InFlight: inFlight, Conns: n}
	pool, err := e.newPool(k, nil, inFlight)
	if err != nil {
		return r, err
	}
	defer pool.Close()
	label := fmt.Sprintf("handshakes, %d in flight", inFlight)
	m0, err := k.scrape(ctx)
	if err != nil {
		return r, err
	}
	self := selfUsage()
	stop := startProgress(ctx, label, pool, k)
	start := time.Now()
	pool.Open(n, nil)
	err = pool.WaitReady(ctx, n)
	stop()
	if err != nil {
		return r, refusedPerAddress(ctx, k, m0, err)
	}
	s := pool.Stats()
	wall := time.Duration(s.LastReady - start.UnixNano())
	m1, err := k.scrape(ctx)
	if err != nil {
		return r, err
	}
	r.Generator = generatorSince(self)
	r.Seconds = wall.Seconds()
	r.PerSec = float64(n) / wall.Seconds()
	r.KpushCPUSeconds = m1.CPUSeconds - m0.CPUSeconds
	if r.KpushCPUSeconds > 0 {
		r.PerKpushCPUSecond = float64(n) / r.KpushCPUSeconds
	}
	r.Failed = s.Failed
	r.Latency = pool.HandshakeLatency().Summary()
	logf("%s: %d upgrades in %s = %s/s; kpush %.2f CPU-s → %s handshakes per kpush CPU-second; handshake p50 %s p99 %s; generator %.2f cores",
		label, n, wall.Round(time.Millisecond), si(r.PerSec), r.KpushCPUSeconds, si(r.PerKpushCPUSecond),
		ms(r.Latency.P50), ms(r.Latency.P99), r.Generator.Cores)
	pool.Close()
	return r, waitMetric(ctx, k, "kpush to release the connections", func(m target.Metrics) bool { return m.Connections == 0 })
}

func storm(ctx context.Context, e *env, k *kpushRef) (*StormResult, error) {
	o := e.o
	n := o.stormConns
	st := &StormResult{Conns: n, SubsPerConn: o.marketSubs, InFlight: o.stormInFlight}
	_, chans := symbolNames(o.channelPrefix, o.marketSymbols)
	subs, _ := assignSymbols(n, o.marketSubs, o.marketSymbols, o.marketZipf)
	pool, err := e.newPool(k, chans, o.stormInFlight)
	if err != nil {
		return st, err
	}
	defer pool.Close()
	if err := openAll(ctx, pool, k, n, func(i int) []int32 { return subs[i] }); err != nil {
		return st, err
	}
	wantSubs := float64(n * o.marketSubs)
	if err := waitMetric(ctx, k, "kpush to count every subscription", func(m target.Metrics) bool { return m.Subscriptions == wantSubs }); err != nil {
		return st, err
	}
	s0 := pool.Stats()
	m0, err := k.scrape(ctx)
	if err != nil {
		return st, err
	}
	self := selfUsage()
	stop := startProgress(ctx, "reconnect storm", pool, k)
	start := time.Now()
	pool.Drop(true)
	for ctx.Err() == nil {
		s := pool.Stats()
		if s.Subscribed-s0.Subscribed >= int64(n) && s.Ready == int64(n) {
			break
		}
		if s.InFlight == 0 && s.Queued == 0 && s.Failed > s0.Failed {
			stop()
			return st, refusedPerAddress(ctx, k, m0, fmt.Errorf("reconnect storm: %d connections failed to come back: %v", s.Failed-s0.Failed, s.Failures))
		}
		sleep(ctx, time.Millisecond)
	}
	s1 := pool.Stats()
	st.Seconds = time.Duration(s1.LastReady - start.UnixNano()).Seconds()
	err = waitMetric(ctx, k, "kpush to hold only the new connections", func(m target.Metrics) bool {
		return m.Connections == float64(n) && m.Subscriptions == wantSubs
	})
	st.KpushSeconds = time.Since(start).Seconds()
	stop()
	if err != nil {
		return st, err
	}
	m1, err := k.scrape(ctx)
	if err != nil {
		return st, err
	}
	st.Generator = generatorSince(self)
	st.KpushCPUSeconds = m1.CPUSeconds - m0.CPUSeconds
	st.Failed = s1.Failed - s0.Failed
	logf("reconnect storm: %d connections × %d channels back in %.2fs (kpush settled in %.2fs), kpush %.2f CPU-s, generator %.2f cores",
		n, o.marketSubs, st.Seconds, st.KpushSeconds, st.KpushCPUSeconds, st.Generator.Cores)
	return st, nil
}

// refusedPerAddress adds to err how many handshakes kpush refused since m0
// because one client address held its share of gateway.max_handshakes (the
// generator then sees "upgrade: connection closed").
func refusedPerAddress(ctx context.Context, k *kpushRef, m0 target.Metrics, err error) error {
	m1, serr := k.scrape(ctx)
	if serr != nil || m1.RejectedPerIP == m0.RejectedPerIP {
		return err
	}
	return fmt.Errorf("%w; kpush refused %.0f handshakes as over one address's share of gateway.max_handshakes (kpush_rejected_total{reason=\"handshakes_per_ip\"}): spread them over more source addresses (-src-addrs)", err, m1.RejectedPerIP-m0.RejectedPerIP)
}
