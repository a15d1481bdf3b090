package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsflate"
	"github.com/kpush/kpush/gateway/internal/netpoll"
	"github.com/kpush/kpush/gateway/wire"
	"github.com/kpush/kpush/router"
	"github.com/prometheus/client_golang/prometheus"
)

// netState is the transport's half of the Server (server.go has the
// sessions' half): the listener and its handshakes, the pollers, the
// registry of connections, the worker queue and the timer wheel.
type netState struct {
	conns       *netpoll.Registry[conn]
	work        *netpoll.WorkQueue[conn]
	readPoller  *netpoll.Poller
	writePoller *netpoll.Poller
	timers      *timerWheel[conn] // deadlines under 100 ms: capped channels, write_delay (conn.onTimer)

	httpHandler http.Handler
	httpConns   chan net.Conn

	mu       sync.Mutex   // guards ln, running
	ln       net.Listener // nil until Run listens
	running  bool
	ready    chan struct{} // closed once listening
	stop     chan struct{} // closed by Shutdown: stops accepting
	stopOnce sync.Once
	drained  chan struct{} // closed when Shutdown has closed every connection
	done     chan struct{} // closed when Run returns

	handshakes chan struct{}         // semaphore bounding handshakes in progress
	hsShare    *handshakeShare       // handshakes in progress per client address
	sys        netpoll.Sys           // epoll and dup; replaced by tests to inject faults
	fatal      chan error            // a poller failed: Serve must end (capacity 2)
	fatalErr   atomic.Pointer[error] // the first such failure, for Err
	addrs      clientAddrs           // trusted proxies (clientaddr_linux.go)
}

// New returns a Server. It does not listen until Run.
func New(cfg Config, rt *router.Router, reg prometheus.Registerer, log *slog.Logger) (*Server, error) {
	return newServer(cfg, rt, reg, log, netpoll.RealSys{})
}

// newServer is New with the system calls on kpush's own descriptors made
// through sys (tests inject faults with it).
func newServer(cfg Config, rt *router.Router, reg prometheus.Registerer, log *slog.Logger, sys netpoll.Sys) (*Server, error) {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	s, err := newCore(cfg, rt, reg, log)
	if err != nil {
		return nil, err
	}
	if s.cfg.Workers == 0 {
		s.cfg.Workers = 2 * runtime.GOMAXPROCS(0)
	}
	s.netState = netState{
		conns:      netpoll.NewRegistry[conn](),
		work:       netpoll.NewWorkQueue[conn](),
		httpConns:  make(chan net.Conn),
		ready:      make(chan struct{}),
		stop:       make(chan struct{}),
		drained:    make(chan struct{}),
		done:       make(chan struct{}),
		handshakes: make(chan struct{}, s.cfg.MaxHandshakes),
		hsShare:    newHandshakeShare(s.cfg.MaxHandshakes),
		sys:        sys,
		fatal:      make(chan error, 2),
		timers:     newTimerWheel[conn](),
	}
	if err := s.initClientAddrs(reg); err != nil {
		return nil, err
	}
	if s.readPoller, err = netpoll.NewPoller(syscall.EPOLLIN|syscall.EPOLLRDHUP, s.sys); err != nil {
		return nil, err
	}
	if s.writePoller, err = netpoll.NewPoller(syscall.EPOLLOUT, s.sys); err != nil {
		s.readPoller.Release()
		return nil, err
	}
	return s, nil
}

// HandleHTTP sets the handler for plain HTTP requests on the WebSocket port
// (any path other than gateway.path), such as the demo page. Call before Run.
func (s *Server) HandleHTTP(h http.Handler) { s.httpHandler = h }

// Ready is closed once the server listens.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addr returns the listening address, or nil before Run listens.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Connections returns the number of open connections.
func (s *Server) Connections() int { return s.conns.Count() }

// Run listens on cfg.Listen and serves until ctx is cancelled or Shutdown
// completes. Cancelling ctx closes every connection at once; Shutdown drains
// them gracefully first.
func (s *Server) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("gateway: listen on %s: %w", s.cfg.Listen, err)
	}
	return s.Serve(ctx, ln)
}

// Serve is Run on an existing listener, which it closes when done.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	if s.running {
		s.mu.Unlock()
		return errors.New("gateway: Run called twice")
	}
	s.running = true
	s.ln = ln
	s.mu.Unlock()
	defer close(s.done)
	close(s.ready)
	s.log.Info("gateway listening", "addr", ln.Addr().String(), "path", s.cfg.Path)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	goTracked := func(f func()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f()
		}()
	}

	for i := 0; i < s.cfg.Workers; i++ {
		goTracked(func() { s.runWorker() })
	}
	goTracked(func() { s.pollerDone("read", s.readPoller.Wait(s.dispatchReadable)) })
	goTracked(func() { s.pollerDone("write", s.writePoller.Wait(s.dispatchWritable)) })
	goTracked(func() { s.runTicker(ctx) })
	goTracked(func() { s.timers.run(ctx, (*conn).onTimer) })
	if s.certs != nil {
		goTracked(func() { s.certs.run(ctx) })
	}
	if s.verifier != nil {
		goTracked(func() { s.verifier.Run(ctx) })
	}
	for i := 0; i < s.cfg.ResumeConcurrency; i++ {
		goTracked(func() { s.runResumes(ctx) })
	}
	httpSrv := &http.Server{
		Handler:           s.fallbackHandler(),
		ReadHeaderTimeout: s.cfg.HandshakeTimeout,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	hl := &chanListener{conns: s.httpConns, done: s.stop, addr: ln.Addr()}
	goTracked(func() { _ = httpSrv.Serve(hl) })

	var hsWG sync.WaitGroup
	acceptErr := make(chan error, 1)
	goTracked(func() { acceptErr <- s.acceptLoop(ln, &hsWG) })

	var fatal error
	select {
	case <-ctx.Done():
	case <-s.drained:
	case fatal = <-s.fatal:
		// No socket of that poller is served any more: stop, and let
		// the process exit so that it is restarted.
	}
	s.stopAccepting()
	err := errors.Join(fatal, <-acceptErr)
	hsWG.Wait()
	// Shutdown has drained what it could; what remains is closed now.
	s.closeAll(ws.StatusGoingAway, "server shutting down")
	s.waitConns(ctx, 2*time.Second)
	_ = httpSrv.Close()
	s.work.Close()
	s.readPoller.Close()
	s.writePoller.Close()
	cancel()
	wg.Wait()
	s.forceCloseAll()
	s.readPoller.Release()
	s.writePoller.Release()
	return err
}

// pollerDone handles the end of a poller's wait loop. An error is fatal:
// the poller's descriptors would never be served again, so Err reports it
// at once (/healthz fails) and Serve returns it.
func (s *Server) pollerDone(which string, err error) {
	if err == nil {
		return
	}
	err = fmt.Errorf("gateway: %s poller failed: %w", which, err)
	s.fatalErr.CompareAndSwap(nil, &err)
	s.log.Error("gateway cannot serve connections any more; stopping", "err", err)
	s.fatal <- err // capacity 2: one per poller
}

// Err returns nil while the server can serve its connections, and the
// failure that stopped it (epoll failed) otherwise. Health checks use it.
func (s *Server) Err() error {
	if p := s.fatalErr.Load(); p != nil {
		return *p
	}
	return nil
}

func (s *Server) stopAccepting() {
	s.stopOnce.Do(func() { close(s.stop) })
	s.mu.Lock()
	if s.ln != nil {
		_ = s.ln.Close()
	}
	s.mu.Unlock()
}

func (s *Server) acceptLoop(ln net.Listener, hsWG *sync.WaitGroup) error {
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			select {
			case <-s.stop:
				return nil
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// Out of descriptors or a transient error: back off
				// instead of spinning, as net/http does.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("gateway accept failed; retrying", "err", err, "backoff", backoff.String())
				select {
				case <-time.After(backoff):
				case <-s.stop:
					return nil
				}
				continue
			}
			return fmt.Errorf("gateway: accept: %w", err)
		}
		backoff = 0
		// The per-address share is checked before a slot is waited for, so
		// silent sockets from one address cannot hold every slot.
		ip := remoteIP(c)
		if !s.hsShare.acquire(ip) {
			c.Close()
			s.metrics.rejected.WithLabelValues("handshakes_per_ip").Inc()
			s.metrics.handshakes.WithLabelValues("rejected").Inc()
			continue
		}
		select {
		case s.handshakes <- struct{}{}:
		case <-s.stop:
			s.hsShare.release(ip)
			c.Close()
			return nil
		}
		hsWG.Add(1)
		go func() {
			defer hsWG.Done()
			defer func() {
				<-s.handshakes
				s.hsShare.release(ip)
			}()
			s.handshake(c)
		}()
	}
}

// worker holds the scratch memory one pool goroutine reuses for every
// connection it serves.
type worker struct {
	s     *Server
	rbuf  []byte
	iov   []syscall.Iovec
	batch []netpoll.Task[conn]
}

func (w *worker) observeLatency(tsMillis int64) {
	// The wall clock, not the 100ms coarse clock: this is once per write,
	// and the coarse clock would round every latency down by up to 100ms.
	d := time.Now().UnixMilli() - tsMillis
	if d < 0 {
		d = 0
	}
	w.s.metrics.latency.Observe(float64(d) / 1000)
}

// readBufferSize is the size of a worker's read buffer: at least 64 KiB, and
// room for one whole frame of the largest allowed payload (a client frame
// header is at most 14 bytes).
func readBufferSize(maxMessageBytes int) int { return max(64<<10, maxMessageBytes+14) }

func (s *Server) runWorker() {
	w := &worker{
		s:    s,
		rbuf: make([]byte, readBufferSize(s.lim().MaxMessageBytes)),
		iov:  make([]syscall.Iovec, 0, netpoll.MaxIovecs),
	}
	for {
		w.batch = s.work.PopBatch(w.batch, 32)
		if w.batch == nil {
			return
		}
		for i, t := range w.batch {
			switch t.Kind {
			case netpoll.Readable:
				t.C.onReadable(w)
			case netpoll.Flush:
				t.C.flush(w)
			case netpoll.Closing:
				t.C.dropSubscriptions(t.C)
			}
			w.batch[i] = netpoll.Task[conn]{}
		}
	}
}

func (s *Server) dispatchReadable(fd int, gen uint32) {
	if c := s.conns.Lookup(fd, gen); c != nil {
		s.work.Push(netpoll.Task[conn]{C: c, Kind: netpoll.Readable})
	}
}

func (s *Server) dispatchWritable(fd int, gen uint32) {
	if c := s.conns.Lookup(fd, gen); c != nil {
		c.onWritable()
	}
}

// runTicker advances the coarse clock and sweeps connections for pings,
// idle timeouts and stuck closes. One ticker serves every connection.
func (s *Server) runTicker(ctx context.Context) {
	const tick = 100 * time.Millisecond
	t := time.NewTicker(tick)
	defer t.Stop()
	ping := &router.Frame{Data: wire.ServerFrame(ws.OpPing, nil)}
	var n int64
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.clock.Store(now.UnixMilli())
			n++
			// Every second, or every tenth of a longer ping interval;
			// re-read each tick so a reloaded interval takes effect.
			sweepEvery := int64(max(time.Second, s.lim().PingInterval/10) / tick)
			if n%sweepEvery == 0 {
				s.sweep(now.UnixMilli(), ping)
				s.router.Trim(now) // history of channels that went quiet
			}
		}
	}
}

// sweepBatch is how many connections the sweep copies out of the registry
// per read-lock hold.
const sweepBatch = 256

// sweep pings, times out and cuts connections. It walks the registry in
// batches, holding its read lock only while copying one batch, and takes
// each connection's own lock with the registry lock released, so its cost
// for other goroutines does not grow with the number of connections.
func (s *Server) sweep(now int64, ping *router.Frame) {
	lim := s.lim()
	idle := lim.IdleTimeout.Milliseconds()
	interval := lim.PingInterval.Milliseconds()
	batch := make([]*conn, 0, sweepBatch)
	var toIdle, toCut, toExpire []*conn
	for next := 0; next >= 0; {
		batch, next = s.conns.Batch(next, batch)
		for _, c := range batch {
			if exp := c.sec.expiresAt.Load(); exp != 0 && now > exp {
				toExpire = append(toExpire, c)
			}
			pingNow := false
			if now-c.lastSeen.Load() > idle {
				toIdle = append(toIdle, c)
			} else if now >= c.pingDue.Load() {
				c.pingDue.Store(now + interval)
				pingNow = true
			}
			c.mu.Lock()
			if c.flags&flagClosing != 0 && c.flags&flagClosed == 0 && now > c.closeAt {
				toCut = append(toCut, c)
			}
			if c.flags&flagRecent == 0 && len(c.out.frames) == 0 && cap(c.out.frames) > 0 {
				c.out.frames = nil // idle: give the queue's memory back
			}
			c.flags &^= flagRecent
			// A connection whose queue is full gets no ping: it is
			// behind already, and the idle timeout covers it.
			if pingNow && c.flags&(flagClosing|flagClosed) == 0 && c.out.fits(c.bounds(), 1, len(ping.Data)) {
				c.out.add(ping)
				c.scheduleLocked()
			}
			c.mu.Unlock()
		}
		clear(batch)
		for _, c := range toIdle {
			c.closeWith(ws.StatusNormalClosure, "idle timeout", true)
		}
		for _, c := range toCut {
			c.abort()
		}
		for _, c := range toExpire {
			c.closeWith(c.tokenExpiredCode(), "token expired", true)
		}
		clear(toIdle)
		clear(toCut)
		clear(toExpire)
		toIdle, toCut, toExpire = toIdle[:0], toCut[:0], toExpire[:0]
	}
}

// handshake upgrades one accepted connection or serves it as plain HTTP.
// With TLS on, the TLS handshake comes first and both the upgrade and plain
// HTTP run over it.
func (s *Server) handshake(nc net.Conn) {
	raw := nc // the TCP connection, detached after the upgrade
	deadline := time.Now().Add(s.cfg.HandshakeTimeout)
	_ = raw.SetDeadline(deadline)
	client, ok := s.clientFrom(raw) // reads a PROXY header, before TLS
	if !ok {
		raw.Close()
		return
	}
	var link *netpoll.TLSLink
	var tc *tls.Conn
	if s.tlsConfig != nil {
		var err error
		if tc, link, err = s.startTLS(raw); err != nil {
			s.handshakeFailed(err)
			raw.Close()
			return
		}
		nc = tc
	}
	pc, isWS, err := peekRequest(nc, s.cfg.Path)
	cf := err == nil && !isWS && s.centrifugoRequested(pc)
	isWS = isWS || cf
	hs := s.metrics.handshakesOf(cf)
	if errors.Is(err, errRequestLine) {
		s.rejectAs(hs, nc, http.StatusRequestHeaderFieldsTooLarge, "header_too_large", "request line longer than 4 KiB")
		return
	}
	if err != nil {
		s.handshakeFailedAs(hs, err)
		nc.Close()
		return
	}
	if !isWS && s.sseRequested(pc) {
		s.serveSSE(nc, raw, pc, client, link, tc, deadline)
		return
	}
	if !isWS {
		select {
		case s.httpConns <- s.carryHTTP(pc, raw, link, tc, client):
		case <-s.stop:
			nc.Close()
		}
		return
	}
	lim := s.lim()
	// The whole request head is read before the upgrader sees it, so that
	// bytes the client sent right behind it (its first frames, sent
	// without waiting for the 101) are kept for the connection.
	head, rest, err := readHead(pc, lim.MaxHeaderBytes)
	pc.release()
	if errors.Is(err, errHeaderTooLarge) {
		s.rejectAs(hs, nc, http.StatusRequestHeaderFieldsTooLarge, "header_too_large", "request headers too large")
		return
	}
	if err != nil {
		s.handshakeFailedAs(hs, err)
		nc.Close()
		return
	}
	if s.draining.Load() {
		s.rejectAs(hs, nc, http.StatusServiceUnavailable, "draining", "server is shutting down")
		return
	}
	// Refuse early when full; the slot itself is taken just before the 101
	// answer (reserveSlot), once every other check has passed.
	if s.slots.Load() >= int64(lim.MaxConnections) {
		s.rejectAs(hs, nc, http.StatusServiceUnavailable, "max_connections", "connection limit reached")
		return
	}
	ua := upgradeAuth{deadline: deadline, client: client, cf: cf}
	defer func() {
		if ua.slot { // still ours: the conn never took it over
			s.slots.Add(-1)
		}
	}()
	defer client.release(s.perIP) // unless the conn took the slot over
	ua.headErr = checkHead(head)
	up := s.upgrader(&ua)
	var ext wsflate.Extension
	if s.cfg.Compression {
		ext.Parameters = deflateParams
		up.Negotiate = ext.Negotiate
	}
	_, err = up.Upgrade(headConn{r: bytes.NewReader(head), w: nc})
	if err != nil {
		var rej *ws.ConnectionRejectedError
		if errors.As(err, &rej) {
			// The upgrader has written the refusal.
			hs.WithLabelValues("rejected").Inc()
			lingerClose(nc)
		} else {
			s.handshakeFailedAs(hs, err)
			nc.Close()
		}
		return
	}
	_ = raw.SetDeadline(time.Time{})
	fd, err := netpoll.Detach(s.sys, raw)
	if err != nil {
		hs.WithLabelValues("failed").Inc()
		s.log.Warn("gateway could not take over an upgraded socket; closing it", "err", err)
		raw.Close() // the client saw its 101: it must not wait on a socket nobody serves
		return
	}
	now := s.clock.Load()
	c := &conn{session: session{srv: s, ip: client.ip}, fd: int32(fd), gen: s.conns.NextGen()}
	if _, ok := ext.Accepted(); ok {
		c.out.deflate = true
		if !cf { // Centrifugo re-encodes every frame: it never writes the shared form
			c.out.zshared = true
			s.deflateConns.Add(1) // until releaseIfIdleLocked
		}
	}
	if len(rest) > 0 {
		c.rd = &readState{partial: append([]byte(nil), rest...)} // frames sent with the request
	}
	if link != nil {
		link.Detach(fd)
		c.setTLS(&tlsState{tc: tc, link: link})
	}
	if s.verifier != nil {
		c.setGrant(ua.grant)
	}
	if cf {
		c.ext().cf = &cfSession{proto: ua.cfProto}
		s.metrics.cfConns.Add(1)
	}
	c.lastSeen.Store(now)
	// Spread first pings over the interval so they don't arrive in waves.
	c.pingDue.Store(now + rand.Int64N(lim.PingInterval.Milliseconds()+1))
	client.held, ua.slot = false, false // released with the descriptor (releaseIfIdleLocked)
	s.conns.Add(fd, c.gen, c)
	if err := s.readPoller.Add(fd, c.gen); err != nil {
		c.mu.Lock()
		c.flags |= flagClosed | flagClosing
		c.releaseIfIdleLocked()
		c.mu.Unlock()
		hs.WithLabelValues("failed").Inc()
		s.log.Warn("gateway could not watch a connection", "err", err)
		return
	}
	hs.WithLabelValues("ok").Inc()
	if c.tlsLink() != nil || len(rest) > 0 {
		// Frames that arrived with the upgrade request are held in
		// c.rd.partial, and crypto/tls may hold more records; epoll would
		// report neither.
		s.work.Push(netpoll.Task[conn]{C: c, Kind: netpoll.Readable})
	}
	// A drain that began during this handshake must not miss the new conn.
	if s.draining.Load() {
		c.closeWith(ws.StatusGoingAway, "server shutting down", false)
	}
}

// reject answers a handshake with an HTTP error and closes the connection
// (lingerClose, so the client gets to read the answer).
func (s *Server) reject(c net.Conn, status int, reason, msg string) {
	s.rejectAs(s.metrics.handshakes, c, status, reason, msg)
}

// rejectAs is reject counting the handshake in hs (a protocol's
// kpush_handshakes_total).
func (s *Server) rejectAs(hs *prometheus.CounterVec, c net.Conn, status int, reason, msg string) {
	s.metrics.rejected.WithLabelValues(reason).Inc()
	hs.WithLabelValues("rejected").Inc()
	_, _ = fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		status, http.StatusText(status), len(msg), msg)
	lingerClose(c)
}

func (s *Server) originAllowed(origin string) bool {
	for _, o := range s.lim().AllowedOrigins {
		if o == "*" || asciiEqualFoldString(o, origin) {
			return true
		}
	}
	return false
}

// Shutdown drains the gateway: it stops accepting, then closes every
// connection with 1001 (going away), spread evenly over drain_timeout so the
// clients do not all reconnect at once. It returns when every connection is
// closed or ctx ends. Safe to call more than once.
func (s *Server) Shutdown(ctx context.Context) error {
	if !s.draining.CompareAndSwap(false, true) {
		select {
		case <-s.drained:
		case <-ctx.Done():
		}
		return nil
	}
	defer close(s.drained)
	s.stopAccepting()
	conns := s.conns.Snapshot()
	rand.Shuffle(len(conns), func(i, j int) { conns[i], conns[j] = conns[j], conns[i] })
	s.log.Info("gateway draining", "connections", len(conns), "window", s.cfg.DrainTimeout.String())
	start := time.Now()
	window := s.cfg.DrainTimeout
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < window {
		window = time.Until(dl) * 9 / 10
	}
	for i, c := range conns {
		// Connection i closes at i/N of the window.
		at := start.Add(time.Duration(int64(window) * int64(i) / int64(len(conns))))
		if d := time.Until(at); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
				s.closeAll(ws.StatusGoingAway, "server shutting down")
				return ctx.Err()
			}
		}
		c.closeWith(ws.StatusGoingAway, "server shutting down", false)
	}
	s.waitConns(ctx, closeGraceMS*time.Millisecond+time.Second)
	s.log.Info("gateway drained", "took", time.Since(start).Round(time.Millisecond).String(), "left", s.conns.Count())
	return ctx.Err()
}

func (s *Server) closeAll(code ws.StatusCode, reason string) {
	for _, c := range s.conns.Snapshot() {
		c.closeWith(code, reason, false)
	}
}

// waitConns waits until no connection is left, ctx ends or d passes.
func (s *Server) waitConns(ctx context.Context, d time.Duration) {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for s.conns.Count() > 0 {
		select {
		case <-t.C:
		case <-deadline.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// forceCloseAll releases whatever is left once the workers have stopped.
func (s *Server) forceCloseAll() {
	for _, c := range s.conns.Snapshot() {
		c.mu.Lock()
		c.flags = c.flags&^(flagReading|flagFlushing|flagWaitOut) | flagClosed | flagClosing
		subs := c.subs
		c.subs = nil
		c.releaseIfIdleLocked()
		c.mu.Unlock()
		if len(subs) > 0 {
			s.router.Unsubscribe(c, subs...)
		}
	}
}

// fallbackHandler serves plain HTTP on the WebSocket port.
func (s *Server) fallbackHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == s.cfg.SSEPath && s.cfg.SSEPath != sseOff {
			s.serveSSEHTTP(w, r) // an event stream after other requests
			return
		}
		if r.URL.Path == s.cfg.Path {
			// A request for the WebSocket path on a kept-alive HTTP
			// connection: the upgrade is only taken as the first request
			// of a connection, which is what browsers send.
			w.Header().Set("Connection", "close")
			http.Error(w, "WebSocket upgrade must be the first request on its connection", http.StatusBadRequest)
			return
		}
		if s.httpHandler != nil {
			s.httpHandler.ServeHTTP(w, r)
			return
		}
		http.NotFound(w, r)
	})
}
