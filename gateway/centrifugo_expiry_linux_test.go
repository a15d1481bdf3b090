package gateway

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	centrifuge "github.com/centrifugal/centrifuge-go"
	"github.com/golang-jwt/jwt/v5"
)

// TestCentrifugoGoSDKTokenExpiresWithoutRefresh: the SDK's refresh fails
// (its GetToken errs the first time, and the SDK retries only after 10s),
// so the token expires on a live connection: kpush closes it with
// Centrifugo's "expired" disconnect (3005). The SDK reconnects with its old
// token, is answered 109 (token expired), calls GetToken and connects
// again with the new token; its subscription comes back.
func TestCentrifugoGoSDKTokenExpiresWithoutRefresh(t *testing.T) {
	g := startAuthGateway(t, func(c *Config) { c.Auth.ClockSkew = time.Second })
	first := testToken(t, secTestSecret, func(m jwt.MapClaims) { m["exp"] = time.Now().Add(2 * time.Second).Unix() })
	var calls atomic.Int32
	codes := make(chan uint32, 16)
	cl := centrifuge.NewJsonClient(cfURL(g.addr), centrifuge.Config{
		Token:             first,
		MinReconnectDelay: 50 * time.Millisecond,
		MaxReconnectDelay: 200 * time.Millisecond,
		GetToken: func(centrifuge.ConnectionTokenEvent) (string, error) {
			if calls.Add(1) == 1 {
				return "", errors.New("token service unavailable")
			}
			return testToken(t, secTestSecret, nil), nil
		},
	})
	t.Cleanup(cl.Close)
	cl.OnConnecting(func(e centrifuge.ConnectingEvent) { codes <- e.Code })
	if err := cl.Connect(); err != nil {
		t.Fatal(err)
	}
	pubs, resubs := cfSub(t, cl, "ticks.AAPL")
	select {
	case code := <-codes:
		if code != 0 { // the first connect
			t.Fatalf("first connecting event with code %d", code)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no connecting event")
	}
	select {
	case code := <-codes:
		if code != cfCloseExpired {
			t.Fatalf("reconnecting after disconnect code %d, want %d", code, cfCloseExpired)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the connection was not closed when its token expired")
	}
	select {
	case <-resubs:
	case <-time.After(20 * time.Second):
		t.Fatal("not subscribed again after the reconnect")
	}
	if n := calls.Load(); n < 2 {
		t.Fatalf("GetToken called %d times, want the failed refresh and the reconnect", n)
	}
	if n := g.metric("kpush_connection_closes_total", "reason", "token_expired"); n != 1 {
		t.Fatalf("kpush_connection_closes_total{reason=token_expired} = %v, want 1", n)
	}
	if n := g.metric("kpush_rejected_total", "reason", "token_expired"); n < 1 {
		t.Fatalf("the reconnect with the old token was not answered 109 (kpush_rejected_total{reason=token_expired} = %v)", n)
	}
	g.publish("ticks.AAPL", `{"v":2}`)
	if e := nextPub(t, pubs); string(e.Data) != `{"v":2}` {
		t.Fatalf("after the reconnect: %s", e.Data)
	}
	if cl.State() != centrifuge.StateConnected {
		t.Fatalf("state %v", cl.State())
	}
}
