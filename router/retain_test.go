package router

import (
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestHistoryContinuity: a history answers complete only across frames the
// consumer read without a break, whatever broke it.
func TestHistoryContinuity(t *testing.T) {
	keep := func() *Retention {
		return &Retention{HistoryRecords: 100, HistoryBytes: 1 << 20, HistoryAge: time.Hour}
	}
	fr := func(ch string, p int32, o int64, epoch uint64) *Frame {
		return &Frame{Channel: ch, Partition: p, Offset: o, Epoch: epoch, Data: []byte(ch + strconv.FormatInt(o, 10))}
	}
	type want struct {
		after    int64
		offs     string
		complete bool
	}
	cases := []struct {
		name    string
		publish []*Frame
		checks  []want
	}{
		{"one epoch is continuous",
			[]*Frame{fr("c", 0, 10, 1), fr("c", 0, 20, 1), fr("c", 0, 30, 1)},
			[]want{{9, "[10 20 30]", true}, {20, "[30]", true}}},
		{"out-of-range jump: a new epoch further on",
			[]*Frame{fr("c", 0, 10, 1), fr("c", 0, 20, 1), fr("c", 0, 500, 2), fr("c", 0, 510, 2)},
			[]want{{9, "[]", false}, {20, "[]", false}, {499, "[500 510]", true}, {500, "[510]", true}}},
		{"reset: a new epoch with the offset going backwards",
			[]*Frame{fr("c", 0, 10, 1), fr("c", 0, 20, 1), fr("c", 0, 3, 2), fr("c", 0, 5, 2), fr("c", 0, 30, 2)},
			// Positions up to 20 may be the old log's: never served.
			[]want{{9, "[]", false}, {2, "[]", false}, {20, "[]", false}, {21, "[30]", true}}},
		{"log went backwards within one epoch",
			[]*Frame{fr("c", 0, 10, 1), fr("c", 0, 20, 1), fr("c", 0, 15, 1), fr("c", 0, 18, 1), fr("c", 0, 25, 1)},
			[]want{{9, "[]", false}, {14, "[]", false}, {20, "[]", false}, {21, "[25]", true}}},
		{"same offset again",
			[]*Frame{fr("c", 0, 10, 1), fr("c", 0, 20, 1), fr("c", 0, 20, 1)},
			[]want{{9, "[]", false}, {19, "[]", false}, {20, "[]", false}}},
		{"a break in one partition leaves the other whole",
			[]*Frame{fr("c", 0, 10, 1), fr("c", 1, 10, 7), fr("c", 0, 90, 2), fr("c", 1, 11, 7)},
			[]want{{9, "[]", false}, {89, "[90]", true}}},
		{"a break seen on another channel of the route",
			[]*Frame{fr("c", 0, 10, 1), fr("c", 0, 20, 1), fr("other", 0, 900, 2)},
			[]want{{9, "[]", false}, {20, "[]", false}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := New()
			k := keep()
			for _, f := range tc.publish {
				r.Publish(f, k)
			}
			// The partition checked is 0; "[]" with complete=false is an
			// incomplete answer (History returns dst unchanged then).
			for _, w := range tc.checks {
				got, complete := historySince(r, "c", 0, w.after)
				if complete != w.complete || (complete && fmt.Sprint(got) != w.offs) || (!complete && len(got) != 0) {
					t.Fatalf("History(after=%d) = %v, %v; want %s, %v", w.after, got, complete, w.offs, w.complete)
				}
			}
			// No position ever names two frames.
			for _, c := range r.shardFor("c").channels {
				if c.hist == nil {
					continue
				}
				seen := map[[2]int64]bool{}
				for i := 0; i < c.hist.n; i++ {
					f := c.hist.buf[(c.hist.head+i)%len(c.hist.buf)].f
					k := [2]int64{int64(f.Partition), f.Offset}
					if seen[k] {
						t.Fatalf("two frames held at partition %d offset %d", f.Partition, f.Offset)
					}
					seen[k] = true
				}
			}
			st := r.Stats()
			var frames, bytes int64
			for i := range r.shards {
				for _, c := range r.shards[i].channels {
					if c.hist != nil {
						frames += int64(c.hist.n)
						bytes += int64(c.hist.bytes)
					}
				}
			}
			if st.HistoryFrames != frames || st.HistoryBytes != bytes {
				t.Fatalf("stats history %d frames %d bytes, rings hold %d, %d", st.HistoryFrames, st.HistoryBytes, frames, bytes)
			}
		})
	}
}

// TestRetainedMaxAge: a channel with no subscriber and no record for
// max_age loses its snapshot and history; a subscribed one keeps them.
func TestRetainedMaxAge(t *testing.T) {
	r := New()
	if err := r.SetConfig(Config{MaxAge: time.Minute}); err != nil {
		t.Fatal(err)
	}
	keep := &Retention{Last: true, HistoryRecords: 10, HistoryBytes: 1 << 20, HistoryAge: 24 * time.Hour}
	for _, ch := range []string{"quiet", "watched"} {
		r.Publish(&Frame{Channel: ch, Offset: 1, Data: []byte("x")}, keep)
	}
	s := &recSink{}
	r.Subscribe(s, "watched", nil)
	r.Trim(time.Now().Add(30 * time.Second))
	if r.Last("quiet") == nil {
		t.Fatal("snapshot dropped before max_age")
	}
	r.Trim(time.Now().Add(2 * time.Minute))
	if r.Last("quiet") != nil {
		t.Fatal("snapshot of a channel with no subscriber and no record for max_age kept")
	}
	if r.Last("watched") == nil {
		t.Fatal("snapshot of a subscribed channel dropped")
	}
	st := r.Stats()
	if st.Evicted[EvictMaxAge] != 1 || st.HistoryFrames != 1 || st.Channels != 1 {
		t.Fatalf("stats = %+v, want 1 eviction by max_age and only the watched channel left", st)
	}
	// Once its subscriber leaves, max_age counts from then.
	r.Unsubscribe(s, "watched")
	r.Trim(time.Now().Add(30 * time.Second))
	if r.Last("watched") == nil {
		t.Fatal("snapshot dropped less than max_age after the last subscriber left")
	}
	r.Trim(time.Now().Add(2 * time.Minute))
	if st := r.Stats(); r.Last("watched") != nil || st.RetainedBytes != 0 || st.Channels != 0 || st.HistoryFrames != 0 {
		t.Fatalf("after max_age unsubscribed: last %v, stats %+v; want nothing retained", r.Last("watched"), st)
	}
}

// TestDropRetention: a removed route's channels lose what they retained,
// and a late publish with its retention keeps nothing; other routes keep
// theirs.
func TestDropRetention(t *testing.T) {
	r := New()
	gone := &Retention{Last: true, HistoryRecords: 10, HistoryBytes: 1 << 20, HistoryAge: time.Hour}
	kept := &Retention{Last: true}
	for i := 0; i < 1000; i++ {
		r.Publish(&Frame{Channel: fmt.Sprintf("gone.%d", i), Offset: int64(i), Data: []byte("x")}, gone)
		r.Publish(&Frame{Channel: fmt.Sprintf("kept.%d", i), Offset: int64(i), Data: []byte("x")}, kept)
	}
	s := &recSink{}
	r.Subscribe(s, "gone.7", nil)
	r.DropRetention(gone)
	for i := 0; i < 1000; i++ {
		if r.Last(fmt.Sprintf("gone.%d", i)) != nil {
			t.Fatalf("gone.%d kept its snapshot after its route was removed", i)
		}
		if r.Last(fmt.Sprintf("kept.%d", i)) == nil {
			t.Fatalf("kept.%d lost its snapshot", i)
		}
	}
	if n := r.Publish(&Frame{Channel: "gone.7", Offset: 5000, Data: []byte("x")}, gone); n != 1 {
		t.Fatalf("publish to a subscribed channel of a removed route delivered to %d, want 1", n)
	}
	if r.Last("gone.7") != nil || r.Last("gone.8") != nil {
		t.Fatal("a publish with a removed route's retention retained a frame")
	}
	st := r.Stats()
	if st.Evicted[EvictRouteRemoved] != 1000 || st.HistoryFrames != 0 || st.Channels != 1001 {
		t.Fatalf("stats = %+v, want 1000 evicted by route removal, no history, 1000 kept + 1 subscribed channel", st)
	}
}

// TestRetainedBudgetLRU: over the budget, the least recently used channels
// lose their snapshot first; a channel read by a subscribe counts as used.
func TestRetainedBudgetLRU(t *testing.T) {
	r := New()
	keep := &Retention{Last: true}
	data := make([]byte, 1000)
	// Channels of one shard, so that the order is the shard's.
	sh := r.shardFor("c.0000")
	var names []string
	for i := 0; len(names) < 12; i++ {
		if n := fmt.Sprintf("c.%04d", i); r.shardFor(n) == sh {
			names = append(names, n)
		}
	}
	one := int64(channelCost + frameCost + len(data) + len(names[0]))
	if err := r.SetConfig(Config{MaxRetainedBytes: 10 * one}); err != nil {
		t.Fatal(err)
	}
	for i, n := range names[:10] {
		r.Publish(&Frame{Channel: n, Offset: int64(i), Data: data}, keep)
	}
	if st := r.Stats(); st.RetainedBytes != 10*one || st.Evicted[EvictBudget] != 0 {
		t.Fatalf("10 channels in a budget of 10: stats %+v, want %d bytes and no eviction", st, 10*one)
	}
	// The first channel is read by a subscribe: it becomes the most recent.
	r.Subscribe(&recSink{}, names[0], func(v View) { _ = v.Last() })
	for i, n := range names[10:] {
		r.Publish(&Frame{Channel: n, Offset: int64(10 + i), Data: data}, keep)
	}
	for i, n := range names {
		if gone := r.Last(n) == nil; gone != (i == 1 || i == 2) {
			t.Errorf("channel %d (%s): snapshot gone = %v; want only channels 1 and 2 evicted", i, n, gone)
		}
	}
	if st := r.Stats(); st.RetainedBytes != 10*one || st.Evicted[EvictBudget] != 2 {
		t.Fatalf("stats %+v, want %d bytes and 2 evictions by budget", st, 10*one)
	}
	// Lowering the budget takes effect at the next Trim.
	if err := r.SetConfig(Config{MaxRetainedBytes: 3 * one}); err != nil {
		t.Fatal(err)
	}
	r.Trim(time.Now())
	if st := r.Stats(); st.RetainedBytes != 3*one {
		t.Fatalf("after lowering the budget to 3 channels, %d bytes retained, want %d", st.RetainedBytes, 3*one)
	}
	if r.Last(names[11]) == nil || r.Last(names[0]) == nil {
		t.Fatal("Trim over the budget evicted a recently used channel before older ones")
	}
}

// TestRetainedEvictionNeverWrong: a history evicted by the budget answers
// incomplete afterwards, never with frames missing.
func TestRetainedEvictionNeverWrong(t *testing.T) {
	r := New()
	keep := &Retention{HistoryRecords: 100, HistoryBytes: 1 << 20, HistoryAge: time.Hour}
	data := make([]byte, 100)
	for o := int64(1); o <= 3; o++ {
		r.Publish(&Frame{Channel: "c", Offset: o, Data: data}, keep)
	}
	if got, ok := historySince(r, "c", 0, 0); !ok || fmt.Sprint(got) != "[1 2 3]" {
		t.Fatalf("before eviction: %v %v", got, ok)
	}
	if err := r.SetConfig(Config{MaxRetainedBytes: 1}); err != nil {
		t.Fatal(err)
	}
	r.Trim(time.Now())
	if err := r.SetConfig(Config{}); err != nil {
		t.Fatal(err)
	}
	r.Publish(&Frame{Channel: "c", Offset: 4, Data: data}, keep)
	if got, ok := historySince(r, "c", 0, 1); ok {
		t.Fatalf("after eviction History(after 1) = %v, complete; records 2 and 3 were evicted", got)
	}
	if got, ok := historySince(r, "c", 0, 3); !ok || fmt.Sprint(got) != "[4]" {
		t.Fatalf("after eviction History(after 3) = %v %v, want [4] complete", got, ok)
	}
}

func TestRouterConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{MaxRetainedBytes: -1}, "router.max_retained_bytes"},
		{Config{MaxAge: -time.Second}, "router.max_age"},
	} {
		if err := New().SetConfig(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("SetConfig(%+v) = %v, want an error naming %s", tc.cfg, err, tc.want)
		}
	}
}

// TestRetainedBudgetHoldsHeap: distinct keys through a snapshot route stay
// under a 64 MiB budget, and the heap after GC holds no more than that (plus
// what it held before). 1,000,000 keys; 200,000 with -short.
func TestRetainedBudgetHoldsHeap(t *testing.T) {
	keys := 1000000
	if testing.Short() {
		keys = 200000
	}
	const budget = 64 << 20
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	base := heap()
	r := New()
	if err := r.SetConfig(Config{MaxRetainedBytes: budget}); err != nil {
		t.Fatal(err)
	}
	keep := &Retention{Last: true}
	// A record of about 120 bytes on the wire, as EncodeMessage builds it.
	payload := []byte(`{"op":"msg","ch":"orders.0000000","p":0,"o":0,"data":{"id":"0000000","qty":12,"px":101.25}}`)
	peak := int64(0)
	for i := 0; i < keys; i++ {
		ch := "orders." + strconv.Itoa(i)
		data := make([]byte, len(payload)+2)
		copy(data[2:], payload)
		r.Publish(&Frame{Channel: ch, Offset: int64(i), Data: data, Payload: data[2:]}, keep)
		if b := r.Stats().RetainedBytes; b > peak {
			peak = b
		}
	}
	st := r.Stats()
	after := heap()
	runtime.KeepAlive(r)
	t.Logf("%d keys: estimate %d bytes retained (peak %d), heap %d bytes above the start, %d channels kept, %d evicted",
		keys, st.RetainedBytes, peak, int64(after)-int64(base), st.Channels, st.Evicted[EvictBudget])
	if peak > budget+1024 {
		t.Fatalf("retained estimate peaked at %d bytes, budget %d", peak, budget)
	}
	if grown := int64(after) - int64(base); grown > budget {
		t.Fatalf("heap after GC grew by %d bytes with a %d budget", grown, budget)
	}
	if st.Evicted[EvictBudget] == 0 || st.Channels == 0 {
		t.Fatalf("stats = %+v, want channels kept and evictions by budget", st)
	}
}

// TestRetainedConcurrent runs publishes, subscribes, Trim and DropRetention
// at once; afterwards the accounting matches what the channels hold.
func TestRetainedConcurrent(t *testing.T) {
	r := New()
	if err := r.SetConfig(Config{MaxRetainedBytes: 200 << 10}); err != nil {
		t.Fatal(err)
	}
	keeps := []*Retention{{Last: true}, {Last: true, HistoryRecords: 5, HistoryBytes: 1 << 10, HistoryAge: time.Hour}}
	done := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := &recSink{}
			for i := 0; i < 5000; i++ {
				ch := fmt.Sprintf("c.%d", (i*7+w)%3000)
				r.Publish(&Frame{Channel: ch, Offset: int64(i), Epoch: uint64(i / 1000), Data: make([]byte, 50)}, keeps[i%2])
				if i%10 == w {
					r.Subscribe(s, ch, func(v View) { v.History(nil, 0, int64(i-3)) })
					r.Unsubscribe(s, ch)
				}
			}
		}()
	}
	trimmed := make(chan struct{})
	go func() {
		defer close(trimmed)
		for {
			select {
			case <-done:
				return
			default:
				r.Trim(time.Now())
				r.DropRetention(&Retention{Last: true}) // a route nobody uses
			}
		}
	}()
	wg.Wait()
	close(done)
	<-trimmed
	var sum int64
	for i := range r.shards {
		sh := &r.shards[i]
		var listed int64
		for c := sh.lruHead; c != nil; c = c.next {
			if c.size != c.retainedSize() || c.size == 0 {
				t.Fatalf("channel %s accounted %d bytes, holds %d", c.name, c.size, c.retainedSize())
			}
			listed += c.size
		}
		if listed != sh.retained {
			t.Fatalf("shard %d: list holds %d bytes, shard counts %d", i, listed, sh.retained)
		}
		sum += listed
	}
	if st := r.Stats(); st.RetainedBytes != sum || sum > 200<<10+4096 {
		t.Fatalf("RetainedBytes %d, channels hold %d (budget %d)", st.RetainedBytes, sum, 200<<10)
	}
}

// TestResetRememberedAcrossEviction: after the log went backwards, a position
// of the old log is never served from memory, even once the channel's
// history was evicted and rebuilt from newer frames.
func TestResetRememberedAcrossEviction(t *testing.T) {
	r := New()
	keep := &Retention{HistoryRecords: 100, HistoryBytes: 1 << 20, HistoryAge: time.Hour}
	for _, o := range []int64{10, 100} {
		r.Publish(&Frame{Channel: "c", Offset: o, Epoch: 1, Data: []byte("x")}, keep)
	}
	r.Publish(&Frame{Channel: "c", Offset: 3, Epoch: 2, Data: []byte("x")}, keep) // reset
	if err := r.SetConfig(Config{MaxRetainedBytes: 1}); err != nil {
		t.Fatal(err)
	}
	r.Trim(time.Now()) // evicts c
	if err := r.SetConfig(Config{}); err != nil {
		t.Fatal(err)
	}
	for _, o := range []int64{50, 60, 120} {
		r.Publish(&Frame{Channel: "c", Offset: o, Epoch: 2, Data: []byte("x")}, keep)
	}
	if got, ok := historySince(r, "c", 0, 60); ok {
		t.Fatalf("History(after 60) = %v, complete; 60 may be a position of the log before the reset", got)
	}
	if got, ok := historySince(r, "c", 0, 100); ok {
		t.Fatalf("History(after 100) = %v, complete; 100 may be a position of the log before the reset", got)
	}
	if got, ok := historySince(r, "c", 0, 101); !ok || fmt.Sprint(got) != "[120]" {
		t.Fatalf("History(after 101) = %v, %v; want [120], complete", got, ok)
	}
}

// TestRetainedCountsCompressedForms: a frame that may get a compressed form
// (Frame.Deflated, made later by the first deflate client that takes it) is
// counted in the retained bytes from the moment it is retained, with room
// for that form, and the count goes when the frame does.
func TestRetainedCountsCompressedForms(t *testing.T) {
	keep := &Retention{Last: true, HistoryRecords: 4, HistoryBytes: 1 << 20, HistoryAge: time.Hour}
	data := []byte(strings.Repeat("x", 1000))
	retained := func(compressible bool) int64 {
		r := New()
		for o := int64(1); o <= 10; o++ {
			f := &Frame{Channel: "c", Offset: o, Epoch: 1, Data: data}
			if compressible {
				f.Deflated = new(Lazy)
			}
			r.Publish(f, keep)
		}
		return r.Stats().RetainedBytes
	}
	plain, compressible := retained(false), retained(true)
	// The last record and 4 history entries: 5 frames, each bounded by
	// zCost = lazyCost + len(Data).
	if want := int64(5 * (lazyCost + len(data))); compressible-plain != want {
		t.Fatalf("retained bytes: %d plain, %d compressible; the difference %d, want %d", plain, compressible, compressible-plain, want)
	}

	// Evicting frames (history bound, partition restart, route drop)
	// takes their share back out.
	r := New()
	for o := int64(1); o <= 10; o++ {
		r.Publish(&Frame{Channel: "c", Offset: o, Epoch: 1, Data: data, Deflated: new(Lazy)}, keep)
	}
	r.Publish(&Frame{Channel: "c", Offset: 11, Epoch: 2, Data: data}, keep) // new epoch: the partition's range restarts
	for _, c := range r.shardFor("c").channels {
		if c.hist != nil && c.hist.zbytes != 0 {
			t.Fatalf("history zbytes %d after its compressible frames went, want 0", c.hist.zbytes)
		}
	}
	r.DropRetention(keep)
	if got := r.Stats().RetainedBytes; got != 0 {
		t.Fatalf("retained bytes %d after the route's retention was dropped, want 0", got)
	}
}
