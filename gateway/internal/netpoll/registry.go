package netpoll

import "sync"

// Registry maps descriptors to connections, each under a generation
// number. Descriptors are small dense integers, so a slice indexed by fd
// costs one slot per descriptor. A descriptor number is reused once its
// socket is closed; the generation, which the poller hands back with every
// event (Poller.Add), tells an event for the old connection from one for
// the new (Lookup).
//
// T is the caller's connection type; Registry only keeps pointers to it.
// All methods are safe for concurrent use.
type Registry[T any] struct {
	mu    sync.RWMutex
	slots []slot[T] // guarded by mu; indexed by fd
	n     int       // guarded by mu
	gen   uint32    // guarded by mu; the last generation handed out
}

type slot[T any] struct {
	c   *T
	gen uint32
}

// NewRegistry returns an empty registry.
func NewRegistry[T any]() *Registry[T] { return &Registry[T]{} }

// NextGen returns a fresh generation number for a connection about to be
// added.
func (r *Registry[T]) NextGen() uint32 {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gen++
	return r.gen
}

// Add registers c under fd with generation gen (from NextGen).
func (r *Registry[T]) Add(fd int, gen uint32, c *T) {
	r.mu.Lock()
	if fd >= len(r.slots) {
		grown := make([]slot[T], max(fd+1, 2*len(r.slots), 1024))
		copy(grown, r.slots)
		r.slots = grown
	}
	if r.slots[fd].c == nil {
		r.n++
	}
	r.slots[fd] = slot[T]{c: c, gen: gen}
	r.mu.Unlock()
}

// Remove unregisters c if fd still maps to it.
func (r *Registry[T]) Remove(fd int, c *T) {
	r.mu.Lock()
	if fd < len(r.slots) && r.slots[fd].c == c {
		r.slots[fd] = slot[T]{}
		r.n--
	}
	r.mu.Unlock()
}

// Lookup returns the connection on fd if its generation is gen, else nil
// (a stale event for a closed connection whose descriptor was reused).
func (r *Registry[T]) Lookup(fd int, gen uint32) *T {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if fd < 0 || fd >= len(r.slots) || r.slots[fd].gen != gen {
		return nil
	}
	return r.slots[fd].c
}

// Count returns how many connections are registered.
func (r *Registry[T]) Count() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.n
}

// Batch copies up to cap(dst) connections with descriptors from start on
// into dst[:0], and returns them with the descriptor to continue from, or
// -1 when the walk is done. The lock is held only for one batch, so a walk
// over every connection never holds it across all of them.
func (r *Registry[T]) Batch(start int, dst []*T) (out []*T, next int) {
	out = dst[:0]
	r.mu.RLock()
	defer r.mu.RUnlock()
	for i := start; i < len(r.slots); i++ {
		if c := r.slots[i].c; c != nil {
			if len(out) == cap(out) {
				return out, i
			}
			out = append(out, c)
		}
	}
	return out, -1
}

// Snapshot returns every registered connection.
func (r *Registry[T]) Snapshot() []*T {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]*T, 0, r.n)
	for _, s := range r.slots {
		if s.c != nil {
			out = append(out, s.c)
		}
	}
	return out
}
