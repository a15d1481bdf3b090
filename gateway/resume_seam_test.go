package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/kpush/kpush/router"
)

// The resume seam driven on a session without a socket (session_test.go
// has the fake transport); resume_linux_test.go drives it end to end.

// fakeReplayer stands in for Kafka: Replay announces itself, waits to be
// released, then emits the given offsets above the position.
type fakeReplayer struct {
	started  chan string // the channel being replayed
	release  chan struct{}
	offsets  []int64
	complete bool
}

func newFakeReplayer(complete bool, offsets ...int64) *fakeReplayer {
	return &fakeReplayer{started: make(chan string, 4), release: make(chan struct{}), offsets: offsets, complete: complete}
}

func (f *fakeReplayer) Replay(ctx context.Context, ch string, p int32, after int64, emit func(*router.Record) bool) (bool, error) {
	f.started <- ch
	select {
	case <-f.release:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	for _, o := range f.offsets {
		if o > after && !emit(&router.Record{Channel: ch, Partition: p, Offset: o, Value: []byte(fmt.Sprintf(`{"o":%d}`, o))}) {
			return false, nil
		}
	}
	return f.complete, nil
}

func (f *fakeReplayer) waitStarted(t *testing.T) {
	t.Helper()
	select {
	case <-f.started:
	case <-time.After(10 * time.Second):
		t.Fatal("the read-back did not start")
	}
}

func span(from, to int64) []int64 {
	var out []int64
	for o := from; o <= to; o++ {
		out = append(out, o)
	}
	return out
}

// TestResumeSharesPolicy: an address may hold only as many queued
// read-backs as there are free places; a new address always finds one.
func TestResumeSharesPolicy(t *testing.T) {
	q := newResumeShares(8, true)
	held := map[string]int{}
	for _, ip := range []string{"a", "a", "a", "a", "a", "b", "b", "b", "b", "c", "c", "c", "d", "d", "e", "f", "g", "h"} {
		if q.take(ip) == "" {
			held[ip]++
		}
	}
	// a: 4 (free 8,7,6,5 > held 0..3), then b: 2 (free 4,3), c: 1 (free 2),
	// d: 1 (free 1 > 0), the queue is then full.
	if fmt.Sprint(held) != "map[a:4 b:2 c:1 d:1]" {
		t.Fatalf("places taken %v", held)
	}
	for ip, n := range held {
		if 2*n > 8 {
			t.Fatalf("address %s holds %d of 8 places", ip, n)
		}
	}
	q.release("a")
	if r := q.take("a"); r != "resume_address_share" {
		t.Fatalf("a holding 3 with 1 free: take = %q, want resume_address_share", r)
	}
	if r := q.take("z"); r != "" {
		t.Fatalf("a new address with 1 free: take = %q, want a place", r)
	}
	if r := q.take("y"); r != "resume_queue_full" {
		t.Fatalf("full queue: take = %q, want resume_queue_full", r)
	}
	// Behind a proxy addresses are not told apart.
	p := newResumeShares(4, false)
	for i := 0; i < 4; i++ {
		if r := p.take("proxy"); r != "" {
			t.Fatalf("take %d behind a proxy = %q", i, r)
		}
	}
}

// replyOffsets returns the offsets of the msg payloads among got, the
// members that mark them ("snap", "skipped") after a slash, and every other
// payload as it is.
func replyOffsets(t *testing.T, got []string) []string {
	t.Helper()
	var out []string
	for _, p := range got {
		var m struct {
			Op   string
			O    int64
			Snap bool
		}
		if err := json.Unmarshal([]byte(p), &m); err != nil {
			t.Fatalf("queued payload %s: %v", p, err)
		}
		switch {
		case m.Op != "msg":
			out = append(out, p)
		case m.Snap:
			out = append(out, fmt.Sprintf("%d/snap", m.O))
		default:
			out = append(out, fmt.Sprint(m.O))
		}
	}
	return out
}

func publishOffsets(s *Server, ch string, keep *router.Retention, offsets ...int64) {
	for _, o := range offsets {
		s.Publish(&Message{Channel: ch, Offset: o, Data: []byte(fmt.Sprintf(`{"o":%d}`, o))}, keep)
	}
}

// newResumeSession returns a server reading resumes back through rp, its
// resume pool running, and a session on it.
func newResumeSession(t *testing.T, rp Replayer, mutate func(*Config)) (*Server, *fakeLink) {
	t.Helper()
	s := newSessionServer(t, mutate)
	s.SetReplayer(rp)
	runResumePool(t, s)
	return s, newFakeLink(s, "192.0.2.1")
}

// TestSessionResumeSeam: live records published while a channel is read
// back are held; when the read-back ends, the replayed records come first,
// then the held ones without the overlap, then the ok reply. Later live
// records go straight to the queue.
func TestSessionResumeSeam(t *testing.T) {
	rp := newFakeReplayer(true, span(1, 5)...)
	s, l := newResumeSession(t, rp, nil)
	l.request(`{"op":"subscribe","id":1,"channels":["r.a"],"since":{"r.a":{"0":2}}}`)
	rp.waitStarted(t)
	publishOffsets(s, "r.a", nil, 4, 5, 6, 7) // 4 and 5 are read back too
	l.mu.Lock()
	queued, held := len(l.out.frames), l.out.heldCount
	l.mu.Unlock()
	if queued != 0 || held != 4 {
		t.Fatalf("during the read-back: %d frames queued, %d held; want 0 and 4", queued, held)
	}
	close(rp.release)
	got := replyOffsets(t, collect(t, &l.session, `"op":"ok"`))
	if want := `[3 4 5 6 7 {"op":"ok","id":1,"recovered":{"r.a":true}}]`; fmt.Sprint(got) != want {
		t.Fatalf("after the read-back: %v, want %s", got, want)
	}
	publishOffsets(s, "r.a", nil, 8)
	if got := replyOffsets(t, payloads(t, &l.session)); fmt.Sprint(got) != "[8]" {
		t.Fatalf("live after the resume: %v, want [8]", got)
	}
	l.mu.Lock()
	wakes := l.wakes + l.delayed
	l.mu.Unlock()
	if wakes == 0 {
		t.Fatal("the session never asked its transport to flush")
	}
	s.router.Unsubscribe(l, "r.a")
}

// TestSessionResumeTimeout: a read-back that does not end within
// resume_timeout is answered at the deadline: the channel's snapshot
// (newer than the client's position), the live records held meanwhile,
// then recovered:false. (The job's timer and the read-back's context end at
// the same deadline; whichever answers, the client sees the same.)
func TestSessionResumeTimeout(t *testing.T) {
	rp := newFakeReplayer(true, span(1, 9)...) // never released: the deadline ends it
	s, l := newResumeSession(t, rp, func(c *Config) { c.ResumeTimeout = 200 * time.Millisecond })
	keep := &router.Retention{Last: true}
	publishOffsets(s, "r.t", keep, 9)
	l.request(`{"op":"subscribe","id":1,"channels":["r.t"],"since":{"r.t":{"0":2}}}`)
	rp.waitStarted(t)
	publishOffsets(s, "r.t", keep, 10)
	got := replyOffsets(t, collect(t, &l.session, `"op":"ok"`))
	if want := `[9/snap 10 {"op":"ok","id":1,"recovered":{"r.t":false}}]`; fmt.Sprint(got) != want {
		t.Fatalf("at the deadline: %v, want %s", got, want)
	}
	s.router.Unsubscribe(l, "r.t")
}

// TestSessionResumeUnsubscribed: a channel unsubscribed while it is read
// back loses its resume state; the read-back delivers nothing of it.
func TestSessionResumeUnsubscribed(t *testing.T) {
	rp := newFakeReplayer(true, span(1, 5)...)
	s, l := newResumeSession(t, rp, nil)
	l.request(`{"op":"subscribe","id":1,"channels":["r.u"],"since":{"r.u":{"0":0}}}`)
	rp.waitStarted(t)
	publishOffsets(s, "r.u", nil, 6)
	l.request(`{"op":"unsubscribe","id":2,"channels":["r.u"]}`)
	close(rp.release)
	got := collect(t, &l.session, `"id":1`)
	if want := `[{"op":"ok","id":2} {"op":"ok","id":1,"recovered":{"r.u":false}}]`; fmt.Sprint(got) != want {
		t.Fatalf("got %v, want %s", got, want)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.out.heldCount != 0 || l.out.bytes != 0 || l.out.resume["r.u"] != nil {
		t.Fatalf("left %d held frames, %d bytes, resume state %v", l.out.heldCount, l.out.bytes, l.out.resume["r.u"])
	}
}
