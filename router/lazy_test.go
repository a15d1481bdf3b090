package router

import (
	"bytes"
	"sync"
	"sync/atomic"
	"testing"
)

// TestLazyMadeOnce: however many goroutines race for a Lazy's form, it is
// made once and every one of them gets the same bytes; Made reports
// nothing before and the form after, and a nil form is not made again.
func TestLazyMadeOnce(t *testing.T) {
	var l Lazy
	if l.Made() != nil {
		t.Fatal("Made before any Get returned a form")
	}
	var calls atomic.Int32
	start := make(chan struct{})
	mk := func() []byte {
		calls.Add(1)
		<-start // hold the others at the door while this one makes it
		return []byte("form")
	}
	const n = 16
	got := make([][]byte, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i] = l.Get(mk)
		}()
	}
	close(start)
	wg.Wait()
	if c := calls.Load(); c != 1 {
		t.Fatalf("made %d times by %d racing callers, want once", c, n)
	}
	for i, b := range got {
		if &b[0] != &got[0][0] || !bytes.Equal(b, []byte("form")) {
			t.Fatalf("caller %d got %q, not the shared form", i, b)
		}
	}
	if m := l.Made(); &m[0] != &got[0][0] {
		t.Fatalf("Made after Get: %q, not the shared form", m)
	}

	var none Lazy
	if b := none.Get(func() []byte { return nil }); b != nil {
		t.Fatalf("nil form: %q", b)
	}
	if b := none.Get(func() []byte { t.Fatal("a nil form was made again"); return nil }); b != nil {
		t.Fatalf("nil form: %q", b)
	}
}
