// Package client is a Go client for kpush's protocol v1, for services and
// tests. Conn is one WebSocket connection: send requests, read frames.
// Client stays connected: it reconnects with backoff and resumes every
// channel from the last Kafka positions it saw, dropping duplicates.
//
// A Conn is not safe for concurrent reads; writes are serialised
// internally, so one goroutine may read while others send.
package client

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/kpush/kpush/gateway/wire"
)

// Frame is any server frame of protocol v1 (package wire defines it).
type Frame = wire.Frame

// Request is a client request of protocol v1 (package wire defines it).
type Request = wire.Request

// CloseError is returned by Read when the server closes the connection.
type CloseError = wsutil.ClosedError

// Conn is one protocol v1 connection.
type Conn struct {
	nc  net.Conn
	br  *bufio.Reader
	wmu sync.Mutex // serialises frame writes
	ids atomic.Int64
	rd  *wsutil.Reader
}

// DialOptions tune Dial.
type DialOptions struct {
	Header    http.Header
	Protocols []string
	// NetDial replaces the TCP dialer, e.g. to pick a source address.
	NetDial func(ctx context.Context, network, addr string) (net.Conn, error)
	TLS     *ws.Dialer
}

// Dial connects to a kpush WebSocket URL (ws:// or wss://).
func Dial(ctx context.Context, url string, o *DialOptions) (*Conn, error) {
	d := ws.Dialer{}
	if o != nil {
		if o.TLS != nil {
			d = *o.TLS
		}
		if o.Header != nil {
			d.Header = ws.HandshakeHeaderHTTP(o.Header)
		}
		d.Protocols = o.Protocols
		if o.NetDial != nil {
			d.NetDial = o.NetDial
		}
	}
	nc, br, _, err := d.Dial(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("client: dial %s: %w", url, err)
	}
	c := &Conn{nc: nc, br: br}
	var src io.Reader = nc
	if br != nil {
		src = br // the server's first frames may already be buffered
	}
	c.rd = &wsutil.Reader{
		Source:         src,
		State:          ws.StateClientSide,
		CheckUTF8:      true,
		OnIntermediate: c.control,
	}
	return c, nil
}

// control answers pings and reports close frames.
func (c *Conn) control(h ws.Header, r io.Reader) error {
	var w io.Writer = lockedWriter{c}
	if h.OpCode == ws.OpClose {
		// The close frame is reported even if echoing it fails: a server
		// may close the socket right after sending it, and the echo then
		// meets a reset.
		w = echoWriter{c}
	}
	return wsutil.ControlFrameHandler(w, ws.StateClientSide)(h, r)
}

// echoWriter writes like lockedWriter but never fails.
type echoWriter struct{ c *Conn }

func (w echoWriter) Write(p []byte) (int, error) {
	_, _ = lockedWriter(w).Write(p)
	return len(p), nil
}

// lockedWriter writes control replies (pongs, the close echo). They are best
// effort: a server that closes right after its close frame (as kpush does
// for a client that broke a limit, with the client's unread bytes still
// queued) resets the connection, and the echo fails with a broken pipe. The
// server's close code must still reach the caller, so the write error is
// dropped here; a connection that is really gone fails the next read.
type lockedWriter struct{ c *Conn }

func (w lockedWriter) Write(p []byte) (int, error) {
	w.c.wmu.Lock()
	defer w.c.wmu.Unlock()
	_, _ = w.c.nc.Write(p)
	return len(p), nil
}

// NetConn returns the underlying connection (to set deadlines or to cut it).
func (c *Conn) NetConn() net.Conn { return c.nc }

// NextID returns a fresh request id.
func (c *Conn) NextID() int64 { return c.ids.Add(1) }

// Send writes one request; a zero ID is replaced by a fresh one, which is
// returned.
func (c *Conn) Send(r *Request) (int64, error) {
	if r.ID == 0 {
		r.ID = c.NextID()
	}
	b, err := json.Marshal(r)
	if err != nil {
		return 0, fmt.Errorf("client: encode request: %w", err)
	}
	return r.ID, c.WriteText(b)
}

// WriteText writes raw bytes as one text frame.
func (c *Conn) WriteText(b []byte) error {
	return c.WriteFrame(ws.OpText, b)
}

// WriteFrame writes one frame of any opcode (tests use it to send binary or
// malformed input).
func (c *Conn) WriteFrame(op ws.OpCode, b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return wsutil.WriteClientMessage(c.nc, op, b)
}

// ReadRaw returns the next data message's payload. Pings are answered; a
// close frame is answered and returned as a CloseError.
func (c *Conn) ReadRaw() ([]byte, error) {
	for {
		h, err := c.rd.NextFrame()
		if err != nil {
			return nil, err
		}
		if h.OpCode.IsControl() {
			if err := c.control(h, c.rd); err != nil {
				return nil, err
			}
			continue
		}
		return io.ReadAll(c.rd)
	}
}

// Read returns the next server frame, decoded.
func (c *Conn) Read() (*Frame, error) {
	b, err := c.ReadRaw()
	if err != nil {
		return nil, err
	}
	var f Frame
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("client: decode server frame %q: %w", b, err)
	}
	return &f, nil
}

// Close sends a normal close frame and closes the connection.
func (c *Conn) Close() error {
	c.wmu.Lock()
	_ = ws.WriteFrame(c.nc, ws.MaskFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))))
	c.wmu.Unlock()
	return c.nc.Close()
}
