package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
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

// TestBrowserEventSourceRecoversWithoutGap: the browser's own EventSource,
// in headless Chromium, across a cut at a proxy (the server side goes
// away) while records are published: the browser reconnects by itself
// with Last-Event-ID and gets every record once, in order.
func TestBrowserEventSourceRecoversWithoutGap(t *testing.T) {
	bin := chromiumOrSkip(t)
	srv, err := gateway.New(gateway.Config{Listen: "127.0.0.1:0", DrainTimeout: 200 * time.Millisecond}, router.New(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv.HandleHTTP(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, ssePage)
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	<-srv.Ready()
	keep := &router.Retention{HistoryRecords: 1000, HistoryBytes: 1 << 20, HistoryAge: time.Minute}
	publish := func(from, to int64) {
		for o := from; o <= to; o++ {
			for i, ch := range []string{"x", "y"} { // one partition each, as Kafka would
				srv.Publish(&gateway.Message{Channel: ch, Partition: int32(i), Offset: o, Epoch: 1, Timestamp: time.Now().UnixMilli(), Data: []byte(fmt.Sprintf(`{"o":%d}`, o))}, keep)
			}
		}
	}
	proxy := startProxy(t, ln.Addr().String())
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
