package gateway

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gobwas/ws"
	"github.com/kpush/kpush/gateway/auth"
	"github.com/kpush/kpush/gateway/internal/netpoll"
	"github.com/kpush/kpush/gateway/wire"
	"github.com/kpush/kpush/router"
)

// sseRequested reports whether the peeked request line asks for the event
// stream path (the bytes stay buffered in pc).
func (s *Server) sseRequested(pc *peekedConn) bool {
	if s.cfg.SSEPath == sseOff {
		return false
	}
	b, _ := pc.r.Peek(pc.r.Buffered())
	line := b
	if i := bytes.IndexByte(line, '\n'); i >= 0 {
		line = line[:i]
	}
	sp := bytes.IndexByte(line, ' ')
	if sp < 0 {
		return false
	}
	uri := line[sp+1:]
	if i := bytes.IndexByte(uri, ' '); i >= 0 {
		uri = uri[:i]
	}
	if i := bytes.IndexByte(uri, '?'); i >= 0 {
		uri = uri[:i]
	}
	return string(uri) == s.cfg.SSEPath
}

// sseRefusal is an HTTP answer to an event stream request that is refused.
type sseRefusal struct {
	status int
	reason string // kpush_rejected_total's reason; "" counts nothing there
	msg    string
	header string // extra header lines, each ending in \r\n
}

func (r *sseRefusal) Error() string { return r.msg }

// sseRequest is what an event stream request asks for, checked.
type sseRequest struct {
	sub    *Request // the subscribe it amounts to (since from Last-Event-ID)
	origin string   // Origin, if any: echoed for CORS
	badID  error    // the Last-Event-ID given could not be used
}

// serveSSE serves an event stream request that is the first request of its
// connection, on the handshake goroutine. A browser may also send it on a
// kept-alive connection after other requests (the page itself): net/http
// then hands it to serveSSEHTTP, which takes the connection over and joins
// here at startSSE.
func (s *Server) serveSSE(nc, raw net.Conn, pc *peekedConn, client *clientAddr, link *netpoll.TLSLink, tc *tls.Conn, deadline time.Time) {
	lim := s.lim()
	head, _, err := readHead(pc, lim.MaxHeaderBytes)
	pc.release()
	if errors.Is(err, errHeaderTooLarge) {
		s.sseReject(nc, &sseRefusal{status: http.StatusRequestHeaderFieldsTooLarge, reason: "header_too_large", msg: "request headers too large"})
		return
	}
	if err != nil {
		s.sseHandshake("failed")
		nc.Close()
		return
	}
	if err := checkHead(head); err != nil {
		s.sseReject(nc, &sseRefusal{status: http.StatusBadRequest, msg: err.Error()})
		return
	}
	hr, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
	if err != nil {
		s.sseReject(nc, &sseRefusal{status: http.StatusBadRequest, msg: "malformed request: " + err.Error()})
		return
	}
	s.startSSE(nc, raw, hr, client, link, tc, deadline)
}

// httpCarrier is a connection handed to net/http, with what an event
// stream request on it needs to take it over (serveSSEHTTP).
type httpCarrier struct {
	*peekedConn
	raw    net.Conn
	link   *netpoll.TLSLink
	tc     *tls.Conn
	client *clientAddr
}

// carryHTTP wraps a connection handed to net/http so that an event stream
// request on it can take it over.
func (s *Server) carryHTTP(pc *peekedConn, raw net.Conn, link *netpoll.TLSLink, tc *tls.Conn, client *clientAddr) net.Conn {
	if s.cfg.SSEPath == sseOff {
		return pc
	}
	return &httpCarrier{peekedConn: pc, raw: raw, link: link, tc: tc, client: client}
}

// serveSSEHTTP takes over a kept-alive HTTP connection whose next request
// asks for an event stream.
func (s *Server) serveSSEHTTP(w http.ResponseWriter, r *http.Request) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "event streams need HTTP/1.1", http.StatusHTTPVersionNotSupported)
		return
	}
	nc, _, err := hj.Hijack()
	if err != nil {
		s.sseHandshake("failed")
		return
	}
	hc, ok := nc.(*httpCarrier)
	if !ok {
		s.sseReject(nc, &sseRefusal{status: http.StatusInternalServerError, msg: "connection cannot be taken over"})
		return
	}
	client := *hc.client // a fresh admission for this request
	client.held, client.ip = false, ""
	_ = hc.raw.SetDeadline(time.Time{})
	deadline := time.Now().Add(s.cfg.HandshakeTimeout)
	_ = hc.raw.SetDeadline(deadline)
	s.startSSE(nc, hc.raw, r, &client, hc.link, hc.tc, deadline)
}

// startSSE checks a parsed event stream request as an upgrade is checked
// (draining, max_connections, the address's share, the token, the grants);
// then the response head is written and the socket is detached into epoll
// like an upgraded WebSocket, and the stream's channels are subscribed as
// protocol v1 would (with since from Last-Event-ID, snapshots with
// ?snapshot=true).
func (s *Server) startSSE(nc, raw net.Conn, hr *http.Request, client *clientAddr, link *netpoll.TLSLink, tc *tls.Conn, deadline time.Time) {
	lim := s.lim()
	slot := false
	defer func() {
		if slot {
			s.slots.Add(-1)
		}
	}()
	defer client.release(s.perIP)
	req, grant, refusal := s.checkSSE(hr, client, deadline, &slot)
	if refusal != nil {
		s.sseReject(nc, refusal)
		return
	}
	var hdr strings.Builder
	hdr.WriteString("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\nX-Accel-Buffering: no\r\n")
	if req.origin != "" {
		hdr.WriteString("Access-Control-Allow-Origin: " + req.origin + "\r\nVary: Origin\r\n")
	}
	hdr.WriteString("\r\n: kpush event stream\nretry: " + strconv.Itoa(sseRetryMS) + "\n\n")
	_ = nc.SetWriteDeadline(deadline)
	if _, err := nc.Write([]byte(hdr.String())); err != nil {
		s.sseHandshake("failed")
		nc.Close()
		return
	}
	_ = raw.SetDeadline(time.Time{})
	fd, err := netpoll.Detach(s.sys, raw)
	if err != nil {
		s.sseHandshake("failed")
		s.log.Warn("gateway could not take over an event stream's socket; closing it", "err", err)
		raw.Close()
		return
	}
	// From here as handshake() does for an upgraded WebSocket.
	now := s.clock.Load()
	c := &conn{session: session{srv: s, ip: client.ip}, fd: int32(fd), gen: s.conns.NextGen(), alt: &altProto{sse: newSSEStream(req.sub.Channels)}}
	c.sseState().seed(req.sub.Since)
	if link != nil {
		link.Detach(fd)
		c.setTLS(&tlsState{tc: tc, link: link})
	}
	if s.verifier != nil {
		c.setGrant(grant)
	}
	c.lastSeen.Store(now)
	c.pingDue.Store(now + rand.Int64N(lim.PingInterval.Milliseconds()+1))
	client.held, slot = false, false // released with the descriptor
	s.conns.Add(fd, c.gen, c)
	s.metrics.sseConns.Add(1)
	if err := s.readPoller.Add(fd, c.gen); err != nil {
		c.mu.Lock()
		c.flags |= flagClosed | flagClosing
		c.releaseIfIdleLocked()
		c.mu.Unlock()
		s.sseHandshake("failed")
		s.log.Warn("gateway could not watch an event stream", "err", err)
		return
	}
	s.sseHandshake("ok")
	if c.tlsLink() != nil {
		s.work.Push(netpoll.Task[conn]{C: c, Kind: netpoll.Readable})
	}
	s.sseSubscribe(c, req.sub, req.badID != nil)
}

// checkSSE checks an event stream request as an upgrade is checked, and
// takes the address's share and a connection slot (*slot) when it passes.
func (s *Server) checkSSE(hr *http.Request, client *clientAddr, deadline time.Time, slot *bool) (*sseRequest, *auth.Grant, *sseRefusal) {
	if hr.Method != http.MethodGet {
		return nil, nil, &sseRefusal{status: http.StatusMethodNotAllowed, msg: "an event stream is requested with GET", header: "Allow: GET\r\n"}
	}
	if s.draining.Load() {
		return nil, nil, &sseRefusal{status: http.StatusServiceUnavailable, reason: "draining", msg: "server is shutting down"}
	}
	lim := s.lim()
	if s.slots.Load() >= int64(lim.MaxConnections) {
		return nil, nil, &sseRefusal{status: http.StatusServiceUnavailable, reason: "max_connections", msg: "connection limit reached"}
	}
	req := &sseRequest{origin: hr.Header.Get("Origin")}
	if req.origin != "" && !s.originAllowed(req.origin) {
		return nil, nil, &sseRefusal{status: http.StatusForbidden, reason: "origin", msg: "origin not allowed"}
	}
	q := hr.URL.Query()
	channels := q["channel"]
	if len(channels) == 0 {
		return nil, nil, &sseRefusal{status: http.StatusBadRequest, msg: "name at least one channel: ?channel=<name>"}
	}
	if most := min(sseMaxChannels, lim.MaxSubscriptions); len(channels) > most {
		return nil, nil, &sseRefusal{status: http.StatusBadRequest, reason: CodeTooManySubscriptions,
			msg: fmt.Sprintf("%d channels in one event stream, at most %d", len(channels), most)}
	}
	seen := make(map[string]bool, len(channels))
	for _, ch := range channels {
		if !router.ValidChannel(ch) {
			return nil, nil, &sseRefusal{status: http.StatusBadRequest, msg: fmt.Sprintf("channel %q must match ^[A-Za-z0-9_.:@/-]{1,200}$", truncate(ch, 64))}
		}
		if seen[ch] {
			return nil, nil, &sseRefusal{status: http.StatusBadRequest, msg: fmt.Sprintf("channel %q is named twice", ch)}
		}
		seen[ch] = true
	}
	req.sub = &Request{Op: "subscribe", Channels: channels, Snapshot: queryFlag(q.Get("snapshot"))}
	id := hr.Header.Get("Last-Event-ID")
	if id == "" {
		id = q.Get("lastEventId")
	}
	if id == "" {
		id = q.Get("last_event_id")
	}
	if id != "" {
		var err error
		if req.sub.Since, err = parseSSEID(id, channels); err != nil {
			req.badID = err
		}
	}
	for _, v := range hr.Header.Values("X-Forwarded-For") {
		client.forwarded([]byte(v))
	}
	if err := s.admitClient(client); err != nil {
		return nil, nil, &sseRefusal{status: http.StatusTooManyRequests, msg: "too many connections from this address"}
	}
	var grant *auth.Grant
	if s.verifier != nil {
		tok := ""
		if t, ok := bearerToken([]byte(hr.Header.Get("Authorization"))); ok {
			tok = t
		} else {
			tok = q.Get("token")
		}
		if tok != "" {
			ctx, cancel := context.WithDeadline(context.Background(), deadline)
			g, err := s.verifier.VerifyWait(ctx, tok)
			cancel()
			if err != nil {
				r := &sseRefusal{status: http.StatusUnauthorized, reason: "invalid_token", msg: "invalid token", header: "WWW-Authenticate: Bearer error=\"invalid_token\"\r\n"}
				if errors.Is(err, auth.ErrTokenExpired) {
					r.reason, r.msg = "token_expired", "token expired"
				}
				return nil, nil, r
			}
			grant = g
		}
		for _, ch := range channels {
			if s.isPublic(ch) || grant.Allows(ch) {
				continue
			}
			return nil, nil, &sseRefusal{status: http.StatusForbidden, reason: "forbidden", msg: fmt.Sprintf("channel %q is not granted to this client", ch)}
		}
	}
	if n := s.slots.Add(1); n > int64(lim.MaxConnections) {
		s.slots.Add(-1)
		return nil, nil, &sseRefusal{status: http.StatusServiceUnavailable, reason: "max_connections", msg: "connection limit reached"}
	}
	*slot = true
	return req, grant, nil
}

func queryFlag(v string) bool {
	b, err := strconv.ParseBool(v)
	return err == nil && b
}

// sseReject answers a refused event stream request and closes it.
func (s *Server) sseReject(c net.Conn, r *sseRefusal) {
	if r.reason != "" {
		s.metrics.rejected.WithLabelValues(r.reason).Inc()
	}
	s.sseHandshake("rejected")
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n%s\r\n%s",
		r.status, http.StatusText(r.status), len(r.msg), r.header, r.msg)
	lingerClose(c)
}

// sseHandshake counts an event stream request by result.
func (s *Server) sseHandshake(result string) {
	s.metrics.sseHandshakes.WithLabelValues(result).Inc()
}

// sseFrameLocked turns the queue's frame i (f) into its event stream form
// before it is written, once: the result replaces it in the queue, so a
// frame written in several parts is the same bytes each time. Positions
// advance in queue order, which is write order. Caller holds c.mu.
//
// A record's event is shared by every stream of its channel alone whose
// only position is in the record's partition (cfPushCache.sseEvent), as
// protocol v1's frame is. What is made per stream: the event of a stream
// of several channels (or of a channel of several partitions), whose id
// holds all of the stream's positions, and what the stream shows of its
// own replies, pings and close.
func (c *conn) sseFrameLocked(i int, f *router.Frame) *router.Frame {
	if len(f.Data) == 0 || f.Data[0] < 0x80 {
		return f // already in stream form (a WebSocket frame starts with FIN set)
	}
	st := c.sseState()
	var b []byte
	switch {
	case st.over:
		b = []byte(": dropped\n\n") // after the stream's close event
	case f.Channel != "" && f.Payload != nil:
		if st.sseShareable(f) {
			if nf := c.srv.cfPushes.sseEvent(f); nf != nil {
				st.advanceShared(f)
				c.out.bytes += len(nf.Data) - len(f.Data)
				c.out.frames[i] = nf
				return nf
			}
		}
		var ok bool
		if b, ok = st.sseRecord(f); !ok {
			b = c.sseOverflowLocked()
		}
	default:
		if op, _ := serverFramePayload(f.Data); op == ws.OpPing {
			// A heartbeat that reaches the socket shows the client is
			// reading: a stream's client never writes, so this is what
			// keeps it from the idle timeout.
			c.lastSeen.Store(c.srv.clock.Load())
		} else if op == ws.OpClose {
			st.over = true
		}
		b = sseControl(f.Data)
	}
	nf := sseFrame(f, b)
	c.out.bytes += len(b) - len(f.Data)
	c.out.frames[i] = nf
	return nf
}

// sseOverflowLocked ends a stream whose position no longer fits an id: it
// returns the kpush-close event that takes the place of the record, and
// marks the connection closing (later queued frames become comments; the
// socket is half-closed once they are written). Caller holds c.mu.
func (c *conn) sseOverflowLocked() []byte {
	c.sseState().over = true
	c.flags |= flagClosing
	for ch := range c.out.resume {
		c.out.dropResume(ch)
	}
	c.closeAt = c.srv.clock.Load() + closeGraceMS
	c.srv.metrics.closes.WithLabelValues("sse_id_too_long").Inc()
	if len(c.subs) > 0 {
		c.srv.work.Push(netpoll.Task[conn]{C: c, Kind: netpoll.Closing})
	}
	return sseControl(wire.CloseFrame(CloseSSEIDTooLong, fmt.Sprintf("stream position longer than %d bytes: use fewer channels per stream", sseMaxIDBytes)))
}

// sseDiscard reads what a stream's client sends and drops it: a stream
// takes no requests. It returns false at EOF or on a socket error.
func (c *conn) sseDiscard(w *worker) bool {
	for budget := 4; budget > 0; budget-- {
		n, err := c.read(w.rbuf)
		if err != nil {
			return netpoll.IsWouldBlock(err)
		}
		if n == 0 {
			return false
		}
		c.lastSeen.Store(c.srv.clock.Load())
	}
	return true
}
