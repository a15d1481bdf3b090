package gateway

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/kpush/kpush/router"
)

// FuzzParseRequest: no input crashes the request parser, and what it accepts
// is a well-formed request.
func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		`{"op":"subscribe","id":1,"channels":["ticks.AAPL"]}`,
		`{"op":"subscribe","id":2,"channels":["a","b"],"since":{"a":{"0":5}},"snapshot":true}`,
		`{"op":"unsubscribe","id":3,"channels":["a"]}`,
		`{"op":"refresh","id":5,"token":"x.y.z"}`,
		`{"op":"ping","id":9}`,
		`{"op":"subscribe","channels":[]}`,
		`{"op":"nope"}`, `{}`, `[]`, `{"op":"ping"} {}`, `{"id":1e400}`, `{`, `null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := ParseRequest(b, 10)
		if err != nil {
			if _, ok := err.(*ProtocolError); !ok {
				t.Fatalf("error %T is not a *ProtocolError", err)
			}
			// The error reply must itself be valid JSON.
			pe := err.(*ProtocolError)
			frame := errorFrame(pe.ID, pe.Code, pe.Message)
			payload := frame[2:]
			if frame[1] == 126 {
				payload = frame[4:]
			}
			if !json.Valid(payload) {
				t.Fatalf("error reply is not JSON: %q", frame)
			}
			return
		}
		switch req.Op {
		case "subscribe", "unsubscribe":
			if len(req.Channels) == 0 || len(req.Channels) > 10 {
				t.Fatalf("accepted %d channels", len(req.Channels))
			}
			for _, ch := range req.Channels {
				if !router.ValidChannel(ch) {
					t.Fatalf("accepted invalid channel %q", ch)
				}
			}
		case "refresh":
			if req.Token == "" {
				t.Fatal("accepted refresh without a token")
			}
		case "ping":
		default:
			t.Fatalf("accepted op %q", req.Op)
		}
	})
}

// FuzzHandshakeToken: the three token transports never crash and never
// return a token the input did not hold.
func FuzzHandshakeToken(f *testing.F) {
	f.Add([]byte("Bearer abc.def.ghi"), []byte("kpush.v1, kpush.bearer.abc"), []byte("/ws?token=abc&x=1"))
	f.Add([]byte("bearer"), []byte(","), []byte("/ws?token=%zz"))
	f.Fuzz(func(t *testing.T, authz, proto, uri []byte) {
		if tok, ok := bearerToken(authz); ok && (tok == "" || !bytes.Contains(authz, []byte(tok))) {
			t.Fatalf("bearer token %q from %q", tok, authz)
		}
		if sel, tok := selectProtocol(proto); (sel != "" && sel != ProtocolV1) || (tok != "" && !bytes.Contains(proto, []byte(tok))) {
			t.Fatalf("protocol %q token %q from %q", sel, tok, proto)
		}
		_ = queryToken(uri)
	})
}
