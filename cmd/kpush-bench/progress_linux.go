package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kpush/kpush/cmd/kpush-bench/internal/wsload"
)

// usage is the generator's own resource use at one moment.
type usage struct {
	at         time.Time
	cpuSeconds float64
	rssBytes   int64
}

func selfUsage() usage {
	u := usage{at: time.Now()}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		u.cpuSeconds = float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
	}
	if b, err := os.ReadFile("/proc/self/statm"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 1 {
			pages, _ := strconv.ParseInt(f[1], 10, 64)
			u.rssBytes = pages * int64(os.Getpagesize())
		}
	}
	return u
}

// Generator is the load generator's own cost over a measured phase.
type Generator struct {
	CPUSeconds float64 `json:"cpu_seconds"`
	Cores      float64 `json:"cores"` // CPU seconds per wall second
	RSSBytes   int64   `json:"rss_bytes"`
	Goroutines int     `json:"goroutines"`
}

func generatorSince(u usage) Generator {
	now := selfUsage()
	g := Generator{CPUSeconds: now.cpuSeconds - u.cpuSeconds, RSSBytes: now.rssBytes, Goroutines: runtime.NumGoroutine()}
	if wall := now.at.Sub(u.at).Seconds(); wall > 0 {
		g.Cores = g.CPUSeconds / wall
	}
	return g
}

// startProgress prints one line a second: connections, deliveries/s, the
// last second's p99, and kpush's and the generator's CPU use. The returned
// function stops it and waits for it.
func startProgress(ctx context.Context, label string, p *wsload.Pool, k *kpushRef) func() {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		prevStats, prevLat, prevSelf := p.Stats(), p.Latency(), selfUsage()
		prevK, kerr := k.scrape(ctx)
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			s, lat, self := p.Stats(), p.Latency(), selfUsage()
			wall := self.at.Sub(prevSelf.at).Seconds()
			d := lat.Sub(prevLat)
			line := fmt.Sprintf("[%s] conns %d ready, %d open | %s deliv/s | p99 %s",
				label, s.Ready, s.Open, si(float64(s.Deliveries-prevStats.Deliveries)/wall), ms(d.Quantile(0.99)))
			if m, err := k.scrape(ctx); err == nil && kerr == nil {
				line += fmt.Sprintf(" | kpush %.2f cores, %s RSS, %.0f goroutines",
					(m.CPUSeconds-prevK.CPUSeconds)/m.At.Sub(prevK.At).Seconds(), mib(m.RSSBytes), m.Goroutines)
				prevK = m
			} else {
				prevK, kerr = m, err
			}
			line += fmt.Sprintf(" | generator %.2f cores", (self.cpuSeconds-prevSelf.cpuSeconds)/wall)
			if s.Failed > prevStats.Failed || s.Closed > prevStats.Closed {
				line += fmt.Sprintf(" | failed %d closed %d", s.Failed, s.Closed)
			}
			logf("%s", line)
			prevStats, prevLat, prevSelf = s, lat, self
		}
	}()
	return func() {
		cancel()
		wg.Wait()
	}
}

// si formats a rate with k/M suffixes.
func si(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	default:
		return fmt.Sprintf("%.0f", v)
	}
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.2fms", float64(d)/1e6)
}

func mib(b float64) string {
	return fmt.Sprintf("%.1fMiB", b/(1<<20))
}
