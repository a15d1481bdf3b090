package gateway

import (
	"errors"
	"io"
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

// headerLimiter lets the upgrader read at most left bytes of the request.
type headerLimiter struct {
	rw   io.ReadWriter
	left int
}

func (h *headerLimiter) Read(p []byte) (int, error) {
	if h.left <= 0 {
		return 0, errHeaderTooLarge
	}
	if len(p) > h.left {
		p = p[:h.left]
	}
	n, err := h.rw.Read(p)
	h.left -= n
	return n, err
}

func (h *headerLimiter) Write(p []byte) (int, error) { return h.rw.Write(p) }
