package router

import (
	"fmt"
	"regexp"
	"slices"
	"sync"
	"testing"
)

var last = &Retention{Last: true}

// recSink records what it receives into a channel-like slice.
type recSink struct {
	mu     sync.Mutex
	frames []*Frame
	full   bool
}

func (s *recSink) Enqueue(f *Frame) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.full {
		return false
	}
	s.frames = append(s.frames, f)
	return true
}

func (s *recSink) got() []*Frame {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*Frame(nil), s.frames...)
}

func TestPublishReachesExactlySubscribers(t *testing.T) {
	r := New()
	a, b, c := &recSink{}, &recSink{}, &recSink{}
	r.Subscribe(a, "ticks.AAPL", nil)
	r.Subscribe(b, "ticks.AAPL", nil)
	r.Subscribe(c, "ticks.MSFT", nil)
	if r.Subscribe(a, "ticks.AAPL", nil) {
		t.Fatal("second subscribe of the same sink reported new")
	}

	f := &Frame{Channel: "ticks.AAPL", Offset: 7, Data: []byte("x")}
	if n := r.Publish(f, nil); n != 2 {
		t.Fatalf("Publish delivered to %d sinks, want 2", n)
	}
	if got := a.got(); len(got) != 1 || got[0] != f {
		t.Fatalf("a got %v, want the published frame once", got)
	}
	if got := b.got(); len(got) != 1 || got[0] != f {
		t.Fatalf("b got %v, want the published frame once", got)
	}
	if got := c.got(); len(got) != 0 {
		t.Fatalf("c (other channel) got %d frames", len(got))
	}
	st := r.Stats()
	if st.Subscriptions != 3 || st.Channels != 2 || st.Deliveries != 2 || st.Published != 1 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestUnsubscribeStopsDeliveryAndCleansUp(t *testing.T) {
	r := New()
	sinks := make([]*recSink, 5)
	for i := range sinks {
		sinks[i] = &recSink{}
		r.Subscribe(sinks[i], "c", nil)
		r.Subscribe(sinks[i], fmt.Sprintf("own.%d", i), nil)
	}
	// Remove from the middle and the ends: the swap-remove must keep the rest.
	for _, i := range []int{2, 0, 4} {
		if n := r.Unsubscribe(sinks[i], "c", fmt.Sprintf("own.%d", i), "never"); n != 2 {
			t.Fatalf("Unsubscribe(%d) removed %d, want 2", i, n)
		}
	}
	r.Publish(&Frame{Channel: "c"}, nil)
	for i, s := range sinks {
		want := 0
		if i == 1 || i == 3 {
			want = 1
		}
		if got := len(s.got()); got != want {
			t.Errorf("sink %d got %d frames, want %d", i, got, want)
		}
	}
	r.Unsubscribe(sinks[1], "c", "own.1")
	r.Unsubscribe(sinks[3], "c", "own.3")
	if st := r.Stats(); st.Subscriptions != 0 || st.Channels != 0 {
		t.Fatalf("after removing everything stats = %+v, want empty", st)
	}
}

func TestQueueFullCounted(t *testing.T) {
	r := New()
	ok, full := &recSink{}, &recSink{full: true}
	r.Subscribe(ok, "c", nil)
	r.Subscribe(full, "c", nil)
	if n := r.Publish(&Frame{Channel: "c"}, nil); n != 1 {
		t.Fatalf("delivered %d, want 1", n)
	}
	if st := r.Stats(); st.QueueFull != 1 {
		t.Fatalf("QueueFull = %d, want 1", st.QueueFull)
	}
}

func TestSnapshotStitch(t *testing.T) {
	r := New()
	f1 := &Frame{Channel: "c", Offset: 1}
	r.Publish(f1, last)
	if r.Last("c") != f1 {
		t.Fatal("last frame not retained without subscribers")
	}
	s := &recSink{}
	var snap *Frame
	r.Subscribe(s, "c", func(v View) { snap = v.Last() })
	if snap != f1 {
		t.Fatalf("snapshot = %v, want f1", snap)
	}
	f2 := &Frame{Channel: "c", Offset: 2}
	r.Publish(f2, last)
	if got := s.got(); len(got) != 1 || got[0] != f2 {
		t.Fatalf("live after snapshot = %v, want only f2", got)
	}
}

// TestConcurrentSnapshotNoGap publishes a sequence while sinks subscribe with
// snapshots; every sink must see a contiguous run from its snapshot onwards.
func TestConcurrentSnapshotNoGap(t *testing.T) {
	r := New()
	const n = 20000
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := int64(1); i <= n; i++ {
			r.Publish(&Frame{Channel: "c", Offset: i}, last)
		}
	}()
	type sub struct {
		s    *recSink
		snap int64
	}
	subs := make([]sub, 50)
	for i := range subs {
		s := &recSink{}
		subs[i].s = s
		idx := i
		r.Subscribe(s, "c", func(v View) {
			if last := v.Last(); last != nil {
				subs[idx].snap = last.Offset
			}
		})
	}
	wg.Wait()
	for i, sb := range subs {
		next := sb.snap + 1
		for _, f := range sb.s.got() {
			if f.Offset != next {
				t.Fatalf("sink %d: got offset %d, want %d (snapshot %d)", i, f.Offset, next, sb.snap)
			}
			next++
		}
		if next != n+1 {
			t.Fatalf("sink %d ended at %d, want %d", i, next-1, n)
		}
	}
}

func TestValidChannel(t *testing.T) {
	re := regexp.MustCompile(`^[A-Za-z0-9_.:@/-]{1,200}$`)
	long := make([]byte, 201)
	for i := range long {
		long[i] = 'a'
	}
	cases := []string{"", "ticks.AAPL", "user:42@eu/x-y_z", "a b", "ünï", "tab\t", string(long), string(long[:200]), "quote\"", "{key}"}
	for _, c := range cases {
		if got, want := ValidChannel(c), re.MatchString(c); got != want {
			t.Errorf("ValidChannel(%q) = %v, want %v", c, got, want)
		}
	}
}

type nopSink struct{ n int }

func (s *nopSink) Enqueue(*Frame) bool { s.n++; return true }

// BenchmarkPublish measures fan-out cost per delivery; it must not allocate.
func BenchmarkPublish(b *testing.B) {
	for _, subs := range []int{1, 100, 10000} {
		b.Run(fmt.Sprintf("subs=%d", subs), func(b *testing.B) {
			r := New()
			for i := 0; i < subs; i++ {
				r.Subscribe(&nopSink{}, "ticks.AAPL", nil)
			}
			f := &Frame{Channel: "ticks.AAPL", Data: make([]byte, 100)}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				r.Publish(f, nil)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*subs), "ns/delivery")
		})
	}
}

// frameEncoder hands out one frame made before, so BenchmarkDeliver measures
// the router's part of a delivery.
type frameEncoder struct{ f *Frame }

func (e frameEncoder) Encode(*Record) *Frame { return e.f }

// BenchmarkDeliver is BenchmarkPublish through the record path: a Record,
// its Policy and the Encoder, as the consumer delivers.
func BenchmarkDeliver(b *testing.B) {
	for _, subs := range []int{1, 100, 10000} {
		b.Run(fmt.Sprintf("subs=%d", subs), func(b *testing.B) {
			r := New()
			for i := 0; i < subs; i++ {
				r.Subscribe(&nopSink{}, "ticks.AAPL", nil)
			}
			r.SetEncoder(frameEncoder{&Frame{Channel: "ticks.AAPL", Data: make([]byte, 100)}})
			rec := &Record{Channel: "ticks.AAPL", Value: make([]byte, 100), Policy: &Policy{}}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				r.Deliver(rec)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*subs), "ns/delivery")
		})
	}
}

func TestPublishDoesNotAllocate(t *testing.T) {
	r := New()
	for i := 0; i < 100; i++ {
		r.Subscribe(&nopSink{}, "c", nil)
	}
	f := &Frame{Channel: "c"}
	if a := testing.AllocsPerRun(100, func() { r.Publish(f, nil) }); a != 0 {
		t.Fatalf("Publish allocates %.1f times per call, want 0", a)
	}
}

// countingEncoder encodes a record as a frame holding its value, counting
// its calls.
type countingEncoder struct{ n int }

func (e *countingEncoder) Encode(rec *Record) *Frame {
	e.n++
	return &Frame{Channel: rec.Channel, Topic: rec.Topic, Partition: rec.Partition, Offset: rec.Offset, Data: slices.Clone(rec.Value)}
}

func TestPublishRecordEncodesOnlyForSubscribersOrRetention(t *testing.T) {
	r := New()
	a := &recSink{}
	r.Subscribe(a, "ticks.AAPL", nil)
	enc := &countingEncoder{}
	plain := &Policy{}
	if n := r.PublishRecord(&Record{Channel: "ticks.MSFT", Value: []byte("1"), Policy: plain}, enc); n != 0 || enc.n != 0 {
		t.Fatalf("no subscriber: delivered to %d, encoded %d times; want 0 and 0", n, enc.n)
	}
	if n := r.PublishRecord(&Record{Channel: "ticks.AAPL", Topic: "t", Offset: 4, Value: []byte("2"), Policy: plain}, enc); n != 1 || enc.n != 1 {
		t.Fatalf("one subscriber: delivered to %d, encoded %d times; want 1 and 1", n, enc.n)
	}
	if got := a.got(); len(got) != 1 || got[0].Channel != "ticks.AAPL" || got[0].Topic != "t" || got[0].Offset != 4 || string(got[0].Data) != "2" {
		t.Fatalf("subscriber got %v, want the one frame", got)
	}
	// A route that retains: encoded with no subscriber, and kept.
	snap := &Policy{Keep: &Retention{Last: true}}
	r.SetEncoder(enc)
	r.Deliver(&Record{Channel: "ticks.IBM", Value: []byte("3"), Policy: snap})
	if enc.n != 2 || r.Last("ticks.IBM") == nil || string(r.Last("ticks.IBM").Data) != "3" {
		t.Fatalf("retained route: encoded %d times, last %v; want 2 and the record", enc.n, r.Last("ticks.IBM"))
	}
	if st := r.Stats(); st.Published != 3 || st.Deliveries != 1 {
		t.Fatalf("stats = %+v, want 3 published (every record) and 1 delivery", st)
	}
}
