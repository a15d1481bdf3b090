package gateway

import (
	"errors"
	"sync"
)

// Limits against hostile clients that are not tied to the epoll layer.

// ipLimiter counts WebSocket connections (and upgrades in progress) per
// client address. A nil *ipLimiter allows everything.
type ipLimiter struct {
	max int
	mu  sync.Mutex
	n   map[string]int // guarded by mu; addresses with at least one connection
}

func newIPLimiter(max int) *ipLimiter {
	if max <= 0 {
		return nil
	}
	return &ipLimiter{max: max, n: make(map[string]int)}
}

// acquire takes a slot for ip, or reports false when ip holds max already.
func (l *ipLimiter) acquire(ip string) bool {
	if l == nil {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[ip] >= l.max {
		return false
	}
	l.n[ip]++
	return true
}

// release gives back a slot taken by acquire.
func (l *ipLimiter) release(ip string) {
	if l == nil {
		return
	}
	l.mu.Lock()
	if l.n[ip] <= 1 {
		delete(l.n, ip) // keep the map as small as the set of connected addresses
	} else {
		l.n[ip]--
	}
	l.mu.Unlock()
}

// addresses returns how many client addresses hold a slot.
func (l *ipLimiter) addresses() int {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.n)
}

// handshakeShare keeps one client address from holding more than a fair
// share of the max_handshakes slots. An address may start a handshake while
// it holds fewer than an eighth of the slots (at least one); beyond that
// only while fewer than half of all slots are in use. One address therefore
// never holds more than half of the slots, and once half are in use none
// may take more than an eighth: silent sockets from one place cannot keep
// other clients from being served. A lone proxy in front of kpush may
// still use half of the slots.
type handshakeShare struct {
	share, half int
	mu          sync.Mutex
	total       int            // guarded by mu
	n           map[string]int // guarded by mu; addresses with a handshake in progress
}

func newHandshakeShare(maxHandshakes int) *handshakeShare {
	return &handshakeShare{share: max(1, maxHandshakes/8), half: maxHandshakes / 2, n: make(map[string]int)}
}

// acquire counts a handshake from ip, or reports false when ip holds its
// share already.
func (h *handshakeShare) acquire(ip string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if k := h.n[ip]; k >= h.share && (h.total >= h.half || k >= h.half) {
		return false
	}
	h.n[ip]++
	h.total++
	return true
}

// release ends a handshake counted by acquire.
func (h *handshakeShare) release(ip string) {
	h.mu.Lock()
	if h.n[ip] <= 1 {
		delete(h.n, ip)
	} else {
		h.n[ip]--
	}
	h.total--
	h.mu.Unlock()
}

// held returns how many handshakes ip has in progress.
func (h *handshakeShare) held(ip string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n[ip]
}

// rateLimiter is a token bucket over the coarse clock: rate requests per
// second, bursts up to burst. It is used by one goroutine at a time (a
// connection's reading worker) and needs no lock.
type rateLimiter struct {
	tokens  float64
	last    int64 // coarse ms of the last refill; 0 before the first request
	strikes int   // requests refused in a row
}

// allow takes a token at time now (ms). It returns false when the request
// is over the limit, and over=true once burst requests in a row were refused.
func (r *rateLimiter) allow(now int64, rate, burst int) (ok, over bool) {
	if r.last == 0 {
		r.tokens, r.last = float64(burst), now
	}
	if now > r.last {
		r.tokens = min(float64(burst), r.tokens+float64(now-r.last)*float64(rate)/1000)
		r.last = now
	}
	if r.tokens >= 1 {
		r.tokens--
		r.strikes = 0
		return true, false
	}
	r.strikes++
	return false, r.strikes >= burst
}

var errHeaderTooLarge = errors.New("gateway: upgrade request larger than gateway.max_header_bytes")
