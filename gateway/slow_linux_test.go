package gateway

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kpush/kpush/gateway/client"
	dto "github.com/prometheus/client_model/go"
)

// smallRcvBuf is a net.Dialer Control that shrinks the socket's receive
// buffer to 4 KiB, so that a client that stops reading backs up the
// server's writes after a few frames.
func smallRcvBuf(_, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
	})
	if err != nil {
		return err
	}
	return serr
}

// stalledDial dials with a tiny receive buffer, so that a client that stops
// reading fills the server's queue after a few frames.
var stalledDial = &client.DialOptions{NetDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{Control: smallRcvBuf}
	return d.DialContext(ctx, network, addr)
}}

// stalledClient subscribes to ch and then reads nothing until resume is
// closed. Its socket buffers are made small at both ends (the kernel would
// otherwise absorb megabytes on loopback), so its queue in kpush fills after
// a few frames, as it would behind a slow network.
type stalledClient struct {
	c      *client.Conn
	resume chan struct{}
	frames chan *client.Frame
	err    chan error
}

func dialStalled(t *testing.T, srv *pushServer, chs ...string) *stalledClient {
	t.Helper()
	url := srv.url
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, url, stalledDial)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.NetConn().Close() })
	id, _ := c.Send(&client.Request{Op: "subscribe", Channels: chs})
	if f, err := c.Read(); err != nil || f.Op != "ok" || f.ID != id {
		t.Fatalf("subscribe: %+v %v", f, err)
	}
	srv.newestConn(t).setSendBuffer(t, 4096)
	sc := &stalledClient{c: c, resume: make(chan struct{}), frames: make(chan *client.Frame, 1<<16), err: make(chan error, 1)}
	go func() {
		defer close(sc.frames)
		<-sc.resume
		for {
			f, err := c.Read()
			if err != nil {
				sc.err <- err
				return
			}
			sc.frames <- f
		}
	}()
	return sc
}

// newestConn returns the connection accepted last.
func (s *pushServer) newestConn(t *testing.T) *conn {
	t.Helper()
	var newest *conn
	for _, c := range s.conns.Snapshot() {
		if newest == nil || c.gen > newest.gen {
			newest = c
		}
	}
	if newest == nil {
		t.Fatal("no connection")
	}
	return newest
}

func (c *conn) setSendBuffer(t *testing.T, n int) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := syscall.SetsockoptInt(int(c.fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, n); err != nil {
		t.Fatalf("SO_SNDBUF: %v", err)
	}
}

// maxQueue returns the longest queue among the server's connections (the
// stalled one's), in frames and bytes.
func (s *pushServer) maxQueue() (frames, bytes int) {
	for _, c := range s.conns.Snapshot() {
		c.mu.Lock()
		if c.out.bytes > bytes {
			frames, bytes = len(c.out.frames)+c.out.heldCount, c.out.bytes
		}
		c.mu.Unlock()
	}
	return frames, bytes
}

// TestSlowClientPolicies: a client that stops reading is closed with 4008 on
// a disconnect route; on a conflate route it stays, its queue stays within
// bounds, and once it reads again it gets the newest record, with
// "skipped" counting exactly the records it did not get.
func TestSlowClientPolicies(t *testing.T) {
	const maxBytes = 16 << 10
	pad := bytes.Repeat([]byte("x"), 1000)
	for _, conflate := range []bool{false, true} {
		t.Run(fmt.Sprintf("conflate=%v", conflate), func(t *testing.T) {
			s := startPushServer(t, Config{MaxQueueBytes: maxBytes, MaxQueueMessages: 64}, nil)
			sc := dialStalled(t, s, "c")
			reader := dialPush(t, s.url, nil)
			if _, reply := reader.request(t, &client.Request{Op: "subscribe", Channels: []string{"c"}}); reply.Op != "ok" {
				t.Fatal(reply)
			}
			const n = 2000
			peak := 0
			for o := int64(1); o <= n; o++ {
				s.Publish(&Message{Channel: "c", Offset: o, Data: []byte(`{"pad":"` + string(pad) + `"}`), Conflate: conflate}, nil)
				// The reader keeps up and gets everything, in order.
				if f := reader.next(t); f.O != o {
					t.Fatalf("reader got offset %d, want %d", f.O, o)
				}
				if o%100 == 0 {
					_, b := s.maxQueue()
					peak = max(peak, b)
				}
			}
			frameSize := len(pad) + 64
			if peak > maxBytes+frameSize {
				t.Fatalf("stalled connection queued %d bytes, bound %d", peak, maxBytes)
			}
			close(sc.resume)
			if !conflate {
				for range sc.frames {
				}
				var ce client.CloseError
				if err := <-sc.err; !errorsAs(err, &ce) || ce.Code != CloseSlowConsumer {
					t.Fatalf("stalled client ended with %v, want close 4008", err)
				}
				return
			}
			// Conflated: every record is either delivered or counted in
			// the "skipped" of the next delivered one, and the newest
			// arrives.
			var got, skipped int64
			last := int64(0)
			for last < n {
				f := <-sc.frames
				if f == nil {
					t.Fatalf("stalled client closed: %v", <-sc.err)
				}
				if f.O <= last {
					t.Fatalf("offset %d after %d", f.O, last)
				}
				if f.O != last+1+f.Skipped {
					t.Fatalf("offset %d after %d with skipped %d", f.O, last, f.Skipped)
				}
				got++
				skipped += f.Skipped
				last = f.O
			}
			if skipped == 0 || got+skipped != n {
				t.Fatalf("stalled client got %d and was told of %d skipped, want %d in all with some skipped", got, skipped, n)
			}
			t.Logf("conflated client: %d delivered, %d skipped, peak queue %d bytes", got, skipped, peak)
		})
	}
}

func errorsAs(err error, ce *client.CloseError) bool {
	c, ok := err.(client.CloseError)
	if ok {
		*ce = c
	}
	return ok
}

// TestSlowClientIsolation measures the delivery latency of 1,000 reading
// clients with and without one client that stops reading, under both
// policies. It asserts delivery (every reader gets every record in order)
// and bounded memory, and logs the percentiles: timing is not asserted on a
// shared machine.
//
// The stalled client subscribes to the feed and to a bulk channel of 64 KiB
// records that only it receives, so that it passes its queue bound within
// the run while the readers keep the default bounds (seconds of slack).
func TestSlowClientIsolation(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 connections; skipped with -short")
	}
	const readers = 1000
	perRun, rate := 100, 100 // records per phase, per second
	if raceEnabled {
		perRun, rate = 25, 25 // a functional check: the detector dominates the timing
	}
	s := startPushServer(t, Config{MaxConnections: 2000}, nil)
	bulk := []byte(`"` + string(bytes.Repeat([]byte("b"), 64<<10)) + `"`)
	type reader struct {
		c   *client.Conn
		lat []time.Duration
		err error
	}
	rs := make([]*reader, readers)
	var dialWG sync.WaitGroup
	for w := 0; w < 16; w++ {
		dialWG.Add(1)
		go func() {
			defer dialWG.Done()
			for i := w; i < readers; i += 16 {
				r := &reader{}
				rs[i] = r
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				r.c, r.err = client.Dial(ctx, s.url, nil)
				cancel()
				if r.err != nil {
					return
				}
				if _, r.err = r.c.Send(&client.Request{Op: "subscribe", ID: 1, Channels: []string{"feed"}}); r.err != nil {
					return
				}
				if f, err := r.c.Read(); err != nil || f.Op != "ok" {
					r.err = fmt.Errorf("subscribe: %+v %v", f, err)
				}
			}
		}()
	}
	dialWG.Wait()
	for i, r := range rs {
		if r != nil && r.c != nil {
			t.Cleanup(func() { r.c.NetConn().Close() })
		}
		if r == nil || r.err != nil {
			t.Fatalf("reader %d: %v", i, r.err)
		}
	}
	pad := string(bytes.Repeat([]byte("x"), 100))
	offset := int64(0)
	run := func(name string, stalled, conflate bool) (p50, p99 time.Duration) {
		var sc *stalledClient
		if stalled {
			sc = dialStalled(t, s, "feed", "bulk")
		}
		first := offset + 1
		var wg sync.WaitGroup
		for _, r := range rs {
			r.lat = r.lat[:0]
			wg.Add(1)
			go func() {
				defer wg.Done()
				for want := first; want < first+int64(perRun); want++ {
					b, err := r.c.ReadRaw()
					if err != nil {
						r.err = err
						return
					}
					now := time.Now().UnixNano()
					o, sent := field(b, `"o":`), field(b, `"t":`)
					if o != want {
						r.err = fmt.Errorf("offset %d, want %d", o, want)
						return
					}
					r.lat = append(r.lat, time.Duration(now-sent))
				}
			}()
		}
		tick := time.NewTicker(time.Second / time.Duration(rate))
		peak := 0
		for i := 0; i < perRun; i++ {
			<-tick.C
			offset++
			s.Publish(&Message{Channel: "feed", Offset: offset, Timestamp: time.Now().UnixMilli(), Conflate: conflate,
				Data: []byte(`{"t":` + strconv.FormatInt(time.Now().UnixNano(), 10) + `,"pad":"` + pad + `"}`)}, nil)
			if stalled && i%max(1, perRun/25) == 0 {
				s.Publish(&Message{Channel: "bulk", Offset: offset, Conflate: conflate, Data: bulk}, nil)
			}
			if i%10 == 0 {
				_, b := s.maxQueue()
				peak = max(peak, b)
			}
		}
		tick.Stop()
		wg.Wait()
		var all []time.Duration
		for i, r := range rs {
			if r.err != nil {
				t.Fatalf("%s: reader %d: %v", name, i, r.err)
			}
			all = append(all, r.lat...)
		}
		slices.Sort(all)
		p50, p99 = all[len(all)/2], all[len(all)*99/100]
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		t.Logf("%-28s readers p50 %-10s p99 %-10s max %-10s; peak queue of one connection %6d bytes; heap %d MiB",
			name, p50.Round(time.Microsecond), p99.Round(time.Microsecond), all[len(all)-1].Round(time.Microsecond), peak, ms.HeapInuse>>20)
		// The bound, plus one pending frame per channel when conflating.
		if bound := s.cfg.MaxQueueBytes + len(bulk) + len(pad) + 256; peak > bound {
			t.Errorf("%s: a connection queued %d bytes, bound %d", name, peak, bound)
		}
		if sc != nil {
			sc.c.NetConn().Close()
		}
		return p50, p99
	}
	run("baseline (no stalled client)", false, false)
	run("stalled client, disconnect", true, false)
	run("stalled client, conflate", true, true)
	var m dto.Metric
	if err := s.metrics.slowConsumers.WithLabelValues("disconnect").Write(&m); err != nil {
		t.Fatal(err)
	}
	if got := m.GetCounter().GetValue(); got < 1 {
		t.Errorf("no slow consumer was disconnected (kpush_slow_consumers_total{policy=disconnect} = %v)", got)
	}
}

// field parses the integer after key in a msg frame.
func field(b []byte, key string) int64 {
	i := bytes.Index(b, []byte(key))
	if i < 0 {
		return -1
	}
	b = b[i+len(key):]
	j := 0
	for j < len(b) && b[j] >= '0' && b[j] <= '9' {
		j++
	}
	n, _ := strconv.ParseInt(string(b[:j]), 10, 64)
	return n
}
