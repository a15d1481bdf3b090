package netpoll

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// Poller is one epoll instance. Interest is registered one-shot: after an
// event fires for a descriptor it stays disarmed until Rearm, so at most one
// worker handles a connection's readiness at a time and a busy socket cannot
// starve the others.
//
// kpush runs two pollers: one for readability (every connection, always
// armed while idle) and one for writability (armed only while a connection's
// socket buffer is full). Two epoll instances keep the two interests apart,
// so re-arming one never disturbs the other.
//
// Wait parks its goroutine in Go's own netpoller (an epoll descriptor is
// itself pollable) instead of blocking a thread in epoll_wait: a thread
// blocked in a system call keeps its P until the runtime's monitor takes it
// back, which can take up to 10ms when the process is quiet, and with two
// pollers and GOMAXPROCS=2 that stalls every worker and the consumer.
type Poller struct {
	sys    Sys // the epoll system calls; replaced by tests to inject faults
	epfd   int
	file   *os.File        // epfd, registered with Go's netpoller; owns the descriptor
	raw    syscall.RawConn // file's raw access for epoll_wait
	events uint32
	wakeR  int // eventfd-like pipe used to interrupt wait on close
	wakeW  int
}

func NewPoller(events uint32, sys Sys) (*Poller, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("netpoll: epoll_create1: %w", err)
	}
	if err := syscall.SetNonblock(epfd, true); err != nil {
		syscall.Close(epfd)
		return nil, fmt.Errorf("netpoll: set epoll non-blocking: %w", err)
	}
	file := os.NewFile(uintptr(epfd), "kpush-epoll")
	raw, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("netpoll: epoll raw conn: %w", err)
	}
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_NONBLOCK|syscall.O_CLOEXEC); err != nil {
		file.Close()
		return nil, fmt.Errorf("netpoll: pipe2 for Poller wake-up: %w", err)
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(p[0])}
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, p[0], &ev); err != nil {
		file.Close()
		syscall.Close(p[0])
		syscall.Close(p[1])
		return nil, fmt.Errorf("netpoll: epoll_ctl add wake pipe: %w", err)
	}
	return &Poller{sys: sys, epfd: epfd, file: file, raw: raw, events: events, wakeR: p[0], wakeW: p[1]}, nil
}

// Sys is the system calls netpoll makes on its own descriptors
// (epoll, and the dup that takes a socket over from Go's net package),
// behind an interface so tests can make them fail. Implementations must be
// safe for concurrent use; EpollWait may block until a descriptor is ready or
// return at once (msec 0).
type Sys interface {
	EpollCtl(epfd, op, fd int, ev *syscall.EpollEvent) error
	EpollWait(epfd int, events []syscall.EpollEvent, msec int) (int, error)
	DupCloexec(fd uintptr) (int, error)
}

// RealSys is Sys on the kernel.
type RealSys struct{}

func (RealSys) EpollCtl(epfd, op, fd int, ev *syscall.EpollEvent) error {
	return syscall.EpollCtl(epfd, op, fd, ev)
}

func (RealSys) EpollWait(epfd int, events []syscall.EpollEvent, msec int) (int, error) {
	return syscall.EpollWait(epfd, events, msec)
}

func (RealSys) DupCloexec(fd uintptr) (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_DUPFD_CLOEXEC, 0)
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

const epollOneShot = 1 << 30 // EPOLLONESHOT; syscall defines it as a negative int

// Add registers fd, armed. gen comes back with each event, so an event for
// a descriptor number that was closed and reused is recognised as stale.
func (p *Poller) Add(fd int, gen uint32) error {
	ev := syscall.EpollEvent{Events: p.events | epollOneShot, Fd: int32(fd), Pad: int32(gen)}
	return p.sys.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, fd, &ev)
}

// Rearm re-enables fd after one of its events was handled. If fd was never
// added it is added.
func (p *Poller) Rearm(fd int, gen uint32) error {
	ev := syscall.EpollEvent{Events: p.events | epollOneShot, Fd: int32(fd), Pad: int32(gen)}
	err := p.sys.EpollCtl(p.epfd, syscall.EPOLL_CTL_MOD, fd, &ev)
	if errors.Is(err, syscall.ENOENT) {
		err = p.sys.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, fd, &ev)
	}
	return err
}

// Remove drops fd; a descriptor that was never added is not an error.
func (p *Poller) Remove(fd int) {
	_ = p.sys.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, fd, nil)
}

// Wait blocks until descriptors are ready and calls fn for each ready fd.
// It returns nil when Close is called, and an error when epoll fails: the
// caller must treat that as fatal, since no descriptor of this Poller is
// served any more.
func (p *Poller) Wait(fn func(fd int, gen uint32)) error {
	events := make([]syscall.EpollEvent, 256)
	for {
		var n int
		var werr error
		if err := p.raw.Read(func(fd uintptr) bool {
			n, werr = p.sys.EpollWait(int(fd), events, 0)
			return n > 0 || werr != nil && werr != syscall.EINTR
		}); err != nil {
			return fmt.Errorf("netpoll: wait for epoll: %w", err)
		}
		if werr != nil {
			return fmt.Errorf("netpoll: epoll_wait: %w", werr)
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

// Close wakes Wait; the caller waits for the Wait goroutine to return
// before calling Release, which frees the epoll instance.
func (p *Poller) Close() {
	_, _ = syscall.Write(p.wakeW, []byte{1})
}

// Release closes the epoll instance and its wake-up pipe.
func (p *Poller) Release() {
	p.file.Close()
	syscall.Close(p.wakeR)
	syscall.Close(p.wakeW)
}

// FD returns the epoll instance's descriptor, as Sys sees it (tests tell
// the calls of two pollers apart by it).
func (p *Poller) FD() int { return p.epfd }
