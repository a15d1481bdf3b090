package gateway

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/httphead"
	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsflate"
	"github.com/kpush/kpush/router"
)

// rawDeflateConn is a client that offers permessage-deflate with gobwas/ws's
// dialer and reads raw frames, so a test sees RSV1 on the wire.
type rawDeflateConn struct {
	net.Conn
	accepted bool
	br       *bufio.Reader
}

func dialDeflate(t *testing.T, url string, offer bool) *rawDeflateConn {
	t.Helper()
	d := ws.Dialer{Timeout: 10 * time.Second}
	var ext wsflate.Extension
	if offer {
		// What browsers offer: client_max_window_bits, no takeover limits.
		d.Extensions = []httphead.Option{wsflate.Parameters{ClientMaxWindowBits: 15}.Option()}
		d.OnHeader = func(key, value []byte) error {
			if strings.EqualFold(string(key), "Sec-WebSocket-Extensions") {
				opts, ok := httphead.ParseOptions(value, nil)
				if !ok || len(opts) != 1 {
					return fmt.Errorf("extensions header %q", value)
				}
				var p wsflate.Parameters
				if err := p.Parse(opts[0]); err != nil {
					return err
				}
				if !p.ServerNoContextTakeover || !p.ClientNoContextTakeover {
					return fmt.Errorf("accepted %q: want both no_context_takeover", value)
				}
				ext.Parameters = p
			}
			return nil
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, br, hs, err := d.Dial(ctx, url)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	if br == nil {
		br = bufio.NewReader(c)
	}
	return &rawDeflateConn{Conn: c, accepted: len(hs.Extensions) > 0, br: br}
}

// send writes a text message, compressed (RSV1) when z is set.
func (c *rawDeflateConn) send(t *testing.T, msg string, z bool) {
	t.Helper()
	f := ws.NewTextFrame([]byte(msg))
	if z {
		var err error
		if f, err = wsflate.CompressFrame(f); err != nil {
			t.Fatal(err)
		}
	}
	if err := ws.WriteFrame(c, ws.MaskFrame(f)); err != nil {
		t.Fatal(err)
	}
}

// read returns the next data message's text and whether it came compressed.
func (c *rawDeflateConn) read(t *testing.T) (string, bool) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := ws.ReadFrame(c.br)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if f.Header.OpCode.IsControl() {
			if f.Header.OpCode == ws.OpClose {
				t.Fatalf("closed: %q", f.Payload)
			}
			continue
		}
		z, err := wsflate.IsCompressed(f.Header)
		if err != nil {
			t.Fatal(err)
		}
		if z {
			if f, err = wsflate.DecompressFrame(f); err != nil {
				t.Fatalf("inflate: %v", err)
			}
		}
		return string(f.Payload), z
	}
}

// TestDeflateSharedFrame: with compression on, a client that offers
// permessage-deflate gets it with no context takeover both ways; a large
// record reaches it compressed and one that did not offer it plain, both
// with exactly the record; the compressed frame is made once and shared;
// small records go plain; the client's compressed requests are understood.
func TestDeflateSharedFrame(t *testing.T) {
	srv := startPushServer(t, Config{Compression: true, CompressionMinBytes: 64}, nil)
	z1 := dialDeflate(t, srv.url, true)
	z2 := dialDeflate(t, srv.url, true)
	plain := dialDeflate(t, srv.url, false)
	if !z1.accepted || plain.accepted {
		t.Fatalf("negotiated: offering %v, not offering %v", z1.accepted, plain.accepted)
	}
	for _, c := range []*rawDeflateConn{z1, z2, plain} {
		c.send(t, `{"op":"subscribe","id":1,"channels":["z"]}`, c.accepted) // compressed by those that negotiated it
		if got, _ := c.read(t); got != `{"op":"ok","id":1}` {
			t.Fatalf("subscribe answered %s", got)
		}
	}
	big := `{"px":[` + strings.Repeat(`101.25,`, 300) + `1]}`
	srv.Publish(&Message{Channel: "z", Offset: 1, Timestamp: 7, Data: []byte(big)}, nil)
	srv.Publish(&Message{Channel: "z", Offset: 2, Timestamp: 7, Data: []byte(`{"px":1}`)}, nil)
	wantBig := `{"op":"msg","ch":"z","p":0,"o":1,"ts":7,"data":` + big + `}`
	wantSmall := `{"op":"msg","ch":"z","p":0,"o":2,"ts":7,"data":{"px":1}}`
	for _, tc := range []struct {
		c     *rawDeflateConn
		wantZ bool
	}{{z1, true}, {z2, true}, {plain, false}} {
		if got, z := tc.c.read(t); got != wantBig || z != tc.wantZ {
			t.Fatalf("large record: compressed %v (want %v), %d bytes equal %v", z, tc.wantZ, len(got), got == wantBig)
		}
		if got, z := tc.c.read(t); got != wantSmall || z {
			t.Fatalf("small record: compressed %v, %s", z, got)
		}
	}
	if n := srv.deflated.Load(); n != 1 {
		t.Fatalf("%d records compressed for two subscribers of one large record, want 1", n)
	}
}

// TestDeflateOnlyWhereTaken: a record is compressed only when a
// connection that negotiated permessage-deflate takes it. Records of a
// channel with only plain subscribers are never compressed while a
// deflate connection listens on another channel (the counter stays 0);
// on a channel with one deflate and one plain subscriber a record is
// compressed once and each gets its exact form.
func TestDeflateOnlyWhereTaken(t *testing.T) {
	srv := startPushServer(t, Config{Compression: true, CompressionMinBytes: 64}, nil)
	z := dialDeflate(t, srv.url, true)
	p1 := dialDeflate(t, srv.url, false)
	p2 := dialDeflate(t, srv.url, false)
	if !z.accepted {
		t.Fatal("the deflate client did not get the extension")
	}
	subscribe := func(c *rawDeflateConn, ch string) {
		t.Helper()
		c.send(t, `{"op":"subscribe","id":1,"channels":["`+ch+`"]}`, false)
		if got, _ := c.read(t); got != `{"op":"ok","id":1}` {
			t.Fatalf("subscribe %s answered %s", ch, got)
		}
	}
	subscribe(z, "z")
	subscribe(p1, "p")
	subscribe(p2, "p")
	big := `{"px":[` + strings.Repeat(`101.25,`, 300) + `1]}`
	want := func(ch string, o int) string {
		return fmt.Sprintf(`{"op":"msg","ch":"%s","p":0,"o":%d,"ts":7,"data":%s}`, ch, o, big)
	}
	for o := 1; o <= 5; o++ {
		srv.Publish(&Message{Channel: "p", Offset: int64(o), Timestamp: 7, Data: []byte(big)}, nil)
	}
	for o := 1; o <= 5; o++ {
		for i, c := range []*rawDeflateConn{p1, p2} {
			if got, zz := c.read(t); got != want("p", o) || zz {
				t.Fatalf("plain client %d, record %d: compressed %v, %d bytes equal %v", i, o, zz, len(got), got == want("p", o))
			}
		}
	}
	if n := srv.deflated.Load(); n != 0 {
		t.Fatalf("%d records compressed on a channel without a deflate subscriber, want 0", n)
	}
	subscribe(p1, "z") // now z has one deflate and one plain subscriber
	srv.Publish(&Message{Channel: "z", Offset: 1, Timestamp: 7, Data: []byte(big)}, nil)
	if got, zz := z.read(t); got != want("z", 1) || !zz {
		t.Fatalf("deflate client: compressed %v, %d bytes equal %v", zz, len(got), got == want("z", 1))
	}
	if got, zz := p1.read(t); got != want("z", 1) || zz {
		t.Fatalf("plain client: compressed %v, %d bytes equal %v", zz, len(got), got == want("z", 1))
	}
	if n := srv.deflated.Load(); n != 1 {
		t.Fatalf("%d records compressed for one record with a deflate subscriber, want 1", n)
	}
}

// TestDeflateResumedFromHistory: records nobody took live are compressed
// by the writer of the first deflate connection that resumes them from
// the channel's history, once each however many resume; a plain client
// resuming them gets them plain.
func TestDeflateResumedFromHistory(t *testing.T) {
	srv := startPushServer(t, Config{Compression: true, CompressionMinBytes: 64}, nil)
	z1 := dialDeflate(t, srv.url, true) // present when the records are encoded
	for deadline := time.Now().Add(20 * time.Second); srv.deflateConns.Load() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the server never counted the deflate connection")
		}
		time.Sleep(time.Millisecond) // poll: the 101 reaches the client before the conn is counted
	}
	keep := &router.Retention{HistoryRecords: 100, HistoryBytes: 1 << 20, HistoryAge: time.Minute}
	big := `{"px":[` + strings.Repeat(`101.25,`, 300) + `1]}`
	for o := 1; o <= 3; o++ {
		srv.Publish(&Message{Channel: "h", Offset: int64(o), Timestamp: 7, Data: []byte(big)}, keep)
	}
	if n := srv.deflated.Load(); n != 0 {
		t.Fatalf("%d records compressed with no subscriber, want 0", n)
	}
	z2 := dialDeflate(t, srv.url, true)
	plain := dialDeflate(t, srv.url, false)
	for _, tc := range []struct {
		c     *rawDeflateConn
		wantZ bool
	}{{z1, true}, {z2, true}, {plain, false}} {
		tc.c.send(t, `{"op":"subscribe","id":1,"channels":["h"],"since":{"h":{"0":0}}}`, false)
		for o := 1; o <= 3; o++ {
			want := fmt.Sprintf(`{"op":"msg","ch":"h","p":0,"o":%d,"ts":7,"data":%s}`, o, big)
			if got, z := tc.c.read(t); got != want || z != tc.wantZ {
				t.Fatalf("resumed record %d: compressed %v (want %v), %d bytes equal %v: %.80s", o, z, tc.wantZ, len(got), got == want, got)
			}
		}
		if got, _ := tc.c.read(t); !strings.HasPrefix(got, `{"op":"ok","id":1`) {
			t.Fatalf("resume answered %s", got)
		}
	}
	if n := srv.deflated.Load(); n != 3 {
		t.Fatalf("%d records compressed for 3 records resumed by two deflate clients, want 3", n)
	}
}

// TestDeflateClientBounds drives clients past the bounds on what they send
// compressed: a message inflating past max_message_bytes closes with 1009,
// one that does not inflate with 1007, and RSV1 without the extension (or
// on a control frame) with 1002.
func TestDeflateClientBounds(t *testing.T) {
	srv := startPushServer(t, Config{Compression: true, MaxMessageBytes: 4096}, nil)
	closeCode := func(t *testing.T, c *rawDeflateConn) ws.StatusCode {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			f, err := ws.ReadFrame(c.br)
			if err != nil {
				t.Fatalf("no close frame: %v", err)
			}
			if f.Header.OpCode == ws.OpClose {
				code, _ := ws.ParseCloseFrameData(f.Payload)
				return code
			}
		}
	}
	t.Run("inflates past max_message_bytes", func(t *testing.T) {
		c := dialDeflate(t, srv.url, true)
		c.send(t, `{"op":"ping","id":1,"x":"`+strings.Repeat("a", 8000)+`"}`, true)
		if code := closeCode(t, c); code != ws.StatusMessageTooBig {
			t.Fatalf("close %d, want 1009", code)
		}
	})
	t.Run("does not inflate", func(t *testing.T) {
		c := dialDeflate(t, srv.url, true)
		f := ws.NewTextFrame([]byte{0xff, 0xfe, 0xfd, 0x00})
		f.Header.Rsv = ws.Rsv(true, false, false)
		if err := ws.WriteFrame(c, ws.MaskFrame(f)); err != nil {
			t.Fatal(err)
		}
		if code := closeCode(t, c); code != ws.StatusInvalidFramePayloadData {
			t.Fatalf("close %d, want 1007", code)
		}
	})
	t.Run("RSV1 without the extension", func(t *testing.T) {
		c := dialDeflate(t, srv.url, false)
		c.send(t, `{"op":"ping","id":1}`, true)
		if code := closeCode(t, c); code != ws.StatusProtocolError {
			t.Fatalf("close %d, want 1002", code)
		}
	})
	t.Run("RSV1 on a ping", func(t *testing.T) {
		c := dialDeflate(t, srv.url, true)
		f := ws.NewPingFrame(nil)
		f.Header.Rsv = ws.Rsv(true, false, false)
		if err := ws.WriteFrame(c, ws.MaskFrame(f)); err != nil {
			t.Fatal(err)
		}
		if code := closeCode(t, c); code != ws.StatusProtocolError {
			t.Fatalf("close %d, want 1002", code)
		}
	})
	t.Run("compression off declines", func(t *testing.T) {
		off := startPushServer(t, Config{}, nil)
		if c := dialDeflate(t, off.url, true); c.accepted {
			t.Fatal("permessage-deflate accepted with compression off")
		}
	})
}

// pythonWebsocketsOrSkip finds python3 with the websockets package; in CI
// (.ci/run installs a pinned version) its absence is a failure.
func pythonWebsocketsOrSkip(t *testing.T) string {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err == nil {
		err = exec.Command(py, "-c", "import websockets").Run()
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("python3 with websockets is needed in CI (.ci/run installs it): %v", err)
		}
		t.Skipf("python3 with the websockets package is not installed (pip install websockets==15.0.1): %v", err)
	}
	return py
}

// TestDeflatePythonWebsockets: Python's websockets package (which offers
// permessage-deflate and compresses what it sends) subscribes, and gets
// the exact records, large and small.
func TestDeflatePythonWebsockets(t *testing.T) {
	py := pythonWebsocketsOrSkip(t)
	srv := startPushServer(t, Config{Compression: true, CompressionMinBytes: 64}, nil)
	const script = `
import json, sys
from websockets.sync.client import connect
with connect(sys.argv[1], open_timeout=10) as ws:
    print(json.dumps({"ext": ws.response.headers.get("Sec-WebSocket-Extensions", "")}), flush=True)
    ws.send(json.dumps({"op": "subscribe", "id": 1, "channels": ["z"]}))
    for _ in range(3):
        print(json.dumps({"text": ws.recv(timeout=20)}), flush=True)
`
	cmd := exec.Command(py, "-c", script, srv.url)
	out := startCommand(t, cmd)
	lines := bufio.NewScanner(out)
	lines.Buffer(make([]byte, 1<<20), 1<<20)
	next := func() map[string]string {
		if !lines.Scan() {
			t.Fatalf("python client ended: %v", lines.Err())
		}
		var m map[string]string
		if err := json.Unmarshal(lines.Bytes(), &m); err != nil {
			t.Fatalf("python client said %q", lines.Text())
		}
		return m
	}
	if ext := next()["ext"]; !strings.Contains(ext, "permessage-deflate") || !strings.Contains(ext, "server_no_context_takeover") || !strings.Contains(ext, "client_no_context_takeover") {
		t.Fatalf("negotiated %q", ext)
	}
	if got := next()["text"]; got != `{"op":"ok","id":1}` {
		t.Fatalf("subscribe answered %s", got)
	}
	big := `{"px":[` + strings.Repeat(`101.25,`, 300) + `1]}`
	srv.Publish(&Message{Channel: "z", Offset: 1, Timestamp: 7, Data: []byte(big)}, nil)
	srv.Publish(&Message{Channel: "z", Offset: 2, Timestamp: 7, Data: []byte(`{"px":1}`)}, nil)
	if got, want := next()["text"], `{"op":"msg","ch":"z","p":0,"o":1,"ts":7,"data":`+big+`}`; got != want {
		t.Fatalf("large record: %d bytes, want %d exactly", len(got), len(want))
	}
	if got, want := next()["text"], `{"op":"msg","ch":"z","p":0,"o":2,"ts":7,"data":{"px":1}}`; got != want {
		t.Fatalf("small record: %s, want %s", got, want)
	}
}

// TestDeflateChromium: headless Chromium (which offers permessage-deflate,
// as every browser does) subscribes from a page and reports what it got to
// the test's HTTP server: the extension with both no_context_takeover
// parameters, and the exact records, large (compressed) and small (plain).
// Without Chromium the test is skipped, except in CI.
func TestDeflateChromium(t *testing.T) {
	chrome := ""
	for _, name := range []string{os.Getenv("KPUSH_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); name != "" && err == nil {
			chrome = p
			break
		}
	}
	if chrome == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("chromium is not installed; .ci/run installs it")
		}
		t.Skip("chromium is not installed (or set KPUSH_CHROMIUM)")
	}
	srv := startPushServer(t, Config{Compression: true, CompressionMinBytes: 64}, nil)
	results := make(chan string, 4)
	page := `<!doctype html><script>
const got = [];
const ws = new WebSocket(` + "`" + srv.url + "`" + `);
ws.onopen = () => ws.send(JSON.stringify({op: "subscribe", id: 1, channels: ["z"]}));
ws.onmessage = (e) => {
  got.push(e.data);
  if (got.length === 3) fetch("/result", {method: "POST", body: JSON.stringify({ext: ws.extensions, got})});
};
</script>`
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, page) })
	mux.HandleFunc("/result", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		results <- string(b)
	})
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	cmd := exec.Command(chrome, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--user-data-dir="+t.TempDir(), hs.URL+"/")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // Chromium and the helpers it started
		_ = cmd.Wait()
	})

	deadline := time.Now().Add(30 * time.Second)
	for srv.router.Stats().Subscriptions == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the page did not subscribe within 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	big := `{"px":[` + strings.Repeat(`101.25,`, 300) + `1]}`
	srv.Publish(&Message{Channel: "z", Offset: 1, Timestamp: 7, Data: []byte(big)}, nil)
	srv.Publish(&Message{Channel: "z", Offset: 2, Timestamp: 7, Data: []byte(`{"px":1}`)}, nil)
	var res struct {
		Ext string   `json:"ext"`
		Got []string `json:"got"`
	}
	select {
	case r := <-results:
		if err := json.Unmarshal([]byte(r), &res); err != nil {
			t.Fatalf("page reported %q", r)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the page reported nothing within 30s")
	}
	if !strings.Contains(res.Ext, "permessage-deflate") || !strings.Contains(res.Ext, "server_no_context_takeover") || !strings.Contains(res.Ext, "client_no_context_takeover") {
		t.Fatalf("the browser negotiated %q", res.Ext)
	}
	want := []string{`{"op":"ok","id":1}`,
		`{"op":"msg","ch":"z","p":0,"o":1,"ts":7,"data":` + big + `}`,
		`{"op":"msg","ch":"z","p":0,"o":2,"ts":7,"data":{"px":1}}`}
	if fmt.Sprint(res.Got) != fmt.Sprint(want) {
		t.Fatalf("the page got %d messages, not exactly the records (%v)", len(res.Got), res.Got)
	}
}
