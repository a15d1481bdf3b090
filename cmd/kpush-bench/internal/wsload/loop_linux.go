package wsload

import (
	"bytes"
	"compress/flate"
	"errors"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gobwas/ws"
	"github.com/kpush/kpush/cmd/kpush-bench/internal/hist"
	"github.com/kpush/kpush/gateway/wire"
	"golang.org/x/sys/unix"
)

type connState uint8

const (
	stIdle        connState = iota // not dialed, or closed
	stConnecting                   // connect in progress
	stUpgrading                    // upgrade request sent
	stSubscribing                  // subscribe request sent
	stReady                        // subscribed (or upgraded, without channels)
)

// wconn is one client connection, owned by one loop.
type wconn struct {
	id      int32
	fd      int32 // -1 while not dialed
	src     byte  // last octet of the 127.0.0.x source address; 0: any
	state   connState
	wantOut bool  // EPOLLOUT is armed for pending output
	queued  bool  // waiting in the loop's dial queue
	started int64 // Unix nanos when the dial began
	reqID   int64
	owed    int32 // Centrifugo: subscribe replies still to come
	subs    []subState
	in      []byte // bytes of an incomplete frame or response head
	out     []byte // bytes the socket did not take yet
}

// subState is what a connection last saw on one channel.
type subState struct {
	ch     int32
	part   int32
	seen   bool
	offset int64
	seq    int64
}

// loop is one event loop: an epoll instance and the connections it dialed.
type loop struct {
	p       *Pool
	idx     int
	epfd    int
	epFile  *os.File        // epfd, registered with Go's netpoller
	epConn  syscall.RawConn // epFile's raw access
	evfd    int
	dst     unix.SockaddrInet4 // the loop's own copy: Connect writes into it
	limit   int                // in-flight connections this loop allows
	timeout int64

	mu   sync.Mutex // guards cmds
	cmds []command

	// Owned by the loop goroutine.
	byFD     []*wconn // indexed by descriptor
	all      []*wconn // every connection this loop was given
	queue    []*wconn // waiting to be dialed
	inflight int
	buf      []byte        // read buffer, shared by all connections
	reqBuf   []byte        // request being encoded
	frameBuf []byte        // output frame being built
	inflater io.ReadCloser // flate reader for compressed frames (Config.Deflate); nil until one arrives
	zin      []byte        // a compressed payload with the stream's end appended
	zsrc     bytes.Reader  // over zin (a ByteReader: flate adds no buffer of its own)
	zbuf     bytes.Buffer  // a compressed frame's inflated payload
	rng      uint64
	events   []unix.EpollEvent
	lastScan int64

	stats     loopStats
	latency   hist.H
	newest    hist.H // Pool.NewestLatency
	handshake hist.H

	reasonMu   sync.Mutex
	failures   map[string]int64 // guarded by reasonMu
	closeCodes map[int]int64    // guarded by reasonMu
}

func newLoop(p *Pool, idx, limit int) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, errorf("epoll_create1", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, errorf("set epoll non-blocking", err)
	}
	epFile := os.NewFile(uintptr(epfd), "wsload-epoll")
	epConn, err := epFile.SyscallConn()
	if err != nil {
		epFile.Close()
		return nil, errorf("epoll raw conn", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		epFile.Close()
		return nil, errorf("eventfd", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(evfd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		epFile.Close()
		unix.Close(evfd)
		return nil, errorf("epoll_ctl eventfd", err)
	}
	return &loop{
		p: p, idx: idx, epfd: epfd, epFile: epFile, epConn: epConn, evfd: evfd, limit: limit,
		dst:        unix.SockaddrInet4{Port: p.dst.Port, Addr: p.dst.Addr},
		timeout:    p.cfg.HandshakeTimeout.Nanoseconds(),
		buf:        make([]byte, 256<<10),
		rng:        uint64(time.Now().UnixNano()) | 1,
		events:     make([]unix.EpollEvent, 1024),
		failures:   map[string]int64{},
		closeCodes: map[int]int64{},
	}, nil
}

func errorf(op string, err error) error {
	return &opError{op: op, err: err}
}

type opError struct {
	op  string
	err error
}

func (e *opError) Error() string { return "wsload: " + e.op + ": " + e.err.Error() }
func (e *opError) Unwrap() error { return e.err }

// send queues a command and wakes the loop.
func (l *loop) send(c command) {
	l.p.unapplied.Add(1)
	l.mu.Lock()
	l.cmds = append(l.cmds, c)
	l.mu.Unlock()
	var one = [8]byte{1}
	_, _ = unix.Write(l.evfd, one[:])
}

func (l *loop) run() {
	for {
		if !l.takeCommands() {
			l.closeAll()
			return
		}
		l.dialQueued()
		n, err := l.wait()
		if err != nil {
			l.fail(nil, "epoll_wait: "+err.Error())
			return
		}
		for i := 0; i < n; i++ {
			ev := l.events[i]
			fd := int(ev.Fd)
			if fd == l.evfd {
				var b [8]byte
				_, _ = unix.Read(l.evfd, b[:])
				continue
			}
			if fd < len(l.byFD) {
				if c := l.byFD[fd]; c != nil {
					l.handle(c, ev.Events)
				}
			}
		}
		if l.inflight > 0 {
			if now := time.Now().UnixNano(); now-l.lastScan > int64(100*time.Millisecond) {
				l.lastScan = now
				l.expire(now)
			}
		}
	}
}

// wait returns the ready events. It parks the goroutine in Go's own
// netpoller (the loop's epoll descriptor is itself pollable) rather than
// blocking its thread in epoll_wait, so the loops never hold a P while
// idle and the producer and the embedded broker in this process run
// without waiting for the scheduler to take a P back. While connections
// are being set up it wakes at least every 100ms to expire stuck ones.
func (l *loop) wait() (int, error) {
	deadline := time.Time{}
	if l.inflight > 0 {
		deadline = time.Now().Add(100 * time.Millisecond)
	}
	_ = l.epFile.SetReadDeadline(deadline)
	var n int
	var werr error
	err := l.epConn.Read(func(fd uintptr) bool {
		n, werr = unix.EpollWait(int(fd), l.events, 0)
		return n > 0 || (werr != nil && werr != unix.EINTR)
	})
	if werr != nil && werr != unix.EINTR {
		return 0, werr
	}
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return 0, err
	}
	return n, nil
}

// takeCommands applies queued commands; false means stop.
func (l *loop) takeCommands() bool {
	l.mu.Lock()
	cmds := l.cmds
	l.cmds = nil
	l.mu.Unlock()
	defer l.p.unapplied.Add(-int64(len(cmds)))
	for _, c := range cmds {
		switch c.kind {
		case cmdStop:
			return false
		case cmdDial:
			l.all = append(l.all, c.conns...)
			l.enqueue(c.conns...)
		case cmdDrop:
			for _, w := range l.all {
				if w.fd >= 0 {
					l.closeConn(w)
					if c.reconnect {
						l.enqueue(w)
					}
				}
			}
		case cmdRevive:
			for _, w := range l.all {
				if w.fd < 0 {
					l.enqueue(w)
				}
			}
		}
	}
	return true
}

func (l *loop) enqueue(ws ...*wconn) {
	for _, w := range ws {
		if !w.queued {
			w.queued = true
			l.queue = append(l.queue, w)
		}
	}
	l.stats.queued.Store(int64(len(l.queue)))
}

// dialQueued starts connections while the in-flight bound allows.
func (l *loop) dialQueued() {
	n := 0
	for n < len(l.queue) && l.inflight < l.limit {
		w := l.queue[n]
		n++
		w.queued = false
		l.dial(w)
	}
	if n > 0 {
		k := copy(l.queue, l.queue[n:])
		clear(l.queue[k:])
		l.queue = l.queue[:k]
		l.stats.queued.Store(int64(k))
	}
}

func (l *loop) dial(w *wconn) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		l.fail(w, "socket: "+err.Error())
		return
	}
	if w.src != 0 {
		// Pick the port at connect time, per destination, rather than at
		// bind time, so each source address has the whole port range
		// for every destination.
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, w.src}}); err != nil {
			unix.Close(fd)
			l.fail(w, "bind: "+err.Error())
			return
		}
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	err = unix.Connect(fd, &l.dst)
	if err != nil && err != unix.EINPROGRESS {
		unix.Close(fd)
		l.fail(w, "connect: "+err.Error())
		return
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP, Fd: int32(fd)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		unix.Close(fd)
		l.fail(w, "epoll_ctl: "+err.Error())
		return
	}
	for fd >= len(l.byFD) {
		l.byFD = append(l.byFD, make([]*wconn, max(1024, len(l.byFD)))...)
	}
	l.byFD[fd] = w
	w.fd = int32(fd)
	w.state = stConnecting
	w.wantOut = true
	w.started = time.Now().UnixNano()
	w.in, w.out = w.in[:0], w.out[:0]
	for i := range w.subs {
		w.subs[i].seen = false
	}
	l.inflight++
	l.stats.inFlight.Store(int64(l.inflight))
}

func (l *loop) handle(w *wconn, events uint32) {
	if w.state == stConnecting {
		if soErr, err := unix.GetsockoptInt(int(w.fd), unix.SOL_SOCKET, unix.SO_ERROR); err != nil || soErr != 0 {
			reason := "connect: "
			if err != nil {
				reason += err.Error()
			} else {
				reason += unix.Errno(soErr).Error()
			}
			l.fail(w, reason)
			return
		}
		if events&unix.EPOLLOUT == 0 {
			return
		}
		w.state = stUpgrading
		if !l.write(w, l.requestFor(w)) {
			return
		}
	}
	if events&unix.EPOLLOUT != 0 && len(w.out) > 0 {
		if !l.write(w, nil) {
			return
		}
	}
	if w.wantOut && len(w.out) == 0 {
		w.wantOut = false
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: w.fd}
		_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, int(w.fd), &ev)
	}
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		l.read(w)
	}
}

// write sends b after anything already pending; what the socket does not
// take waits for EPOLLOUT. It returns false if the connection was lost.
func (l *loop) write(w *wconn, b []byte) bool {
	pending := len(w.out) > 0
	if pending {
		w.out = append(w.out, b...)
		b = w.out
	}
	n := 0
	for n < len(b) {
		k, err := unix.Write(int(w.fd), b[n:])
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			break
		}
		if err != nil {
			l.lose(w)
			return false
		}
		n += k
	}
	switch rest := b[n:]; {
	case len(rest) == 0:
		w.out = w.out[:0]
		return true
	case pending:
		w.out = w.out[:copy(w.out, rest)]
	default:
		w.out = append(w.out[:0], rest...)
	}
	if !w.wantOut {
		w.wantOut = true
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP, Fd: w.fd}
		_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, int(w.fd), &ev)
	}
	return true
}

// read takes what one read returns and handles every complete frame.
func (l *loop) read(w *wconn) {
	buf := l.buf
	carried := copy(buf, w.in)
	n, err := unix.Read(int(w.fd), buf[carried:])
	if err == unix.EAGAIN || err == unix.EINTR {
		return
	}
	if err != nil || n == 0 {
		if w.state == stUpgrading || w.state == stConnecting {
			reason := "upgrade: connection closed"
			if err != nil {
				reason = "upgrade: " + err.Error()
			}
			l.fail(w, reason)
			return
		}
		l.lose(w)
		return
	}
	now := time.Now().UnixNano()
	l.stats.bytes.Add(int64(n))
	data := buf[:carried+n]
	if w.state == stUpgrading {
		end := bytes.Index(data, []byte("\r\n\r\n"))
		if end < 0 {
			if len(data) > 8192 {
				l.fail(w, "upgrade: response head too long")
				return
			}
			w.in = append(w.in[:0], data...)
			return
		}
		check := upgradeOK
		if l.p.proto == protoSSE {
			check = sseOK
		}
		status, ok := check(data[:end])
		if !ok {
			l.fail(w, "upgrade: HTTP status "+strconv.Itoa(status))
			return
		}
		l.handshake.Record(now - w.started)
		l.stats.upgraded.Add(1)
		l.stats.open.Add(1)
		data = data[end+4:]
		switch {
		case l.p.proto == protoSSE:
			// The request subscribed; the stream says ": subscribed".
			w.state = stSubscribing
			if len(w.subs) == 0 {
				l.becomeReady(w, now)
			}
		case len(w.subs) == 0 && l.p.proto == protoV1:
			l.becomeReady(w, now)
		case !l.subscribe(w):
			return
		}
	}
	var used int
	if l.p.proto == protoSSE {
		used = l.sseEvents(w, data, now)
		if len(data)-used > len(l.buf)/2 {
			l.buf = make([]byte, 2*len(l.buf)) // an event longer than half the buffer
		}
	} else {
		used = l.frames(w, data, now)
	}
	if w.fd < 0 {
		return
	}
	rest := data[used:]
	if len(rest) == 0 {
		w.in = w.in[:0]
		return
	}
	// A frame larger than the shared buffer needs a bigger one next time.
	if _, hdr, plen, err := wire.ParseServerHeader(rest); l.p.proto != protoSSE && err == nil && hdr > 0 && hdr+plen > len(l.buf) {
		l.buf = make([]byte, 2*(hdr+plen))
	}
	w.in = append(w.in[:0], rest...)
}

// requestFor is the HTTP request that opens w: the WebSocket upgrade, or
// for an event stream a GET naming w's channels.
func (l *loop) requestFor(w *wconn) []byte {
	if l.p.proto != protoSSE {
		return l.p.request
	}
	b := append(l.reqBuf[:0], "GET "...)
	b = append(b, l.p.path...)
	for i, s := range w.subs {
		if i == 0 && !strings.Contains(l.p.path, "?") {
			b = append(b, '?')
		} else {
			b = append(b, '&')
		}
		b = append(b, "channel="...)
		b = append(b, url.QueryEscape(l.p.cfg.Channels[s.ch])...)
	}
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, l.p.host...)
	b = append(b, "\r\nAccept: text/event-stream\r\nUser-Agent: kpush-bench\r\n\r\n"...)
	l.reqBuf = b
	return b
}

func (l *loop) subscribe(w *wconn) bool {
	w.state = stSubscribing
	if l.p.proto == protoCF {
		// Connect first; the subscribes follow its reply (cfText).
		w.reqID = 1
		return l.sendText(w, []byte(`{"id":1,"connect":{}}`))
	}
	w.reqID++
	b := l.reqBuf[:0]
	b = append(b, `{"op":"subscribe","id":`...)
	b = strconv.AppendInt(b, w.reqID, 10)
	b = append(b, `,"channels":[`...)
	for i, s := range w.subs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = append(b, l.p.cfg.Channels[s.ch]...)
		b = append(b, '"')
	}
	b = append(b, "]}"...)
	l.reqBuf = b
	l.frameBuf = wire.AppendClientFrame(l.frameBuf[:0], ws.OpText, b, l.mask())
	return l.write(w, l.frameBuf)
}

// sendText writes p to w as one masked text frame.
func (l *loop) sendText(w *wconn, p []byte) bool {
	l.frameBuf = wire.AppendClientFrame(l.frameBuf[:0], ws.OpText, p, l.mask())
	return l.write(w, l.frameBuf)
}

// cfSubscribe sends one subscribe command per channel, in one frame,
// newline-separated, with ids 2, 3, ...
func (l *loop) cfSubscribe(w *wconn) bool {
	b := l.reqBuf[:0]
	for i, s := range w.subs {
		if i > 0 {
			b = append(b, '\n')
		}
		b = append(b, `{"id":`...)
		b = strconv.AppendInt(b, int64(i+2), 10)
		b = append(b, `,"subscribe":{"channel":"`...)
		b = append(b, l.p.cfg.Channels[s.ch]...)
		b = append(b, `"}}`...)
	}
	l.reqBuf = b
	w.owed = int32(len(w.subs))
	return l.sendText(w, b)
}

// cfText handles a Centrifugo text frame: replies, pushes and pings, one
// per line.
func (l *loop) cfText(w *wconn, p []byte, now int64) {
	for len(p) > 0 && w.fd >= 0 {
		line := p
		if i := bytes.IndexByte(p, '\n'); i >= 0 {
			line, p = p[:i], p[i+1:]
		} else {
			p = nil
		}
		if m, ok := parseCFPush(line); ok {
			l.deliver(w, m, now)
			continue
		}
		if len(line) == 2 && line[0] == '{' && line[1] == '}' {
			// The server's ping: the client answers {} (connect said pong).
			l.stats.pings.Add(1)
			l.sendText(w, line)
			continue
		}
		id, isErr, ok := cfReplyID(line)
		if !ok {
			continue
		}
		if isErr {
			l.stats.errors.Add(1)
			if w.state == stSubscribing {
				l.fail(w, "centrifugo: error reply "+string(line))
			}
			continue
		}
		if w.state != stSubscribing {
			continue
		}
		switch {
		case id == 1 && len(w.subs) == 0:
			l.becomeReady(w, now)
		case id == 1:
			l.cfSubscribe(w)
		case id >= 2 && id < int64(len(w.subs))+2:
			if w.owed--; w.owed == 0 {
				l.stats.subscribed.Add(1)
				l.becomeReady(w, now)
			}
		}
	}
}

// sseEvents handles every complete event at the start of an event stream's
// data and returns the bytes used.
func (l *loop) sseEvents(w *wconn, data []byte, now int64) int {
	used := 0
	for w.fd >= 0 {
		end := bytes.Index(data[used:], []byte("\n\n"))
		if end < 0 {
			return used
		}
		e := parseSSEEvent(data[used : used+end])
		used += end + 2
		switch {
		case e.name == nil && e.data == nil:
			switch {
			case bytes.Equal(e.comment, []byte("subscribed")) && w.state == stSubscribing:
				l.stats.subscribed.Add(1)
				l.becomeReady(w, now)
			case bytes.Equal(e.comment, []byte("ping")):
				l.stats.pings.Add(1)
			}
		case bytes.Equal(e.name, []byte("kpush-close")):
			code := 1005
			if v, ok := intAfter(e.data, []byte(`"code":`)); ok {
				code = int(v)
			}
			l.reasonMu.Lock()
			l.closeCodes[code]++
			l.reasonMu.Unlock()
			l.stats.closed.Add(1)
			l.closeConn(w)
		case bytes.Equal(e.name, []byte("kpush-error")):
			l.stats.errors.Add(1)
			if w.state == stSubscribing {
				l.fail(w, "sse: kpush-error "+string(e.data))
			}
		case bytes.Equal(e.name, []byte("kpush-resume")):
		case e.name != nil:
			m := msgFrame{ch: e.name, offset: -1}
			m.seq, m.sentNanos = parseValue(e.data)
			l.deliver(w, m, now)
		}
	}
	return used
}

func (l *loop) mask() [4]byte {
	// xorshift64: masks need not be secret here, only present.
	l.rng ^= l.rng << 13
	l.rng ^= l.rng >> 7
	l.rng ^= l.rng << 17
	return [4]byte{byte(l.rng), byte(l.rng >> 8), byte(l.rng >> 16), byte(l.rng >> 24)}
}

func (l *loop) becomeReady(w *wconn, now int64) {
	w.state = stReady
	l.inflight--
	l.stats.inFlight.Store(int64(l.inflight))
	l.stats.ready.Add(1)
	if now > l.stats.lastReady.Load() {
		l.stats.lastReady.Store(now)
	}
}

// frames handles every complete frame at the start of data and returns the
// bytes used.
func (l *loop) frames(w *wconn, data []byte, now int64) int {
	used := 0
	for {
		op, hdr, n, err := wire.ParseServerHeader(data[used:])
		if err != nil {
			l.fail(w, "frame: "+err.Error())
			return used
		}
		if hdr == 0 || len(data)-used < hdr+n {
			return used
		}
		payload := data[used+hdr : used+hdr+n]
		compressed := data[used]&0x40 != 0
		used += hdr + n
		if compressed && op == ws.OpText {
			p, err := l.inflate(payload)
			if err != nil {
				l.fail(w, "frame: inflate: "+err.Error())
				return used
			}
			payload = p
		}
		switch op {
		case ws.OpText:
			if l.p.proto == protoCF {
				l.cfText(w, payload, now)
			} else {
				l.text(w, payload, now)
			}
		case ws.OpPing:
			l.stats.pings.Add(1)
			l.frameBuf = wire.AppendClientFrame(l.frameBuf[:0], ws.OpPong, payload, l.mask())
			if !l.write(w, l.frameBuf) {
				return used
			}
		case ws.OpClose:
			code := 1005
			if len(payload) >= 2 {
				code = int(payload[0])<<8 | int(payload[1])
			}
			l.reasonMu.Lock()
			l.closeCodes[code]++
			l.reasonMu.Unlock()
			l.stats.closed.Add(1)
			l.closeConn(w)
			return used
		}
		if w.fd < 0 {
			return used
		}
	}
}

// deflateEnd completes a permessage-deflate payload as a DEFLATE stream:
// the empty stored block the sender stripped (RFC 7692 §7.2.2), then a
// final empty stored block, so the reader ends with io.EOF.
var deflateEnd = []byte{0x00, 0x00, 0xff, 0xff, 0x01, 0x00, 0x00, 0xff, 0xff}

// inflate returns a compressed message's payload (permessage-deflate, no
// context takeover: each message on its own), valid until the next call.
// It allocates nothing once warm.
func (l *loop) inflate(p []byte) ([]byte, error) {
	l.zin = append(append(l.zin[:0], p...), deflateEnd...)
	l.zsrc.Reset(l.zin)
	if l.inflater == nil {
		l.inflater = flate.NewReader(&l.zsrc)
	} else if err := l.inflater.(flate.Resetter).Reset(&l.zsrc, nil); err != nil {
		return nil, err
	}
	l.zbuf.Reset()
	if _, err := l.zbuf.ReadFrom(l.inflater); err != nil {
		return nil, err
	}
	return l.zbuf.Bytes(), nil
}

func (l *loop) text(w *wconn, p []byte, now int64) {
	if m, ok := parseMsg(p); ok {
		l.deliver(w, m, now)
		return
	}
	op, id, ok := replyID(p)
	if !ok {
		return
	}
	switch op {
	case "ok":
		if w.state == stSubscribing && id == w.reqID {
			l.stats.subscribed.Add(1)
			l.becomeReady(w, now)
		}
	case "error":
		l.stats.errors.Add(1)
		if w.state == stSubscribing && id == w.reqID {
			l.fail(w, "subscribe: error reply "+string(p))
		}
	}
}

// deliver counts and checks one record received by w, in any protocol.
// An offset of -1 means the protocol does not carry it (event streams):
// duplicates are then told by "seq".
func (l *loop) deliver(w *wconn, m msgFrame, now int64) {
	l.stats.deliveries.Add(1)
	if m.skipped > 0 {
		l.stats.skipped.Add(m.skipped)
	}
	switch {
	case m.sentNanos > 0:
		l.latency.Record(now - m.sentNanos)
	case m.tsMillis > 0:
		l.latency.Record(now - m.tsMillis*int64(time.Millisecond))
	}
	if m.snapshot {
		l.stats.snapshots.Add(1)
	}
	ch, known := l.p.chanIndex[string(m.ch)]
	var s *subState
	if known {
		for i := range w.subs {
			if w.subs[i].ch == ch {
				s = &w.subs[i]
				break
			}
		}
	}
	if s == nil {
		l.stats.unknown.Add(1)
		return
	}
	if sent := l.p.cfg.Sent; sent != nil && m.seq > 0 && (!s.seen || m.seq > s.seq) {
		// Every record since the last one this connection saw of the
		// channel is now superseded at the client (the first frame
		// after subscribing stands for itself only).
		from := m.seq
		if s.seen && s.seq >= 0 {
			from = max(s.seq+1, m.seq-maxSuperseded)
		}
		for q := from; q <= m.seq; q++ {
			if t := sent.At(ch, q); t > 0 {
				l.newest.Record(now - t)
			}
		}
	}
	if s.seen {
		if m.offset >= 0 && m.partition == s.part && m.offset <= s.offset || m.offset < 0 && m.seq >= 0 && m.seq <= s.seq {
			l.stats.dups.Add(1)
		} else if m.seq >= 0 && s.seq >= 0 && m.seq > s.seq+1+m.skipped {
			l.stats.gaps.Add(m.seq - s.seq - 1 - m.skipped)
		}
	}
	s.seen, s.part, s.offset, s.seq = true, m.partition, m.offset, m.seq
}

// maxSuperseded bounds the records one frame is counted as superseding in
// the newest-value latency (a connection that missed more, e.g. after a
// reconnect, counts only the latest ones).
const maxSuperseded = 100000

// expire fails connections that have not become ready in time.
func (l *loop) expire(now int64) {
	for _, w := range l.all {
		if w.fd >= 0 && w.state != stReady && now-w.started > l.timeout {
			l.fail(w, "timeout in state "+stateName(w.state))
		}
	}
}

func stateName(s connState) string {
	switch s {
	case stConnecting:
		return "connecting"
	case stUpgrading:
		return "upgrading"
	case stSubscribing:
		return "subscribing"
	}
	return "other"
}

// fail counts a connection that did not get ready, and closes it.
func (l *loop) fail(w *wconn, reason string) {
	if len(reason) > 120 {
		reason = reason[:120]
	}
	l.reasonMu.Lock()
	l.failures[reason]++
	l.reasonMu.Unlock()
	l.stats.failed.Add(1)
	if w != nil {
		l.closeConn(w)
	}
}

// lose counts a connection that ended without a close frame.
func (l *loop) lose(w *wconn) {
	l.stats.lost.Add(1)
	l.closeConn(w)
}

// closeConn resets the connection and updates the gauges.
func (l *loop) closeConn(w *wconn) {
	if w.fd < 0 {
		return
	}
	fd := int(w.fd)
	// SO_LINGER 0: close sends a reset and leaves no TIME_WAIT behind.
	_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	unix.Close(fd)
	l.byFD[fd] = nil
	w.fd = -1
	switch w.state {
	case stReady:
		l.stats.ready.Add(-1)
		l.stats.open.Add(-1)
	case stSubscribing:
		l.stats.open.Add(-1)
		l.inflight--
	case stConnecting, stUpgrading:
		l.inflight--
	}
	l.stats.inFlight.Store(int64(l.inflight))
	w.state = stIdle
	w.in, w.out = nil, nil
}

func (l *loop) closeAll() {
	for _, w := range l.all {
		l.closeConn(w)
	}
	l.queue = nil
	l.stats.queued.Store(0)
}
