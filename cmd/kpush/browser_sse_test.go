package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/kpush/kpush/gateway"
	"github.com/kpush/kpush/router"
)

// ssePage opens an EventSource on two channels and keeps what it receives.
const ssePage = `<!doctype html><meta charset="utf-8"><title>kpush sse</title><script>
window.sse = {got: {x: [], y: []}, resumes: [], opens: 0, errors: 0};
var es = new EventSource('/events?channel=x&channel=y');
es.onopen = function () { window.sse.opens++; };
es.onerror = function () { window.sse.errors++; };
['x', 'y'].forEach(function (ch) {
  es.addEventListener(ch, function (e) { window.sse.got[ch].push(JSON.parse(e.data).o); });
});
es.addEventListener('kpush-resume', function (e) { window.sse.resumes.push(e.data); });
</script>`

type ssePageState struct {
	Got     map[string][]int64 `json:"got"`
	Resumes []string           `json:"resumes"`
	Opens   int                `json:"opens"`
	Errors  int                `json:"errors"`
}

// startGateway serves a gateway with its own router on a random loopback
// port until the test ends, with pages (nil: none) answering the plain HTTP
// requests, and returns it with its address once it is ready.
func startGateway(t *testing.T, pages http.Handler) (*gateway.Server, string) {
	t.Helper()
	srv, err := gateway.New(gateway.Config{Listen: "127.0.0.1:0", DrainTimeout: 200 * time.Millisecond}, router.New(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if pages != nil {
		srv.HandleHTTP(pages)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	<-srv.Ready()
	return srv, ln.Addr().String()
}

// TestBrowserEventSourceRecoversWithoutGap: the browser's own EventSource,
// in headless Chromium, across a cut at a proxy (the server side goes
// away) while records are published: the browser reconnects by itself
// with Last-Event-ID and gets every record once, in order.
func TestBrowserEventSourceRecoversWithoutGap(t *testing.T) {
	bin := chromiumOrSkip(t)
	srv, addr := startGateway(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, ssePage)
	}))
	keep := &router.Retention{HistoryRecords: 1000, HistoryBytes: 1 << 20, HistoryAge: time.Minute}
	publish := func(from, to int64) {
		for o := from; o <= to; o++ {
			for i, ch := range []string{"x", "y"} { // one partition each, as Kafka would
				srv.Publish(&gateway.Message{Channel: ch, Partition: int32(i), Offset: o, Epoch: 1, Timestamp: time.Now().UnixMilli(), Data: []byte(fmt.Sprintf(`{"o":%d}`, o))}, keep)
			}
		}
	}
	proxy := startProxy(t, addr)
	page := startChromium(t, bin)
	page.call(t, "Page.navigate", map[string]any{"url": "http://" + proxy.ln.Addr().String() + "/sse.html"})
	var st ssePageState
	read := func() bool { return page.eval(t, "JSON.stringify(window.sse)", &st) }
	waitFor(t, 30*time.Second, "the page's stream to open", func() bool { ok := read(); return ok && st.Opens == 1 && srv.Connections() == 1 })
	publish(0, 49)
	waitFor(t, 30*time.Second, "the first records", func() bool { return read() && len(st.Got["x"]) == 50 && len(st.Got["y"]) == 50 })
	proxy.hold()
	if n := proxy.cut(); n == 0 {
		t.Fatal("the proxy carried no connection to cut")
	}
	waitFor(t, 10*time.Second, "the page to see the cut", func() bool { return read() && st.Errors > 0 })
	publish(50, 99) // while the page is away
	proxy.release()
	waitFor(t, 30*time.Second, "the page to resume", func() bool { return read() && st.Opens == 2 && len(st.Resumes) == 1 })
	publish(100, 119)
	waitFor(t, 30*time.Second, "every record", func() bool {
		return read() && len(st.Got["x"]) >= 120 && len(st.Got["y"]) >= 120
	})
	for _, ch := range []string{"x", "y"} {
		want := make([]int64, 120)
		for i := range want {
			want[i] = int64(i)
		}
		if fmt.Sprint(st.Got[ch]) != fmt.Sprint(want) {
			t.Fatalf("%s: got %v", ch, st.Got[ch])
		}
	}
	if st.Resumes[0] != `{"recovered":{"x":true,"y":true}}` && st.Resumes[0] != `{"recovered":{"y":true,"x":true}}` {
		t.Fatalf("resume event %s", st.Resumes[0])
	}
}

// cfPage runs the centrifuge npm package's browser bundle (centrifuge-js).
const cfPage = `<!doctype html><meta charset="utf-8"><title>kpush centrifuge</title>
<script src="/centrifuge.js"></script><script>
window.cf = {got: [], subs: []};
var c = new Centrifuge('ws://' + location.host + '/connection/websocket', {minReconnectDelay: 50, maxReconnectDelay: 300});
var s = c.newSubscription('x');
s.on('publication', function (ctx) { window.cf.got.push(ctx.data.o); });
s.on('subscribed', function (ctx) { window.cf.subs.push({recovered: ctx.recovered, was: ctx.wasRecovering}); });
s.subscribe();
c.connect();
</script>`

type cfPageState struct {
	Got  []int64 `json:"got"`
	Subs []struct {
		Recovered bool `json:"recovered"`
		Was       bool `json:"was"`
	} `json:"subs"`
}

// TestBrowserCentrifugeJSRecoversWithoutGap: the centrifuge npm package
// (centrifuge-js, its browser bundle, unmodified) in headless Chromium
// against kpush's Centrifugo endpoint, across a cut at a proxy while
// records are published: it recovers every record once, in order.
func TestBrowserCentrifugeJSRecoversWithoutGap(t *testing.T) {
	browserCentrifugeRecovers(t, false)
}

// TestBrowserCentrifugeJSRecoversOnSecondInstance is the same with the
// page's reconnect going to a second kpush instance (another continuity
// epoch, the same Kafka positions).
func TestBrowserCentrifugeJSRecoversOnSecondInstance(t *testing.T) {
	browserCentrifugeRecovers(t, true)
}

func browserCentrifugeRecovers(t *testing.T, second bool) {
	bin := chromiumOrSkip(t)
	bundle, err := os.ReadFile("../../gateway/testdata/node/node_modules/centrifuge/dist/centrifuge.js")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("the centrifuge npm package is needed (.ci/run installs it with npm ci): %v", err)
		}
		t.Skip("the centrifuge npm package is missing (cd gateway/testdata/node && npm ci)")
	}
	pages := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/centrifuge.js" {
			w.Header().Set("Content-Type", "text/javascript")
			_, _ = w.Write(bundle)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, cfPage)
	})
	start := func() (*gateway.Server, string) { return startGateway(t, pages) }
	s0, a0 := start()
	srvs, addrs := []*gateway.Server{s0}, []string{a0}
	if second {
		s, a := start()
		srvs, addrs = append(srvs, s), append(addrs, a)
	}
	keep := &router.Retention{Last: true, HistoryRecords: 1000, HistoryBytes: 1 << 20, HistoryAge: time.Minute}
	publish := func(from, to int64) {
		for o := from; o <= to; o++ {
			for i, srv := range srvs {
				// Each instance's consumer has its own continuity epoch.
				srv.Publish(&gateway.Message{Channel: "x", Topic: "t", Partition: 0, Offset: o, Epoch: uint64(5 + i),
					Timestamp: time.Now().UnixMilli(), Data: []byte(fmt.Sprintf(`{"o":%d}`, o))}, keep)
			}
		}
	}
	publish(1, 1) // the channel's position before the page comes
	proxy := startProxy(t, addrs[0])
	page := startChromium(t, bin)
	page.call(t, "Page.navigate", map[string]any{"url": "http://" + proxy.ln.Addr().String() + "/cf.html"})
	var st cfPageState
	read := func() bool { return page.eval(t, "JSON.stringify(window.cf)", &st) }
	waitFor(t, 30*time.Second, "the page to subscribe", func() bool { return read() && len(st.Subs) == 1 })
	// The route keeps the last record: record 1 comes with the subscribe
	// reply.
	publish(2, 31)
	waitFor(t, 30*time.Second, "the first records", func() bool { return read() && len(st.Got) == 31 })
	proxy.hold()
	if second {
		proxy.retarget(addrs[1])
	}
	if n := proxy.cut(); n == 0 {
		t.Fatal("the proxy carried no connection to cut")
	}
	publish(32, 61) // while the page is away
	proxy.release()
	waitFor(t, 30*time.Second, "the page to resubscribe", func() bool { return read() && len(st.Subs) == 2 })
	publish(62, 71)
	waitFor(t, 30*time.Second, "every record", func() bool { return read() && len(st.Got) >= 71 })
	want := make([]int64, 71)
	for i := range want {
		want[i] = int64(i + 1)
	}
	if fmt.Sprint(st.Got) != fmt.Sprint(want) {
		t.Fatalf("got %v", st.Got)
	}
	if !st.Subs[1].Recovered || !st.Subs[1].Was {
		t.Fatalf("resubscribed with %+v", st.Subs[1])
	}
	if second && srvs[1].Connections() != 1 {
		t.Fatalf("the page is not on the second instance (%d connections there)", srvs[1].Connections())
	}
}
