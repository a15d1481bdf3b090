//go:build linux

package gateway

import (
	"errors"
	"fmt"
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
type poller struct {
	epfd   int
	events uint32
	wakeR  int // eventfd-like pipe used to interrupt wait on close
	wakeW  int
}

func newPoller(events uint32) (*poller, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("gateway: epoll_create1: %w", err)
	}
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_NONBLOCK|syscall.O_CLOEXEC); err != nil {
		syscall.Close(epfd)
		return nil, fmt.Errorf("gateway: pipe2 for poller wake-up: %w", err)
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(p[0])}
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, p[0], &ev); err != nil {
		syscall.Close(epfd)
		syscall.Close(p[0])
		syscall.Close(p[1])
		return nil, fmt.Errorf("gateway: epoll_ctl add wake pipe: %w", err)
	}
	return &poller{epfd: epfd, events: events, wakeR: p[0], wakeW: p[1]}, nil
}

const epollOneShot = 1 << 30 // EPOLLONESHOT; syscall defines it as a negative int

// add registers fd, armed. gen comes back with each event, so an event for
// a descriptor number that was closed and reused is recognised as stale.
func (p *poller) add(fd int, gen uint32) error {
	ev := syscall.EpollEvent{Events: p.events | epollOneShot, Fd: int32(fd), Pad: int32(gen)}
	return syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, fd, &ev)
}

// rearm re-enables fd after one of its events was handled. If fd was never
// added it is added.
func (p *poller) rearm(fd int, gen uint32) error {
	ev := syscall.EpollEvent{Events: p.events | epollOneShot, Fd: int32(fd), Pad: int32(gen)}
	err := syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_MOD, fd, &ev)
	if errors.Is(err, syscall.ENOENT) {
		err = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, fd, &ev)
	}
	return err
}

// remove drops fd; a descriptor that was never added is not an error.
func (p *poller) remove(fd int) {
	_ = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, fd, nil)
}

// wait blocks until descriptors are ready and calls fn for each ready fd.
// It returns when close is called.
func (p *poller) wait(fn func(fd int, gen uint32)) error {
	events := make([]syscall.EpollEvent, 256)
	for {
		n, err := syscall.EpollWait(p.epfd, events, -1)
		if err != nil {
			if err == syscall.EINTR {
				continue
			}
			return fmt.Errorf("gateway: epoll_wait: %w", err)
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
	syscall.Close(p.epfd)
	syscall.Close(p.wakeR)
	syscall.Close(p.wakeW)
}
