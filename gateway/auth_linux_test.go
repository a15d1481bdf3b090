package gateway

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/golang-jwt/jwt/v5"
	"github.com/kpush/kpush/gateway/client"
)

func startAuthGateway(t testing.TB, mutate func(*Config)) *secGateway {
	t.Helper()
	g := startSecGateway(t, func(c *Config) {
		c.Auth = testAuthConfig()
		c.PingInterval = 200 * time.Millisecond // sweep (and expiry checks) every tick
		c.IdleTimeout = 10 * time.Second
		if mutate != nil {
			mutate(c)
		}
	})
	g.srv.SetPublicChannels(publicPrefix("public."))
	return g
}

func bearer(tok string) *client.DialOptions {
	return &client.DialOptions{Header: http.Header{"Authorization": {"Bearer " + tok}}}
}

// handshakeStatus returns the HTTP status of a refused upgrade.
func handshakeStatus(t testing.TB, err error) int {
	t.Helper()
	var se ws.StatusError
	if !errors.As(err, &se) {
		t.Fatalf("dial error %v is not an HTTP status", err)
	}
	return int(se)
}

func TestJWTHandshake(t *testing.T) {
	g := startAuthGateway(t, nil)
	w := newWitness(t, g, bearer(testToken(t, secTestSecret, func(c jwt.MapClaims) { c["channels"] = []string{"witness.>"} })))
	valid := testToken(t, secTestSecret, nil)

	cases := []struct {
		name   string
		url    string
		opts   *client.DialOptions
		status int // 0: upgrade succeeds
		reason string
	}{
		{"valid bearer header", g.url, bearer(valid), 0, ""},
		{"valid query parameter", g.url + "?token=" + url.QueryEscape(valid), nil, 0, ""},
		{"valid subprotocol", g.url, &client.DialOptions{Protocols: []string{ProtocolV1, ProtocolBearerPrefix + valid}}, 0, ""},
		{"missing token is anonymous", g.url, nil, 0, ""},
		{"expired", g.url, bearer(testToken(t, secTestSecret, func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Minute).Unix() })), 401, "token_expired"},
		{"wrongly signed", g.url, bearer(testToken(t, "another-secret-another-secret-another", nil)), 401, "invalid_token"},
		{"wrong audience", g.url, bearer(testToken(t, secTestSecret, func(c jwt.MapClaims) { c["aud"] = "other-service" })), 401, "invalid_token"},
		{"garbage", g.url + "?token=abc", nil, 401, "invalid_token"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := g.rejected(tc.reason)
			c, err := dialClient(t, tc.url, tc.opts)
			if tc.status != 0 {
				if err == nil {
					t.Fatal("upgrade succeeded")
				}
				if got := handshakeStatus(t, err); got != tc.status {
					t.Fatalf("HTTP %d, want %d", got, tc.status)
				}
				if got := g.rejected(tc.reason); got != before+1 {
					t.Fatalf("kpush_rejected_total{reason=%q} = %v, want %v", tc.reason, got, before+1)
				}
				w.check(t)
				return
			}
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			// Public channels are open to everyone.
			if f := c.subscribe(t, "public.news"); f.Op != "ok" {
				t.Fatalf("subscribe public.news: %+v", f)
			}
			f := c.subscribe(t, "ticks.AAPL")
			if tc.opts == nil && !strings.Contains(tc.url, "token=") {
				if f.Op != "error" || f.Code != CodeForbidden {
					t.Fatalf("anonymous subscribe ticks.AAPL: %+v, want forbidden", f)
				}
			} else if f.Op != "ok" {
				t.Fatalf("subscribe ticks.AAPL with a token: %+v", f)
			}
			w.check(t)
		})
	}
}

func TestChannelPermissions(t *testing.T) {
	g := startAuthGateway(t, nil)
	c := mustDial(t, g.url, bearer(testToken(t, secTestSecret, func(c jwt.MapClaims) {
		c["channels"] = []string{"ticks.*", "news.eu.>"}
	})))
	other := mustDial(t, g.url, bearer(testToken(t, secTestSecret, func(c jwt.MapClaims) { c["sub"] = "43" })))
	cases := []struct {
		channels []string
		ok       bool
	}{
		{[]string{"ticks.AAPL"}, true},
		{[]string{"ticks.AAPL.extra"}, false},
		{[]string{"news.eu.fx", "news.eu.rates.10y"}, true},
		{[]string{"news.us.fx"}, false},
		{[]string{"user.42.orders"}, true}, // grants: user.{sub}.>
		{[]string{"user.43.orders"}, false},
		{[]string{"ticks.MSFT", "orders.all"}, false}, // one forbidden channel refuses the request
		{[]string{"public.status"}, true},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.channels, ","), func(t *testing.T) {
			before := g.rejected("forbidden")
			f := c.subscribe(t, tc.channels...)
			if tc.ok {
				if f.Op != "ok" {
					t.Fatalf("got %+v, want ok", f)
				}
				return
			}
			if f.Op != "error" || f.Code != CodeForbidden {
				t.Fatalf("got %+v, want forbidden", f)
			}
			if g.rejected("forbidden") != before+1 {
				t.Fatal("forbidden not counted in kpush_rejected_total")
			}
		})
	}
	// Nothing of the refused request was subscribed.
	if n := g.publish("ticks.MSFT", `1`); n != 0 {
		t.Fatalf("ticks.MSFT reached %d connections after a refused subscribe", n)
	}
	// The other user reaches their own channel, not 42's.
	if f := other.subscribe(t, "user.43.orders"); f.Op != "ok" {
		t.Fatalf("user 43 own channel: %+v", f)
	}
	g.publish("user.42.orders", `{"o":1}`)
	g.publish("user.43.orders", `{"o":2}`)
	if f := c.expectMsg(t, "user.42.orders"); string(f.Data) != `{"o":1}` {
		t.Fatalf("user 42 got %s", f.Data)
	}
	if f := other.next(t); f.Ch != "user.43.orders" {
		t.Fatalf("user 43 got %+v first", f)
	}
}

func TestTokenExpiryAndRefresh(t *testing.T) {
	g := startAuthGateway(t, nil)
	w := newWitness(t, g, bearer(testToken(t, secTestSecret, func(c jwt.MapClaims) { c["channels"] = []string{"witness.>"} })))
	exp := time.Now().Add(1500 * time.Millisecond)
	short := func(c jwt.MapClaims) { c["exp"] = exp.Unix() + 1 } // exp has second resolution
	expiresAt := time.Unix(exp.Unix()+1, 0)

	lapsing := mustDial(t, g.url, bearer(testToken(t, secTestSecret, short)))
	refreshed := mustDial(t, g.url, bearer(testToken(t, secTestSecret, short)))
	if f := refreshed.subscribe(t, "ticks.AAPL", "user.42.orders"); f.Op != "ok" {
		t.Fatalf("subscribe: %+v", f)
	}

	// Refusals leave the connection and its expiry as they were.
	for _, tc := range []struct {
		name, token, code string
	}{
		{"wrongly signed", testToken(t, "another-secret-another-secret-another", nil), CodeInvalidToken},
		{"expired", testToken(t, secTestSecret, func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Minute).Unix() }), CodeInvalidToken},
		{"other subject", testToken(t, secTestSecret, func(c jwt.MapClaims) { c["sub"] = "43" }), CodeForbidden},
		{"not newer", testToken(t, secTestSecret, short), CodeBadRequest},
	} {
		if f := refreshed.request(t, &client.Request{Op: "refresh", Token: tc.token}); f.Op != "error" || f.Code != tc.code {
			t.Fatalf("refresh with %s token: %+v, want error %s", tc.name, f, tc.code)
		}
	}
	// A newer token that no longer grants ticks.*: the subscription is
	// revoked, the user's own channel stays.
	newer := testToken(t, secTestSecret, func(c jwt.MapClaims) { c["channels"] = []string{"news.>"} })
	f := refreshed.request(t, &client.Request{Op: "refresh", Token: newer})
	if f.Op != "ok" || len(f.Revoked) != 1 || f.Revoked[0] != "ticks.AAPL" {
		t.Fatalf("refresh: %+v, want ok revoking ticks.AAPL", f)
	}
	if n := g.publish("ticks.AAPL", `1`); n != 0 {
		t.Fatalf("revoked channel still reaches %d connections", n)
	}

	// Past the first token's expiry: the lapsing connection is closed with
	// 4001; the refreshed one stays and receives.
	if code := lapsing.closeCode(t); code != int(CloseTokenExpired) {
		t.Fatalf("close code %d, want 4001", code)
	}
	if time.Now().Before(expiresAt) {
		t.Fatalf("closed %s before the token expired", time.Until(expiresAt))
	}
	secWaitUntil(t, 5*time.Second, "the refreshed connection to outlive the old expiry", func() bool {
		return time.Now().After(expiresAt.Add(300 * time.Millisecond))
	})
	g.publish("user.42.orders", `{"still":"here"}`)
	if f := refreshed.expectMsg(t, "user.42.orders"); string(f.Data) != `{"still":"here"}` {
		t.Fatalf("refreshed got %s", f.Data)
	}
	w.check(t)
}

func TestRefreshWithoutAuth(t *testing.T) {
	g := startSecGateway(t, nil)
	c := mustDial(t, g.url, nil)
	if f := c.request(t, &client.Request{Op: "refresh", Token: "x"}); f.Op != "error" || f.Code != CodeBadRequest {
		t.Fatalf("refresh with auth.mode none: %+v", f)
	}
	// Without auth every channel is open, whatever a token would say.
	if f := c.subscribe(t, "anything.at.all"); f.Op != "ok" {
		t.Fatalf("subscribe: %+v", f)
	}
}
