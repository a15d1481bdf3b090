//go:build linux

package gateway

import "sync"

// registry maps descriptors to connections. Descriptors are small dense
// integers, so a slice indexed by fd costs one pointer per slot.
type registry struct {
	mu    sync.RWMutex
	conns []*conn // guarded by mu; indexed by fd
	n     int     // guarded by mu
}

func newRegistry() *registry { return &registry{} }

func (r *registry) add(fd int, c *conn) {
	r.mu.Lock()
	if fd >= len(r.conns) {
		grown := make([]*conn, max(fd+1, 2*len(r.conns), 1024))
		copy(grown, r.conns)
		r.conns = grown
	}
	if r.conns[fd] == nil {
		r.n++
	}
	r.conns[fd] = c
	r.mu.Unlock()
}

// remove clears fd's slot if it still holds c.
func (r *registry) remove(fd int, c *conn) {
	r.mu.Lock()
	if fd < len(r.conns) && r.conns[fd] == c {
		r.conns[fd] = nil
		r.n--
	}
	r.mu.Unlock()
}

func (r *registry) get(fd int) *conn {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if fd < 0 || fd >= len(r.conns) {
		return nil
	}
	return r.conns[fd]
}

func (r *registry) count() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.n
}

// batch copies into dst (up to its capacity) the connections in slots from
// start on, and returns them with the slot to continue from; next is -1
// once every slot was visited. The read lock is held only for one batch, so
// a walk over every connection never holds it for long: connections added
// meanwhile may or may not be seen, and one removed meanwhile may still be
// in a batch (callers check its state under its own lock).
func (r *registry) batch(start int, dst []*conn) (out []*conn, next int) {
	out = dst[:0]
	r.mu.RLock()
	defer r.mu.RUnlock()
	for i := start; i < len(r.conns); i++ {
		if c := r.conns[i]; c != nil {
			if len(out) == cap(out) {
				return out, i
			}
			out = append(out, c)
		}
	}
	return out, -1
}

func (r *registry) snapshot() []*conn {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]*conn, 0, r.n)
	for _, c := range r.conns {
		if c != nil {
			out = append(out, c)
		}
	}
	return out
}
