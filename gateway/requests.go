package gateway

import (
	"errors"
	"fmt"
	"time"

	"github.com/kpush/kpush/router"
)

// handleRequest answers one protocol v1 request of t's client. It runs on
// the worker that read the request and must not block.
func (s *Server) handleRequest(t transport, p []byte) {
	c := t.sess()
	if ok, _ := c.allowRequest(t, p); !ok {
		return
	}
	req, err := ParseRequest(p, s.lim().MaxSubscriptions)
	if err != nil {
		var pe *ProtocolError
		if !errors.As(err, &pe) {
			pe = &ProtocolError{Code: CodeInternal, Message: err.Error()}
		}
		s.metrics.clientErrors.WithLabelValues(pe.Code).Inc()
		if pe.Code == CodeTooManySubscriptions {
			s.metrics.rejected.WithLabelValues(pe.Code).Inc()
		}
		c.send(t, errorFrame(pe.ID, pe.Code, pe.Message))
		return
	}
	switch req.Op {
	case "ping":
		c.send(t, pongFrame(req.ID))
	case "subscribe":
		if s.authorize(t, req) {
			s.subscribe(t, req)
		}
	case "unsubscribe":
		s.unsubscribe(t, req)
	case "refresh":
		s.refresh(t, req)
	}
}

// subscribe subscribes t's session to the channels of req that it does not
// hold yet, within max_subscriptions, each with its resume (since) or
// snapshot, and answers ok, or lets the resume job answer (resume_seam.go).
func (s *Server) subscribe(t transport, req *Request) {
	start := time.Now() // resume_timeout runs from here
	c := t.sess()
	c.mu.Lock()
	if req.MaxRate != nil {
		// Before the router subscribes: the first frame already obeys
		// it. A channel already subscribed takes the new rate.
		for _, ch := range req.Channels {
			c.out.setCap(ch, *req.MaxRate)
		}
	}
	fresh := make([]string, 0, len(req.Channels))
	for _, ch := range req.Channels {
		if !contains(c.subs, ch) && !contains(fresh, ch) {
			fresh = append(fresh, ch)
		}
	}
	if n, most := len(c.subs)+len(fresh), s.lim().MaxSubscriptions; n > most {
		c.mu.Unlock()
		s.metrics.clientErrors.WithLabelValues(CodeTooManySubscriptions).Inc()
		s.metrics.rejected.WithLabelValues(CodeTooManySubscriptions).Inc()
		c.send(t, errorFrame(req.ID, CodeTooManySubscriptions,
			fmt.Sprintf("subscribing would hold %d channels, at most %d per connection", n, most)))
		return
	}
	c.mu.Unlock()

	// recovered answers every channel the request gave a position for; a
	// channel this connection already had is live without a gap.
	var recovered map[string]bool
	reserve := 0
	if len(req.Since) > 0 {
		recovered = make(map[string]bool, len(req.Since))
		for ch := range req.Since {
			recovered[ch] = true
		}
		reserve = okReserve(req.ID, recovered)
	}
	var job *resumeJob
	for _, ch := range fresh {
		var before func(router.View)
		if pos, ok := req.Since[ch]; ok {
			parts := parsePositions(pos)
			// Runs under the channel's shard lock, before any later
			// frame: see the seam in resume_seam.go.
			before = func(v router.View) {
				if rc := s.resumeChannel(t, ch, parts, v, recovered, reserve); rc != nil {
					if job == nil {
						job = &resumeJob{t: t, id: req.ID, deadline: start.Add(s.cfg.ResumeTimeout), recovered: recovered, reserve: reserve}
					}
					job.chans = append(job.chans, rc)
				}
			}
		} else if req.Snapshot {
			// Runs under the channel's shard lock, before any later frame:
			// the snapshot and the live stream meet with no gap or overlap.
			before = func(v router.View) {
				if last := v.Last(); last != nil {
					s.metrics.snapshots.Inc()
					t.Enqueue(unmeasured(markFrame(last, `"snap":true`)))
				}
			}
		}
		// c.subs keeps the router's copy of the name, not the request's:
		// an idle connection then pays no bytes of its own for it.
		name := ch
		s.router.Subscribe(t, ch, func(v router.View) {
			name = v.Name()
			if before != nil {
				before(v)
			}
		})
		c.mu.Lock()
		closing := c.flags&(flagClosing|flagClosed) != 0
		if !closing {
			c.subs = append(c.subs, name)
		}
		c.mu.Unlock()
		if closing {
			// The close releases the subscriptions in c.subs; this
			// one arrived after it began and is ours to drop.
			s.router.Unsubscribe(t, ch)
			return
		}
	}
	if job != nil {
		// The ok reply follows the replayed records; the job sends it.
		s.submitResume(job)
		return
	}
	c.send(t, okFrame(req.ID, recovered))
}

// unsubscribe drops the channels of req that t's session holds, with their
// resume state and caps, and answers ok.
func (s *Server) unsubscribe(t transport, req *Request) {
	c := t.sess()
	c.mu.Lock()
	kept := c.subs[:0]
	var gone []string
	for _, ch := range c.subs {
		if contains(req.Channels, ch) {
			gone = append(gone, ch)
		} else {
			kept = append(kept, ch)
		}
	}
	clear(c.subs[len(kept):])
	c.subs = kept
	for _, ch := range gone {
		c.out.dropResume(ch)
		c.out.dropCap(ch)
	}
	c.mu.Unlock()
	if len(gone) > 0 {
		s.router.Unsubscribe(t, gone...)
	}
	c.send(t, okFrame(req.ID, nil))
}
