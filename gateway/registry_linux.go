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

// each calls fn for every connection with the registry read-locked; fn must
// not add or remove connections.
func (r *registry) each(fn func(*conn)) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, c := range r.conns {
		if c != nil {
			fn(c)
		}
	}
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
