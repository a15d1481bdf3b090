package gateway

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/kpush/kpush/router"
)

// Centrifugo's client protocol without a socket, on any system: commands go
// straight to handleCentrifugo on a session whose transport is fakeLink,
// with its own cfSession, and the tests read the exact reply bytes queued.
// Records reach the session through the router as on a real connection and
// are turned into Centrifugo's form by cfFrameLocked, as a flush does.

// cfCommandLine hands one line of commands (a text frame) to l's
// Centrifugo session and reports whether the connection stays open.
func cfCommandLine(l *fakeLink, cf *cfSession, line string) bool {
	return l.srv.handleCentrifugo(l, cf, []byte(line))
}

// cfFlushed turns every queued frame into Centrifugo's form, as the
// connection's flush does, and returns the text payloads, forgetting them
// as written.
func cfFlushed(t *testing.T, l *fakeLink, cf *cfSession) []string {
	t.Helper()
	l.mu.Lock()
	for i, f := range l.out.frames {
		nf := l.cfFrameLocked(cf, i, f)
		l.out.replaced(f, nf)
	}
	l.mu.Unlock()
	return payloads(t, &l.session)
}

// cfConnected returns a fakeLink whose Centrifugo session has connected
// (without a token), its connect reply read.
func cfConnected(t *testing.T, s *Server) (*fakeLink, *cfSession) {
	t.Helper()
	l := newFakeLink(s, "192.0.2.1")
	cf := &cfSession{}
	if !cfCommandLine(l, cf, `{"id":1,"connect":{}}`) {
		t.Fatal("the connect closed the connection")
	}
	if got := payloads(t, &l.session); len(got) != 1 || !strings.HasPrefix(got[0], `{"id":1,"connect":`) {
		t.Fatalf("connect replies %q", got)
	}
	t.Cleanup(func() { l.dropSubscriptions(l) })
	return l, cf
}

func wantReplies(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("%s:\n got %q\nwant %q", what, got, want)
	}
}

func TestCentrifugoSessionConnect(t *testing.T) {
	s := newSessionServer(t, nil)
	l := newFakeLink(s, "192.0.2.1")
	cf := &cfSession{}
	if !cfCommandLine(l, cf, "\n  {\"id\":1,\"connect\":{}}\n\n") {
		t.Fatal("the connect closed the connection")
	}
	if !cf.connected || len(cf.client) != 16 {
		t.Fatalf("after connect: connected %v, client %q", cf.connected, cf.client)
	}
	ping := max(1, int(s.lim().PingInterval.Seconds()))
	wantReplies(t, "connect", payloads(t, &l.session),
		`{"id":1,"connect":{"client":"`+cf.client+`","version":"kpush","ping":`+strconv.Itoa(ping)+`,"pong":true}}`)

	// One frame, several commands: each is answered in order.
	if !cfCommandLine(l, cf, `{"id":2,"ping":{}}`+"\n"+`{"id":3,"publish":{"channel":"a","data":1}}`+"\n"+
		`{"id":4,"history":{}}`+"\n"+`{"id":5,"frobnicate":{}}`+"\n"+`{}`+"\n"+`{"send":{"data":1}}`) {
		t.Fatal("a served command closed the connection")
	}
	wantReplies(t, "ping, publish, history, unknown", payloads(t, &l.session),
		`{"id":2,"ping":{}}`,
		`{"id":3,"error":{"code":108,"message":"not available: kpush only delivers records"}}`,
		`{"id":4,"error":{"code":108,"message":"not available: kpush only delivers records"}}`,
		`{"id":5,"error":{"code":104,"message":"method not found"}}`)

	// A second connect closes with 3501.
	if cfCommandLine(l, cf, `{"id":6,"connect":{}}`) {
		t.Fatal("a second connect left the connection open")
	}
	l.mu.Lock()
	n := len(l.out.frames)
	last := l.out.frames[n-1].Data
	l.mu.Unlock()
	if code := closeCodeOf(t, last); code != cfCloseBadRequest || l.closings != 1 {
		t.Fatalf("second connect: close code %d, %d closings", code, l.closings)
	}
}

func TestCentrifugoSessionRefusesBeforeConnect(t *testing.T) {
	for _, line := range []string{`{"id":1,"subscribe":{"channel":"a"}}`, `{"id":1,"ping":{}}`, `{"id":1,`} {
		s := newSessionServer(t, nil)
		l := newFakeLink(s, "192.0.2.1")
		if cfCommandLine(l, &cfSession{}, line) {
			t.Fatalf("%s before connect left the connection open", line)
		}
		l.mu.Lock()
		frames := l.out.frames
		l.mu.Unlock()
		if len(frames) != 1 || closeCodeOf(t, frames[0].Data) != cfCloseBadRequest {
			t.Fatalf("%s before connect: %d frames queued, want one close with 3501", line, len(frames))
		}
		if s.router.Subscribers("a") != 0 {
			t.Fatalf("%s before connect subscribed", line)
		}
	}
}

func TestCentrifugoSessionConnectToken(t *testing.T) {
	s, _ := newAuthSession(t, "", nil)
	expired := testToken(t, secTestSecret, func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Hour).Unix() })

	l := newFakeLink(s, "192.0.2.1")
	cf := &cfSession{}
	if !cfCommandLine(l, cf, `{"id":1,"connect":{"token":"`+expired+`"}}`) {
		t.Fatal("an expired connect token closed the connection (the SDKs ask for a new one on 109)")
	}
	wantReplies(t, "expired token", payloads(t, &l.session), `{"id":1,"error":{"code":109,"message":"token expired"}}`)
	if cf.connected {
		t.Fatal("connected with an expired token")
	}

	if cfCommandLine(l, cf, `{"id":2,"connect":{"token":"`+testToken(t, "another secret", nil)+`"}}`) {
		t.Fatal("a token with a bad signature left the connection open")
	}
	l.mu.Lock()
	last := l.out.frames[len(l.out.frames)-1].Data
	l.mu.Unlock()
	if code := closeCodeOf(t, last); code != cfCloseInvalidToken {
		t.Fatalf("bad signature: close code %d, want %d", code, cfCloseInvalidToken)
	}

	l = newFakeLink(s, "192.0.2.1")
	cf = &cfSession{}
	if !cfCommandLine(l, cf, `{"id":3,"connect":{"token":"`+testToken(t, secTestSecret, nil)+`"}}`) {
		t.Fatal("a good token closed the connection")
	}
	got := payloads(t, &l.session)
	re := regexp.MustCompile(`^\{"id":3,"connect":\{"client":"` + cf.client + `","version":"kpush","ping":\d+,"pong":true,"expires":true,"ttl":(\d+)\}\}$`)
	m := []string(nil)
	if len(got) == 1 {
		m = re.FindStringSubmatch(got[0])
	}
	if m == nil {
		t.Fatalf("connect with a token: %q", got)
	}
	if ttl, _ := strconv.Atoi(m[1]); ttl < 3500 || ttl > 3600 {
		t.Fatalf("ttl %d for a token expiring in an hour", ttl)
	}
	if g := l.sec.grant.Load(); g == nil || g.Subject != "42" {
		t.Fatalf("the connect token's grant was not kept: %+v", g)
	}
}

func TestCentrifugoSessionSubscribe(t *testing.T) {
	s := newSessionServer(t, func(cfg *Config) { cfg.MaxSubscriptions = 2 })
	l, cf := cfConnected(t, s)
	keep := &router.Retention{Last: true, HistoryRecords: 10, HistoryBytes: 1 << 20, HistoryAge: time.Minute}
	s.Publish(&Message{Channel: "c.a", Topic: "t", Partition: 3, Offset: 7, Epoch: 40, Data: []byte(`{"v":1}`)}, keep)

	cfCommandLine(l, cf, `{"id":2,"subscribe":{"channel":"c.a"}}`)
	wantReplies(t, "subscribe with a retained record", payloads(t, &l.session),
		`{"id":2,"subscribe":{"recoverable":true,"positioned":true,"epoch":"t:3:14","offset":7,"recovered":true,"publications":[{"data":{"v":1},"offset":7}]}}`)
	if p, ok := cf.pos["c.a"]; !ok || p != 3 {
		t.Fatalf("position noted for c.a: %d %v", p, ok)
	}

	cfCommandLine(l, cf, `{"id":3,"subscribe":{"channel":"c.a"}}`+"\n"+
		`{"id":4,"subscribe":{"channel":"bad channel"}}`+"\n"+
		`{"id":5,"subscribe":{"channel":"c.b","delta":"xdelta"}}`+"\n"+
		`{"id":6,"subscribe":{"channel":"c.b","delta":"fossil"}}`+"\n"+
		`{"id":7,"subscribe":{"channel":"c.c"}}`)
	wantReplies(t, "refused subscribes", payloads(t, &l.session),
		`{"id":3,"error":{"code":105,"message":"already subscribed"}}`,
		`{"id":4,"error":{"code":107,"message":"channel \"bad channel\" must match ^[A-Za-z0-9_.:@/-]{1,200}$"}}`,
		`{"id":5,"error":{"code":107,"message":"delta \"xdelta\" is not supported (only \"fossil\")"}}`,
		`{"id":6,"subscribe":{"delta":true}}`,
		`{"id":7,"error":{"code":106,"message":"limit exceeded"}}`)
	if _, ok := cf.delta["c.b"]; !ok {
		t.Fatal("c.b's delta subscription was not noted")
	}
	if s.router.Subscribers("c.c") != 0 || s.router.Subscribers("bad channel") != 0 {
		t.Fatal("a refused subscribe reached the router")
	}

	// A live record is pushed in Centrifugo's form once flushed.
	s.Publish(&Message{Channel: "c.a", Topic: "t", Partition: 3, Offset: 8, Epoch: 40, Data: []byte(`2`)}, keep)
	wantReplies(t, "live record", cfFlushed(t, l, cf), `{"push":{"channel":"c.a","pub":{"data":2,"offset":8}}}`)

	// A record of another partition: the channel's offsets no longer say
	// where the client is: 2500, and its records wait for the resubscribe.
	s.Publish(&Message{Channel: "c.a", Topic: "t", Partition: 4, Offset: 1, Epoch: 41, Data: []byte(`3`)}, keep)
	wantReplies(t, "record of another partition", cfFlushed(t, l, cf),
		`{"push":{"channel":"c.a","unsubscribe":{"code":2500,"reason":"insufficient state"}}}`)
	if mixed, stale := cf.stale["c.a"]; !stale || !mixed {
		t.Fatalf("c.a after a record of another partition: stale %v mixed %v", stale, mixed)
	}
	// The resubscribe with recover replaces the subscription and is not
	// exact: recovered false, no position (two partitions).
	cfCommandLine(l, cf, `{"id":8,"subscribe":{"channel":"c.a","recover":true,"epoch":"t:3:14","offset":8}}`)
	wantReplies(t, "resubscribe after 2500", payloads(t, &l.session),
		`{"id":8,"subscribe":{"was_recovering":true,"publications":[{"data":3,"offset":1}]}}`)
	if _, stale := cf.stale["c.a"]; stale || s.router.Subscribers("c.a") != 1 {
		t.Fatalf("after the resubscribe: stale %v, %d subscribers", stale, s.router.Subscribers("c.a"))
	}
}

func TestCentrifugoSessionRecoverNewest(t *testing.T) {
	s := newSessionServer(t, nil)
	l, cf := cfConnected(t, s)
	keep := &router.Retention{Last: true, HistoryRecords: 10, HistoryBytes: 1 << 20, HistoryAge: time.Minute}
	s.Publish(&Message{Channel: "r.a", Topic: "t", Partition: 0, Offset: 5, Epoch: 1, Data: []byte(`1`)}, keep)
	cfCommandLine(l, cf, `{"id":2,"subscribe":{"channel":"r.a","recover":true,"epoch":"t:0:1","offset":5}}`)
	wantReplies(t, "recover from the newest record", payloads(t, &l.session),
		`{"id":2,"subscribe":{"recoverable":true,"positioned":true,"epoch":"t:0:1","offset":5,"was_recovering":true,"recovered":true}}`)

	// An epoch kpush did not give, with the reject flag: 112, nothing
	// subscribed for live records until the resubscribe.
	cfCommandLine(l, cf, `{"id":3,"subscribe":{"channel":"r.b","recover":true,"epoch":"nonsense","offset":5,"flag":2}}`)
	wantReplies(t, "unrecoverable with the reject flag", payloads(t, &l.session),
		`{"id":3,"error":{"code":112,"message":"unrecoverable position"}}`)
	if _, stale := cf.stale["r.b"]; !stale {
		t.Fatal("r.b answered 112 is not waiting for its resubscribe")
	}
}

func TestCentrifugoSessionUnsubscribe(t *testing.T) {
	s := newSessionServer(t, nil)
	l, cf := cfConnected(t, s)
	cfCommandLine(l, cf, `{"id":2,"subscribe":{"channel":"u.a","delta":"fossil"}}`+"\n"+`{"id":3,"subscribe":{"channel":"u.b"}}`)
	wantReplies(t, "subscribes", payloads(t, &l.session), `{"id":2,"subscribe":{"delta":true}}`, `{"id":3,"subscribe":{}}`)

	cfCommandLine(l, cf, `{"id":4,"unsubscribe":{"channel":"u.a"}}`+"\n"+`{"id":5,"unsubscribe":{"channel":"never"}}`)
	wantReplies(t, "unsubscribes", payloads(t, &l.session), `{"id":4,"unsubscribe":{}}`, `{"id":5,"unsubscribe":{}}`)
	if _, ok := cf.delta["u.a"]; ok {
		t.Fatal("u.a's delta state outlived its unsubscribe")
	}
	l.mu.Lock()
	subs := append([]string(nil), l.subs...)
	l.mu.Unlock()
	if len(subs) != 1 || subs[0] != "u.b" || s.router.Subscribers("u.a") != 0 || s.router.Subscribers("u.b") != 1 {
		t.Fatalf("after unsubscribing u.a: subs %q, router u.a %d u.b %d", subs, s.router.Subscribers("u.a"), s.router.Subscribers("u.b"))
	}
	if n := s.Publish(&Message{Channel: "u.a", Offset: 1, Data: []byte(`1`)}, nil); n != 0 {
		t.Fatalf("a record of the unsubscribed channel reached %d connections", n)
	}
	// Subscribing again is allowed.
	cfCommandLine(l, cf, `{"id":6,"subscribe":{"channel":"u.a"}}`)
	wantReplies(t, "subscribe again", payloads(t, &l.session), `{"id":6,"subscribe":{}}`)
}

func TestCentrifugoSessionRefresh(t *testing.T) {
	t.Run("no auth", func(t *testing.T) {
		s := newSessionServer(t, nil)
		l, cf := cfConnected(t, s)
		cfCommandLine(l, cf, `{"id":2,"refresh":{"token":"anything"}}`)
		wantReplies(t, "refresh without auth", payloads(t, &l.session),
			`{"id":2,"refresh":{"client":"`+cf.client+`","version":"kpush"}}`)
	})
	t.Run("auth", func(t *testing.T) {
		s, _ := newAuthSession(t, "", nil)
		l := newFakeLink(s, "192.0.2.1")
		cf := &cfSession{}
		cfCommandLine(l, cf, `{"id":1,"connect":{"token":"`+testToken(t, secTestSecret, nil)+`"}}`)
		payloads(t, &l.session)
		first := l.sec.grant.Load()

		expired := testToken(t, secTestSecret, func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Hour).Unix() })
		other := testToken(t, secTestSecret, func(c jwt.MapClaims) { c["sub"] = "43" })
		cfCommandLine(l, cf, `{"id":2,"refresh":{"token":"`+testToken(t, "another secret", nil)+`"}}`+"\n"+
			`{"id":3,"refresh":{"token":"`+expired+`"}}`+"\n"+
			`{"id":4,"refresh":{"token":"`+other+`"}}`)
		wantReplies(t, "refused refreshes", payloads(t, &l.session),
			`{"id":2,"error":{"code":101,"message":"invalid token"}}`,
			`{"id":3,"error":{"code":109,"message":"token expired"}}`,
			`{"id":4,"error":{"code":103,"message":"a refreshed token must have the same subject"}}`)
		if l.sec.grant.Load() != first {
			t.Fatal("a refused refresh replaced the grant")
		}

		later := testToken(t, secTestSecret, func(c jwt.MapClaims) { c["exp"] = time.Now().Add(2 * time.Hour).Unix() })
		cfCommandLine(l, cf, `{"id":5,"refresh":{"token":"`+later+`"}}`)
		got := payloads(t, &l.session)
		re := regexp.MustCompile(`^\{"id":5,"refresh":\{"client":"` + cf.client + `","version":"kpush","expires":true,"ttl":(\d+)\}\}$`)
		var m []string
		if len(got) == 1 {
			m = re.FindStringSubmatch(got[0])
		}
		if m == nil {
			t.Fatalf("refresh: %q", got)
		}
		if ttl, _ := strconv.Atoi(m[1]); ttl < 7100 || ttl > 7200 {
			t.Fatalf("ttl %d for a token expiring in two hours", ttl)
		}
		if g := l.sec.grant.Load(); g == first || g.Subject != "42" {
			t.Fatal("the refreshed grant was not kept")
		}
	})
}
