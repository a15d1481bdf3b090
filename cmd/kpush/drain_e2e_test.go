package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kpush/kpush/gateway/client"
	"github.com/twmb/franz-go/pkg/kgo"
)

// mover is one test client: kpush's reconnecting client (gateway/client),
// given instance A then instance B, on a channel of its own whose records
// carry a sequence number, so a gap or a duplicate shows as a number out of
// turn.
type mover struct {
	ch   string
	part int32
	cl   *client.Client

	got       atomic.Int64 // records received in order; the next expected seq
	left      atomic.Bool  // closed by A
	recovered atomic.Bool  // resumed on B with recovered:true

	// Written by the client's Run goroutine; read after it has returned.
	urls     []string
	closedAt time.Duration // since SIGTERM
	closeErr error         // why the connection to A ended
	verdicts []bool        // OnRecovered for ch
	err      error         // first record out of turn
}

func newMover(t *testing.T, i, partitions int, aURL, bURL string, sigterm *atomic.Int64, connected func()) *mover {
	m := &mover{ch: fmt.Sprintf("move.c%04d", i), part: int32(i % partitions)}
	cl, err := client.NewClient(client.Options{
		URLs: []string{aURL, bURL},
		OnConnect: func(url string) {
			m.urls = append(m.urls, url)
			if len(m.urls) == 1 {
				connected()
			}
		},
		OnDisconnect: func(err error) {
			if m.closeErr == nil {
				m.closeErr = err
				m.closedAt = time.Duration(time.Now().UnixNano() - sigterm.Load())
				m.left.Store(true)
			}
		},
		OnRecovered: func(ch string, ok bool) {
			if ch == m.ch {
				m.verdicts = append(m.verdicts, ok)
				if ok {
					m.recovered.Store(true)
				}
			}
		},
		OnMessage: func(f *client.Frame) {
			var v struct{ S int64 }
			if f.Ch != m.ch || json.Unmarshal(f.Data, &v) != nil {
				if m.err == nil {
					m.err = fmt.Errorf("unexpected frame %+v", f)
				}
				return
			}
			if want := m.got.Load(); v.S != want {
				if m.err == nil {
					m.err = fmt.Errorf("record %d arrived when %d was next (gap or duplicate)", v.S, want)
				}
				return
			}
			m.got.Add(1)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Subscribe(m.ch); err != nil {
		t.Fatal(err)
	}
	m.cl = cl
	return m
}

// Two kpush instances on one broker; 2,000 clients on A, each on its own
// channel, and a producer writing a record to every channel every 500ms
// throughout. SIGTERM to A: /readyz turns 503 at once, every client is
// closed with 1001 at a time spread over drain_timeout, reconnects to B
// with its positions and resumes from B's history: it receives every
// record of its channel exactly once and in order, including those produced
// while it was between instances. A exits 0 after draining fully.
func TestDrainMovesClientsToAnotherInstance(t *testing.T) {
	const (
		clients    = 2000
		partitions = 4
		window     = 4 * time.Second
		roundEvery = 500 * time.Millisecond
	)
	k := startKafka(t)
	topic := k.topic(t, "move", partitions)
	conf := fmt.Sprintf(`
listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
gateway: {drain_timeout: %s}
kafka: {brokers: [%q], metadata_interval: 500ms}
routes: [{topic: %s, channel: "move.{key}", history: {max_records: 200}}]
log: {level: info, format: json}
`, window, k.brokers[0], topic)
	a := startKpushProcess(t, conf)
	b := startKpushProcess(t, conf)
	for _, p := range []*kpushProcess{a, b} {
		waitFor(t, 30*time.Second, "readyz 200", func() bool { return httpStatus(p.adminURL+"/readyz") == http.StatusOK })
	}

	var sigterm atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	var running sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		running.Wait()
	})
	movers := make([]*mover, clients)
	sem := make(chan struct{}, 64) // connections being set up
	for i := range movers {
		sem <- struct{}{}
		m := newMover(t, i, partitions, a.wsURL, b.wsURL, &sigterm, func() { <-sem })
		movers[i] = m
		running.Add(1)
		go func() {
			defer running.Done()
			_ = m.cl.Run(ctx)
		}()
	}
	waitFor(t, 60*time.Second, "every client subscribed on A", func() bool {
		return metricAt(t, a.adminURL, "kpush_subscriptions") == clients
	})

	var rounds int64 // records produced per channel; touched only by this goroutine
	produceRound := func() {
		recs := make([]*kgo.Record, 0, clients)
		for _, m := range movers {
			recs = append(recs, rec(topic, m.part, strings.TrimPrefix(m.ch, "move."), fmt.Sprintf(`{"s":%d}`, rounds)))
		}
		k.produce(t, recs...)
		rounds++
	}
	allReceived := func() bool {
		for _, m := range movers {
			if m.got.Load() < rounds {
				return false
			}
		}
		return true
	}
	// Every client has a position before the drain.
	produceRound()
	waitFor(t, 60*time.Second, "every client to receive the first record on A", allReceived)

	// SIGTERM, then keep producing; watch /readyz on A meanwhile.
	type probe struct {
		status int
		at     time.Duration // since SIGTERM
		closed int           // clients A had closed when the answer came
	}
	var probes []probe
	probesDone := make(chan struct{})
	sigterm.Store(time.Now().UnixNano())
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(probesDone)
		for {
			st := httpStatus(a.adminURL + "/readyz")
			if st == 0 { // A has stopped listening
				return
			}
			closed := 0
			for _, m := range movers {
				if m.left.Load() {
					closed++
				}
			}
			probes = append(probes, probe{st, time.Duration(time.Now().UnixNano() - sigterm.Load()), closed})
			time.Sleep(20 * time.Millisecond)
		}
	}()
	var duringDrain int64
	deadline := time.Now().Add(window + 60*time.Second)
	for extra := 0; extra < 3; {
		next := time.Now().Add(roundEvery)
		produceRound()
		select {
		case <-a.exited:
		default:
			duringDrain++
		}
		moved := true
		for _, m := range movers {
			moved = moved && m.recovered.Load()
		}
		if moved { // a few rounds more, all on B
			extra++
		}
		if time.Now().After(deadline) {
			t.Fatal("clients still not resumed on B")
		}
		time.Sleep(time.Until(next))
	}
	waitFor(t, 60*time.Second, fmt.Sprintf("every client to receive all %d records", rounds), allReceived)
	cancel()
	running.Wait()
	<-probesDone
	t.Logf("%d records per channel, %d rounds of %d records produced while A was draining", rounds, duringDrain, clients)

	// Every client: closed by A with 1001, reconnected to B, resumed there
	// with recovered:true, and every record once and in order.
	failed := 0
	for _, m := range movers {
		var problem string
		var ce client.CloseError
		st := m.cl.Stats()
		switch {
		case m.err != nil:
			problem = m.err.Error()
		case !errors.As(m.closeErr, &ce) || ce.Code != 1001:
			problem = fmt.Sprintf("connection to A ended with %v, want close 1001", m.closeErr)
		case len(m.urls) != 2 || m.urls[0] != a.wsURL || m.urls[1] != b.wsURL:
			problem = fmt.Sprintf("connected to %v, want A then B", m.urls)
		case len(m.verdicts) != 1 || !m.verdicts[0]:
			problem = fmt.Sprintf("resume verdicts %v, want one recovered:true", m.verdicts)
		case st.Duplicates != 0:
			problem = fmt.Sprintf("%d duplicates", st.Duplicates)
		case m.got.Load() != rounds:
			problem = fmt.Sprintf("%d records, want %d", m.got.Load(), rounds)
		default:
			continue
		}
		if failed++; failed <= 10 {
			t.Errorf("%s: %s", m.ch, problem)
		}
	}
	if failed > 0 {
		t.Errorf("%d of %d clients failed", failed, clients)
	}
	if duringDrain == 0 {
		t.Error("nothing was produced while A drained")
	}
	if got := metricAt(t, b.adminURL, "kpush_resumes_total", `source="memory"`, `result="recovered"`); got != clients {
		t.Errorf("B resumed %v channels from memory, want %d", got, clients)
	}

	// /readyz: 503 as soon as A has handled the signal, long before the
	// drain is over (the test process is busy, so allow for its own delay
	// in probing: a quarter of the clients), and never 200 again.
	first := -1
	for i, p := range probes {
		if p.status == http.StatusServiceUnavailable && first < 0 {
			first = i
		}
		if first >= 0 && p.status != http.StatusServiceUnavailable {
			t.Errorf("/readyz answered %d %s after SIGTERM, after it had answered 503", p.status, p.at.Round(time.Millisecond))
		}
	}
	if first < 0 {
		t.Fatalf("A's /readyz never answered 503 after SIGTERM (%d answers)", len(probes))
	}
	p503 := probes[first]
	t.Logf("/readyz on A: first 503 %s after SIGTERM (%d answers of 200 before it), when A had closed %d of %d clients",
		p503.at.Round(time.Millisecond), first, p503.closed, clients)
	if p503.closed > clients/4 {
		t.Errorf("/readyz turned 503 only after A had closed %d of %d clients", p503.closed, clients)
	}

	// Close times by tenths of the drain window: spread, not all at once.
	var tenths [10]int
	late := 0
	for _, m := range movers {
		i := int(m.closedAt * 10 / window)
		if i >= 10 {
			late++
			i = 9
		}
		tenths[max(i, 0)]++
	}
	var hist strings.Builder
	for i, n := range tenths {
		fmt.Fprintf(&hist, "\n  %3d%%-%3d%% of %s: %4d %s", i*10, i*10+10, window, n, strings.Repeat("#", n/20))
	}
	t.Logf("1001 close times after SIGTERM (%d after the window, counted in the last tenth):%s", late, hist.String())
	for i, n := range tenths {
		if n > clients*3/10 {
			t.Errorf("%d of %d closes in tenth %d of the window; want at most 30%% in any tenth", n, clients, i)
		}
	}

	// A exits 0, having drained every connection before its deadline.
	select {
	case <-a.exited:
		if a.err != nil {
			t.Fatalf("A exited with %v, want status 0", a.err)
		}
	case <-time.After(window + 15*time.Second):
		t.Fatal("A did not exit")
	}
	<-a.logsDone
	_, drained := a.waitLog(t, time.Second, 0, "A's drained log record", logMsg("gateway drained", ""))
	if left, _ := drained["left"].(float64); left != 0 {
		t.Errorf("A drained with %v connections left", left)
	}
	_, stopped := a.waitLog(t, time.Second, 0, "A's stopped log record", logMsg("kpush stopped", ""))
	if at, err := time.Parse(time.RFC3339Nano, fmt.Sprint(stopped["time"])); err == nil {
		// kpush gives up draining at drain_timeout + 10s.
		t.Logf("A stopped %s after SIGTERM (drain_timeout %s, hard deadline %s)",
			time.Duration(at.UnixNano()-sigterm.Load()).Round(time.Millisecond), window, window+10*time.Second)
	}
	for _, m := range a.logsBefore(1 << 30) {
		if m["msg"] == "drain did not finish" {
			t.Errorf("A ran into its drain deadline: %v", m)
		}
	}
}
