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

// mover is one test client that starts on instance A and moves to B when A
// drains. Each has a channel of its own, whose records carry a sequence
// number, so a gap or a duplicate anywhere shows as a number out of turn.
type mover struct {
	ch   string
	part int32

	got      atomic.Int64 // records received in order; the next expected seq
	left     atomic.Bool  // closed by A
	onB      atomic.Bool  // subscribed on B (the producer may resume its channel)
	dialErr  error        // connecting to A; set before ready is called
	closedAt time.Duration
	code     int
	err      error
}

// run connects to A, reports subscribed on ready, reads until A closes the
// connection, reconnects to B, and reads until it has total records.
func (m *mover) run(aURL, bURL string, total int64, sigterm *atomic.Int64, ready func()) {
	fail := func(format string, args ...any) { m.err = fmt.Errorf(format, args...) }
	c, err := m.connect(aURL)
	m.dialErr = err
	ready()
	if err != nil {
		return
	}
	err = m.read(c, total)
	var ce client.CloseError
	if !errors.As(err, &ce) {
		fail("on A: read ended with %v, want a close frame", err)
		return
	}
	m.closedAt = time.Duration(time.Now().UnixNano() - sigterm.Load())
	m.code = int(ce.Code)
	m.left.Store(true)
	c.NetConn().Close()

	if c, err = m.connect(bURL); err != nil {
		fail("on B: %v", err)
		return
	}
	defer c.NetConn().Close()
	m.onB.Store(true)
	if err := m.read(c, total); err != nil {
		fail("on B after %d records: %v", m.got.Load(), err)
	}
}

func (m *mover) connect(url string) (*client.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, url, nil)
	if err != nil {
		return nil, err
	}
	_ = c.NetConn().SetDeadline(time.Now().Add(90 * time.Second))
	id, err := c.Send(&client.Request{Op: "subscribe", Channels: []string{m.ch}})
	if err != nil {
		c.NetConn().Close()
		return nil, err
	}
	// Nothing is produced to m.ch until the reply has arrived.
	f, err := c.Read()
	if err != nil || f.Op != "ok" || f.ID != id {
		c.NetConn().Close()
		return nil, fmt.Errorf("subscribe %s: %+v, %v", m.ch, f, err)
	}
	return c, nil
}

// read checks each record against the next expected sequence number until
// total have arrived or the connection ends.
func (m *mover) read(c *client.Conn, total int64) error {
	for m.got.Load() < total {
		f, err := c.Read()
		if err != nil {
			return err
		}
		var v struct{ S int64 }
		if f.Op != "msg" || f.Ch != m.ch || json.Unmarshal(f.Data, &v) != nil {
			return fmt.Errorf("unexpected frame %+v", f)
		}
		if want := m.got.Load(); v.S != want {
			return fmt.Errorf("record %d arrived when %d was next (gap or duplicate)", v.S, want)
		}
		m.got.Add(1)
	}
	return nil
}

// Two kpush instances on one broker; 2,000 clients on A. SIGTERM to A:
// /readyz turns 503 at once, every client is closed with 1001 spread over
// drain_timeout, reconnects to B and receives every record of its channel
// in order with no gap or duplicate, including records produced while A
// was still draining; A exits 0 after draining fully.
//
// kpush has no resume yet, so records produced to a channel while its
// client is between A and B would be lost by design (deployments/README.md,
// rolling updates). The producer therefore pauses each channel from the
// SIGTERM until its client is subscribed on B, and produces to moved
// clients throughout the drain.
func TestDrainMovesClientsToAnotherInstance(t *testing.T) {
	const (
		clients    = 2000
		partitions = 4
		before     = 2 // records per channel before SIGTERM
		total      = 5 // records per channel in all
		window     = 4 * time.Second
	)
	k := startKafka(t)
	topic := k.topic(t, "move", partitions)
	conf := fmt.Sprintf(`
listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
gateway: {drain_timeout: %s}
kafka: {brokers: [%q], metadata_interval: 500ms}
routes: [{topic: %s, channel: "move.{key}"}]
log: {level: info, format: json}
`, window, k.brokers[0], topic)
	a := startKpushProcess(t, conf)
	b := startKpushProcess(t, conf)
	for _, p := range []*kpushProcess{a, b} {
		waitFor(t, 30*time.Second, "readyz 200", func() bool { return httpStatus(p.adminURL+"/readyz") == http.StatusOK })
	}

	movers := make([]*mover, clients)
	var sigterm atomic.Int64
	var connected, finished sync.WaitGroup
	allFinished := make(chan struct{})
	sem := make(chan struct{}, 64) // dials in flight
	for i := range movers {
		m := &mover{ch: fmt.Sprintf("move.c%04d", i), part: int32(i % partitions)}
		movers[i] = m
		connected.Add(1)
		finished.Add(1)
		sem <- struct{}{}
		go func() {
			defer finished.Done()
			m.run(a.wsURL, b.wsURL, total, &sigterm, func() { <-sem; connected.Done() })
		}()
	}
	connected.Wait()
	go func() {
		finished.Wait()
		close(allFinished)
	}()
	for _, m := range movers {
		if m.dialErr != nil {
			t.Fatalf("%s: connecting to A: %v", m.ch, m.dialErr)
		}
	}
	if n := metricAt(t, a.adminURL, "kpush_connections"); n != clients {
		t.Fatalf("A holds %v connections, want %d", n, clients)
	}

	produced := make([]int64, clients) // per channel; only the producing goroutine touches it
	produce := func(which func(i int) bool) int {
		var recs []*kgo.Record
		for i, m := range movers {
			if produced[i] < total && which(i) {
				recs = append(recs, rec(topic, m.part, strings.TrimPrefix(m.ch, "move."), fmt.Sprintf(`{"s":%d}`, produced[i])))
				produced[i]++
			}
		}
		if len(recs) > 0 {
			k.produce(t, recs...)
		}
		return len(recs)
	}
	for range before {
		produce(func(int) bool { return true })
	}
	waitFor(t, 60*time.Second, "every client to receive the first records on A", func() bool {
		for _, m := range movers {
			if m.got.Load() < before {
				return false
			}
		}
		return true
	})

	// SIGTERM; watch /readyz on A from then on.
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
			closed := 0
			for _, m := range movers {
				if m.left.Load() {
					closed++
				}
			}
			if st == 0 { // A has stopped listening
				return
			}
			probes = append(probes, probe{st, time.Duration(time.Now().UnixNano() - sigterm.Load()), closed})
			time.Sleep(20 * time.Millisecond)
		}
	}()

	// Produce to every client that has reached B, during the drain and
	// until every channel has all its records (or every client has ended,
	// some with an error reported below).
	var duringDrain int
	giveUp := time.After(window + 90*time.Second)
produce:
	for {
		n := produce(func(i int) bool { return movers[i].onB.Load() })
		select {
		case <-a.exited:
		default:
			duringDrain += n
		}
		done := true
		for i := range movers {
			done = done && produced[i] == total
		}
		if done {
			break
		}
		select {
		case <-time.After(20 * time.Millisecond):
		case <-allFinished:
			break produce
		case <-giveUp:
			t.Error("gave up producing: clients still not on B")
			break produce
		}
	}
	<-allFinished
	<-probesDone

	// Every client: closed with 1001 by A, then every record in order.
	failed := 0
	for _, m := range movers {
		var problem string
		switch {
		case m.err != nil:
			problem = m.err.Error()
		case m.code != 1001:
			problem = fmt.Sprintf("A closed it with %d, want 1001", m.code)
		case m.got.Load() != total:
			problem = fmt.Sprintf("%d records, want %d", m.got.Load(), total)
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
	t.Logf("%d records produced to moved clients while A was draining", duringDrain)
	if duringDrain == 0 {
		t.Error("nothing was produced while A drained: the test did not exercise B during the drain")
	}

	// /readyz: 503 as soon as A has handled the signal, before it has
	// closed a tenth of its clients, and never 200 again.
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
	if p503.closed > clients/10 {
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
		tenths[i]++
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
	if got := metricAt(t, b.adminURL, "kpush_handshakes_total", `result="ok"`); got != clients {
		t.Errorf("B accepted %v handshakes, want %d", got, clients)
	}
}
