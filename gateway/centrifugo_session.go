package gateway

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/gobwas/ws"
	"github.com/kpush/kpush/gateway/auth"
	"github.com/kpush/kpush/gateway/wire"
	"github.com/kpush/kpush/router"
)

// Centrifugo's client protocol as session logic: the same on every system,
// and driven in unit tests through a fake transport
// (centrifugo_session_test.go). It answers the commands (connect,
// subscribe with recover and delta, unsubscribe, refresh, ping, the ones
// kpush does not serve), keeps what a Centrifugo connection knows beyond
// protocol v1 (cfSession), and turns queued frames into Centrifugo's form
// when they are flushed (cfFrameLocked). A function takes the connection's
// transport (t) and its cfSession (cf) as parameters: the cfSession lives
// behind the transport's one pointer for protocols other than plain v1
// (altProto, conn_linux.go), so that an idle connection stays in its size
// class. Only the upgrade (centrifugoRequested) and the close code of an
// expired token stay in centrifugo_linux.go.

// cfSession is a Centrifugo connection's protocol state. Touched only by
// whoever answers the connection's requests (on Linux the worker reading
// it, one at a time by epoll's one-shot arming), except where noted.
type cfSession struct {
	client    string // the client id given in the connect reply
	connected bool
	proto     bool // Centrifugo's Protobuf format (binary frames), set at the upgrade
	// pending holds the recovering subscriptions whose reply is not
	// written yet, by channel (nil until the first); guarded by the
	// session's mu.
	pending map[string]*cfPending
	// delta holds the channels subscribed with delta: "fossil", each with
	// the last record sent on it (nil: none yet), the base of the next
	// delta; guarded by the session's mu.
	delta map[string]*router.Frame
	// pos holds the channels answered with a stream position, each with
	// the partition the position is of; stale the channels whose
	// publications wait for the SDK's resubscribe, each true when it was
	// told to because records of another partition came (see
	// cfFrameLocked), false after a 112 answer. Guarded by the session's mu.
	pos   map[string]int32
	stale map[string]bool
}

// markStaleLocked marks ch as waiting for the SDK's resubscribe: its
// publications are not sent, and the resubscribe replaces the
// subscription; mixed says that ch had records of several partitions, so
// that the resubscribe's recover is not exact. Caller holds c.mu.
func (cf *cfSession) markStaleLocked(ch string, mixed bool) {
	delete(cf.pos, ch)
	if cf.stale == nil {
		cf.stale = make(map[string]bool)
	}
	cf.stale[ch] = cf.stale[ch] || mixed
}

// setPosLocked notes that ch was answered with a position in partition p.
// Caller holds c.mu.
func (cf *cfSession) setPosLocked(ch string, p int32) {
	if cf.pos == nil {
		cf.pos = make(map[string]int32)
	}
	cf.pos[ch] = p
}

// handleCentrifugo answers the commands of one text frame (newline
// separated). It returns false once the connection is closing.
func (s *Server) handleCentrifugo(t transport, cf *cfSession, p []byte) bool {
	c := t.sess()
	for len(p) > 0 {
		line := p
		if i := bytes.IndexByte(p, '\n'); i >= 0 {
			line, p = p[:i], p[i+1:]
		} else {
			p = nil
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		if ok, alive := c.allowRequest(t, nil); !ok {
			if alive {
				cfSend(t, cf, cfError(0, 111, "too many requests"))
			}
			return alive
		}
		var cmd cfCommand
		if err := json.Unmarshal(line, &cmd); err != nil {
			s.metrics.clientErrors.WithLabelValues("centrifugo_bad_command").Inc()
			c.closeWith(t, cfCloseBadRequest, "bad request", true)
			return false
		}
		if !s.centrifugoCommand(t, cf, &cmd) {
			return false
		}
	}
	return true
}

// centrifugoCommand answers one command; false once the connection closes.
func (s *Server) centrifugoCommand(t transport, cf *cfSession, cmd *cfCommand) bool {
	c := t.sess()
	reply := func(b []byte) { cfSend(t, cf, b) }
	if cmd.Connect != nil {
		return s.cfConnect(t, cf, cmd.ID, cmd.Connect)
	}
	if !cf.connected {
		c.closeWith(t, cfCloseBadRequest, "connect first", true)
		return false
	}
	switch {
	case cmd.Subscribe != nil:
		s.cfSubscribe(t, cf, cmd.ID, cmd.Subscribe)
	case cmd.Unsubscribe != nil:
		s.unsubscribeQuiet(t, cf, cmd.Unsubscribe.Channel)
		reply(cfReply(cmd.ID, "unsubscribe", "{}"))
	case cmd.Refresh != nil:
		s.cfRefresh(t, cf, cmd.ID, cmd.Refresh.Token)
	case cmd.Publish != nil || cmd.Presence != nil || cmd.PresenceSt != nil || cmd.History != nil || cmd.RPC != nil || cmd.SubRefresh != nil:
		s.metrics.clientErrors.WithLabelValues("centrifugo_not_available").Inc()
		reply(cfError(cmd.ID, cfErrNotAvailable, "not available: kpush only delivers records"))
	case cmd.Send != nil:
		// An asynchronous message: no reply, nothing to do.
	case cmd.ID == 0:
		// {} is the client's pong; reading it counted as activity.
	case cmd.Ping != nil:
		reply(cfReply(cmd.ID, "ping", "{}"))
	default:
		reply(cfError(cmd.ID, cfErrMethodNotFound, "method not found"))
	}
	return true
}

// cfConnect checks the connect command's token with the auth settings (as
// an upgrade's token) and answers with the ping interval.
func (s *Server) cfConnect(t transport, cf *cfSession, id uint32, req *cfConnect) bool {
	c := t.sess()
	if cf.connected {
		c.closeWith(t, cfCloseBadRequest, "already connected", true)
		return false
	}
	var g *auth.Grant
	if s.verifier != nil && req.Token != "" {
		// Verify, not VerifyWait: this runs on a worker (see refresh).
		var err error
		if g, err = s.verifier.Verify(req.Token); err != nil {
			if errors.Is(err, auth.ErrTokenExpired) {
				s.metrics.rejected.WithLabelValues("token_expired").Inc()
				cfSend(t, cf, cfError(id, cfErrTokenExpired, "token expired"))
				return true
			}
			s.metrics.rejected.WithLabelValues("invalid_token").Inc()
			c.closeWith(t, cfCloseInvalidToken, "invalid token", true)
			return false
		}
		c.setGrant(g)
	}
	var rb [8]byte
	_, _ = rand.Read(rb[:])
	cf.client = hex.EncodeToString(rb[:])
	cf.connected = true
	ping := max(1, int(s.lim().PingInterval.Seconds()))
	res := fmt.Sprintf(`{"client":%q,"version":"kpush","ping":%d,"pong":true%s}`, cf.client, ping, cfExpiry(g))
	cfSend(t, cf, cfReply(id, "connect", res))
	return true
}

// cfExpiry is the expires/ttl members for a grant with an expiry.
func cfExpiry(g *auth.Grant) string {
	if g == nil || g.Expires.IsZero() {
		return ""
	}
	ttl := max(1, int(time.Until(g.Expires).Seconds()))
	return `,"expires":true,"ttl":` + strconv.Itoa(ttl)
}

// cfRefresh replaces the connection's token (the SDKs refresh before ttl).
func (s *Server) cfRefresh(t transport, cf *cfSession, id uint32, token string) {
	c := t.sess()
	if s.verifier == nil {
		cfSend(t, cf, cfReply(id, "refresh", `{"client":"`+cf.client+`","version":"kpush"}`))
		return
	}
	g, err := s.verifier.Verify(token)
	if err != nil {
		code, msg := cfErrUnauthorized, "invalid token"
		if errors.Is(err, auth.ErrTokenExpired) {
			code, msg = cfErrTokenExpired, "token expired"
		}
		cfSend(t, cf, cfError(id, code, msg))
		return
	}
	if old := c.sec.grant.Load(); old != nil && old.Subject != g.Subject {
		cfSend(t, cf, cfError(id, cfErrPermissionDenied, "a refreshed token must have the same subject"))
		return
	}
	c.setGrant(g)
	cfSend(t, cf, cfReply(id, "refresh", `{"client":"`+cf.client+`","version":"kpush"`+cfExpiry(g)+`}`))
}

// cfSubscribe subscribes one channel. The reply is queued before the
// router subscription, so every publication pushed for the channel comes
// after it (the SDKs drop publications of a subscription they have not seen
// answered).
func (s *Server) cfSubscribe(t transport, cf *cfSession, id uint32, req *cfSubscribe) {
	c := t.sess()
	fail := func(code int, msg string) {
		s.metrics.clientErrors.WithLabelValues("centrifugo_subscribe").Inc()
		cfSend(t, cf, cfError(id, code, msg))
	}
	ch := req.Channel
	if !router.ValidChannel(ch) {
		fail(cfErrBadRequest, fmt.Sprintf("channel %q must match ^[A-Za-z0-9_.:@/-]{1,200}$", truncate(ch, 64)))
		return
	}
	delta := req.Delta == cfDeltaFossil
	if req.Delta != "" && !delta {
		fail(cfErrBadRequest, fmt.Sprintf("delta %q is not supported (only %q)", truncate(req.Delta, 32), cfDeltaFossil))
		return
	}
	if s.verifier != nil && !s.isPublic(ch) && !c.sec.grant.Load().Allows(ch) {
		s.metrics.rejected.WithLabelValues("forbidden").Inc()
		fail(cfErrPermissionDenied, "permission denied")
		return
	}
	c.mu.Lock()
	// mixed: the resubscribe asked for with 2500, records of several
	// partitions having come: the old subscription goes, and a recover is
	// not exact whatever the router retains (a route that retains nothing
	// would otherwise be read back from the one partition the position
	// names, leaving out the others' records).
	mixed, stale := cf.stale[ch]
	if stale {
		c.mu.Unlock()
		s.unsubscribeQuiet(t, cf, ch)
		c.mu.Lock()
	}
	switch {
	case contains(c.subs, ch):
		c.mu.Unlock()
		fail(cfErrAlreadySubbed, "already subscribed")
		return
	case len(c.subs) >= s.lim().MaxSubscriptions:
		c.mu.Unlock()
		s.metrics.rejected.WithLabelValues(CodeTooManySubscriptions).Inc()
		fail(cfErrLimitExceeded, "limit exceeded")
		return
	case c.flags&(flagClosing|flagClosed) != 0:
		c.mu.Unlock()
		return
	}
	c.subs = append(c.subs, ch)
	if delta {
		if cf.delta == nil {
			cf.delta = make(map[string]*router.Frame)
		}
		cf.delta[ch] = nil // no publication sent yet
	}
	c.mu.Unlock()
	// Everything is decided under the channel's shard lock, before any
	// later publication of it: the reply (or, when recovering, the
	// records that resume the channel, then the reply) is queued first, and
	// the SDKs drop publications of a subscription they have not seen
	// answered.
	var job *resumeJob
	var ok map[string]bool // the v1 verdict of a resume served at once
	start := time.Now()    // resume_timeout runs from here
	s.router.Subscribe(t, ch, func(v router.View) {
		if req.Recover && !mixed {
			if n := v.Newest(); n != nil && v.Partitions() == 1 && req.Epoch == cfEpoch(n) && int64(req.Offset) == n.Offset {
				// The client has the channel's newest record, from the
				// same unbroken stream: nothing to recover.
				s.countResume("memory", true, 0)
				c.mu.Lock()
				cf.setPosLocked(ch, n.Partition)
				c.mu.Unlock()
				cfSend(t, cf, cfReply(id, "subscribe", `{"recoverable":true,"positioned":true,"epoch":"`+
					req.Epoch+`","offset":`+strconv.FormatInt(n.Offset, 10)+`,"was_recovering":true,"recovered":true`+cfDeltaMember(delta)+`}`))
				return
			}
			if pos, ok2 := cfRecoverable(v, req.Epoch, req.Offset); ok2 {
				// Resume through protocol v1's seam (memory, then Kafka);
				// its ok reply becomes the subscribe reply, and the
				// records it sends first go into the reply's
				// publications (cfFrameLocked).
				c.mu.Lock()
				if cf.pending == nil {
					cf.pending = make(map[string]*cfPending)
				}
				cf.pending[ch] = &cfPending{id: id, ch: ch, offset: req.Offset, epoch: req.Epoch, part: pos.p, delta: delta,
					str: delta && !cf.proto, proto: cf.proto, reject: req.Flag&cfFlagRejectUnrecovered != 0}
				c.mu.Unlock()
				recovered := map[string]bool{ch: true}
				reserve := okReserve(int64(id), recovered)
				if rc := s.resumeChannel(t, ch, []partPos{pos}, v, recovered, reserve); rc != nil {
					job = &resumeJob{t: t, id: int64(id), deadline: start.Add(s.cfg.ResumeTimeout), recovered: recovered,
						reserve: reserve, chans: []*resumeChan{rc}}
				} else {
					ok = recovered
				}
				return
			}
		}
		if req.Recover {
			s.metrics.resumes.WithLabelValues("memory", "not_recovered").Inc()
			if req.Flag&cfFlagRejectUnrecovered != 0 {
				c.mu.Lock()
				cf.markStaleLocked(ch, mixed)
				c.mu.Unlock()
				cfSend(t, cf, cfError(id, cfErrUnrecoverable, "unrecoverable position"))
				return
			}
		}
		res, sent, pos := cfSubscribeResult(v, req.Recover, delta, delta && !cf.proto)
		var pubs [][]byte // the Protobuf data of the reply's publication
		if sent != nil && cf.proto {
			if value, ok := recordValue(sent.Payload); ok {
				pubs = [][]byte{cfProtoData(sent.Payload, value)}
			}
		}
		c.mu.Lock()
		if _, still := cf.delta[ch]; still && sent != nil {
			cf.delta[ch] = sent // the base of the next delta
		}
		if pos != nil {
			cf.setPosLocked(ch, pos.Partition)
		}
		c.mu.Unlock()
		cfSendPubs(t, cf, cfReply(id, "subscribe", res), pubs)
	})
	c.mu.Lock()
	closing := c.flags&(flagClosing|flagClosed) != 0
	c.mu.Unlock()
	switch {
	case closing:
		s.router.Unsubscribe(t, ch) // the close may have taken c.subs before this subscribe
	case job != nil:
		s.submitResume(job) // its ok reply follows the replayed records
	case ok != nil:
		c.send(t, okFrame(int64(id), ok))
	}
}

// cfRecoverable reports whether a recover from the client's epoch can be
// answered exactly, and from which Kafka position: the epoch must be one
// kpush gave, the channel's records must come from one partition, and that
// partition and topic must be the epoch's. A channel with no retained
// record here (another instance gave the position, or the route retains
// nothing) is read back from Kafka from the position. Called under the
// channel's shard lock.
func cfRecoverable(v router.View, epoch string, offset uint64) (partPos, bool) {
	topic, part, _, ok := parseCFEpoch(epoch)
	if !ok || v.Partitions() > 1 {
		return partPos{}, false
	}
	if n := v.Newest(); n != nil && (n.Topic != topic || n.Partition != part) {
		return partPos{}, false
	}
	return partPos{p: part, after: int64(offset)}, offset <= math.MaxInt64
}

// cfSubscribeResult is the subscribe reply of a channel subscribed without
// a recovery (recovering: one whose recover could not be exact). A channel
// whose newest retained record says where its stream is, and whose records
// come from one partition, is recoverable: the reply carries its position.
// A channel of a route with snapshot: true gets its last record in the
// reply's publications (Centrifugo's cache recovery mode); after a recover
// that failed it comes with "recovered":false. Called under the channel's
// shard lock. With delta (the subscription asked for delta: "fossil") the
// reply says so; with str a publication's data is a JSON string (delta in
// the JSON format). sent is the record sent in the reply, if any; pos the
// record whose position the reply gives, if any.
func cfSubscribeResult(v router.View, recovering, delta, str bool) (res string, sent, pos *router.Frame) {
	b := []byte{'{'}
	sep := func() {
		if len(b) > 1 {
			b = append(b, ',')
		}
	}
	if n := v.Newest(); n != nil && v.Partitions() == 1 {
		pos = n
		b = append(b, `"recoverable":true,"positioned":true,"epoch":"`...)
		b = append(b, cfEpoch(n)...)
		b = append(b, `","offset":`...)
		b = strconv.AppendInt(b, n.Offset, 10)
	}
	if recovering {
		sep()
		b = append(b, `"was_recovering":true`...)
	}
	if last := v.Last(); last != nil {
		if value, ok := recordValue(last.Payload); ok {
			if !recovering {
				sep()
				b = append(b, `"recovered":true`...)
			}
			sep()
			b = append(b, `"publications":[`...)
			b = append(b, cfPubAs(last.Offset, value, str)...)
			b = append(b, ']')
			sent = last
		}
	}
	if delta {
		sep()
		b = append(b, `"delta":true`...)
	}
	return string(append(b, '}')), sent, pos
}

// cfPending is a recovering subscription whose reply is not written yet.
type cfPending struct {
	id     uint32
	ch     string
	offset uint64 // the position the client gave
	epoch  string
	part   int32  // the partition the epoch names, which the recovery reads
	reject bool   // answer error 112 rather than recovered:false
	delta  bool   // delta: "fossil" negotiated
	str    bool   // the publications' data are JSON strings (delta, JSON format)
	proto  bool   // a Protobuf session: raws holds the publications' data
	pubs   []byte // publications gathered for the reply, comma separated
	raws   [][]byte
	last   *router.Frame
	// mixed: a record of another partition came while recovering (see
	// cfFrameLocked): the reply is followed by the 2500 unsubscribe push.
	mixed bool
}

// cfEpoch names a record's partition stream: "<topic>:<partition>:<continuity
// epoch, base 36>". The continuity epoch changes when the consumer's read of
// the partition may have a hole (a reset or truncation detected, a
// restart), so a client can tell a new stream; the topic and partition say
// which Kafka position the offsets are, on any instance. Topic names hold
// no ':'.
func cfEpoch(f *router.Frame) string {
	b := make([]byte, 0, len(f.Topic)+24)
	b = append(b, f.Topic...)
	b = append(b, ':')
	b = strconv.AppendInt(b, int64(f.Partition), 10)
	b = append(b, ':')
	b = strconv.AppendUint(b, f.Epoch, 36)
	return string(b)
}

// parseCFEpoch reads an epoch cfEpoch made.
func parseCFEpoch(e string) (topic string, part int32, epoch uint64, ok bool) {
	rest, ep, found := strings.Cut(e, ":")
	if !found {
		return "", 0, 0, false
	}
	topic = rest
	p, ep, found := strings.Cut(ep, ":")
	if !found || strings.Contains(ep, ":") {
		return "", 0, 0, false
	}
	n, err1 := strconv.ParseInt(p, 10, 32)
	m, err2 := strconv.ParseUint(ep, 36, 64)
	return topic, int32(n), m, err1 == nil && err2 == nil && n >= 0
}

// cfSubscribeReply turns protocol v1's answer to a recovering subscribe
// into Centrifugo's: the reply, with, for a Protobuf session, the data of its
// publications (see cfReplyProto), and, when records of another partition
// came during the recovery, the 2500 unsubscribe push after it. Caller
// holds c.mu.
func (cf *cfSession) subscribeReplyLocked(payload []byte) (reply []byte, pubs [][]byte, then []byte) {
	var r struct {
		Op        string          `json:"op"`
		ID        uint32          `json:"id"`
		Code      string          `json:"code"`
		Message   string          `json:"message"`
		Recovered map[string]bool `json:"recovered"`
	}
	if json.Unmarshal(payload, &r) != nil {
		return nil, nil, nil
	}
	var pd *cfPending
	for _, x := range cf.pending {
		if x.id == r.ID {
			pd = x
		}
	}
	if pd == nil {
		return nil, nil, nil
	}
	delete(cf.pending, pd.ch)
	if r.Op == "error" {
		code := cfErrBadRequest
		switch r.Code {
		case CodeTooManySubscriptions:
			code = cfErrLimitExceeded
		case CodeForbidden:
			code = cfErrPermissionDenied
		}
		return cfError(r.ID, code, r.Message), nil, nil
	}
	if pd.reject && (!r.Recovered[pd.ch] || pd.mixed) {
		cf.markStaleLocked(pd.ch, pd.mixed)
		return cfError(r.ID, cfErrUnrecoverable, "unrecoverable position"), nil, nil
	}
	epoch, offset := pd.epoch, int64(pd.offset)
	if pd.last != nil {
		epoch, offset = cfEpoch(pd.last), pd.last.Offset
	}
	b := []byte(`{"recoverable":true,"positioned":true,"epoch":"` + epoch + `","offset":` + strconv.FormatInt(offset, 10) +
		`,"was_recovering":true,"recovered":` + strconv.FormatBool(r.Recovered[pd.ch]) + cfDeltaMember(pd.delta))
	if pd.delta && len(pd.pubs) > 0 {
		if _, still := cf.delta[pd.ch]; still {
			cf.delta[pd.ch] = pd.last // the base of the next delta
		}
	}
	if pd.last != nil {
		cf.setPosLocked(pd.ch, pd.last.Partition)
	} else if _, part, _, ok := parseCFEpoch(epoch); ok {
		cf.setPosLocked(pd.ch, part)
	}
	if len(pd.pubs) > 0 {
		b = append(b, `,"publications":[`...)
		b = append(b, pd.pubs...)
		b = append(b, ']')
	}
	b = append(b, '}')
	if pd.mixed {
		// The records gathered are of the recovered partition, and the
		// reply's position is right for them; what came of another one
		// was not sent. As for a live record of another partition, the
		// SDK is told to resubscribe.
		cf.markStaleLocked(pd.ch, true)
		then = cfInsufficientState(pd.ch)
	}
	return cfReply(r.ID, "subscribe", string(b)), pd.raws, then
}

// cfInsufficientState is the unsubscribe push with Centrifugo's code 2500
// ("insufficient state"), after which the SDKs resubscribe with recover.
func cfInsufficientState(ch string) []byte {
	return []byte(`{"push":{"channel":"` + ch + `","unsubscribe":{"code":2500,"reason":"insufficient state"}}}`)
}

// unsubscribeQuiet drops one channel without a v1 reply.
func (s *Server) unsubscribeQuiet(t transport, cf *cfSession, ch string) {
	c := t.sess()
	c.mu.Lock()
	found := false
	kept := c.subs[:0]
	for _, x := range c.subs {
		if x == ch {
			found = true
		} else {
			kept = append(kept, x)
		}
	}
	clear(c.subs[len(kept):])
	c.subs = kept
	c.out.dropResume(ch)
	if cf != nil {
		delete(cf.delta, ch)
		delete(cf.pos, ch)
		delete(cf.stale, ch)
	}
	c.mu.Unlock()
	if found {
		s.router.Unsubscribe(t, ch)
	}
}

// cfFrameLocked turns the queue's frame i (f) into Centrifugo's form before
// it is written: a record becomes a publication push, a ping the empty
// reply {}. Replies are built in Centrifugo's form already and close frames
// are sent as they are. The result replaces f in the queue (marked by a nil
// Payload, so conflation leaves it alone). Caller holds c.mu.
//
// A record's push is the frame shared by every subscriber of its form
// (cfPushCache: JSON, Protobuf, and for delta: "fossil" the whole record or
// its one delta), as protocol v1's frame is: nothing in a push is per
// connection. What is made per connection: the records that arrive before
// a recovering subscription's reply (they go into the reply, which is this
// connection's), the 2500 unsubscribe push of a channel found fed by
// several partitions, and the choice of a delta subscriber's form (the
// delta when the client has the record it was computed from, else the
// whole record). Pings are shared frames too.
func (c *session) cfFrameLocked(cf *cfSession, i int, f *router.Frame) *router.Frame {
	var nf *router.Frame
	switch {
	case f.Channel != "" && f.Payload != nil:
		if nf = c.cfRecordLocked(cf, f); nf == nil {
			return f
		}
	case f.Channel == "" && len(f.Data) >= 2 && ws.OpCode(f.Data[0]&0x0f) == ws.OpPing:
		nf = cfPingJSON
		if cf.proto {
			nf = cfPingBinary
		}
	case f.Channel == "" && len(cf.pending) > 0 && len(f.Data) >= 2 && ws.OpCode(f.Data[0]&0x0f) == ws.OpText:
		op, payload := serverFramePayload(f.Data)
		if op != ws.OpText || !bytes.HasPrefix(payload, []byte(`{"op":`)) {
			return f
		}
		r, pubs, then := cf.subscribeReplyLocked(payload)
		if r == nil {
			return f
		}
		if then != nil {
			r = append(append(r, '\n'), then...) // one frame, newline separated
		}
		b := wire.ServerFrame(ws.OpText, r)
		if cf.proto {
			pb, err := cfReplyProto(r, pubs)
			if err != nil {
				c.srv.log.Error("gateway: centrifugo reply not sent", "err", err)
				return f
			}
			b = wire.ServerFrame(ws.OpBinary, pb)
		}
		nf = cfPushFrame(f, b)
	default:
		return f
	}
	c.out.bytes += len(nf.Data) - len(f.Data)
	c.out.frames[i] = nf
	return nf
}

// The server's ping in each format, as frames shared by every session.
var (
	cfPingJSON   = &router.Frame{Data: wire.ServerFrame(ws.OpText, []byte("{}"))}
	cfPingBinary = &router.Frame{Data: wire.ServerFrame(ws.OpBinary, cfPingProto)}
)

// cfPongUnsolicited is an unsolicited pong (RFC 6455 §5.5.3), which takes
// the place of a record that is not written as a push. Shared.
var cfPongUnsolicited = &router.Frame{Data: []byte{0x8A, 0}}

// cfRecordLocked returns what takes the place of the record f in the
// queue: its push (shared), or this connection's own frame; nil when f
// holds no record value. Caller holds c.mu.
func (c *session) cfRecordLocked(cf *cfSession, f *router.Frame) *router.Frame {
	if pd := cf.pending[f.Channel]; pd != nil {
		// Before its subscribe reply: into the reply's publications; an
		// unsolicited pong takes its place. A record of another partition
		// than the one recovered (a live one, the channel being fed by
		// several) is not: the channel's offsets do not say where the
		// client is in it, so the reply (whose position is right for the
		// records it holds) is followed by the 2500 unsubscribe push, as
		// for a live record (below), and the resubscribe is answered
		// recovered:false.
		v, ok := recordValue(f.Payload)
		if !ok {
			return nil
		}
		if f.Partition != pd.part {
			pd.mixed = true
			return cfPongUnsolicited
		}
		if len(pd.pubs) > 0 {
			pd.pubs = append(pd.pubs, ',')
		}
		pd.pubs = append(pd.pubs, cfPubAs(f.Offset, v, pd.str)...)
		if pd.proto {
			pd.raws = append(pd.raws, cfProtoData(f.Payload, v))
		}
		pd.last = f
		return cfPongUnsolicited
	}
	if _, stale := cf.stale[f.Channel]; stale {
		// Told to resubscribe: the SDK drops publications until then.
		if _, ok := recordValue(f.Payload); !ok {
			return nil
		}
		return cfPongUnsolicited
	}
	if p, ok := cf.pos[f.Channel]; ok && p != f.Partition {
		// The channel was answered with a position in partition p, and
		// records of another partition come: its stream is not one
		// partition, and its offsets do not say where the client is.
		// Centrifugo's "insufficient state" unsubscribe (2500) makes the
		// SDK resubscribe with recover, which is then answered
		// recovered:false, without a position.
		if _, ok := recordValue(f.Payload); !ok {
			return nil
		}
		cf.markStaleLocked(f.Channel, true)
		js := cfInsufficientState(f.Channel)
		b := wire.ServerFrame(ws.OpText, js)
		if cf.proto {
			pb, err := cfReplyProto(js, nil)
			if err != nil {
				return nil
			}
			b = wire.ServerFrame(ws.OpBinary, pb)
		}
		return cfPushFrame(f, b)
	}
	if base, ok := cf.delta[f.Channel]; ok {
		nf := c.srv.cfPushes.pushDelta(f, base, cf.proto)
		if nf != nil {
			cf.delta[f.Channel] = f
		}
		return nf
	}
	return c.srv.cfPushes.push(f, cf.proto)
}

// cfSend queues a reply built in the JSON form, transcoded for a Protobuf
// session.
func cfSend(t transport, cf *cfSession, js []byte) { cfSendPubs(t, cf, js, nil) }

// cfSendPubs is cfSend for a subscribe reply whose publications have other
// data in the Protobuf format (see cfReplyProto).
func cfSendPubs(t transport, cf *cfSession, js []byte, pubs [][]byte) {
	c := t.sess()
	if cf != nil && cf.proto {
		b, err := cfReplyProto(js, pubs)
		if err != nil {
			c.srv.log.Error("gateway: centrifugo reply not sent", "err", err) // a kpush bug: its own replies
			return
		}
		c.send(t, wire.ServerFrame(ws.OpBinary, b))
		return
	}
	c.send(t, wire.ServerFrame(ws.OpText, js))
}

// handleCentrifugoProto answers the Commands of one binary message of a
// Protobuf session (compressed: permessage-deflate). It returns false once
// the connection is closing.
func (s *Server) handleCentrifugoProto(t transport, cf *cfSession, p []byte, compressed bool) bool {
	c := t.sess()
	if compressed {
		m, err := inflateMessage(p, s.lim().MaxMessageBytes)
		switch {
		case err == errInflatedTooLarge:
			s.metrics.clientErrors.WithLabelValues("message_too_big").Inc()
			c.closeWith(t, ws.StatusMessageTooBig, err.Error(), true)
			return false
		case err != nil:
			s.metrics.clientErrors.WithLabelValues("bad_deflate").Inc()
			c.closeWith(t, ws.StatusInvalidFramePayloadData, "compressed message does not inflate", true)
			return false
		}
		p = m
	}
	alive := true
	err := cfDecodeProto(p, func(cmd *cfCommand) bool {
		if ok, live := c.allowRequest(t, nil); !ok {
			if live {
				cfSend(t, cf, cfError(0, 111, "too many requests"))
			}
			alive = live
			return false
		}
		alive = s.centrifugoCommand(t, cf, cmd)
		return alive
	})
	if err != nil && alive {
		s.metrics.clientErrors.WithLabelValues("centrifugo_bad_command").Inc()
		c.closeWith(t, cfCloseBadRequest, "bad request", true)
		return false
	}
	return alive
}

// cfDeltaFossil is the one delta type kpush computes.
const cfDeltaFossil = "fossil"

// cfDeltaMember is the subscribe reply's member saying that delta
// compression was negotiated.
func cfDeltaMember(delta bool) string {
	if delta {
		return `,"delta":true`
	}
	return ""
}

// cfPubAs encodes a publication for a subscribe reply: its data a JSON
// string with str (a subscription with delta in the JSON format).
func cfPubAs(offset int64, value []byte, str bool) []byte {
	if str {
		return cfPubString(offset, value, false)
	}
	return cfPub(offset, value)
}
