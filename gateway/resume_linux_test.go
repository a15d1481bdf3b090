package gateway

import (
	"fmt"
	"testing"
	"time"

	"github.com/kpush/kpush/gateway/client"
	"github.com/kpush/kpush/router"
)

func resumeReq(ch string, p int32, after int64) *client.Request {
	return &client.Request{Op: "subscribe", Channels: []string{ch},
		Since: map[string]map[string]int64{ch: {fmt.Sprint(p): after}}}
}

// TestResumeSeam drives the read-back seam deterministically: live frames
// published while the read-back is blocked must be held, merged without
// overlap, and followed by the ok reply.
func TestResumeSeam(t *testing.T) {
	last := &router.Retention{Last: true}
	cases := []struct {
		name      string
		cfg       Config
		keep      *router.Retention
		before    []int64 // published before the subscribe
		after     int64   // the client's position
		replay    *fakeReplayer
		during    []int64 // published while the read-back is blocked
		conflate  bool
		want      []int64 // msg offsets before the ok
		snapFirst bool
		recovered bool
		later     []int64 // published after the ok
		wantLater []int64
	}{
		{name: "read-back overlaps held live frames",
			before: span(1, 10), after: 3, replay: newFakeReplayer(true, span(1, 15)...), during: span(11, 20),
			want: span(4, 20), recovered: true, later: []int64{21}, wantLater: []int64{21}},
		{name: "instance behind the client's position",
			before: span(1, 10), after: 15, replay: newFakeReplayer(true, span(1, 20)...), during: span(11, 18),
			want: span(16, 20), recovered: true, later: []int64{19, 20, 21}, wantLater: []int64{21}},
		{name: "incomplete read-back sends the snapshot then held frames",
			keep: last, before: span(1, 10), after: 3, replay: newFakeReplayer(false, span(4, 6)...), during: span(11, 12),
			want: []int64{10, 11, 12}, snapFirst: true, recovered: false, later: []int64{13}, wantLater: []int64{13}},
		{name: "held frames overflow a conflating connection",
			cfg:  Config{MaxQueueMessages: 8},
			keep: last, before: span(1, 10), after: 3, replay: newFakeReplayer(true, span(4, 10)...), during: span(11, 30), conflate: true,
			want: span(27, 30), recovered: false, later: []int64{31}, wantLater: []int64{31}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := startPushServer(t, tc.cfg, tc.replay)
			for _, o := range tc.before {
				s.publish("c", 0, o, tc.keep, tc.conflate)
			}
			c := dialPush(t, s.url, nil)
			id, err := c.Send(resumeReq("c", 0, tc.after))
			if err != nil {
				t.Fatal(err)
			}
			tc.replay.waitStarted(t)
			for _, o := range tc.during {
				s.publish("c", 0, o, tc.keep, tc.conflate)
			}
			close(tc.replay.release)
			var msgs []*client.Frame
			var reply *client.Frame
			for reply == nil {
				f := c.next(t)
				if f.Op == "msg" {
					msgs = append(msgs, f)
				} else if f.ID == id {
					reply = f
				} else {
					t.Fatalf("unexpected %+v", f)
				}
			}
			if reply.Op != "ok" || reply.Recovered["c"] != tc.recovered {
				t.Fatalf("reply %+v, want ok with recovered %v", reply, tc.recovered)
			}
			if fmt.Sprint(offsets(msgs)) != fmt.Sprint(tc.want) {
				t.Fatalf("before the ok got offsets %v, want %v", offsets(msgs), tc.want)
			}
			for i, m := range msgs {
				if m.Snap != (tc.snapFirst && i == 0) {
					t.Fatalf("message %d (o=%d) snap=%v", i, m.O, m.Snap)
				}
			}
			for _, o := range tc.later {
				s.publish("c", 0, o, tc.keep, tc.conflate)
			}
			if got := offsets(c.sync(t)); fmt.Sprint(got) != fmt.Sprint(tc.wantLater) {
				t.Fatalf("after the ok got offsets %v, want %v", got, tc.wantLater)
			}
		})
	}
}

// TestResumeHeldOverflowNotRecovered: live frames held during a read-back
// that overflow the connection's bounds make that channel's resume answer
// recovered:false; the connection stays, and the live stream goes on in
// order without the frames it already has.
func TestResumeHeldOverflowNotRecovered(t *testing.T) {
	rp := newFakeReplayer(true, span(1, 5)...)
	s := startPushServer(t, Config{MaxQueueMessages: 8}, rp)
	c := dialPush(t, s.url, nil)
	id, err := c.Send(resumeReq("c", 0, 2))
	if err != nil {
		t.Fatal(err)
	}
	rp.waitStarted(t)
	// 8 held frames fill the queue's bound: the ninth gives the resume up,
	// and it and the next ones go out live.
	for o := int64(1); o <= 12; o++ {
		s.publish("c", 0, o, nil, false) // 1 and 2 the client has
	}
	close(rp.release)
	var msgs []*client.Frame
	for {
		f := c.next(t)
		if f.Op == "msg" {
			msgs = append(msgs, f)
			continue
		}
		if f.Op != "ok" || f.ID != id || f.Recovered["c"] {
			t.Fatalf("got %+v, want the subscribe's ok with recovered false", f)
		}
		break
	}
	if got := offsets(msgs); fmt.Sprint(got) != "[9 10 11 12]" {
		t.Fatalf("before the ok got %v, want the live frames after the overflow, [9 10 11 12]", got)
	}
	s.publish("c", 0, 13, nil, false)
	if later := offsets(c.sync(t)); fmt.Sprint(later) != "[13]" {
		t.Fatalf("after the ok got %v, want [13]", later)
	}
}

func TestResumeUnsubscribedDuringReadBack(t *testing.T) {
	rp := newFakeReplayer(true, span(1, 5)...)
	s := startPushServer(t, Config{}, rp)
	c := dialPush(t, s.url, nil)
	id, err := c.Send(resumeReq("c", 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	rp.waitStarted(t)
	s.publish("c", 0, 6, nil, false)
	if _, reply := c.request(t, &client.Request{Op: "unsubscribe", Channels: []string{"c"}}); reply.Op != "ok" {
		t.Fatalf("unsubscribe: %+v", reply)
	}
	close(rp.release)
	f := c.next(t)
	if f.Op != "ok" || f.ID != id || f.Recovered["c"] {
		t.Fatalf("got %+v, want the subscribe's ok with recovered false", f)
	}
	s.publish("c", 0, 7, nil, false)
	if msgs := c.sync(t); len(msgs) != 0 {
		t.Fatalf("got %d messages after unsubscribing", len(msgs))
	}
}

// TestResumeFromMemory covers the history path: positions inside the
// history, a position ahead of this instance, and partitions the request
// does not name (live only).
func TestResumeFromMemory(t *testing.T) {
	keep := &router.Retention{HistoryRecords: 100, HistoryBytes: 1 << 20, HistoryAge: time.Minute}
	s := startPushServer(t, Config{}, nil) // no replayer: memory or nothing
	for o := int64(1); o <= 10; o++ {
		s.publish("c", 0, o, keep, false)
		s.publish("c", 1, 100+o, keep, false)
	}
	c := dialPush(t, s.url, nil)
	msgs, reply := c.request(t, &client.Request{Op: "subscribe", Channels: []string{"c"},
		Since: map[string]map[string]int64{"c": {"0": 7}}})
	if !reply.Recovered["c"] || fmt.Sprint(offsets(msgs)) != "[8 9 10]" {
		t.Fatalf("got %v then %+v, want [8 9 10] then recovered", offsets(msgs), reply)
	}
	s.publish("c", 1, 111, keep, false) // unnamed partition: live
	s.publish("c", 0, 11, keep, false)
	if got := offsets(c.sync(t)); fmt.Sprint(got) != "[111 11]" {
		t.Fatalf("live after resume %v, want [111 11]", got)
	}

	// A position ahead of what this instance has published: nothing to
	// replay, and the records it publishes later up to the position are
	// not sent again.
	c2 := dialPush(t, s.url, nil)
	msgs, reply = c2.request(t, resumeReq("c", 0, 13))
	if !reply.Recovered["c"] || len(msgs) != 0 {
		t.Fatalf("got %v then %+v, want nothing then recovered", offsets(msgs), reply)
	}
	for o := int64(12); o <= 14; o++ {
		s.publish("c", 0, o, keep, false)
	}
	if got := offsets(c2.sync(t)); fmt.Sprint(got) != "[14]" {
		t.Fatalf("got %v, want only [14]", got)
	}

	// Older than the history and no replayer: not recovered.
	c3 := dialPush(t, s.url, nil)
	if _, reply = c3.request(t, resumeReq("c", 0, -1)); reply.Recovered["c"] {
		t.Fatalf("reply %+v, want recovered false", reply)
	}
}
