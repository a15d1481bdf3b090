package gateway

import (
	"bytes"
	"testing"

	"github.com/gobwas/ws"
)

// FuzzRequestHead: reading and checking an upgrade request never crashes;
// the head and the bytes behind it are the input, split where the head ends,
// and nothing past the limit is taken.
func FuzzRequestHead(f *testing.F) {
	f.Add([]byte(upgradeRequestSeed+"\r\n"), 2048)
	f.Add([]byte(upgradeRequestSeed+"Host: b\r\n\r\n\x81\x85\x01\x02\x03\x04hello"), 4096)
	f.Add([]byte("GET / HTTP/1.1\n\n"), 1024)
	f.Add([]byte("GET / HTTP/1.1\r\nSec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!==\r\n\r\n"), 1024)
	f.Fuzz(func(t *testing.T, b []byte, limit int) {
		limit = 1 + int(uint(limit)%(1<<15))
		head, rest, err := readHead(bytes.NewReader(b), limit)
		if err != nil {
			if head != nil || rest != nil {
				t.Fatalf("error %v with a head", err)
			}
			return
		}
		if !bytes.HasSuffix(head, []byte("\n\n")) && !bytes.HasSuffix(head, []byte("\n\r\n")) {
			t.Fatalf("head %q does not end with a blank line", head)
		}
		if !bytes.HasPrefix(b, append(bytes.Clone(head), rest...)) {
			t.Fatalf("head %q + rest %q is not a prefix of the input", head, rest)
		}
		if len(head)+len(rest) > limit {
			t.Fatalf("read %d bytes with limit %d", len(head)+len(rest), limit)
		}
		if err := checkHead(head); err != nil {
			if _, ok := err.(*ws.ConnectionRejectedError); !ok {
				t.Fatalf("checkHead returned %T, want a rejection", err)
			}
		}
	})
}

const upgradeRequestSeed = "GET /ws HTTP/1.1\r\nHost: kpush\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
	"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
