//go:build linux

package gateway

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// poller is one epoll instance. Interest is registered one-shot: after an
// event fires for a descriptor it stays disarmed until rearm, so at most one
// worker handles a connection's readiness at a time and a busy socket cannot
// starve the others.
//
// kpush runs two pollers: one for readability (every connection, always
// armed while idle) and one for writability (armed only while a connection's
// socket buffer is full). Two epoll instances keep the two interests apart,
// so re-arming one never disturbs the other.
//
// wait parks its goroutine in Go's own netpoller (an epoll descriptor is
// itself pollable) instead of blocking a thread in epoll_wait: a thread
// blocked in a system call keeps its P until the runtime's monitor takes it
// back, which can take up to 10ms when the process is quiet, and with two
// pollers and GOMAXPROCS=2 that stalls every worker and the consumer.
type poller struct {
	sys    sysCalls // the epoll system calls; replaced by tests to inject faults
	epfd   int
	file   *os.File        // epfd, registered with Go's netpoller; owns the descriptor
	raw    syscall.RawConn // file's raw access for epoll_wait
	events uint32
	wakeR  int // eventfd-like pipe used to interrupt wait on close
	wakeW  int
}

func newPoller(events uint32) (*poller, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("gateway: epoll_create1: %w", err)
	}
	if err := syscall.SetNonblock(epfd, true); err != nil {
		syscall.Close(epfd)
		return nil, fmt.Errorf("gateway: set epoll non-blocking: %w", err)
	}
	file := os.NewFile(uintptr(epfd), "kpush-epoll")
	raw, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("gateway: epoll raw conn: %w", err)
	}
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_NONBLOCK|syscall.O_CLOEXEC); err != nil {
		file.Close()
		return nil, fmt.Errorf("gateway: pipe2 for poller wake-up: %w", err)
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(p[0])}
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, p[0], &ev); err != nil {
		file.Close()
		syscall.Close(p[0])
		syscall.Close(p[1])
		return nil, fmt.Errorf("gateway: epoll_ctl add wake pipe: %w", err)
	}
	return &poller{sys: realSys{}, epfd: epfd, file: file, raw: raw, events: events, wakeR: p[0], wakeW: p[1]}, nil
}

// sysCalls is the system calls the gateway makes on its own descriptors
// (epoll, and the dup that takes a socket over from Go's net package),
// behind an interface so tests can make them fail. Implementations must be
// safe for concurrent use; wait may block until a descriptor is ready or
// return at once (msec 0).
type sysCalls interface {
	epollCtl(epfd, op, fd int, ev *syscall.EpollEvent) error
	epollWait(epfd int, events []syscall.EpollEvent, msec int) (int, error)
	dupCloexec(fd uintptr) (int, error)
}

// realSys is sysCalls on the kernel.
type realSys struct{}

func (realSys) epollCtl(epfd, op, fd int, ev *syscall.EpollEvent) error {
	return syscall.EpollCtl(epfd, op, fd, ev)
}

func (realSys) epollWait(epfd int, events []syscall.EpollEvent, msec int) (int, error) {
	return syscall.EpollWait(epfd, events, msec)
}

func (realSys) dupCloexec(fd uintptr) (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_DUPFD_CLOEXEC, 0)
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

const epollOneShot = 1 << 30 // EPOLLONESHOT; syscall defines it as a negative int

// add registers fd, armed. gen comes back with each event, so an event for
// a descriptor number that was closed and reused is recognised as stale.
func (p *poller) add(fd int, gen uint32) error {
	ev := syscall.EpollEvent{Events: p.events | epollOneShot, Fd: int32(fd), Pad: int32(gen)}
	return p.sys.epollCtl(p.epfd, syscall.EPOLL_CTL_ADD, fd, &ev)
}

// rearm re-enables fd after one of its events was handled. If fd was never
// added it is added.
func (p *poller) rearm(fd int, gen uint32) error {
	ev := syscall.EpollEvent{Events: p.events | epollOneShot, Fd: int32(fd), Pad: int32(gen)}
	err := p.sys.epollCtl(p.epfd, syscall.EPOLL_CTL_MOD, fd, &ev)
	if errors.Is(err, syscall.ENOENT) {
		err = p.sys.epollCtl(p.epfd, syscall.EPOLL_CTL_ADD, fd, &ev)
	}
	return err
}

// remove drops fd; a descriptor that was never added is not an error.
func (p *poller) remove(fd int) {
	_ = p.sys.epollCtl(p.epfd, syscall.EPOLL_CTL_DEL, fd, nil)
}

// wait blocks until descriptors are ready and calls fn for each ready fd.
// It returns nil when close is called, and an error when epoll fails: the
// caller must treat that as fatal, since no descriptor of this poller is
// served any more.
func (p *poller) wait(fn func(fd int, gen uint32)) error {
	events := make([]syscall.EpollEvent, 256)
	for {
		var n int
		var werr error
		if err := p.raw.Read(func(fd uintptr) bool {
			n, werr = p.sys.epollWait(int(fd), events, 0)
			return n > 0 || werr != nil && werr != syscall.EINTR
		}); err != nil {
			return fmt.Errorf("gateway: wait for epoll: %w", err)
		}
		if werr != nil {
			return fmt.Errorf("gateway: epoll_wait: %w", werr)
		}
		for i := 0; i < n; i++ {
			fd := int(events[i].Fd)
			if fd == p.wakeR {
				return nil
			}
			fn(fd, uint32(events[i].Pad))
		}
	}
}

// close wakes wait and releases the epoll instance once wait has returned;
// the caller waits for the wait goroutine before calling release.
func (p *poller) close() {
	_, _ = syscall.Write(p.wakeW, []byte{1})
}

func (p *poller) release() {
	p.file.Close()
	syscall.Close(p.wakeR)
	syscall.Close(p.wakeW)
}
