package gateway

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	centrifuge "github.com/centrifugal/centrifuge-go"
	"github.com/kpush/kpush/router"
)

// Resuming over native TLS (the TLS flush path): SSE's Last-Event-ID,
// Centrifugo's recovery with centrifuge-go over wss://, and an event stream
// asked for on a kept-alive TLS connection.

// tlsRecord is record o of channel ch; every third is larger than a TLS
// record (16 KiB), so that an event or a push spans several.
func tlsRecord(ch string, o int64) string {
	pad := ""
	if o%3 == 0 {
		pad = strings.Repeat("z", 20000+int(o))
	}
	return fmt.Sprintf(`{"ch":%q,"o":%d,"pad":%q}`, ch, o, pad)
}

func dialTLS(t *testing.T, addr string, p *testPKI) net.Conn {
	t.Helper()
	nc, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, &tls.Config{RootCAs: p.pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	return nc
}

// TestSSEResumeOverTLS: an event stream over TLS of two channels is cut in
// the middle of what was published (events still in flight are lost with
// the connection) and resumed with Last-Event-ID: every record of both
// channels arrives once, in order, with its exact data, and the stream
// says it recovered.
func TestSSEResumeOverTLS(t *testing.T) {
	p := newTestPKI(t)
	g := startTLSGateway(t, p, nil)
	keep := &router.Retention{HistoryRecords: 10000, HistoryBytes: 64 << 20, HistoryAge: time.Minute}
	publish := func(from, to int64) {
		for o := from; o <= to; o++ {
			for i, ch := range []string{"x", "y"} {
				g.srv.Publish(&Message{Channel: ch, Partition: int32(2 * i), Offset: o, Timestamp: time.Now().UnixMilli(),
					Data: []byte(tlsRecord(ch, o))}, keep)
			}
		}
	}
	next := map[string]int64{"x": 1, "y": 1}
	check := func(evs []sseEv) {
		t.Helper()
		for _, ev := range evs {
			o := next[ev.event]
			if ev.data != tlsRecord(ev.event, o) {
				t.Fatalf("%s: want record %d, got %.80q (%d bytes)", ev.event, o, ev.data, len(ev.data))
			}
			next[ev.event]++
		}
	}
	const target = "/events?channel=x&channel=y"
	c := sseOn(t, dialTLS(t, g.addr, p), g.addr, target, nil)
	if c.status != 200 {
		t.Fatalf("status %d", c.status)
	}
	waitSubscribed(t, g.srv, 2)
	publish(1, 60)
	check(c.records(t, 70)) // of 120: the rest are in flight when it is cut
	last := c.lastIDOr(t)
	c.nc.Close()
	secWaitUntil(t, 10*time.Second, "the cut stream to be released", func() bool { return g.srv.router.Stats().Subscriptions == 0 })
	publish(61, 80) // missed while cut
	c = sseOn(t, dialTLS(t, g.addr, p), g.addr, target, map[string]string{"Last-Event-ID": last})
	if c.status != 200 {
		t.Fatalf("status %d on resume", c.status)
	}
	check(c.records(t, 160-70))
	if ev := c.next(t); ev.event != "kpush-resume" || ev.data != `{"recovered":{"x":true,"y":true}}` && ev.data != `{"recovered":{"y":true,"x":true}}` {
		t.Fatalf("after the replay: %+v", ev)
	}
	publish(81, 90)
	check(c.records(t, 20))
	if next["x"] != 91 || next["y"] != 91 {
		t.Fatalf("next records %v, want 91 for both", next)
	}
}

// TestCentrifugoRecoversOverTLS: the unmodified centrifuge-go SDK over
// wss://, in the JSON and the Protobuf format: exact data, and a
// connection cut by the server in the middle of a publish is recovered with
// no gap and no duplicate.
func TestCentrifugoRecoversOverTLS(t *testing.T) {
	for _, proto := range []bool{false, true} {
		t.Run(map[bool]string{false: "json", true: "protobuf"}[proto], func(t *testing.T) {
			p := newTestPKI(t)
			g := startTLSGateway(t, p, nil)
			keep := &router.Retention{Last: true, HistoryRecords: 10000, HistoryBytes: 64 << 20, HistoryAge: time.Minute}
			publish := func(from, to int64) {
				for o := from; o <= to; o++ {
					g.srv.Publish(&Message{Channel: "ticks", Topic: "t", Partition: 1, Offset: o, Epoch: 5, Timestamp: time.Now().UnixMilli(),
						Data: []byte(tlsRecord("ticks", o))}, keep)
				}
			}
			publish(1, 1)
			url := "wss://" + g.addr + DefaultCentrifugoPath
			cfg := centrifuge.Config{TLSConfig: &tls.Config{RootCAs: p.pool, ServerName: "127.0.0.1"},
				MinReconnectDelay: 50 * time.Millisecond, MaxReconnectDelay: 200 * time.Millisecond}
			var cl *centrifuge.Client
			if proto {
				cl = centrifuge.NewProtobufClient(url, cfg)
			} else {
				cl = centrifuge.NewJsonClient(url, cfg)
			}
			t.Cleanup(cl.Close)
			if err := cl.Connect(); err != nil {
				t.Fatal(err)
			}
			pubs, resubs := cfSub(t, cl, "ticks")
			var got int64
			read := func(to int64) {
				t.Helper()
				for got < to {
					e := nextPub(t, pubs)
					if o := got + 1; int64(e.Offset) != o || string(e.Data) != tlsRecord("ticks", o) {
						t.Fatalf("after %d: offset %d, %.80q (%d bytes)", got, e.Offset, e.Data, len(e.Data))
					}
					got++
				}
			}
			read(1) // the snapshot
			publish(2, 40)
			read(20) // the rest are in flight when it is cut
			for _, c := range g.srv.conns.Snapshot() {
				c.abort()
			}
			publish(41, 60) // missed while cut
			select {
			case e := <-resubs:
				if !e.WasRecovering || !e.Recovered {
					t.Fatalf("resubscribed with %+v", e)
				}
			case <-time.After(15 * time.Second):
				t.Fatal("not resubscribed within 15s")
			}
			publish(61, 70)
			read(70)
			select {
			case e := <-pubs:
				t.Fatalf("a publication more: offset %d", e.Offset)
			case <-time.After(50 * time.Millisecond):
			}
		})
	}
}

// TestSSEOnKeptAliveTLSConnection: an event stream asked for on a TLS
// connection that already carried another request (as browsers reuse the
// page's connection) is taken over from net/http with its TLS session, and
// then resumed on another kept-alive TLS connection with Last-Event-ID.
func TestSSEOnKeptAliveTLSConnection(t *testing.T) {
	p := newTestPKI(t)
	g := startTLSGateway(t, p, nil)
	keep := &router.Retention{HistoryRecords: 100, HistoryBytes: 16 << 20, HistoryAge: time.Minute}
	open := func(hdr string) (net.Conn, *bufio.Reader) {
		t.Helper()
		nc := dialTLS(t, g.addr, p)
		t.Cleanup(func() { nc.Close() })
		br, _ := keptAliveStream(t, nc, hdr)
		return nc, br
	}
	// readEvents reads n record events, returning their data and the last id.
	readEvents := func(nc net.Conn, br *bufio.Reader, n int) (data []string, id string) {
		t.Helper()
		_ = nc.SetReadDeadline(time.Now().Add(15 * time.Second))
		var ev struct{ event, id, data string }
		for len(data) < n {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("%v after %d events", err, len(data))
			}
			line = strings.TrimSuffix(line, "\n")
			switch {
			case line == "":
				if ev.event == "x" {
					data, id = append(data, ev.data), ev.id
				}
				ev.event, ev.id, ev.data = "", "", ""
			case strings.HasPrefix(line, "event: "):
				ev.event = line[len("event: "):]
			case strings.HasPrefix(line, "id: "):
				ev.id = line[len("id: "):]
			case strings.HasPrefix(line, "data: "):
				ev.data += line[len("data: "):]
			}
		}
		return data, id
	}
	publish := func(from, to int64) {
		for o := from; o <= to; o++ {
			g.srv.Publish(&Message{Channel: "x", Offset: o, Timestamp: time.Now().UnixMilli(), Data: []byte(tlsRecord("x", o))}, keep)
		}
	}
	nc, br := open("")
	waitSubscribed(t, g.srv, 1)
	if g.srv.Connections() != 1 || g.srv.metrics.sseConns.Load() != 1 {
		t.Fatal("the stream is not an epoll connection")
	}
	publish(1, 6)
	data, id := readEvents(nc, br, 6)
	nc.Close()
	secWaitUntil(t, 10*time.Second, "the stream to be released", func() bool { return g.srv.router.Stats().Subscriptions == 0 })
	publish(7, 9)
	nc, br = open("Last-Event-ID: " + id + "\r\n")
	more, _ := readEvents(nc, br, 3)
	data = append(data, more...)
	for i, d := range data {
		if d != tlsRecord("x", int64(i+1)) {
			t.Fatalf("event %d: %.80q (%d bytes)", i, d, len(d))
		}
	}
}
