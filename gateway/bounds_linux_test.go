package gateway

import (
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/kpush/kpush/gateway/wire"
)

// TestUnreadRepliesAreBounded: a client that keeps sending requests and
// never reads the replies is closed as a slow consumer once its replies
// reach max_queue_bytes, and the server's heap returns to its baseline.
// Before, every reply was queued without bound (tens of MiB for one
// connection).
func TestUnreadRepliesAreBounded(t *testing.T) {
	const maxQueue = 64 << 10
	g := startSecGateway(t, func(c *Config) {
		c.MaxQueueBytes = maxQueue
		c.MaxRequestsPerSecond = 1_000_000
		c.RequestBurst = 1_000_000
	})
	w := newWitness(t, g, nil)
	w.check(t)
	heap0, _ := settledHeap()

	// A client with a small receive buffer that never reads.
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 5 * time.Second, Control: smallRcvBuf}
	nc, err := d.Dial("tcp", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	c, resp := rawUpgrade(t, nc, upgradeRequest(""), nil)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: HTTP %d", resp.StatusCode)
	}
	// The 101 is written before the server registers the connection.
	var sc *conn
	waitUntil(t, "the client's connection to be registered", func() bool {
		for _, x := range g.srv.conns.Snapshot() {
			if x.ip == "127.0.0.2" {
				sc = x
			}
		}
		return sc != nil
	})
	sc.setSendBuffer(t, 4096)

	// Requests whose replies are pongs, errors and ok replies, about 20
	// MiB of replies in all if none were cut.
	var batch []byte
	for i := 0; i < 100; i++ {
		switch i % 3 {
		case 0:
			batch = append(batch, maskedFrame(true, ws.OpText, []byte(fmt.Sprintf(`{"op":"ping","id":%d}`, i)))...)
		case 1:
			batch = append(batch, maskedFrame(true, ws.OpText, []byte(fmt.Sprintf(`{"op":"ping","id":%d,"unknown_field_to_get_an_error_reply":1}`, i)))...)
		default:
			batch = append(batch, maskedFrame(true, ws.OpText, []byte(fmt.Sprintf(`{"op":"unsubscribe","id":%d,"channels":["x"]}`, i)))...)
		}
	}
	writeErr := make(chan error, 1)
	go func() {
		for i := 0; i < 3000; i++ {
			if _, err := c.Write(batch); err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- nil
	}()
	secWaitUntil(t, 20*time.Second, "the client to be closed as a slow consumer", func() bool {
		return g.metric("kpush_connection_closes_total", "reason", "slow_consumer") == 1
	})
	sc.mu.Lock()
	queued := sc.out.bytes
	sc.mu.Unlock()
	if queued > maxQueue+len(wire.CloseFrame(CloseSlowConsumer, "slow consumer")) {
		t.Fatalf("%d bytes queued after the close, bound %d", queued, maxQueue)
	}
	// Once closing, the server reads on (and discards) until the close
	// grace period ends and the socket is cut.
	select {
	case <-writeErr:
	case <-time.After(30 * time.Second):
		t.Fatal("the client's writes neither finished nor failed")
	}
	secWaitUntil(t, 10*time.Second, "kpush_connections to return to 1 (the witness)", func() bool { return g.gauge("kpush_connections") == 1 })
	var heap1 uint64
	secWaitUntil(t, 10*time.Second, "the heap to return to its baseline", func() bool {
		heap1, _ = settledHeap()
		return heap1 < heap0+4<<20
	})
	t.Logf("heap baseline %d KiB, after the cut %d KiB", heap0>>10, heap1>>10)
	w.check(t)
}

// TestHandshakeSlotsFairShare: silent sockets from one address cannot take
// every handshake slot. With max_handshakes 8 one address holds at most 4
// (half); the sockets past that are closed at once, and a client from
// another address is upgraded while the silent ones still wait for their
// handshake timeout.
func TestHandshakeSlotsFairShare(t *testing.T) {
	g := startSecGateway(t, func(c *Config) {
		c.MaxHandshakes = 8
		c.HandshakeTimeout = 60 * time.Second
	})
	var silent []net.Conn
	for i := 0; i < 8; i++ {
		silent = append(silent, rawDial(t, "127.0.0.2", g.addr))
	}
	secWaitUntil(t, 10*time.Second, "the silent sockets past the share to be refused", func() bool {
		return g.rejected("handshakes_per_ip") == 4
	})
	if n := g.srv.hsShare.held("127.0.0.2"); n != 4 {
		t.Fatalf("one address holds %d handshake slots, want 4 of 8", n)
	}
	closed := 0
	for _, c := range silent {
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
			closed++
		}
	}
	if closed != 4 {
		t.Fatalf("%d silent sockets closed, want the 4 past the share", closed)
	}
	// Another address is served at once: its dial times out after 10s,
	// long before the silent sockets' 60s handshake timeout.
	w := newWitness(t, g, nil)
	w.check(t)
	// More from the same address are still refused while the silent ones
	// hold their slots.
	rawDial(t, "127.0.0.2", g.addr)
	secWaitUntil(t, 10*time.Second, "a ninth silent socket to be refused", func() bool {
		return g.rejected("handshakes_per_ip") == 5
	})
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
