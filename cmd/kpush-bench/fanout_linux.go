package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/kpush/kpush/cmd/kpush-bench/internal/hist"
	"github.com/kpush/kpush/cmd/kpush-bench/internal/target"
	"github.com/kpush/kpush/cmd/kpush-bench/internal/wsload"
)

// Step is one measured phase at a steady record rate.
type Step struct {
	Rate                  float64      `json:"rate"` // records/s asked for
	Seconds               float64      `json:"seconds"`
	Produced              int64        `json:"produced"`
	Expected              int64        `json:"expected"` // deliveries the produced records owe
	Received              int64        `json:"received"`
	Skipped               int64        `json:"skipped"` // records the received frames report as skipped ("skipped":N: caps, conflation)
	Missing               int64        `json:"missing"` // owed, neither received nor reported skipped
	Duplicates            int64        `json:"duplicates"`
	Gaps                  int64        `json:"gaps"`
	DeliveriesPerSec      float64      `json:"deliveries_per_sec"`
	KpushCPUSeconds       float64      `json:"kpush_cpu_seconds"`
	KpushCores            float64      `json:"kpush_cores"`
	KpushUserSeconds      float64      `json:"kpush_user_seconds"`   // of KpushCPUSeconds: in kpush's own code
	KpushSystemSeconds    float64      `json:"kpush_system_seconds"` // of KpushCPUSeconds: in the kernel (on loopback, includes the receiving side's TCP work)
	DeliveriesPerKpushCPU float64      `json:"deliveries_per_kpush_cpu_second"`
	KpushRSSBytes         float64      `json:"kpush_rss_bytes"`
	FramesPerWrite        float64      `json:"frames_per_write"`   // kpush deliveries per socket write
	SocketWrites          float64      `json:"socket_writes"`      // kpush_socket_writes_total over the step
	BytesPerDelivery      float64      `json:"bytes_per_delivery"` // bytes the clients read per delivery (frames, headers, pings)
	Latency               hist.Summary `json:"latency"`
	// Newest is the newest-value latency (wsload.Pool.NewestLatency): for
	// every record, production to the client's receipt of it or a newer
	// one of its channel. It differs from Latency only under caps.
	Newest *hist.Summary `json:"newest_latency,omitempty"`
	// Kernel is the plain writev loop of the same run (kernel_linux.go) at this
	// step's frames per write, rounded; KernelRatio is DeliveriesPerKpushCPU
	// divided by FramesPerWrite / Kernel.CPUPerWrite (the plain loop's CPU
	// per write over kpush's). KernelSweepSeconds is its CPU time to
	// write one record, one write each, to every subscriber of one record (the hottest
	// symbol's in the market), and P99OverSweep the step's p99 divided by
	// it (NewestP99OverSweep the same for Newest).
	Kernel                  *KernelLoop `json:"kernel,omitempty"`
	KernelRatio             float64     `json:"kernel_ratio,omitempty"`
	KernelWriteRatio        float64     `json:"kernel_write_ratio,omitempty"` // the plain loop\'s CPU per write over kpush\'s CPU per socket write
	KernelSweepSeconds      float64     `json:"kernel_sweep_seconds,omitempty"`
	P99OverSweep            float64     `json:"p99_over_kernel_sweep,omitempty"`
	NewestP99OverSweep      float64     `json:"newest_p99_over_kernel_sweep,omitempty"`
	KpushP50, KpushP99      float64     `json:"-"`             // kpush's own histogram, Kafka timestamp to socket write: bucket bounds in seconds (+Inf past the last)
	KpushLatency            string      `json:"kpush_latency"` // the same, as text: "p50 <= x, p99 <= y"
	KeptUp                  bool        `json:"kept_up"`
	Note                    string      `json:"note,omitempty"`
	Generator               Generator   `json:"generator"`
	ConnectionsLost         int64       `json:"connections_lost"`
	KpushSlowConsumerCloses float64     `json:"kpush_slow_consumer_closes"`
}

// FanoutResult is the fan-out scenario.
type FanoutResult struct {
	Protocol             string  `json:"protocol"` // what the subscribers speak (-protocol)
	Subscribers          int     `json:"subscribers"`
	RecordBytes          int     `json:"record_bytes"`
	Steps                []Step  `json:"steps"`
	MaxRate              float64 `json:"max_rate"` // highest rate that kept up, below the first miss
	MaxDeliveriesPerSec  float64 `json:"max_deliveries_per_sec"`
	BestDeliveriesPerCPU float64 `json:"best_deliveries_per_kpush_cpu_second"` // over every step, overloaded ones included
	Half                 *Step   `json:"half,omitempty"`                       // at 50% of MaxRate
}

// Keeping up: every owed delivery arrives within keepUpDrain after the
// producer stops, the step's p99 stays under keepUpP99, and no connection
// is lost.
const (
	keepUpDrain = time.Second
	keepUpP99   = 250 * time.Millisecond
)

func runFanout(ctx context.Context, e *env) (*FanoutResult, error) {
	res, err := fanoutSteps(ctx, e)
	if err != nil || res == nil {
		return res, err
	}
	// kpush and the clients are gone: the plain loop has the CPUs and the
	// descriptors to itself.
	steps := []*Step{res.Half}
	for i := range res.Steps {
		steps = append(steps, &res.Steps[i])
	}
	return res, kernelRatios(ctx, steps, e.o.fanoutSubs, e.o.fanoutSubs, kernelFrame(e.o.channelPrefix+"FAN", e.o.recordBytes, e.o.protocol), e.o.kernelLoop)
}

func fanoutSteps(ctx context.Context, e *env) (*FanoutResult, error) {
	o := e.o
	k, err := e.startKpush(ctx, "fanout", 1)
	if err != nil {
		return nil, err
	}
	defer k.stop()
	ch := o.channelPrefix + "FAN"
	sent := wsload.NewSendTimes(1)
	pool, err := e.newPoolSent(k, []string{ch}, o.inFlight, sent, true)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	res := &FanoutResult{Protocol: o.protocol, Subscribers: o.fanoutSubs, RecordBytes: o.recordBytes}
	if err := openAll(ctx, pool, k, o.fanoutSubs, func(int) []int32 { return []int32{0} }); err != nil {
		return res, err
	}
	prod := e.newProducer(k.topic, []string{"FAN"}, []int64{int64(o.fanoutSubs)})
	prod.sent = sent
	one := func() int { return 0 }

	missed := 0
	for _, rate := range o.fanoutRates {
		if missed > 0 {
			// Past the first miss: let the backlog drain and bring back
			// any connection kpush closed before overloading again.
			if err := recover_(ctx, pool, k, o.fanoutSubs); err != nil {
				return res, err
			}
		}
		st, err := measureStep(ctx, e, k, pool, prod, fmt.Sprintf("fanout %g/s", rate), rate, o.fanoutStep, one, true)
		if err != nil {
			return res, err
		}
		res.Steps = append(res.Steps, st)
		res.BestDeliveriesPerCPU = max(res.BestDeliveriesPerCPU, st.DeliveriesPerKpushCPU)
		if !st.KeptUp {
			if missed++; missed > o.fanoutOverload {
				break
			}
			continue
		}
		if missed == 0 {
			res.MaxRate = rate
			res.MaxDeliveriesPerSec = max(res.MaxDeliveriesPerSec, st.DeliveriesPerSec)
		}
	}
	if res.MaxRate == 0 {
		logf("fanout: deliveries did not keep up even at %g records/s; no half-rate step", o.fanoutRates[0])
		return res, nil
	}
	if err := recover_(ctx, pool, k, o.fanoutSubs); err != nil {
		return res, err
	}
	half := res.MaxRate / 2
	st, err := measureStep(ctx, e, k, pool, prod, fmt.Sprintf("fanout half %g/s", half), half, 2*o.fanoutStep, one, false)
	if err != nil {
		return res, err
	}
	res.Half = &st
	return res, nil
}

// openAll opens n connections and waits until they and kpush agree they are
// all subscribed.
func openAll(ctx context.Context, pool *wsload.Pool, k *kpushRef, n int, subs func(i int) []int32) error {
	stop := startProgress(ctx, "connect", pool, k)
	defer stop()
	start := time.Now()
	pool.Open(n, subs)
	if err := pool.WaitReady(ctx, n); err != nil {
		return err
	}
	if err := waitMetric(ctx, k, "kpush to count the connections", func(m target.Metrics) bool {
		return m.Connections >= float64(n)
	}); err != nil {
		return err
	}
	logf("%d connections subscribed in %s", n, time.Since(start).Round(time.Millisecond))
	return nil
}

// recover_ waits for a backlog to drain and reopens connections kpush
// closed, so the next phase starts from n subscribed connections.
func recover_(ctx context.Context, pool *wsload.Pool, k *kpushRef, n int) error {
	last, still := pool.Stats().Deliveries, 0
	for still < 20 && ctx.Err() == nil {
		sleep(ctx, 100*time.Millisecond)
		if d := pool.Stats().Deliveries; d == last {
			still++
		} else {
			last, still = d, 0
		}
	}
	if pool.Stats().Ready < int64(n) {
		logf("reopening %d connections", int64(n)-pool.Stats().Ready)
		pool.Revive()
		if err := pool.WaitReady(ctx, n); err != nil {
			return err
		}
	}
	return nil
}

// measureStep produces at rate for d, waits for the deliveries it owes, and
// reports throughput, latency and kpush's CPU over the step.
func measureStep(ctx context.Context, e *env, k *kpushRef, pool *wsload.Pool, prod *producer,
	label string, rate float64, d time.Duration, pick func() int, judge bool) (Step, error) {
	st := Step{Rate: rate}
	s0, l0, n0, self := pool.Stats(), pool.Latency(), pool.NewestLatency(), selfUsage()
	m0, err := k.scrape(ctx)
	if err != nil {
		return st, err
	}
	p0, x0 := prod.produced.Load(), prod.expected.Load()
	c0 := k.cpu()
	var wg sync.WaitGroup
	if e.o.profile {
		wg.Add(1)
		go func() {
			defer wg.Done()
			path := filepath.Join(e.o.out, fmt.Sprintf("%s.pprof", sanitize(label)))
			f, err := os.Create(path)
			if err != nil {
				logf("profile: %v", err)
				return
			}
			defer f.Close()
			if err := target.Profile(ctx, k.adminURL, d, f); err != nil {
				logf("profile: %v", err)
			}
		}()
	}
	stop := startProgress(ctx, label, pool, k)
	start := time.Now()
	prod.run(ctx, rate, d, pick)
	produced, expected := prod.produced.Load()-p0, prod.expected.Load()-x0
	// Wait for what the records owe, a little longer than the bound for
	// keeping up, to tell late deliveries from lost ones.
	deadline := time.Now().Add(max(5*keepUpDrain, d/2))
	drainStart := time.Now()
	var caughtUp time.Duration = -1
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if s := pool.Stats(); s.Deliveries+s.Skipped-s0.Deliveries-s0.Skipped >= expected {
			caughtUp = time.Since(drainStart)
			break
		}
		sleep(ctx, 5*time.Millisecond)
	}
	wall := time.Since(start)
	stop()
	wg.Wait()
	s1, l1, n1, c1 := pool.Stats(), pool.Latency(), pool.NewestLatency(), k.cpu()
	m1, err := k.scrape(ctx)
	if err != nil {
		return st, err
	}
	if err := prod.flush(ctx); err != nil {
		return st, err
	}
	st.Seconds = wall.Seconds()
	st.Produced, st.Expected = produced, expected
	st.Received = s1.Deliveries - s0.Deliveries
	st.Skipped = s1.Skipped - s0.Skipped
	st.Missing = max(0, expected-st.Received-st.Skipped)
	st.Duplicates, st.Gaps = s1.Dups-s0.Dups, s1.Gaps-s0.Gaps
	st.DeliveriesPerSec = float64(st.Received) / wall.Seconds()
	st.KpushCPUSeconds = m1.CPUSeconds - m0.CPUSeconds
	st.KpushCores = st.KpushCPUSeconds / m1.At.Sub(m0.At).Seconds()
	if st.KpushCPUSeconds > 0 {
		st.DeliveriesPerKpushCPU = float64(st.Received) / st.KpushCPUSeconds
	}
	st.KpushUserSeconds, st.KpushSystemSeconds = c1.User-c0.User, c1.System-c0.System
	st.KpushRSSBytes = m1.RSSBytes
	if w := m1.Writes - m0.Writes; w > 0 {
		st.FramesPerWrite = (m1.Deliveries - m0.Deliveries) / w
	}
	st.SocketWrites = m1.SocketWrites - m0.SocketWrites
	if st.Received > 0 {
		st.BytesPerDelivery = float64(s1.Bytes-s0.Bytes) / float64(st.Received)
	}
	st.KpushSlowConsumerCloses = m1.SlowConsumers - m0.SlowConsumers
	st.ConnectionsLost = (s1.Closed - s0.Closed) + (s1.Lost - s0.Lost)
	st.Latency = l1.Sub(l0).Summary()
	if prod.sent != nil {
		nl := n1.Sub(n0).Summary()
		st.Newest = &nl
	}
	st.KpushP50, st.KpushP99 = m1.LatencyQuantile(m0, 0.5), m1.LatencyQuantile(m0, 0.99)
	st.KpushLatency = fmt.Sprintf("p50 <= %s, p99 <= %s", bound(st.KpushP50), bound(st.KpushP99))
	st.Generator = generatorSince(self)
	st.KeptUp = true
	switch {
	case float64(produced) < 0.95*rate*d.Seconds():
		st.KeptUp = false
		st.Note = fmt.Sprintf("the generator produced only %d of %.0f records", produced, rate*d.Seconds())
	case st.ConnectionsLost > 0:
		st.KeptUp = false
		st.Note = fmt.Sprintf("%d connections closed (kpush slow-consumer closes: %.0f)", st.ConnectionsLost, st.KpushSlowConsumerCloses)
	case caughtUp < 0 || caughtUp > keepUpDrain:
		st.KeptUp = false
		if caughtUp < 0 {
			st.Note = fmt.Sprintf("%d of %d deliveries still missing %s after producing stopped", st.Missing, expected, time.Since(drainStart).Round(time.Millisecond))
		} else {
			st.Note = fmt.Sprintf("the last deliveries arrived %s after producing stopped", caughtUp.Round(time.Millisecond))
		}
	case st.Latency.P99 > keepUpP99:
		st.KeptUp = false
		st.Note = fmt.Sprintf("p99 %s above %s", ms(st.Latency.P99), keepUpP99)
	}
	if !judge {
		st.KeptUp = st.Missing == 0 && st.ConnectionsLost == 0
	}
	logf("%s: %d records, %d/%d deliveries (%s/s), p50 %s p99 %s max %s (kpush's own histogram: p50 <= %s, p99 <= %s), kpush %.2f CPU-s (%.2f user + %.2f system; %.2f cores, %.1f frames per write, %.0f socket writes, %.1f bytes read per delivery) → %s deliveries per kpush CPU-second; generator %.2f cores; kept up: %v %s",
		label, produced, st.Received, expected, si(st.DeliveriesPerSec), ms(st.Latency.P50), ms(st.Latency.P99), ms(st.Latency.Max),
		bound(st.KpushP50), bound(st.KpushP99),
		st.KpushCPUSeconds, st.KpushUserSeconds, st.KpushSystemSeconds, st.KpushCores, st.FramesPerWrite, st.SocketWrites, st.BytesPerDelivery, si(st.DeliveriesPerKpushCPU), st.Generator.Cores, st.KeptUp, st.Note)
	return st, nil
}

// bound formats a histogram bucket bound in seconds.
func bound(sec float64) string {
	if math.IsInf(sec, 1) {
		return "+Inf"
	}
	return ms(time.Duration(sec * float64(time.Second)))
}

func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-') {
			b[i] = '-'
		}
	}
	return string(b)
}
