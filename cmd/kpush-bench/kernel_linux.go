package main

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gobwas/ws"
	"github.com/kpush/kpush/cmd/kpush-bench/internal/wsload"
	"github.com/kpush/kpush/gateway/wire"
	"golang.org/x/sys/unix"
)

// KernelLoop is what this machine's kernel allows for the deliveries of a
// scenario: a plain loop, in this process, that writes the same frames to
// the same number of loopback TCP sockets with one writev each (carrying
// FramesPerWrite frames), sweeping the sockets in turn for a fixed time.
// It does nothing else (no router, no queue, no epoll), so kpush's figure
// divided by this one is the share of the kernel's rate that kpush reaches.
// The other ends are drained by one epoll loop in this process, as the
// generator drains kpush's sockets; on loopback the receiving side's TCP
// work runs in the writer's context and is counted in its CPU, as it is in
// kpush's.
type KernelLoop struct {
	Sockets        int     `json:"sockets"`
	FramesPerWrite int     `json:"frames_per_write"`
	FrameBytes     int     `json:"frame_bytes"`
	Writes         int64   `json:"writes"`
	Again          int64   `json:"again"` // writes refused with EAGAIN (socket buffer full); not counted in Writes
	Seconds        float64 `json:"seconds"`
	CPUSeconds     float64 `json:"cpu_seconds"` // the writing thread's user + system time
	// DeliveriesPerCPU is frames written per CPU-second of the writing
	// thread; CPUPerWrite is its CPU time per writev.
	DeliveriesPerCPU float64 `json:"deliveries_per_cpu_second"`
	CPUPerWrite      float64 `json:"cpu_seconds_per_write"`
}

// kernelFrame is what kpush writes for a record of the generator's, with
// the given channel and value size, in protocol: a protocol v1 msg frame, a
// Centrifugo publication push frame or an event of an event stream.
func kernelFrame(channel string, recordBytes int, protocol string) []byte {
	value := wsloadValue(1234, time.Now().UnixNano(), recordBytes)
	switch protocol {
	case wsload.ProtoCentrifugo:
		p := []byte(`{"push":{"channel":"` + channel + `","pub":{"data":`)
		p = append(p, value...)
		p = append(p, `,"offset":1234567}}}`...)
		return wire.ServerFrame(ws.OpText, p)
	case wsload.ProtoSSE:
		p := []byte("event: " + channel + "\nid: k0a1_0.0.qglj\ndata: ")
		p = append(p, value...)
		return append(p, "\n\n"...)
	}
	p := []byte(`{"op":"msg","ch":"`)
	p = append(p, channel...)
	p = append(p, `","p":0,"o":1234567,"ts":`...)
	p = strconv.AppendInt(p, time.Now().UnixMilli(), 10)
	p = append(p, `,"data":`...)
	p = append(p, value...)
	p = append(p, '}')
	return wire.ServerFrame(ws.OpText, p)
}

// kernelSocketLimit bounds the socket pairs of the plain loop: both ends are
// in this process, and the open-files limit here is 20,000.
const kernelSocketLimit = 9000

// runKernelLoop writes frame framesPerWrite times per writev to each of
// sockets loopback connections in turn for d, and measures the writing
// thread's CPU time. Call it with no kpush and no client pool open, so the
// descriptors and the CPUs are free.
func runKernelLoop(ctx context.Context, sockets, framesPerWrite int, frame []byte, d time.Duration) (KernelLoop, error) {
	k := KernelLoop{Sockets: min(sockets, kernelSocketLimit), FramesPerWrite: max(1, framesPerWrite), FrameBytes: len(frame)}
	pairs, err := socketPairs(k.Sockets)
	defer func() {
		for _, p := range pairs {
			unix.Close(p[0])
			unix.Close(p[1])
		}
	}()
	if err != nil {
		return k, err
	}
	stopDrain, err := drain(pairs)
	if err != nil {
		return k, err
	}
	iov := make([][]byte, k.FramesPerWrite)
	for i := range iov {
		iov[i] = frame
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var r0, r1 unix.Rusage
		_ = unix.Getrusage(unix.RUSAGE_THREAD, &r0)
		start := time.Now()
		for ctx.Err() == nil && time.Since(start) < d {
			for _, p := range pairs {
				_, err := unix.Writev(p[0], iov)
				switch err {
				case nil:
					k.Writes++
				case unix.EAGAIN:
					k.Again++
				}
			}
		}
		k.Seconds = time.Since(start).Seconds()
		_ = unix.Getrusage(unix.RUSAGE_THREAD, &r1)
		k.CPUSeconds = tvSeconds(r1.Utime) - tvSeconds(r0.Utime) + tvSeconds(r1.Stime) - tvSeconds(r0.Stime)
	}()
	<-done
	stopDrain()
	if k.CPUSeconds > 0 && k.Writes > 0 {
		k.DeliveriesPerCPU = float64(k.Writes) * float64(k.FramesPerWrite) / k.CPUSeconds
		k.CPUPerWrite = k.CPUSeconds / float64(k.Writes)
	}
	logf("plain writev loop: %d sockets, %d frame(s) of %d B per writev: %d writes (%d EAGAIN) in %.2fs, %.2f CPU-s → %s frames per CPU-second, %.1f µs CPU per write",
		k.Sockets, k.FramesPerWrite, k.FrameBytes, k.Writes, k.Again, k.Seconds, k.CPUSeconds, si(k.DeliveriesPerCPU), k.CPUPerWrite*1e6)
	return k, nil
}

func tvSeconds(t unix.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

// socketPairs opens n loopback TCP connections to a listener of its own:
// [writing end, reading end], both non-blocking, TCP_NODELAY on the writer
// (as Go sets it on kpush's sockets). Source addresses are spread over
// 127.0.0.1..16 so ephemeral ports never run short.
func socketPairs(n int) ([][2]int, error) {
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("plain loop: socket: %w", err)
	}
	defer unix.Close(lfd)
	if err := unix.Bind(lfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return nil, fmt.Errorf("plain loop: bind: %w", err)
	}
	if err := unix.Listen(lfd, 1024); err != nil {
		return nil, fmt.Errorf("plain loop: listen: %w", err)
	}
	sa, err := unix.Getsockname(lfd)
	if err != nil {
		return nil, fmt.Errorf("plain loop: getsockname: %w", err)
	}
	var pairs [][2]int
	for i := 0; i < n; i++ {
		c, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return pairs, fmt.Errorf("plain loop: socket %d of %d: %w", i+1, n, err)
		}
		_ = unix.SetsockoptInt(c, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
		if err := unix.Bind(c, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, byte(1 + i%16)}}); err != nil {
			unix.Close(c)
			return pairs, fmt.Errorf("plain loop: bind %d of %d: %w", i+1, n, err)
		}
		if err := unix.Connect(c, sa); err != nil {
			unix.Close(c)
			return pairs, fmt.Errorf("plain loop: connect %d of %d: %w", i+1, n, err)
		}
		a, _, err := unix.Accept4(lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			unix.Close(c)
			return pairs, fmt.Errorf("plain loop: accept %d of %d: %w", i+1, n, err)
		}
		_ = unix.SetNonblock(c, true)
		_ = unix.SetsockoptInt(c, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		_ = unix.SetsockoptLinger(c, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		pairs = append(pairs, [2]int{c, a})
	}
	return pairs, nil
}

// drain reads and discards everything that arrives on the reading ends,
// from one epoll loop, until the returned stop is called.
func drain(pairs [][2]int) (stop func(), err error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("plain loop: epoll_create1: %w", err)
	}
	for _, p := range pairs {
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(p[1])}
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, p[1], &ev); err != nil {
			unix.Close(ep)
			return nil, fmt.Errorf("plain loop: epoll_ctl: %w", err)
		}
	}
	var quit atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		events := make([]unix.EpollEvent, 1024)
		buf := make([]byte, 256<<10)
		for !quit.Load() {
			n, err := unix.EpollWait(ep, events, 20)
			if err != nil && err != syscall.EINTR {
				return
			}
			for _, ev := range events[:max(n, 0)] {
				for {
					k, err := unix.Read(int(ev.Fd), buf)
					if k <= 0 || err != nil {
						break
					}
				}
			}
		}
	}()
	return func() {
		quit.Store(true)
		wg.Wait()
		unix.Close(ep)
	}, nil
}

// kernelRatios runs the plain loop once per distinct frames-per-write among
// steps (kpush's own, rounded), each for d, and sets every step's Kernel and
// KernelRatio: kpush's deliveries per CPU-second divided by the frames per
// CPU-second the plain loop's CPU per write allows at kpush's exact frames
// per write (the same as the loop's CPU per write divided by kpush's). sockets is the number of sockets the scenario wrote to and
// sweep the subscribers of one record whose write time the p99 is set
// against.
func kernelRatios(ctx context.Context, steps []*Step, sockets, sweep int, frame []byte, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	loops := map[int]*KernelLoop{}
	for _, st := range steps {
		if st == nil || st.DeliveriesPerKpushCPU == 0 {
			continue
		}
		fpw := max(1, int(math.Round(st.FramesPerWrite)))
		kl := loops[fpw]
		if kl == nil {
			r, err := runKernelLoop(ctx, sockets, fpw, frame, d)
			if err != nil {
				return err
			}
			kl = &r
			loops[fpw] = kl
		}
		st.Kernel = kl
		if kl.CPUPerWrite > 0 && st.FramesPerWrite > 0 {
			// What the kernel allows at kpush's own frames per write (not
			// the rounded figure the loop ran with): the loop's CPU per
			// write, which hardly depends on a few frames more or less.
			st.KernelRatio = st.DeliveriesPerKpushCPU / (st.FramesPerWrite / kl.CPUPerWrite)
		}
		if kl.CPUPerWrite > 0 && st.SocketWrites > 0 && st.KpushCPUSeconds > 0 {
			// Per socket write, whatever the writes carry: under caps
			// kpush_deliveries_total also counts the records a cap
			// replaced, which inflates FramesPerWrite.
			st.KernelWriteRatio = kl.CPUPerWrite / (st.KpushCPUSeconds / st.SocketWrites)
		}
		if kl.CPUPerWrite > 0 && sweep > 0 {
			// The plain loop's CPU time to write one record to every
			// subscriber of it, one write each (the loop's CPU per write
			// hardly depends on the frames it carries): the least time the
			// last of them waits on one core when nothing coalesces.
			st.KernelSweepSeconds = kl.CPUPerWrite * float64(sweep)
			st.P99OverSweep = st.Latency.P99.Seconds() / st.KernelSweepSeconds
			if st.Newest != nil {
				st.NewestP99OverSweep = st.Newest.P99.Seconds() / st.KernelSweepSeconds
			}
		}
	}
	return nil
}
