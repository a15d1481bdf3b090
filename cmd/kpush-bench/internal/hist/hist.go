// Package hist is a log-linear latency histogram for the load generator.
//
// Values are nanoseconds. Each power of two is split into 32 equal buckets,
// so a recorded value is known to within 1/32 (about 3%) of itself, from 1 ns
// to centuries, in a fixed 16 KiB of counters. Recording is one atomic add:
// several event loops may record into one H while a reporter takes
// snapshots. Snapshots subtract, so a reporter can show the last second's
// percentiles as well as the whole run's.
package hist

import (
	"math/bits"
	"sync/atomic"
	"time"
)

const (
	subBits    = 5
	subBuckets = 1 << subBits // buckets per power of two
	numBuckets = (64 - subBits + 1) * subBuckets
)

// H is a histogram safe for concurrent Record and Snapshot.
type H struct {
	counts [numBuckets]atomic.Uint64
	max    atomic.Int64
}

// bucket returns the bucket index of v (v >= 0).
func bucket(v int64) int {
	u := uint64(v)
	if u < subBuckets {
		return int(u)
	}
	e := bits.Len64(u) - subBits - 1 // shift that brings u into [32, 64)
	return (e+1)*subBuckets + int(u>>uint(e)) - subBuckets
}

// upper returns the largest value that falls in bucket i.
func upper(i int) int64 {
	if i < subBuckets {
		return int64(i)
	}
	e := i/subBuckets - 1
	m := uint64(i%subBuckets + subBuckets)
	return int64((m+1)<<uint(e) - 1)
}

// Record adds one value in nanoseconds; negative values count as 0.
func (h *H) Record(ns int64) {
	if ns < 0 {
		ns = 0
	}
	h.counts[bucket(ns)].Add(1)
	for {
		m := h.max.Load()
		if ns <= m || h.max.CompareAndSwap(m, ns) {
			return
		}
	}
}

// Snapshot is a copy of a histogram's counts at one moment.
type Snapshot struct {
	counts [numBuckets]uint64
	total  uint64
	max    int64 // exact for a whole-run snapshot; bucket bound after Sub
}

// Snapshot copies the counts.
func (h *H) Snapshot() *Snapshot {
	s := &Snapshot{max: h.max.Load()}
	for i := range h.counts {
		c := h.counts[i].Load()
		s.counts[i] = c
		s.total += c
	}
	return s
}

// Add merges o into s.
func (s *Snapshot) Add(o *Snapshot) {
	for i, c := range o.counts {
		s.counts[i] += c
	}
	s.total += o.total
	s.max = max(s.max, o.max)
}

// Sub returns the values recorded between an earlier snapshot and s. The
// maximum of the difference is its highest bucket's bound.
func (s *Snapshot) Sub(earlier *Snapshot) *Snapshot {
	d := &Snapshot{}
	for i := range s.counts {
		c := s.counts[i] - earlier.counts[i]
		d.counts[i] = c
		d.total += c
		if c > 0 {
			d.max = upper(i)
		}
	}
	if d.max > s.max {
		d.max = s.max
	}
	return d
}

// Count is the number of recorded values.
func (s *Snapshot) Count() uint64 { return s.total }

// Max is the largest recorded value.
func (s *Snapshot) Max() time.Duration { return time.Duration(s.max) }

// Quantile returns the value at or below which a fraction q of the values
// fall, rounded up to its bucket's bound (and never above Max). It is 0 for
// an empty snapshot.
func (s *Snapshot) Quantile(q float64) time.Duration {
	if s.total == 0 {
		return 0
	}
	rank := uint64(q*float64(s.total) + 0.5)
	rank = min(max(rank, 1), s.total)
	var seen uint64
	for i, c := range s.counts {
		seen += c
		if seen >= rank {
			return time.Duration(min(upper(i), s.max))
		}
	}
	return time.Duration(s.max)
}

// Summary is the percentiles the benchmark reports.
type Summary struct {
	Count uint64        `json:"count"`
	P50   time.Duration `json:"p50_ns"`
	P90   time.Duration `json:"p90_ns"`
	P99   time.Duration `json:"p99_ns"`
	P999  time.Duration `json:"p999_ns"`
	Max   time.Duration `json:"max_ns"`
}

// Summary returns p50, p90, p99, p99.9 and max.
func (s *Snapshot) Summary() Summary {
	return Summary{
		Count: s.total,
		P50:   s.Quantile(0.50),
		P90:   s.Quantile(0.90),
		P99:   s.Quantile(0.99),
		P999:  s.Quantile(0.999),
		Max:   s.Max(),
	}
}
