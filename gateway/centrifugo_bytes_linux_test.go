package gateway

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os/exec"
	"testing"
	"time"
	"unicode/utf8"

	centrifuge "github.com/centrifugal/centrifuge-go"
	"github.com/kpush/kpush/router"
)

// binRecord is an opaque record of a format: bytes route: not UTF-8 (0xff,
// a cut two-byte sequence), with a NUL, a newline, a quote and a backslash;
// consecutive records differ in a few bytes, so that fossil deltas are
// smaller than the records.
func binRecord(o int64) []byte {
	b := []byte{0xff, 0xfe, 0x00, 0xc3, 0x28, '\n', '"', '\\'}
	for i := 0; i < 160; i++ {
		b = append(b, byte(i*7))
	}
	return binary.BigEndian.AppendUint64(b, uint64(o)*0x0101010101)
}

// TestCentrifugoGoSDKProtobufBytes: on a format: bytes route, the
// unmodified centrifuge-go SDK in the Protobuf format gets each record's
// raw bytes as the publication's data (the snapshot in the subscribe
// reply, live pushes, deltas, and the records of a recovery after a cut),
// while a JSON client keeps getting the base64 JSON string. Each record
// is encoded once for all the Protobuf subscribers.
func TestCentrifugoGoSDKProtobufBytes(t *testing.T) {
	if utf8.Valid(binRecord(1)) {
		t.Fatal("binRecord must not be UTF-8")
	}
	keep := &router.Retention{Last: true, HistoryRecords: 1000, HistoryBytes: 1 << 20, HistoryAge: time.Minute}
	g := startSSEServer(t, nil)
	pub := func(from, to int64) {
		for o := from; o <= to; o++ {
			g.srv.Publish(&Message{Channel: "blobs", Topic: "raw", Partition: 0, Offset: o, Epoch: 2, Timestamp: time.Now().UnixMilli(),
				Data: binRecord(o), Binary: true}, keep)
		}
	}
	pub(1, 1)
	type client struct {
		name   string
		proto  bool
		delta  centrifuge.DeltaType
		pubs   chan centrifuge.PublicationEvent
		resubs chan centrifuge.SubscribedEvent
		got    int64 // the last offset received
	}
	clients := []*client{
		{name: "protobuf", proto: true}, {name: "protobuf 2", proto: true},
		{name: "protobuf delta", proto: true, delta: centrifuge.DeltaTypeFossil},
		{name: "json", proto: false},
	}
	cfg := centrifuge.Config{MinReconnectDelay: 50 * time.Millisecond, MaxReconnectDelay: 200 * time.Millisecond}
	for _, c := range clients {
		var cl *centrifuge.Client
		if c.proto {
			cl = centrifuge.NewProtobufClient(cfURL(g.addr), cfg)
		} else {
			cl = centrifuge.NewJsonClient(cfURL(g.addr), cfg)
		}
		t.Cleanup(cl.Close)
		if err := cl.Connect(); err != nil {
			t.Fatal(err)
		}
		ev := sdkSubscribe(t, cl, "blobs", centrifuge.SubscriptionConfig{Delta: c.delta})
		c.pubs, c.resubs = ev.pubs, ev.subscribed
		recv(t, c.resubs, c.name+" subscribed event")
	}
	want := func(c *client, o int64) string {
		if c.proto {
			return string(binRecord(o))
		}
		return `"` + base64.StdEncoding.EncodeToString(binRecord(o)) + `"`
	}
	read := func(to int64) {
		t.Helper()
		for _, c := range clients {
			for c.got < to {
				e := nextPub(t, c.pubs)
				if o := c.got + 1; int64(e.Offset) != o || string(e.Data) != want(c, o) {
					t.Fatalf("%s: after offset %d got offset %d data %q, want %q", c.name, c.got, e.Offset, e.Data, want(c, o))
				}
				c.got++
			}
		}
	}
	read(1) // the snapshot, in the subscribe reply
	waitSubscribed(t, g.srv, int64(len(clients)))
	encodes, deltas := g.srv.cfPushes.protoEncodes.Load(), g.srv.cfPushes.deltas.Load()
	const n = 60
	pub(2, n)
	read(n)
	// Two plain Protobuf subscribers: per subscriber would be 2 encodes a
	// record; a record whose cache slot another took meanwhile is encoded
	// again (slots are picked by a hash).
	if e := g.srv.cfPushes.protoEncodes.Load() - encodes; e < n-1 || e >= 2*(n-1) {
		t.Fatalf("%d Protobuf encodes for %d records and 2 plain Protobuf subscribers, want about one per record", e, n-1)
	}
	if d := g.srv.cfPushes.deltas.Load() - deltas; d < n-1 {
		t.Fatalf("%d deltas computed for %d records, want one per record", d, n-1)
	}
	for _, c := range g.srv.conns.Snapshot() {
		c.abort() // the cut
	}
	pub(n+1, n+20) // missed while cut: recovered into the reply's publications
	for _, c := range clients {
		if e := recv(t, c.resubs, c.name+" resubscribe"); !e.WasRecovering || !e.Recovered {
			t.Fatalf("%s: resubscribed with %+v", c.name, e)
		}
	}
	pub(n+21, n+30)
	read(n + 30)
	for _, c := range clients {
		select {
		case e := <-c.pubs:
			t.Fatalf("%s: a publication more: offset %d", c.name, e.Offset)
		default:
		}
	}
}

// TestCFProtoData: which records are raw bytes in the Protobuf format.
func TestCFProtoData(t *testing.T) {
	for _, tc := range []struct {
		name string
		m    Message
		want []byte
	}{
		{"bytes", Message{Channel: "c", Offset: 1, Data: binRecord(1), Binary: true}, binRecord(1)},
		{"empty bytes", Message{Channel: "c", Offset: 1, Data: nil, Binary: true}, []byte{}},
		{"json", Message{Channel: "c", Offset: 1, Data: []byte(`{"a":1}`)}, []byte(`{"a":1}`)},
		{"json string", Message{Channel: "c", Offset: 1, Data: []byte(`"AAEC"`)}, []byte(`"AAEC"`)},
		{"json holding the marker", Message{Channel: "c", Offset: 1, Data: []byte(`{"x":1,"enc":"base64","data":"AAEC"}`)},
			[]byte(`{"x":1,"enc":"base64","data":"AAEC"}`)},
		{"bytes after a reset", Message{Channel: "c", Offset: 1, Reset: true, Skipped: 3, Data: []byte{0, 1, 2}, Binary: true}, []byte{0, 1, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := EncodeMessage(&tc.m)
			v, ok := recordValue(f.Payload)
			if !ok {
				t.Fatalf("no value in %s", f.Payload)
			}
			if got := cfProtoData(f.Payload, v); string(got) != string(tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
	if got := fmt.Sprint(cfBinary([]byte(`{"op":"msg"}`))); got != "false" {
		t.Fatal("a payload without data is binary")
	}
}

// TestCentrifugoSDKsProtobufBytes: centrifuge-js (the npm package's
// Protobuf build, in Node) and centrifuge-python in the Protobuf format get
// a format: bytes route's records as their raw bytes, exactly: the
// snapshot in the subscribe reply, then live records.
func TestCentrifugoSDKsProtobufBytes(t *testing.T) {
	for _, tc := range []struct {
		name    string
		command func(t *testing.T) []string
	}{
		{"node", func(t *testing.T) []string {
			nodeSDKCommand(t, "protobuf") // skips (or fails in CI) without node and the packages
			return []string{"node", "testdata/node/cf_bytes.mjs"}
		}},
		{"python", func(t *testing.T) []string {
			pythonSDKCommand(t, "protobuf") // skips (or fails in CI) without the venv
			return []string{"testdata/python/.venv/bin/python", "testdata/python/cf_bytes.py"}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			argv := tc.command(t)
			g := startSSEServer(t, nil)
			last := &router.Retention{Last: true}
			pub := func(o int64) {
				g.srv.Publish(&Message{Channel: "blobs", Topic: "raw", Partition: 0, Offset: o, Epoch: 1, Timestamp: time.Now().UnixMilli(),
					Data: binRecord(o), Binary: true}, last)
			}
			pub(1)
			const n = 10
			cmd := exec.Command(argv[0], append(argv[1:], cfURL(g.addr), "blobs", fmt.Sprint(n))...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			stdout := startCommand(t, cmd)
			lines := make(chan string, 64)
			go func() {
				defer close(lines)
				sc := bufio.NewScanner(stdout)
				for sc.Scan() {
					lines <- sc.Text()
				}
			}()
			waitSubscribed(t, g.srv, 1)
			for o := int64(2); o <= n; o++ {
				pub(o)
			}
			for o := int64(1); o <= n; o++ {
				var line string
				select {
				case l, ok := <-lines:
					if !ok {
						t.Fatalf("the client ended before record %d: %s", o, stderr.String())
					}
					line = l
				case <-time.After(30 * time.Second):
					t.Fatalf("no record %d within 30s: %s", o, stderr.String())
				}
				want := fmt.Sprintf(`{"offset": %d, "hex": "%s"}`, o, hex.EncodeToString(binRecord(o)))
				if tc.name == "node" {
					want = fmt.Sprintf(`{"offset":%d,"hex":"%s"}`, o, hex.EncodeToString(binRecord(o)))
				}
				if line != want {
					t.Fatalf("record %d: got %s, want %s", o, line, want)
				}
			}
		})
	}
}
