package gateway

import (
	"strconv"
	"strings"
	"testing"

	"github.com/kpush/kpush/gateway/wire"
	"github.com/kpush/kpush/router"
)

func TestSSEIDRoundTrip(t *testing.T) {
	chans := []string{"ticks.AAPL", "ticks.MSFT", "all"}
	st := newSSEStream(chans)
	st.advance("ticks.MSFT", 0, 5)
	st.advance("ticks.AAPL", 2, 44211)
	st.advance("all", 3, -1)
	st.advance("all", 1, 1<<40)
	st.advance("ticks.AAPL", 2, 44212) // moves, does not add
	st.advance("other", 0, 9)          // not a channel of the stream: ignored
	id := string(st.appendID(nil))
	want := st.hash + "_0.2.y44_1.0.5_2.1." + strconv.FormatInt(1<<40, 36) + "_2.3.-1"
	if id != want {
		t.Fatalf("id = %q, want %q", id, want)
	}
	since, err := parseSSEID(id, chans)
	if err != nil {
		t.Fatal(err)
	}
	if since["ticks.AAPL"]["2"] != 44212 || since["ticks.MSFT"]["0"] != 5 || since["all"]["1"] != 1<<40 || since["all"]["3"] != -1 || len(since) != 3 {
		t.Fatalf("since = %v", since)
	}
}

func TestSSEIDRefused(t *testing.T) {
	chans := []string{"a", "b"}
	h := sseHash(chans)
	for _, id := range []string{
		"", "zz", sseHash([]string{"b", "a"}) + "_0.0.1", // another channel list
		h + "_2.0.1", h + "_0.0", h + "0.0.1", h + "_0.0.1_", h + "_x!.0.1", h + "_0.0.-2",
		h + "_" + strings.Repeat("1", sseMaxIDBytes),
	} {
		if since, err := parseSSEID(id, chans); err == nil {
			t.Errorf("parseSSEID(%.40q) = %v, want an error", id, since)
		}
	}
}

func TestSSERecordEvent(t *testing.T) {
	st := newSSEStream([]string{"ticks.AAPL"})
	f := EncodeMessage(&Message{Channel: "ticks.AAPL", Partition: 2, Offset: 7, Data: []byte("{\"a\":\r\n1,\n\"b\":\"x\"}")})
	b, ok := st.sseRecord(f)
	if !ok {
		t.Fatal("refused")
	}
	want := "event: ticks.AAPL\nid: " + st.hash + "_0.2.7\ndata: {\"a\":\ndata: 1,\ndata: \"b\":\"x\"}\n\n"
	if string(b) != want {
		t.Fatalf("event = %q, want %q", b, want)
	}
	snap := markFrame(f, `"snap":true`)
	if b, _ := st.sseRecord(snap); !strings.Contains(string(b), "data: {\"a\":\n") {
		t.Fatalf("snapshot event = %q", b)
	}
}

// TestSSEIDLimit drives a stream's id past sseMaxIDBytes: the record that
// would pass it is refused and the position stays as it was.
func TestSSEIDLimit(t *testing.T) {
	st := newSSEStream([]string{"all"})
	var p int32
	for ; ; p++ {
		f := &router.Frame{Channel: "all", Partition: p, Offset: 1 << 50, Payload: []byte(`{"op":"msg","ch":"all","p":0,"o":0,"ts":0,"data":1}`)}
		b, ok := st.sseRecord(f)
		if !ok {
			break
		}
		if len(b) > sseMaxIDBytes+64 {
			t.Fatalf("event of %d bytes", len(b))
		}
	}
	if n := len(st.appendID(nil)); n > sseMaxIDBytes || n < sseMaxIDBytes-32 {
		t.Fatalf("id stopped at %d bytes, limit %d", n, sseMaxIDBytes)
	}
	if len(st.pos) != int(p) {
		t.Fatalf("%d positions after %d accepted partitions", len(st.pos), p)
	}
	// sseMaxChannels single-partition channels at the largest positions fit.
	chans := make([]string, sseMaxChannels)
	for i := range chans {
		chans[i] = "c" + string(rune('A'+i%26)) + string(rune('A'+i/26))
	}
	st = newSSEStream(chans)
	for _, ch := range chans {
		st.advance(ch, 1<<31-1, 1<<63-1)
	}
	if n := len(st.appendID(nil)); n > sseMaxIDBytes {
		t.Fatalf("%d channels need %d bytes, over %d", sseMaxChannels, n, sseMaxIDBytes)
	}
}

func TestSSEControlEvents(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"resume", string(okFrame(3, map[string]bool{"a": false})), "event: kpush-resume\ndata: {\"recovered\":{\"a\":false}}\n\n"},
		{"error", string(errorFrame(0, CodeForbidden, "no")), "event: kpush-error\ndata: {\"code\":\"forbidden\",\"message\":\"no\"}\n\n"},
		{"ok", string(okFrame(1, nil)), ": subscribed\n\n"},
		{"close", string(wire.CloseFrame(CloseSlowConsumer, "slow consumer")), "event: kpush-close\ndata: {\"code\":4008,\"reason\":\"slow consumer\"}\n\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(sseControl([]byte(tc.in))); got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}
