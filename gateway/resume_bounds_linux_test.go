package gateway

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/kpush/kpush/gateway/auth"
	"github.com/kpush/kpush/gateway/client"
	"github.com/kpush/kpush/router"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// stuckReplayer is a read-back that ignores its context: each call blocks
// until released (a Kafka read that does not return soon).
type stuckReplayer struct {
	started chan string
	release chan struct{}
}

func (r *stuckReplayer) Replay(ctx context.Context, ch string, p int32, after int64, emit func(*router.Record) bool) (bool, error) {
	r.started <- ch
	<-r.release
	return true, nil
}

// TestResumeTimeoutFromRequest: resume_timeout counts from the request,
// queue wait included: with the only resume worker stuck, a queued resume
// and the stuck one itself are both answered recovered:false at their
// deadline, while the read-back still has not returned.
func TestResumeTimeoutFromRequest(t *testing.T) {
	rp := &stuckReplayer{started: make(chan string, 4), release: make(chan struct{})}
	s := startPushServer(t, Config{ResumeConcurrency: 1, ResumeTimeout: 300 * time.Millisecond}, rp)
	t.Cleanup(func() { close(rp.release) })
	a := dialPush(t, s.url, nil)
	idA, err := a.Send(resumeReq("a", 0, 5))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-rp.started:
	case <-time.After(10 * time.Second):
		t.Fatal("the first read-back did not start")
	}
	b := dialPush(t, s.url, nil)
	idB, err := b.Send(resumeReq("b", 0, 5))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		c  *pushClient
		id int64
		ch string
	}{{b, idB, "b"}, {a, idA, "a"}} {
		f := tc.c.next(t) // waits up to the harness's deadline
		if f.Op != "ok" || f.ID != tc.id || f.Recovered[tc.ch] {
			t.Fatalf("got %+v, want the ok for %s with recovered false", f, tc.ch)
		}
	}
	// Both are live after the answer.
	s.publish("a", 0, 6, nil, false)
	s.publish("b", 0, 6, nil, false)
	if got := offsets(a.sync(t)); fmt.Sprint(got) != "[6]" {
		t.Fatalf("a live after the timeout: %v", got)
	}
	if got := offsets(b.sync(t)); fmt.Sprint(got) != "[6]" {
		t.Fatalf("b live after the timeout: %v", got)
	}
	select {
	case ch := <-rp.started:
		t.Fatalf("the timed-out queued resume of %s was still read back", ch)
	default:
	}
}

// TestResumeBudgetPerRequest: the read-back budget is the request's, not
// each channel's: three channels of 8 records with max_queue_messages 20
// replay two of them and answer recovered:false for the third.
func TestResumeBudgetPerRequest(t *testing.T) {
	rp := newFakeReplayer(true, span(1, 8)...)
	s := startPushServer(t, Config{MaxQueueMessages: 20}, rp)
	c := dialPush(t, s.url, nil)
	req := &client.Request{Op: "subscribe", Channels: []string{"c1", "c2", "c3"},
		Since: map[string]map[string]int64{"c1": {"0": 0}, "c2": {"0": 0}, "c3": {"0": 0}}}
	id, err := c.Send(req)
	if err != nil {
		t.Fatal(err)
	}
	rp.waitStarted(t)
	close(rp.release)
	perCh := map[string]int{}
	for {
		f := c.next(t)
		if f.Op == "msg" {
			perCh[f.Ch]++
			continue
		}
		if f.Op != "ok" || f.ID != id {
			t.Fatalf("got %+v, want the subscribe's ok", f)
		}
		want := map[string]bool{"c1": true, "c2": true, "c3": false}
		if fmt.Sprint(f.Recovered) != fmt.Sprint(want) {
			t.Fatalf("recovered %v, want %v", f.Recovered, want)
		}
		break
	}
	if fmt.Sprint(perCh) != "map[c1:8 c2:8]" {
		t.Fatalf("replayed per channel %v, want 8 each for c1 and c2 only", perCh)
	}
}

// TestResumeQueueFairShare: connections from one address flood the resume
// queue; beyond their share they are answered recovered:false at once, and
// a client from another address still has its resume queued and served.
func TestResumeQueueFairShare(t *testing.T) {
	rp := newFakeReplayer(true, span(1, 3)...)
	rp.started = make(chan string, 64)
	s := startPushServer(t, Config{ResumeConcurrency: 1, ResumeQueue: 8, MaxConnectionsPerIP: 100}, rp)
	from := func(ip string) *client.DialOptions {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		return &client.DialOptions{NetDial: d.DialContext}
	}
	refused := func() float64 { return testutil.ToFloat64(s.metrics.rejected.WithLabelValues("resume_address_share")) }
	var flood []*pushClient
	for i := 0; i < 12; i++ {
		c := dialPush(t, s.url, from("127.0.0.2"))
		if _, err := c.Send(resumeReq(fmt.Sprintf("f.%d", i), 0, 0)); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			rp.waitStarted(t) // the one worker is busy from now on
		}
		flood = append(flood, c)
	}
	// One runs; of the 8 places 127.0.0.2 may take 4 (each while it holds
	// fewer than are free); the other 7 are refused.
	secWaitUntil(t, 20*time.Second, "7 resumes refused for their address's share", func() bool { return refused() >= 7 })
	w := dialPush(t, s.url, from("127.0.0.3"))
	idW, err := w.Send(resumeReq("w", 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	// W's job is queued behind the flood's; give it time to be refused if
	// it were going to be, then let the read-backs run.
	secWaitUntil(t, 20*time.Second, "the other address's resume queued", func() bool {
		return s.resumePending.Load() == 6 // 1 running + 4 + W
	})
	close(rp.release)
	var msgs []*client.Frame
	for {
		f := w.next(t)
		if f.Op == "msg" {
			msgs = append(msgs, f)
			continue
		}
		if f.Op != "ok" || f.ID != idW || !f.Recovered["w"] {
			t.Fatalf("the other address's resume: %+v, want ok with recovered true", f)
		}
		break
	}
	if fmt.Sprint(offsets(msgs)) != "[1 2 3]" {
		t.Fatalf("the other address got %v, want [1 2 3]", offsets(msgs))
	}
	recovered := 0
	for i, c := range flood {
		for {
			f := c.next(t)
			if f.Op == "msg" {
				continue
			}
			if f.Op != "ok" {
				t.Fatalf("flood %d: %+v", i, f)
			}
			if f.Recovered[fmt.Sprintf("f.%d", i)] {
				recovered++
			}
			break
		}
	}
	if recovered != 5 || refused() != 7 {
		t.Fatalf("flood: %d recovered, %v refused; want 5 (1 running + 4 queued) and 7", recovered, refused())
	}
}

// TestRefreshRevokesResume: a refresh that revokes a channel whose resume
// is being read back drops its resume state: the read-back, when it ends,
// delivers nothing of the channel and answers recovered:false.
func TestRefreshRevokesResume(t *testing.T) {
	rp := newFakeReplayer(true, span(1, 5)...)
	s := startPushServer(t, Config{Auth: auth.Config{
		Mode: auth.ModeJWT, HS256Secret: secTestSecret, Audience: "kpush", Grants: []string{"user.{sub}.>"},
	}}, rp)
	c := dialPush(t, s.url, bearer(testToken(t, secTestSecret, nil))) // grants ticks.*
	id, err := c.Send(&client.Request{Op: "subscribe", Channels: []string{"ticks.A", "user.42.x"},
		Since: map[string]map[string]int64{"ticks.A": {"0": 0}, "user.42.x": {"0": 0}}})
	if err != nil {
		t.Fatal(err)
	}
	rp.waitStarted(t)
	s.publish("ticks.A", 0, 6, nil, false) // held for the read-back
	newer := testToken(t, secTestSecret, func(c jwt.MapClaims) {
		c["channels"] = []string{"news.>"}
		c["exp"] = time.Now().Add(2 * time.Hour).Unix()
	})
	msgs, reply := c.request(t, &client.Request{Op: "refresh", Token: newer})
	if reply.Op != "ok" || fmt.Sprint(reply.Revoked) != "[ticks.A]" || len(msgs) != 0 {
		t.Fatalf("refresh: %v then %+v, want ok revoking ticks.A", offsets(msgs), reply)
	}
	close(rp.release)
	msgs = nil
	for {
		f := c.next(t)
		if f.Op == "msg" {
			msgs = append(msgs, f)
			continue
		}
		if f.Op != "ok" || f.ID != id || f.Recovered["ticks.A"] || !f.Recovered["user.42.x"] {
			t.Fatalf("got %+v, want the subscribe's ok: ticks.A not recovered, user.42.x recovered", f)
		}
		break
	}
	for _, m := range msgs {
		if m.Ch == "ticks.A" {
			t.Fatalf("a revoked channel's read-back delivered offset %d", m.O)
		}
	}
	if len(msgs) != 5 {
		t.Fatalf("user.42.x got %d replayed records, want 5", len(msgs))
	}
	s.publish("ticks.A", 0, 7, nil, false)
	if got := c.sync(t); len(got) != 0 {
		t.Fatalf("revoked channel delivered %v live", offsets(got))
	}
}

// TestResumeFillingTheQueueLeavesRoomForItsOK: a read-back that would fill
// the queue to its bound exactly answers recovered:false, and its ok reply
// arrives; the ok never finds the queue full and closes the connection
// as a slow consumer (4008).
func TestResumeFillingTheQueueLeavesRoomForItsOK(t *testing.T) {
	rp := newFakeReplayer(true, span(1, 8)...)
	s := startPushServer(t, Config{MaxQueueMessages: 8}, rp)
	c := dialPush(t, s.url, nil)
	id, err := c.Send(&client.Request{Op: "subscribe", Channels: []string{"full"},
		Since: map[string]map[string]int64{"full": {"0": 0}}})
	if err != nil {
		t.Fatal(err)
	}
	rp.waitStarted(t)
	close(rp.release)
	f := c.next(t)
	if f.Op != "ok" || f.ID != id {
		t.Fatalf("got %+v, want the subscribe's ok (8 records and the ok do not fit 8 messages)", f)
	}
	if want := map[string]bool{"full": false}; fmt.Sprint(f.Recovered) != fmt.Sprint(want) {
		t.Fatalf("recovered %v, want %v", f.Recovered, want)
	}
	// The connection is open and live.
	s.publish("full", 0, 9, nil, false)
	if f := c.next(t); f.Op != "msg" || f.Ch != "full" {
		t.Fatalf("after the resume: %+v, want the live record", f)
	}
}
