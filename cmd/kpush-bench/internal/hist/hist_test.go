package hist

import (
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestBucketBoundsContainValue(t *testing.T) {
	for _, v := range []int64{0, 1, 31, 32, 33, 63, 64, 65, 1000, 999_999, 1 << 40, 1<<62 + 12345} {
		i := bucket(v)
		if up := upper(i); v > up {
			t.Fatalf("value %d above its bucket %d bound %d", v, i, up)
		}
		if i > 0 && v <= upper(i-1) {
			t.Fatalf("value %d also fits bucket %d (bound %d)", v, i-1, upper(i-1))
		}
		if v >= 64 {
			if err := float64(upper(i)-v) / float64(v); err > 1.0/32 {
				t.Fatalf("value %d: bucket bound %d is %.3f above it", v, upper(i), err)
			}
		}
	}
}

// TestQuantilesMatchSortedSample compares the histogram's percentiles with
// the exact ones of the same sample: they may be up to one bucket (3%) high,
// never low.
func TestQuantilesMatchSortedSample(t *testing.T) {
	cases := []struct {
		name string
		gen  func(r *rand.Rand) int64
	}{
		{"uniform 0-10ms", func(r *rand.Rand) int64 { return r.Int64N(int64(10 * time.Millisecond)) }},
		{"exponential 1ms", func(r *rand.Rand) int64 { return int64(r.ExpFloat64() * float64(time.Millisecond)) }},
		{"bimodal", func(r *rand.Rand) int64 {
			if r.IntN(100) == 0 {
				return int64(200*time.Millisecond) + r.Int64N(1e6)
			}
			return int64(300*time.Microsecond) + r.Int64N(1e5)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(1, 2))
			var h H
			vals := make([]int64, 100000)
			for i := range vals {
				vals[i] = tc.gen(r)
				h.Record(vals[i])
			}
			slices.Sort(vals)
			s := h.Snapshot()
			if s.Count() != uint64(len(vals)) {
				t.Fatalf("count %d, want %d", s.Count(), len(vals))
			}
			for _, q := range []float64{0.5, 0.9, 0.99, 0.999, 1} {
				exact := vals[max(int(q*float64(len(vals))+0.5), 1)-1]
				got := int64(s.Quantile(q))
				if got < exact || float64(got-exact) > float64(exact)/32+1 {
					t.Errorf("q%.3f = %d, exact %d", q, got, exact)
				}
			}
			if s.Max() != time.Duration(vals[len(vals)-1]) {
				t.Errorf("max %v, want %v", s.Max(), time.Duration(vals[len(vals)-1]))
			}
		})
	}
}

func TestSubGivesTheInterval(t *testing.T) {
	var h H
	for i := 0; i < 1000; i++ {
		h.Record(int64(time.Second))
	}
	before := h.Snapshot()
	for i := 0; i < 100; i++ {
		h.Record(int64(time.Millisecond))
	}
	d := h.Snapshot().Sub(before)
	if d.Count() != 100 {
		t.Fatalf("interval count %d, want 100", d.Count())
	}
	if p := d.Quantile(0.99); p < time.Millisecond || p > time.Millisecond*33/32 {
		t.Fatalf("interval p99 %v, want about 1ms (the earlier 1s values must not show)", p)
	}
	var empty Snapshot
	if empty.Quantile(0.5) != 0 || empty.Summary().Count != 0 {
		t.Fatal("empty snapshot should report zeros")
	}
}

func TestConcurrentRecord(t *testing.T) {
	var h H
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10000; i++ {
				h.Record(int64(i))
			}
		}()
	}
	wg.Wait()
	if s := h.Snapshot(); s.Count() != 40000 || s.Max() != 9999 {
		t.Fatalf("count %d max %d, want 40000 and 9999", s.Count(), s.Max())
	}
}

func BenchmarkRecord(b *testing.B) {
	var h H
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		h.Record(int64(i & 0xffffff))
	}
}
