package netpoll

import (
	"fmt"
	"net"
	"syscall"
	"unsafe"
)

// Raw descriptor I/O. After the handshake a connection leaves Go's net
// package: its socket is kept as a bare non-blocking descriptor watched by
// kpush's own epoll, which is what lets an idle connection cost a few
// hundred bytes and no goroutine.

const MaxIovecs = 1024 // IOV_MAX on Linux

// Detach takes the socket out of c, which is closed, and returns a
// non-blocking, close-on-exec duplicate descriptor of it. On error c may
// still be open: the caller closes it.
func Detach(sys Sys, c net.Conn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("netpoll: %T has no raw descriptor", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, fmt.Errorf("netpoll: raw connection: %w", err)
	}
	fd := -1
	var dupErr error
	if err := raw.Control(func(s uintptr) {
		fd, dupErr = sys.DupCloexec(s)
	}); err != nil {
		return -1, fmt.Errorf("netpoll: raw control: %w", err)
	}
	if dupErr != nil {
		return -1, fmt.Errorf("netpoll: dup socket: %w", dupErr)
	}
	// Closing the net.Conn releases Go's descriptor and poller entry; the
	// socket itself lives on through the duplicate.
	_ = c.Close()
	if err := syscall.SetNonblock(fd, true); err != nil {
		syscall.Close(fd)
		return -1, fmt.Errorf("netpoll: set non-blocking: %w", err)
	}
	return fd, nil
}

// Writev writes the buffers in one system call.
func Writev(fd int, iov []syscall.Iovec) (int, error) {
	if len(iov) == 0 {
		return 0, nil
	}
	for {
		n, _, e := syscall.Syscall(syscall.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return int(n), nil
	}
}

// SetIovec points v at b, which must not be empty.
func SetIovec(v *syscall.Iovec, b []byte) {
	v.Base = &b[0]
	v.SetLen(len(b))
}

// Read reads from fd, retrying on EINTR; syscall.EAGAIN means the socket
// is empty.
func Read(fd int, b []byte) (int, error) {
	for {
		n, err := syscall.Read(fd, b)
		if err == syscall.EINTR {
			continue
		}
		return n, err
	}
}

// Close closes fd; the error is of no use once the connection is gone.
func Close(fd int) { _ = syscall.Close(fd) }

// IsWouldBlock reports whether err means the socket is full (on write) or
// empty (on read).
func IsWouldBlock(err error) bool { return err == syscall.EAGAIN }
