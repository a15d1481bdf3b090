package gateway

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/kpush/kpush/gateway/auth"
)

// Authorization and refresh on a session without a socket (session_test.go
// has the fake transport).

const secTestSecret = "kpush-test-secret-kpush-test-secret"

// publicPrefix makes channels starting with a prefix public.
type publicPrefix string

func (p publicPrefix) Public(ch string) bool { return strings.HasPrefix(ch, string(p)) }

func testToken(t testing.TB, secret string, mut func(jwt.MapClaims)) string {
	t.Helper()
	c := jwt.MapClaims{
		"sub":      "42",
		"aud":      "kpush",
		"exp":      time.Now().Add(time.Hour).Unix(),
		"channels": []string{"ticks.*"},
	}
	if mut != nil {
		mut(c)
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// testAuthConfig is auth.mode jwt with HS256 tokens signed with
// secTestSecret for the audience kpush, and the grant user.{sub}.>.
func testAuthConfig() auth.Config {
	return auth.Config{
		Mode:        auth.ModeJWT,
		HS256Secret: secTestSecret,
		Audience:    "kpush",
		ClockSkew:   time.Millisecond,
		Grants:      []string{"user.{sub}.>"},
	}
}

// newAuthSession returns a server with auth.mode jwt (grants user.{sub}.>,
// public channels public.*) and a session holding token's grant (none:
// anonymous).
func newAuthSession(t *testing.T, token string, mutate func(*Config)) (*Server, *fakeLink) {
	t.Helper()
	s := newSessionServer(t, func(c *Config) {
		c.Auth = testAuthConfig()
		if mutate != nil {
			mutate(c)
		}
	})
	s.SetPublicChannels(publicPrefix("public."))
	l := newFakeLink(s, "192.0.2.1")
	if token != "" {
		g, err := s.verifier.Verify(token)
		if err != nil {
			t.Fatalf("verify the test token: %v", err)
		}
		l.setGrant(g)
	}
	return s, l
}

// TestSessionAuthorize: every channel of a subscribe must be public or
// granted by the connection's token (its channels claim, or the configured
// grants with {sub} replaced); one that is not refuses the whole request
// with forbidden, and nothing is subscribed.
func TestSessionAuthorize(t *testing.T) {
	cases := []struct {
		name     string
		anon     bool
		channels string
		want     string // the reply's code, "" for ok
		msg      string // part of the error message
	}{
		{name: "granted by the token", channels: `"ticks.A"`},
		{name: "granted by {sub}", channels: `"user.42.inbox","ticks.B"`},
		{name: "another subject's channel", channels: `"user.43.inbox"`, want: "forbidden", msg: `channel "user.43.inbox" is not granted by this connection's token`},
		{name: "one channel denied denies all", channels: `"ticks.A","news.x"`, want: "forbidden", msg: `"news.x"`},
		{name: "public with a token", channels: `"public.news"`},
		{name: "public anonymous", anon: true, channels: `"public.news"`},
		{name: "anonymous, not public", anon: true, channels: `"public.news","ticks.A"`, want: "forbidden", msg: `channel "ticks.A" is not public; connect with a token that grants it`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tok := testToken(t, secTestSecret, nil) // sub 42, channels ticks.*
			if tc.anon {
				tok = ""
			}
			s, l := newAuthSession(t, tok, nil)
			l.request(`{"op":"subscribe","id":7,"channels":[` + tc.channels + `]}`)
			got := payloads(t, &l.session)
			if len(got) != 1 {
				t.Fatalf("replies %q, want one", got)
			}
			subs := s.router.Stats().Subscriptions
			if tc.want == "" {
				if got[0] != `{"op":"ok","id":7}` || subs != int64(strings.Count(tc.channels, ",")+1) {
					t.Fatalf("reply %s with %d subscriptions, want ok with every channel", got[0], subs)
				}
				return
			}
			var e struct {
				Op, Code, Message string
				ID                int64
			}
			if err := json.Unmarshal([]byte(got[0]), &e); err != nil || e.Op != "error" || e.ID != 7 || e.Code != tc.want || !strings.Contains(e.Message, tc.msg) {
				t.Fatalf("reply %s, want %s with %s", got[0], tc.want, tc.msg)
			}
			if subs != 0 {
				t.Fatalf("a refused subscribe left %d subscriptions", subs)
			}
			if n := count(t, s.metrics.rejected.WithLabelValues("forbidden")); n != 1 {
				t.Fatalf("kpush_rejected_total{reason=forbidden} = %v, want 1", n)
			}
		})
	}
	// Without auth every channel is open.
	s := newSessionServer(t, nil)
	l := newFakeLink(s, "192.0.2.1")
	l.request(`{"op":"subscribe","id":1,"channels":["user.43.inbox"]}`)
	if got := payloads(t, &l.session); len(got) != 1 || got[0] != `{"op":"ok","id":1}` {
		t.Fatalf("auth none: %q", got)
	}
}

// TestSessionRefreshRefused: a refresh is answered with an error, and the
// grant kept, when the token is invalid or expired, names another subject,
// does not expire later, or the server runs without auth.
func TestSessionRefreshRefused(t *testing.T) {
	later := time.Now().Add(2 * time.Hour).Unix()
	cases := []struct {
		name  string
		token func(t *testing.T) string
		want  string
	}{
		{"bad signature", func(t *testing.T) string {
			return testToken(t, "another-secret-another-secret-another", func(c jwt.MapClaims) { c["exp"] = later })
		}, `"code":"invalid_token","message":"invalid token"`},
		{"expired", func(t *testing.T) string {
			return testToken(t, secTestSecret, func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Hour).Unix() })
		}, `"code":"invalid_token","message":"token expired"`},
		{"another subject", func(t *testing.T) string {
			return testToken(t, secTestSecret, func(c jwt.MapClaims) { c["sub"] = "43"; c["exp"] = later })
		}, `"code":"forbidden"`},
		{"not later", func(t *testing.T) string {
			return testToken(t, secTestSecret, func(c jwt.MapClaims) { c["exp"] = time.Now().Add(time.Minute).Unix() })
		}, `"code":"bad_request","message":"the new token does not expire later than the current one"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, l := newAuthSession(t, testToken(t, secTestSecret, nil), nil)
			before := l.sec.grant.Load()
			l.request(`{"op":"refresh","id":3,"token":"` + tc.token(t) + `"}`)
			got := payloads(t, &l.session)
			if len(got) != 1 || !strings.Contains(got[0], `"op":"error","id":3`) || !strings.Contains(got[0], tc.want) {
				t.Fatalf("replies %q, want an error with %s", got, tc.want)
			}
			if l.sec.grant.Load() != before {
				t.Fatal("a refused refresh replaced the grant")
			}
		})
	}
	s := newSessionServer(t, nil)
	l := newFakeLink(s, "192.0.2.1")
	l.request(`{"op":"refresh","id":4,"token":"x"}`)
	if got := payloads(t, &l.session); len(got) != 1 || !strings.Contains(got[0], "refresh needs auth.mode jwt") {
		t.Fatalf("auth none: %q", got)
	}
}

// TestSessionRefreshRevokes: a refresh whose token no longer grants some
// subscribed channels drops them and lists them in its reply; a public
// channel stays. A revoked channel being read back loses its resume state
// at once (with the live frames held for it), and its read-back, when it
// ends, delivers nothing and answers recovered:false, while the other
// channel of the same request is resumed.
func TestSessionRefreshRevokes(t *testing.T) {
	rp := newFakeReplayer(true, span(1, 5)...)
	s, l := newAuthSession(t, testToken(t, secTestSecret, nil), nil) // grants ticks.*, user.42.>
	s.SetReplayer(rp)
	runResumePool(t, s)
	l.request(`{"op":"subscribe","id":1,"channels":["ticks.B","public.news"]}`)
	l.request(`{"op":"subscribe","id":2,"channels":["ticks.A","user.42.x"],"since":{"ticks.A":{"0":0},"user.42.x":{"0":0}}}`)
	rp.waitStarted(t) // ticks.A is being read back
	if n := s.Publish(&Message{Channel: "ticks.A", Offset: 6, Data: []byte(`6`)}, nil); n != 1 {
		t.Fatalf("live record reached %d connections, want 1 (held)", n)
	}
	l.mu.Lock()
	held := l.out.heldCount
	l.mu.Unlock()
	if held != 1 {
		t.Fatalf("%d live frames held for the read-back, want 1", held)
	}
	newer := testToken(t, secTestSecret, func(c jwt.MapClaims) {
		c["channels"] = []string{"news.>"}
		c["exp"] = time.Now().Add(2 * time.Hour).Unix()
	})
	l.request(`{"op":"refresh","id":3,"token":"` + newer + `"}`)
	l.mu.Lock()
	_, resuming := l.out.resume["ticks.A"]
	held, subs := l.out.heldCount, strings.Join(l.subs, ",")
	l.mu.Unlock()
	if resuming || held != 0 || subs != "public.news,user.42.x" {
		t.Fatalf("after the refresh: ticks.A resume state kept %v, %d frames held, subscriptions %s", resuming, held, subs)
	}
	if got := payloads(t, &l.session); fmt.Sprint(got) != `[{"op":"ok","id":1} {"op":"ok","id":3,"revoked":["ticks.B","ticks.A"]}]` {
		t.Fatalf("replies %q, want the refresh revoking ticks.B and ticks.A", got)
	}
	close(rp.release)
	got := collect(t, &l.session, `"id":2`)
	var replayed int
	for _, p := range got[:len(got)-1] {
		if !strings.Contains(p, `"ch":"user.42.x"`) {
			t.Fatalf("the read-back delivered %s", p)
		}
		replayed++
	}
	var ok struct {
		Op        string
		ID        int64
		Recovered map[string]bool
	}
	if err := json.Unmarshal([]byte(got[len(got)-1]), &ok); err != nil || replayed != 5 || ok.Op != "ok" || ok.ID != 2 ||
		fmt.Sprint(ok.Recovered) != "map[ticks.A:false user.42.x:true]" {
		t.Fatalf("after the read-back: %d records then %s, want 5 then ok with ticks.A not recovered", replayed, got[len(got)-1])
	}
	for _, ch := range []string{"ticks.A", "ticks.B"} {
		if n := s.Publish(&Message{Channel: ch, Offset: 7, Data: []byte(`7`)}, nil); n != 0 {
			t.Fatalf("revoked %s reached %d connections", ch, n)
		}
	}
	if n := s.Publish(&Message{Channel: "public.news", Offset: 1, Data: []byte(`1`)}, nil); n != 1 {
		t.Fatalf("public.news reached %d connections, want 1", n)
	}
	s.router.Unsubscribe(l, "public.news", "user.42.x")
}
