package main

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"

	"github.com/kpush/kpush/cmd/kpush-bench/internal/wsload"
)

// MarketResult is the market-mix scenario.
type MarketResult struct {
	Conns                   int     `json:"conns"`
	SubsPerConn             int     `json:"subs_per_conn"`
	Symbols                 int     `json:"symbols"`
	Zipf                    float64 `json:"zipf"`
	RecordDist              string  `json:"record_dist"`
	Partitions              int     `json:"partitions"`
	HottestSymbolSubs       int64   `json:"hottest_symbol_subscribers"`
	MeanDeliveriesPerRecord float64 `json:"mean_deliveries_per_record"`
	Step                    Step    `json:"step"`
}

// zipf draws 0..n-1 with P(k) ∝ 1/(k+1)^s from a fixed seed, so every run
// subscribes the same way.
type zipf struct {
	cdf []float64
	rng *rand.Rand
}

func newZipf(n int, s float64, seed uint64) *zipf {
	z := &zipf{cdf: make([]float64, n), rng: rand.New(rand.NewPCG(seed, seed^0x5bd1e995))}
	var sum float64
	for k := 0; k < n; k++ {
		sum += 1 / math.Pow(float64(k+1), s)
		z.cdf[k] = sum
	}
	for k := range z.cdf {
		z.cdf[k] /= sum
	}
	return z
}

func (z *zipf) next() int {
	return min(sort.SearchFloat64s(z.cdf, z.rng.Float64()), len(z.cdf)-1)
}

// assignSymbols gives each of conns connections k distinct symbols drawn by
// popularity, and counts subscribers per symbol.
func assignSymbols(conns, k, symbols int, s float64) (subs [][]int32, perSymbol []int64) {
	z := newZipf(symbols, s, 42)
	subs = make([][]int32, conns)
	perSymbol = make([]int64, symbols)
	for i := range subs {
		set := make([]int32, 0, k)
		for len(set) < k {
			c := int32(z.next())
			dup := false
			for _, x := range set {
				dup = dup || x == c
			}
			if !dup {
				set = append(set, c)
				perSymbol[c]++
			}
		}
		subs[i] = set
	}
	return subs, perSymbol
}

func symbolNames(prefix string, n int) (keys, channels []string) {
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("S%04d", i)
		keys = append(keys, key)
		channels = append(channels, prefix+key)
	}
	return keys, channels
}

func runMarket(ctx context.Context, e *env) (*MarketResult, error) {
	res, err := marketStep(ctx, e)
	if err != nil || res == nil {
		return res, err
	}
	// The plain loop over the same number of sockets, once kpush and the
	// clients are gone; the p99 is set against one record of the hottest
	// symbol.
	return res, kernelRatios(ctx, []*Step{&res.Step}, e.o.marketConns, int(res.HottestSymbolSubs),
		kernelFrame(e.o.channelPrefix+"S0000", e.o.recordBytes, wsload.ProtoV1), e.o.kernelLoop)
}

func marketStep(ctx context.Context, e *env) (*MarketResult, error) {
	o := e.o
	k, err := e.startKpush(ctx, "market", int32(o.marketPartitions))
	if err != nil {
		return nil, err
	}
	defer k.stop()
	keys, chans := symbolNames(o.channelPrefix, o.marketSymbols)
	subs, perSymbol := assignSymbols(o.marketConns, o.marketSubs, o.marketSymbols, o.marketZipf)
	res := &MarketResult{Conns: o.marketConns, SubsPerConn: o.marketSubs, Symbols: o.marketSymbols,
		Zipf: o.marketZipf, RecordDist: "uniform", Partitions: o.marketPartitions}
	var total int64
	for _, n := range perSymbol {
		res.HottestSymbolSubs = max(res.HottestSymbolSubs, n)
		total += n
	}
	pick := func() func() int {
		r := rand.New(rand.NewPCG(7, 11))
		return func() int { return r.IntN(o.marketSymbols) }
	}()
	res.MeanDeliveriesPerRecord = float64(total) / float64(o.marketSymbols)
	if o.marketRecordZipf {
		res.RecordDist = "zipf"
		z := newZipf(o.marketSymbols, o.marketZipf, 99)
		pick = z.next
		var w float64
		prev := 0.0
		for i, c := range z.cdf {
			w += (c - prev) * float64(perSymbol[i])
			prev = c
		}
		res.MeanDeliveriesPerRecord = w
	}
	logf("market: %d connections × %d of %d symbols (Zipf %.2f; hottest symbol has %d subscribers), %g records/s %s, ~%.0f deliveries per record",
		o.marketConns, o.marketSubs, o.marketSymbols, o.marketZipf, res.HottestSymbolSubs, o.marketRate, res.RecordDist, res.MeanDeliveriesPerRecord)

	sent := wsload.NewSendTimes(len(chans)) // channels indexed as keys
	pool, err := e.newPoolSent(k, chans, o.inFlight, sent, false)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	if err := openAll(ctx, pool, k, o.marketConns, func(i int) []int32 { return subs[i] }); err != nil {
		return res, err
	}
	prod := e.newProducer(k.topic, keys, perSymbol)
	prod.sent = sent
	if _, err := measureStep(ctx, e, k, pool, prod, "market warm-up", o.marketRate, o.warmUp, pick, false); err != nil {
		return res, err
	}
	st, err := measureStep(ctx, e, k, pool, prod, "market", o.marketRate, o.marketDuration, pick, true)
	res.Step = st
	return res, err
}
