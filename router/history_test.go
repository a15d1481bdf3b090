package router

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// historySince subscribes a fresh sink to ch, returns what the history holds
// after `after` on partition p, and unsubscribes it.
func historySince(r *Router, ch string, p int32, after int64) ([]int64, bool) {
	var offs []int64
	var complete bool
	s := &recSink{}
	defer r.Unsubscribe(s, ch)
	r.Subscribe(s, ch, func(v View) {
		var fs []*Frame
		fs, complete = v.History(nil, p, after)
		for _, f := range fs {
			offs = append(offs, f.Offset)
		}
	})
	return offs, complete
}

func TestHistoryBounds(t *testing.T) {
	frame := func(p int32, o int64, size int) *Frame {
		return &Frame{Channel: "c", Partition: p, Offset: o, Data: make([]byte, size)}
	}
	cases := []struct {
		name     string
		keep     Retention
		publish  []*Frame
		p        int32
		after    int64
		want     []int64
		complete bool
	}{
		{"all kept", Retention{HistoryRecords: 10, HistoryBytes: 1000, HistoryAge: time.Minute},
			[]*Frame{frame(0, 10, 1), frame(0, 12, 1), frame(0, 15, 1)}, 0, 9, []int64{10, 12, 15}, true},
		{"position inside", Retention{HistoryRecords: 10, HistoryBytes: 1000, HistoryAge: time.Minute},
			[]*Frame{frame(0, 10, 1), frame(0, 12, 1), frame(0, 15, 1)}, 0, 12, []int64{15}, true},
		{"up to date", Retention{HistoryRecords: 10, HistoryBytes: 1000, HistoryAge: time.Minute},
			[]*Frame{frame(0, 10, 1), frame(0, 12, 1)}, 0, 12, nil, true},
		{"before first seen", Retention{HistoryRecords: 10, HistoryBytes: 1000, HistoryAge: time.Minute},
			[]*Frame{frame(0, 10, 1), frame(0, 12, 1)}, 0, 8, nil, false},
		{"count evicts", Retention{HistoryRecords: 2, HistoryBytes: 1000, HistoryAge: time.Minute},
			[]*Frame{frame(0, 10, 1), frame(0, 12, 1), frame(0, 15, 1)}, 0, 9, nil, false},
		{"count evicts, position after evicted", Retention{HistoryRecords: 2, HistoryBytes: 1000, HistoryAge: time.Minute},
			[]*Frame{frame(0, 10, 1), frame(0, 12, 1), frame(0, 15, 1)}, 0, 10, []int64{12, 15}, true},
		{"bytes evict", Retention{HistoryRecords: 10, HistoryBytes: 250, HistoryAge: time.Minute},
			[]*Frame{frame(0, 1, 100), frame(0, 2, 100), frame(0, 3, 100)}, 0, 1, []int64{2, 3}, true},
		{"bytes evict, too old", Retention{HistoryRecords: 10, HistoryBytes: 250, HistoryAge: time.Minute},
			[]*Frame{frame(0, 1, 100), frame(0, 2, 100), frame(0, 3, 100)}, 0, 0, nil, false},
		{"other partition interleaved", Retention{HistoryRecords: 10, HistoryBytes: 1000, HistoryAge: time.Minute},
			[]*Frame{frame(0, 5, 1), frame(1, 100, 1), frame(0, 6, 1), frame(1, 101, 1)}, 1, 99, []int64{100, 101}, true},
		{"partition never seen", Retention{HistoryRecords: 10, HistoryBytes: 1000, HistoryAge: time.Minute},
			[]*Frame{frame(0, 5, 1)}, 3, 99, nil, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := New()
			for _, f := range tc.publish {
				r.Publish(f, &tc.keep)
			}
			got, complete := historySince(r, "c", tc.p, tc.after)
			if complete != tc.complete || fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("History(p=%d, after=%d) = %v, %v; want %v, %v", tc.p, tc.after, got, complete, tc.want, tc.complete)
			}
			st := r.Stats()
			var frames, bytes int64
			for _, c := range r.shardFor("c").channels {
				if c.hist != nil {
					frames, bytes = int64(c.hist.n), int64(c.hist.bytes)
				}
			}
			if st.HistoryFrames != frames || st.HistoryBytes != bytes {
				t.Fatalf("stats history %d frames %d bytes, ring holds %d, %d", st.HistoryFrames, st.HistoryBytes, frames, bytes)
			}
		})
	}
}

func TestHistoryAgeAndTrim(t *testing.T) {
	r := New()
	keep := &Retention{HistoryRecords: 100, HistoryBytes: 1 << 20, HistoryAge: time.Minute}
	for o := int64(1); o <= 5; o++ {
		r.Publish(&Frame{Channel: "quiet", Offset: o, Data: []byte("x")}, keep)
	}
	if st := r.Stats(); st.HistoryFrames != 5 || st.Channels != 1 {
		t.Fatalf("stats = %+v, want 5 frames in 1 channel", st)
	}
	r.Trim(time.Now())
	if got, ok := historySince(r, "quiet", 0, 2); !ok || fmt.Sprint(got) != "[3 4 5]" {
		t.Fatalf("before aging: %v %v", got, ok)
	}
	// An hour later everything has aged out and, with no subscriber, the
	// channel is forgotten.
	r.Trim(time.Now().Add(time.Hour))
	if st := r.Stats(); st.HistoryFrames != 0 || st.HistoryBytes != 0 || st.Channels != 0 {
		t.Fatalf("after trim stats = %+v, want nothing retained", st)
	}
}

// TestConcurrentResumeNoGap publishes a sequence on two partitions while
// sinks subscribe with a position taken from what was published so far:
// each sink must get, from history then live, every later offset exactly
// once and in order.
func TestConcurrentResumeNoGap(t *testing.T) {
	r := New()
	keep := &Retention{HistoryRecords: 1 << 16, HistoryBytes: 1 << 30, HistoryAge: time.Hour}
	const n = 20000
	var published [2]int64 // highest offset published per partition, under mu
	var mu sync.Mutex
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := int64(1); i <= n; i++ {
			p := int32(i % 2)
			r.Publish(&Frame{Channel: "c", Partition: p, Offset: i}, keep)
			mu.Lock()
			published[p] = i
			mu.Unlock()
		}
	}()
	type sub struct {
		s     *recSink
		after [2]int64
		ok    [2]bool
	}
	subs := make([]*sub, 40)
	for i := range subs {
		sb := &sub{s: &recSink{}}
		subs[i] = sb
		mu.Lock()
		// Some resume from where they are, some from a little behind.
		sb.after = [2]int64{max(published[0]-int64(i*7), 0), max(published[1]-int64(i*3), 0)}
		mu.Unlock()
		r.Subscribe(sb.s, "c", func(v View) {
			for p := int32(0); p < 2; p++ {
				var fs []*Frame
				fs, sb.ok[p] = v.History(nil, p, sb.after[p])
				for _, f := range fs {
					sb.s.Enqueue(f)
				}
			}
		})
	}
	wg.Wait()
	for i, sb := range subs {
		next := [2]int64{sb.after[0] + 1, sb.after[1] + 1}
		for p := 0; p < 2; p++ {
			// Offsets of partition p are those with i%2 == p.
			for next[p]%2 != int64(p) {
				next[p]++
			}
			if !sb.ok[p] && sb.after[p] != 0 {
				t.Fatalf("sink %d partition %d: history not complete after %d", i, p, sb.after[p])
			}
		}
		for _, f := range sb.s.got() {
			p := f.Partition
			if !sb.ok[p] {
				continue // position 0 before anything was published: live only
			}
			if f.Offset != next[p] {
				t.Fatalf("sink %d partition %d: got offset %d, want %d (after %d)", i, p, f.Offset, next[p], sb.after[p])
			}
			next[p] += 2
		}
	}
}

// BenchmarkPublishHistory measures publishing to a channel that keeps a
// history and a last frame (write lock, ring append).
func BenchmarkPublishHistory(b *testing.B) {
	r := New()
	for i := 0; i < 100; i++ {
		r.Subscribe(&nopSink{}, "ticks.AAPL", nil)
	}
	keep := &Retention{Last: true, HistoryRecords: 1000, HistoryBytes: 1 << 20, HistoryAge: time.Minute}
	frames := make([]*Frame, 1024)
	for i := range frames {
		frames[i] = &Frame{Channel: "ticks.AAPL", Offset: int64(i), Data: make([]byte, 100)}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r.Publish(frames[i%len(frames)], keep)
	}
}
