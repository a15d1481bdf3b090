package gateway

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	centrifuge "github.com/centrifugal/centrifuge-go"
	"github.com/centrifugal/protocol"
	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/kpush/kpush/router"
)

// TestCentrifugoGoSDKProtobuf: the unmodified centrifuge-go SDK in its
// Protobuf format (binary frames, the centrifuge-protobuf subprotocol):
// the snapshot on subscribe, exact data and offsets, "not available" for
// publish and history, and a cut recovered with no gap and no duplicate.
func TestCentrifugoGoSDKProtobuf(t *testing.T) {
	keep := &router.Retention{Last: true, HistoryRecords: 1000, HistoryBytes: 1 << 20, HistoryAge: time.Minute}
	g := startSSEServer(t, nil)
	pub := func(from, to int64) {
		for o := from; o <= to; o++ {
			g.srv.Publish(&Message{Channel: "ticks.AAPL", Topic: "ticks", Partition: 1, Offset: o, Epoch: 4, Timestamp: time.Now().UnixMilli(),
				Data: []byte(fmt.Sprintf(`{"px":%d.5,"o":%d}`, o, o))}, keep)
		}
	}
	pub(10, 10)
	cl := centrifuge.NewProtobufClient(cfURL(g.addr), centrifuge.Config{MinReconnectDelay: 50 * time.Millisecond, MaxReconnectDelay: 200 * time.Millisecond})
	t.Cleanup(cl.Close)
	if err := cl.Connect(); err != nil {
		t.Fatal(err)
	}
	pubs, resubs := cfSub(t, cl, "ticks.AAPL")
	for _, c := range g.srv.conns.Snapshot() {
		if cf := c.cfState(); cf == nil || !cf.proto {
			t.Fatal("the SDK's session is not in the Protobuf format")
		}
	}
	var got []int64
	read := func(n int) {
		for len(got) < n {
			e := nextPub(t, pubs)
			o := 10 + int64(len(got))
			if int64(e.Offset) != o || string(e.Data) != fmt.Sprintf(`{"px":%d.5,"o":%d}`, o, o) {
				t.Fatalf("after %v: offset %d data %s", got, e.Offset, e.Data)
			}
			got = append(got, o)
		}
	}
	read(1) // the snapshot
	pub(11, 40)
	read(31)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for name, call := range map[string]func() error{
		"publish": func() error { _, err := cl.Publish(ctx, "ticks.AAPL", []byte(`{}`)); return err },
		"history": func() error { _, err := cl.History(ctx, "ticks.AAPL"); return err },
	} {
		var e *centrifuge.Error
		if err := call(); !errors.As(err, &e) || e.Code != cfErrNotAvailable {
			t.Fatalf("%s: %v, want error %d", name, err, cfErrNotAvailable)
		}
	}
	for _, c := range g.srv.conns.Snapshot() {
		c.abort() // the cut
	}
	pub(41, 60)
	if e := recv(t, resubs, "resubscribe"); !e.WasRecovering || !e.Recovered || e.StreamPosition == nil || e.StreamPosition.Epoch != "ticks:1:4" {
		t.Fatalf("resubscribed with %+v", e)
	}
	pub(61, 70)
	read(61)
	if fmt.Sprint(got) != fmt.Sprint(span(10, 70)) {
		t.Fatalf("got %v", got)
	}
}

// TestCentrifugoProtobufBadFrames: binary frames that do not hold whole
// Commands close the session with 3501 (bad request), one larger than
// gateway.max_message_bytes (4096 by default) with 1009, and a binary
// frame on a JSON session is refused as before (1003); kpush stays up.
func TestCentrifugoProtobufBadFrames(t *testing.T) {
	g := startSSEServer(t, nil)
	for _, tc := range []struct {
		name  string
		url   string
		proto []string
		frame []byte
		code  ws.StatusCode
	}{
		{"length past the frame", cfURL(g.addr), []string{cfProtobufSubprotocol}, []byte{0x7f, 1, 2}, cfCloseBadRequest},
		{"not a Command", cfURL(g.addr) + "?format=protobuf", nil, []byte{3, 0xff, 0xff, 0xff}, cfCloseBadRequest},
		{"binary on a JSON session", cfURL(g.addr), nil, []byte{0}, ws.StatusUnsupportedData},
		{"past max_message_bytes", cfURL(g.addr), []string{cfProtobufSubprotocol}, make([]byte, 8192), ws.StatusMessageTooBig},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, _, hs, err := ws.Dialer{Protocols: tc.proto}.Dial(ctx, tc.url)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if len(tc.proto) > 0 && hs.Protocol != cfProtobufSubprotocol {
				t.Fatalf("subprotocol %q selected", hs.Protocol)
			}
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if err := wsutil.WriteClientMessage(c, ws.OpBinary, tc.frame); err != nil {
				t.Fatal(err)
			}
			for {
				_, _, err := wsutil.ReadServerData(c)
				var ce wsutil.ClosedError
				if errors.As(err, &ce) {
					if ce.Code != tc.code {
						t.Fatalf("closed with %d %q, want %d", ce.Code, ce.Reason, tc.code)
					}
					return
				}
				if err != nil {
					t.Fatalf("no close frame: %v", err)
				}
			}
		})
	}
	// A well-formed Protobuf session still works.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, _, err := ws.Dialer{Protocols: []string{cfProtobufSubprotocol}}.Dial(ctx, cfURL(g.addr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cmd := &protocol.Command{Id: 1, Connect: &protocol.ConnectRequest{}}
	b, _ := cmd.MarshalVT()
	frame := append([]byte{byte(len(b))}, b...)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := wsutil.WriteClientMessage(c, ws.OpBinary, frame); err != nil {
		t.Fatal(err)
	}
	data, op, err := wsutil.ReadServerData(c)
	if err != nil || op != ws.OpBinary {
		t.Fatalf("reply %v %v", op, err)
	}
	r, err := protocol.NewProtobufReplyDecoder(data).Decode()
	if err != nil || r.Id != 1 || r.Connect == nil || r.Connect.Client == "" || r.Connect.Ping == 0 || !r.Connect.Pong {
		t.Fatalf("connect reply %+v: %v", r, err)
	}
}
