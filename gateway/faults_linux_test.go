package gateway

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/kpush/kpush/gateway/client"
	"github.com/kpush/kpush/gateway/internal/netpoll"
)

// Failures that cannot be provoked from outside, injected through netpoll.Sys.

// faultySys is netpoll.Sys on the kernel, with failures switched on by tests.
type faultySys struct {
	netpoll.RealSys
	mu      sync.Mutex
	ctlFail func(epfd, op int) error // nil: no failure
	waitErr error
	dupErr  error
}

func (f *faultySys) EpollCtl(epfd, op, fd int, ev *syscall.EpollEvent) error {
	f.mu.Lock()
	fail := f.ctlFail
	f.mu.Unlock()
	if fail != nil {
		if err := fail(epfd, op); err != nil {
			return err
		}
	}
	return f.RealSys.EpollCtl(epfd, op, fd, ev)
}

func (f *faultySys) EpollWait(epfd int, events []syscall.EpollEvent, msec int) (int, error) {
	f.mu.Lock()
	err := f.waitErr
	f.mu.Unlock()
	if err != nil {
		return 0, err
	}
	return f.RealSys.EpollWait(epfd, events, msec)
}

func (f *faultySys) DupCloexec(fd uintptr) (int, error) {
	f.mu.Lock()
	err := f.dupErr
	f.mu.Unlock()
	if err != nil {
		return -1, err
	}
	return f.RealSys.DupCloexec(fd)
}

func (f *faultySys) set(fn func(f *faultySys)) {
	f.mu.Lock()
	fn(f)
	f.mu.Unlock()
}

// faultGateway is a gateway whose system calls go through a faultySys.
type faultGateway struct {
	*secGateway
	sys  *faultySys
	done chan error // Serve's result
}

func startFaultGateway(t *testing.T, mutate func(*Config)) *faultGateway {
	t.Helper()
	f := &faultySys{}
	g := serveGateway(t, secConfig(mutate), serveOptions{sys: f, before: func() {
		f.set(func(f *faultySys) { f.ctlFail, f.waitErr, f.dupErr = nil, nil, nil })
	}})
	return &faultGateway{secGateway: &secGateway{srv: g.srv, reg: g.reg, addr: g.addr, url: g.url}, sys: f, done: g.done}
}

// TestReadRearmFailureClosesConnection: a connection whose descriptor epoll
// refuses to re-arm for reading is closed through the normal path: it leaves
// every channel, its close is counted and its descriptor released.
func TestReadRearmFailureClosesConnection(t *testing.T) {
	g := startFaultGateway(t, nil)
	c := mustDial(t, g.url, nil)
	if f := c.subscribe(t, "f.a", "f.b"); f.Op != "ok" {
		t.Fatalf("subscribe: %+v", f)
	}
	if got := g.gauge("kpush_subscriptions"); got != 2 {
		t.Fatalf("kpush_subscriptions = %v, want 2", got)
	}
	readEpfd := g.srv.readPoller.FD()
	g.sys.set(func(f *faultySys) {
		f.ctlFail = func(epfd, op int) error {
			if epfd == readEpfd && op == syscall.EPOLL_CTL_MOD {
				return syscall.ENOMEM
			}
			return nil
		}
	})
	if _, err := c.Send(&client.Request{Op: "ping"}); err != nil {
		t.Fatal(err)
	}
	secWaitUntil(t, 10*time.Second, "the connection to be closed, unsubscribed and released", func() bool {
		return g.metric("kpush_connection_closes_total", "reason", "poller_error") == 1 &&
			g.gauge("kpush_subscriptions") == 0 && g.srv.Connections() == 0
	})
	if n := g.publish("f.a", `{}`); n != 0 {
		t.Fatalf("publish reached %d connections after the close", n)
	}
	select {
	case <-c.errc:
	case <-time.After(10 * time.Second):
		t.Fatal("the client's socket was not closed")
	}
}

// TestWriteRearmFailureClosesConnection: the same for a connection whose
// socket filled up and whose descriptor epoll refuses to watch for
// writability: before, it stayed in its channels' subscriber lists.
func TestWriteRearmFailureClosesConnection(t *testing.T) {
	g := startFaultGateway(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, g.url, stalledDial)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.NetConn().Close() })
	id, _ := c.Send(&client.Request{Op: "subscribe", Channels: []string{"w.a"}})
	if f, err := c.Read(); err != nil || f.Op != "ok" || f.ID != id {
		t.Fatalf("subscribe: %+v %v", f, err)
	}
	for _, sc := range g.srv.conns.Snapshot() {
		sc.setSendBuffer(t, 4096)
	}
	writeEpfd := g.srv.writePoller.FD()
	g.sys.set(func(f *faultySys) {
		f.ctlFail = func(epfd, op int) error {
			if epfd == writeEpfd && op != syscall.EPOLL_CTL_DEL {
				return syscall.ENOSPC
			}
			return nil
		}
	})
	payload := `{"pad":"` + strings.Repeat("x", 2000) + `"}`
	secWaitUntil(t, 20*time.Second, "the connection to be closed, unsubscribed and released", func() bool {
		g.publish("w.a", payload) // fills the socket until a write would block
		return g.metric("kpush_connection_closes_total", "reason", "poller_error") == 1 &&
			g.gauge("kpush_subscriptions") == 0 && g.srv.Connections() == 0
	})
}

// TestEpollWaitFailureIsFatal: a failing epoll_wait ends Serve with an error
// (kpush exits non-zero) and Err reports it at once (/healthz fails).
func TestEpollWaitFailureIsFatal(t *testing.T) {
	g := startFaultGateway(t, nil)
	c := mustDial(t, g.url, nil)
	if err := g.srv.Err(); err != nil {
		t.Fatalf("Err before any fault: %v", err)
	}
	g.sys.set(func(f *faultySys) { f.waitErr = syscall.EBADF })
	c.Send(&client.Request{Op: "ping"}) // makes the read poller wake up
	select {
	case err := <-g.done:
		if err == nil || !strings.Contains(err.Error(), "epoll_wait") {
			t.Fatalf("Serve returned %v, want the epoll_wait failure", err)
		}
		g.done <- err // for the cleanup
	case <-time.After(15 * time.Second):
		t.Fatal("Serve kept running after epoll_wait failed")
	}
	if err := g.srv.Err(); err == nil || !errors.Is(err, syscall.EBADF) {
		t.Fatalf("Err = %v, want the EBADF from epoll_wait", err)
	}
}

// TestFailedDetachClosesSocket: when the upgraded socket cannot be taken
// over from Go's net package, it is closed at once (the client sees EOF
// right after its 101) and the slots it held are given back.
func TestFailedDetachClosesSocket(t *testing.T) {
	g := startFaultGateway(t, func(c *Config) { c.MaxConnectionsPerIP = 5 })
	g.sys.set(func(f *faultySys) { f.dupErr = syscall.EMFILE })
	r, resp := rawUpgrade(t, rawDial(t, "127.0.0.2", g.addr), upgradeRequest(""), nil)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("HTTP %d, want 101 (the failure comes after the upgrade)", resp.StatusCode)
	}
	_ = r.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := r.br.ReadByte(); err != io.EOF {
		t.Fatalf("read after the failed take-over: %v, want EOF", err)
	}
	if n := g.metric("kpush_handshakes_total", "result", "failed"); n != 1 {
		t.Fatalf(`kpush_handshakes_total{result="failed"} = %v, want 1`, n)
	}
	secWaitUntil(t, 10*time.Second, "the connection slots to be given back", func() bool {
		return g.srv.slots.Load() == 0 && g.perIPAddresses() == 0
	})
	// Once the fault is gone the server serves normally.
	g.sys.set(func(f *faultySys) { f.dupErr = nil })
	c := mustDial(t, g.url, fromAddr("127.0.0.2"))
	if f := c.subscribe(t, "d.a"); f.Op != "ok" {
		t.Fatalf("subscribe after recovery: %+v", f)
	}
	c.WriteFrame(ws.OpClose, closeBody(1000, ""))
	if code := c.closeCode(t); code != 1000 {
		t.Fatalf("close %d", code)
	}
}
