package router

import (
	"sync"
	"sync/atomic"
)

// Lazy is a form of a frame that only some sinks want (its
// permessage-deflate compression: Frame.Deflated), made at most once, by
// the first sink that needs it, and shared by every sink after it. Copies
// of a Frame share its Lazy. The zero value is ready to use; a Lazy must
// not be copied.
//
// Get may be called from any goroutine: a caller that comes while another
// is making the form waits for it (at most one make), so every caller sees
// the same bytes and make runs once however many sinks race for it. Made
// never waits.
type Lazy struct {
	done atomic.Uint32 // 1 once b is set; read without mu
	mu   sync.Mutex    // held while the form is made
	b    []byte        // written once, under mu, before done; read after done
}

// Get returns the form, made by mk if no caller has made it yet. mk runs
// at most once per Lazy; it must not call back into l. A nil form (mk
// found nothing worth making) is a form too: it is not made again.
func (l *Lazy) Get(mk func() []byte) []byte {
	if l.done.Load() == 0 {
		l.make(mk)
	}
	return l.b
}

func (l *Lazy) make(mk func() []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done.Load() == 0 {
		l.b = mk()
		l.done.Store(1)
	}
}

// Made returns the form if a Get has made it, else nil, without making it
// or waiting.
func (l *Lazy) Made() []byte {
	if l.done.Load() == 0 {
		return nil
	}
	return l.b
}
