package gateway

import (
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/kpush/kpush/gateway/internal/netpoll"
	"github.com/kpush/kpush/router"
	"golang.org/x/sys/unix"
)

// The writer hot path: a published frame is queued on a connection
// (Enqueue, as the router calls it), a worker takes the flush task and
// writes everything queued with one writev. These benchmarks drive exactly
// that code against a real socket whose other end is drained, and report
// the cost per delivery for several frames per flush: the kernel's cost
// per write is shared by the frames it carries.

type writerRig struct {
	srv *Server
	c   *conn
	w   *worker
}

// newWriterRig returns a connection on the kpush end of a socket pair
// (unix) or a loopback TCP connection (tcp), with the other end drained.
func newWriterRig(tb testing.TB, transport string) *writerRig {
	tb.Helper()
	return newWriterRigOn(tb, newWriterServer(tb), transport)
}

// newWriterServer returns a server for writer rigs, with queues that never
// fill in a benchmark.
func newWriterServer(tb testing.TB) *Server {
	tb.Helper()
	srv, err := New(Config{MaxQueueMessages: 1 << 20, MaxQueueBytes: 1 << 30}, router.New(), nil, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		srv.readPoller.Release()
		srv.writePoller.Release()
	})
	return srv
}

// newWriterRigOn is newWriterRig on a given server: rigs of one server
// share what the server shares between connections (the Centrifugo push
// cache).
func newWriterRigOn(tb testing.TB, srv *Server, transport string) *writerRig {
	tb.Helper()
	var fd int
	var peer io.ReadCloser
	switch transport {
	case "unix":
		fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			tb.Fatal(err)
		}
		if err := syscall.SetNonblock(fds[0], true); err != nil {
			tb.Fatal(err)
		}
		fd = fds[0]
		peer = fdReader(fds[1])
	case "tcp":
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		defer ln.Close()
		client, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			tb.Fatal(err)
		}
		server, err := ln.Accept()
		if err != nil {
			tb.Fatal(err)
		}
		if fd, err = netpoll.Detach(netpoll.RealSys{}, server); err != nil {
			tb.Fatal(err)
		}
		peer = client
	}
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		_, _ = io.Copy(io.Discard, peer)
	}()
	tb.Cleanup(func() {
		netpoll.Close(fd)
		peer.Close()
		<-drained
	})
	c := &conn{session: session{srv: srv}, fd: int32(fd), gen: 1}
	w := &worker{s: srv, rbuf: make([]byte, 1024), iov: make([]syscall.Iovec, 0, netpoll.MaxIovecs)}
	return &writerRig{srv: srv, c: c, w: w}
}

type fdReader int

func (f fdReader) Read(p []byte) (int, error) {
	n, err := syscall.Read(int(f), p)
	if n == 0 && err == nil {
		return 0, io.EOF
	}
	if n < 0 {
		n = 0
	}
	return n, err
}

func (f fdReader) Close() error { return syscall.Close(int(f)) }

// flushQueued runs the flush tasks Enqueue scheduled, as a worker would,
// and waits out a full socket buffer the way the write poller would.
func (r *writerRig) flushQueued(tb testing.TB) {
	for {
		r.w.batch = r.srv.work.TryPopBatch(r.w.batch, 32)
		for i, t := range r.w.batch {
			t.C.flush(r.w)
			r.w.batch[i] = netpoll.Task[conn]{}
		}
		r.c.mu.Lock()
		waiting := r.c.flags&flagWaitOut != 0
		idle := r.c.flags&flagFlushing == 0 && len(r.c.out.frames) == 0
		r.c.mu.Unlock()
		switch {
		case waiting:
			pfd := []unix.PollFd{{Fd: int32(r.c.fd), Events: unix.POLLOUT}}
			if _, err := unix.Poll(pfd, -1); err != nil && err != unix.EINTR {
				tb.Fatal(err)
			}
			r.c.onWritable()
		case idle:
			return
		}
	}
}

// BenchmarkWriter measures Enqueue plus flush per delivery. One op is one
// delivery; frames/flush is how many deliveries share one writev.
func BenchmarkWriter(b *testing.B) {
	for _, transport := range []string{"unix", "tcp"} {
		for _, perFlush := range []int{1, 16, 128} {
			b.Run(fmt.Sprintf("%s/frames_per_flush=%d", transport, perFlush), func(b *testing.B) {
				r := newWriterRig(b, transport)
				f := benchFrame()
				b.SetBytes(int64(len(f.Data)))
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if !r.c.Enqueue(f) {
						b.Fatal("Enqueue refused the frame")
					}
					if (i+1)%perFlush == 0 || i == b.N-1 {
						r.flushQueued(b)
					}
				}
			})
		}
	}
}

// TestWriterDoesNotAllocate checks the writer's steady state: queueing a
// shared frame and writing it allocates nothing per delivery.
func TestWriterDoesNotAllocate(t *testing.T) {
	r := newWriterRig(t, "unix")
	f := benchFrame()
	run := func() {
		for i := 0; i < 8; i++ {
			r.c.Enqueue(f)
		}
		r.flushQueued(t)
	}
	run() // grow the queue and task slices once
	if a := testing.AllocsPerRun(200, run); a != 0 {
		t.Fatalf("8 deliveries and their flush allocate %.1f times, want 0", a)
	}
}
