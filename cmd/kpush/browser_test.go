package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kpush/kpush/cmd/internal/feed"
	"github.com/kpush/kpush/consumer"
	"github.com/kpush/kpush/gateway/client"
	"github.com/twmb/franz-go/pkg/kgo"
)

// The browser test drives headless Chromium over the DevTools protocol with
// kpush's own WebSocket client (no browser-automation dependency): it opens
// the demo page served by kpush through a TCP proxy, watches live prices,
// cuts the page's connections at the proxy (the server side of its
// WebSocket goes away, as when a pod dies), keeps it offline while records
// are produced, and checks that the page resumes with no gap and no
// duplicate.

// chromiumOrSkip finds Chromium. Without it the test is skipped, except in
// CI, where .ci/run installs it and its absence is a failure.
func chromiumOrSkip(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("KPUSH_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is not installed; .ci/run installs it (apt-get install -y chromium) and the browser test must run in CI")
	}
	t.Skip("chromium is not installed (apt-get install -y chromium, or set KPUSH_CHROMIUM); skipping the browser test outside CI")
	return ""
}

// cdp is one DevTools protocol session on a page target.
type cdp struct {
	c  *client.Conn
	id int
}

// call sends a method and returns its result, skipping events.
func (p *cdp) call(t *testing.T, method string, params any) json.RawMessage {
	t.Helper()
	p.id++
	b, _ := json.Marshal(map[string]any{"id": p.id, "method": method, "params": params})
	if err := p.c.WriteText(b); err != nil {
		t.Fatalf("cdp %s: %v", method, err)
	}
	_ = p.c.NetConn().SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		raw, err := p.c.ReadRaw()
		if err != nil {
			t.Fatalf("cdp %s: %v", method, err)
		}
		var resp struct {
			ID     int             `json:"id"`
			Result json.RawMessage `json:"result"`
			Error  *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal(raw, &resp); err != nil {
			t.Fatalf("cdp %s: %v", method, err)
		}
		if resp.ID != p.id {
			continue // an event
		}
		if resp.Error != nil {
			t.Fatalf("cdp %s: %s", method, resp.Error.Message)
		}
		return resp.Result
	}
}

// eval evaluates a JavaScript expression returning a JSON string and
// decodes it into v; it reports false while the page throws (not loaded).
func (p *cdp) eval(t *testing.T, expr string, v any) bool {
	t.Helper()
	res := p.call(t, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true})
	var r struct {
		Result struct {
			Value string `json:"value"`
		} `json:"result"`
		Exception json.RawMessage `json:"exceptionDetails"`
	}
	if err := json.Unmarshal(res, &r); err != nil {
		t.Fatalf("evaluate: %v", err)
	}
	if r.Exception != nil || r.Result.Value == "" {
		return false
	}
	if err := json.Unmarshal([]byte(r.Result.Value), v); err != nil {
		t.Fatalf("evaluate result %q: %v", r.Result.Value, err)
	}
	return true
}

var devtoolsLine = regexp.MustCompile(`DevTools listening on (ws://\S+)`)

// startChromium starts headless Chromium and returns a session on its page.
func startChromium(t *testing.T, bin string) *cdp {
	t.Helper()
	cmd := exec.Command(bin,
		"--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--no-first-run", "--no-default-browser-check", "--disable-extensions",
		"--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "--remote-allow-origins=*",
		"--user-data-dir="+t.TempDir(), "about:blank")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // Chromium and the helpers it started
		_ = cmd.Wait()
	})
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := devtoolsLine.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case found <- m[1]:
				default:
				}
			}
		}
	}()
	var browserURL string
	select {
	case browserURL = <-found:
	case <-time.After(30 * time.Second):
		t.Fatal("chromium printed no DevTools address within 30s")
	}
	host := strings.TrimPrefix(browserURL, "ws://")
	host = host[:strings.IndexByte(host, '/')]
	var pageURL string
	waitFor(t, 10*time.Second, "a page target", func() bool {
		resp, err := http.Get("http://" + host + "/json/list")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var targets []struct {
			Type string `json:"type"`
			WS   string `json:"webSocketDebuggerUrl"`
		}
		if json.NewDecoder(resp.Body).Decode(&targets) != nil {
			return false
		}
		for _, tg := range targets {
			if tg.Type == "page" && tg.WS != "" {
				pageURL = tg.WS
				return true
			}
		}
		return false
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, pageURL, nil)
	if err != nil {
		t.Fatalf("devtools: %v", err)
	}
	t.Cleanup(func() { c.NetConn().Close() })
	return &cdp{c: c}
}

// cutProxy forwards TCP connections to target and counts the bytes the
// server sends back in down. cut closes every connection it carries; while
// held, new connections wait.
type cutProxy struct {
	ln   net.Listener
	down atomic.Int64

	mu     sync.Mutex
	target string // where new connections go (retarget)
	conns  map[net.Conn]struct{}
	wake   chan struct{} // closed when not held
	wg     sync.WaitGroup
}

func startProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}, wake: make(chan struct{})}
	close(p.wake)
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.release()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *cutProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.mu.Lock()
			wake := p.wake
			p.mu.Unlock()
			<-wake
			p.mu.Lock()
			target := p.target
			p.mu.Unlock()
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				return
			}
			if !p.track(c, up) {
				return
			}
			done := make(chan struct{}, 2)
			pipe := func(dst io.Writer, dc, sc net.Conn) {
				_, _ = io.Copy(dst, sc)
				dc.Close()
				sc.Close()
				done <- struct{}{}
			}
			go pipe(up, up, c)
			go pipe(countWriter{c, &p.down}, c, up)
			<-done
			<-done
			p.mu.Lock()
			delete(p.conns, c)
			delete(p.conns, up)
			p.mu.Unlock()
		}()
	}
}

func (p *cutProxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	return true
}

// retarget sends the connections accepted from now on to target (another
// instance).
func (p *cutProxy) retarget(target string) {
	p.mu.Lock()
	p.target = target
	p.mu.Unlock()
}

func (p *cutProxy) hold() {
	p.mu.Lock()
	p.wake = make(chan struct{})
	p.mu.Unlock()
}

func (p *cutProxy) release() {
	p.mu.Lock()
	select {
	case <-p.wake:
	default:
		close(p.wake)
	}
	p.mu.Unlock()
}

// cut closes every connection the proxy carries, both sides.
func (p *cutProxy) cut() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
	return len(p.conns) / 2
}

// countWriter counts what passes through it.
type countWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// demoState is what the test reads of window.kpushDemo.
type demoState struct {
	State      string                      `json:"state"`
	Received   int                         `json:"received"`
	Gaps       int                         `json:"gaps"`
	Recoveries int                         `json:"recoveries"`
	Failed     int                         `json:"failed"`
	Errors     int                         `json:"errors"`
	Reconnects int                         `json:"reconnects"`
	Duplicates int                         `json:"duplicates"`
	Positions  map[string]map[string]int64 `json:"positions"`
	Prices     map[string]float64          `json:"prices"`
}

const demoExpr = `JSON.stringify((function (d) {
  var s = d.client.stats();
  return {state: d.state, received: d.received, gaps: d.gaps, recoveries: d.recoveries,
    failed: d.failedRecoveries, errors: d.errors, reconnects: s.reconnects,
    duplicates: s.duplicates, positions: d.positions(), prices: d.lastPrices};
})(window.kpushDemo))`

func TestBrowserDemoRecoversWithoutGap(t *testing.T) {
	bin := chromiumOrSkip(t)
	k := startKafka(t)
	topic := k.topic(t, "ticks", 2)
	app := startApp(t, k, []consumer.Route{{
		Topic: topic, Channel: "ticks.{key}", Format: consumer.FormatJSON, Snapshot: true,
		History: consumer.History{MaxRecords: 1000},
	}}, nil)
	proxy := startProxy(t, app.gwLn.Addr().String())

	// The market feed: ticks whose seq grows by one per symbol, which is
	// how the page detects gaps.
	symbols := []string{"AAPL", "MSFT"}
	sim := feed.NewSimulator(symbols, 42)
	var mu sync.Mutex
	last := map[string]int64{} // channel → offset of the newest record produced
	partitionOf := map[string]int32{"AAPL": 0, "MSFT": 1}
	produce := func(n int) {
		recs := make([]*kgo.Record, n)
		for i := range recs {
			tick := sim.Next(time.Now())
			recs[i] = &kgo.Record{Topic: topic, Partition: partitionOf[tick.Sym], Key: []byte(tick.Sym), Value: tick.Append(nil)}
		}
		recs = k.produce(t, recs...)
		mu.Lock()
		for _, r := range recs {
			last["ticks."+string(r.Key)] = r.Offset
		}
		mu.Unlock()
	}
	ctx, cancel := context.WithCancel(context.Background())
	feeding := make(chan struct{})
	go func() {
		defer close(feeding)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				produce(4) // about 200 records/s
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-feeding })

	page := startChromium(t, bin)
	page.call(t, "Page.navigate", map[string]any{"url": "http://" + proxy.ln.Addr().String() + "/?symbols=" + strings.Join(symbols, ",")})
	var st demoState
	read := func() demoState {
		var s demoState
		if !page.eval(t, demoExpr, &s) {
			return demoState{}
		}
		return s
	}
	waitFor(t, 30*time.Second, "the page to show live prices", func() bool {
		st = read()
		return st.State == "open" && st.Received >= 50 && len(st.Prices) == len(symbols)
	})
	t.Logf("live: %d messages, prices %v", st.Received, st.Prices)

	// Cut the page off: its WebSocket loses its server side, and the page
	// cannot reconnect until the proxy lets it.
	proxy.hold()
	if n := proxy.cut(); n == 0 {
		t.Fatal("the proxy carried no connection to cut")
	}
	waitFor(t, 10*time.Second, "the page to see the connection drop", func() bool {
		return read().State != "open"
	})
	before := app.metric(t, "kpush_published_total")
	waitFor(t, 10*time.Second, "records produced while the page is offline", func() bool {
		return app.metric(t, "kpush_published_total") >= before+100
	})
	proxy.release()
	waitFor(t, 30*time.Second, "the page to resume", func() bool {
		st = read()
		return st.State == "open" && st.Recoveries+st.Failed >= len(symbols)
	})

	// Stop the feed and wait for the page to catch up with the last record.
	cancel()
	<-feeding
	mu.Lock()
	want := map[string]int64{}
	for ch, o := range last {
		want[ch] = o
	}
	mu.Unlock()
	waitFor(t, 30*time.Second, "the page to reach the last record of every symbol", func() bool {
		st = read()
		for ch, o := range want {
			if st.Positions[ch][fmt.Sprint(partitionOf[strings.TrimPrefix(ch, "ticks.")])] != o {
				return false
			}
		}
		return true
	})
	t.Logf("after the cut: %+v", st)
	if path := os.Getenv("KPUSH_BROWSER_SCREENSHOT"); path != "" {
		// For a person to look at the page after the recovery.
		res := page.call(t, "Page.captureScreenshot", map[string]any{"format": "png"})
		var shot struct {
			Data []byte `json:"data"` // base64 in JSON, decoded by encoding/json
		}
		if err := json.Unmarshal(res, &shot); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, shot.Data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if st.Gaps != 0 || st.Failed != 0 || st.Duplicates != 0 || st.Errors != 0 {
		t.Fatalf("page saw %d gaps, %d failed recoveries, %d duplicates, %d errors; want none", st.Gaps, st.Failed, st.Duplicates, st.Errors)
	}
	if st.Reconnects < 1 || st.Recoveries < len(symbols) {
		t.Fatalf("page reconnected %d times with %d recoveries, want at least 1 and %d", st.Reconnects, st.Recoveries, len(symbols))
	}
	if got := app.metric(t, "kpush_resumes_total", `result="recovered"`); got < float64(len(symbols)) {
		t.Fatalf("kpush counted %v recovered resumes, want at least %d", got, len(symbols))
	}
}
