package gateway

import (
	"context"
	"sync"
	"time"
)

// timerWheel is the server's one timer for connection deadlines shorter
// than the ticker's 100 ms: the next frame of a frequency-capped channel
// (max_rate) and the end of a write delay (write_delay). It is a hashed
// timing wheel of millisecond slots run by one goroutine, so a connection
// waiting for a deadline costs one entry and no goroutine or timer, and an
// idle server's wheel sleeps.
//
// Add may be called from any goroutine; fire runs on the wheel's goroutine
// and must not block. An entry fires once, at or after its due time; the
// owner keeps at most one live entry per item (a stale one fires
// harmlessly: fire checks the item's own deadline).
type timerWheel[T any] struct {
	mu    sync.Mutex        // guards slots, count, last
	slots [][]wheelEntry[T] // slot i holds entries due at ms ≡ i (mod wheelSlots)
	count int               // entries in slots
	last  int64             // ms up to which slots were emptied
	wake  chan struct{}     // capacity 1: an entry was added
	now   func() int64      // monoMillis; replaced by tests
}

type wheelEntry[T any] struct {
	item *T
	due  int64
}

// wheelSlots is the wheel's span in ms; a later entry waits in its slot
// through the turns before its own.
const wheelSlots = 1024

func newTimerWheel[T any]() *timerWheel[T] {
	return &timerWheel[T]{
		slots: make([][]wheelEntry[T], wheelSlots),
		wake:  make(chan struct{}, 1),
		now:   monoMillis,
	}
}

// monoStart anchors monoMillis.
var monoStart = time.Now()

// monoMillis is the time for frequency caps and write delays: milliseconds
// on the monotonic clock since the process started, plus one (0 means
// "none" to their callers). A step of the wall clock (NTP) does not stall
// or rush them.
func monoMillis() int64 { return int64(time.Since(monoStart)/time.Millisecond) + 1 }

// Add arranges for fire(item, now) once the clock reaches due (monoMillis).
func (w *timerWheel[T]) Add(item *T, due int64) {
	w.mu.Lock()
	if due <= w.last {
		due = w.last + 1 // its slot was emptied already: the next one
	}
	i := due & (wheelSlots - 1)
	w.slots[i] = append(w.slots[i], wheelEntry[T]{item, due})
	w.count++
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// take appends to out every entry due at or before now and returns it with
// the time of the next non-empty slot (0 when the wheel is empty).
func (w *timerWheel[T]) take(now int64, out []wheelEntry[T]) ([]wheelEntry[T], int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	from := w.last + 1
	if w.last == 0 || now-from >= wheelSlots {
		from = now - wheelSlots + 1 // one whole turn covers every slot
	}
	for t := from; t <= now; t++ {
		s := w.slots[t&(wheelSlots-1)]
		kept := s[:0]
		for _, e := range s {
			if e.due <= now {
				out = append(out, e)
				w.count--
			} else {
				kept = append(kept, e)
			}
		}
		clear(s[len(kept):])
		if len(kept) == 0 && cap(s) > 64 {
			kept = nil // a burst's slice goes back
		}
		w.slots[t&(wheelSlots-1)] = kept
	}
	w.last = now
	if w.count == 0 {
		return out, 0
	}
	for t := now + 1; t <= now+wheelSlots; t++ {
		if len(w.slots[t&(wheelSlots-1)]) > 0 {
			return out, t
		}
	}
	return out, now + wheelSlots
}

// run fires entries as they fall due until ctx ends.
func (w *timerWheel[T]) run(ctx context.Context, fire func(item *T, now int64)) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	var due []wheelEntry[T]
	for {
		now := w.now()
		var next int64
		due, next = w.take(now, due[:0])
		for _, e := range due {
			fire(e.item, now)
		}
		clear(due)
		if next == 0 {
			select {
			case <-ctx.Done():
				return
			case <-w.wake:
			}
			continue
		}
		t.Reset(time.Duration(next-now) * time.Millisecond)
		select {
		case <-ctx.Done():
			return
		case <-w.wake:
			t.Stop() // go 1.23 timers: no stale tick after Stop or Reset
		case <-t.C:
		}
	}
}
