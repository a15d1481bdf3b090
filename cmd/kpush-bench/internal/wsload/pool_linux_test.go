package wsload

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/kpush/kpush/gateway"
	"github.com/kpush/kpush/router"
)

// startGateway runs kpush's gateway in-process on a random loopback port.
func startGateway(t *testing.T, mutate func(*gateway.Config)) (*gateway.Server, string) {
	t.Helper()
	cfg := gateway.Config{Listen: "127.0.0.1:0", DrainTimeout: time.Second}
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := gateway.New(cfg, router.New(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("gateway did not stop")
		}
	})
	return srv, "ws://" + ln.Addr().String() + "/ws"
}

func newPool(t *testing.T, cfg Config) *Pool {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// openReady opens n connections of p, connection i subscribed to subs(i),
// and waits up to 20s until every one is ready (subscribed).
func openReady(t *testing.T, p *Pool, n int, subs func(i int) []int32) {
	t.Helper()
	p.Open(n, subs)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.WaitReady(ctx, n); err != nil {
		t.Fatal(err)
	}
}

func channels(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("bench.S%03d", i)
	}
	return out
}

// TestDeliveriesCountedWithoutGaps subscribes connections over several
// source addresses, publishes a sequence on every channel and checks every
// delivery is counted once, in order, with a latency.
func TestDeliveriesCountedWithoutGaps(t *testing.T) {
	const conns, nch, perChannel = 300, 10, 20
	srv, url := startGateway(t, nil)
	chs := channels(nch)
	p := newPool(t, Config{URL: url, Channels: chs, Loops: 2, SourceAddrs: 3, MaxInFlight: 64})
	openReady(t, p, conns, func(i int) []int32 { return []int32{int32(i % nch), int32((i + 1) % nch)} })
	waitFor(t, 10*time.Second, "gateway to count the connections", func() bool { return srv.Connections() == conns })

	for seq := int64(1); seq <= perChannel; seq++ {
		for c, ch := range chs {
			srv.Publish(&gateway.Message{Channel: ch, Partition: int32(c % 3), Offset: seq, Timestamp: time.Now().UnixMilli(),
				Data: AppendValue(nil, seq, time.Now().UnixNano(), 100)}, nil)
		}
	}
	want := int64(conns * 2 * perChannel)
	waitFor(t, 20*time.Second, "every delivery", func() bool { return p.Stats().Deliveries >= want })
	s := p.Stats()
	if s.Deliveries != want || s.Gaps != 0 || s.Dups != 0 || s.Unknown != 0 || s.Failed != 0 {
		t.Fatalf("stats %+v, want %d deliveries and no gaps, duplicates, unknown or failures", s, want)
	}
	if s.Subscribed != conns || s.Open != conns {
		t.Fatalf("subscribed %d open %d, want %d", s.Subscribed, s.Open, conns)
	}
	lat := p.Latency().Summary()
	if lat.Count != uint64(want) || lat.Max <= 0 || lat.Max > time.Minute {
		t.Fatalf("latency summary %+v for %d deliveries", lat, want)
	}
	if hs := p.HandshakeLatency(); hs.Count() != conns {
		t.Fatalf("%d handshake latencies, want %d", hs.Count(), conns)
	}
}

func TestGapsAndDuplicatesDetected(t *testing.T) {
	srv, url := startGateway(t, nil)
	p := newPool(t, Config{URL: url, Channels: []string{"c"}, Loops: 1})
	openReady(t, p, 1, func(int) []int32 { return []int32{0} })
	send := func(offset, seq int64) {
		srv.Publish(&gateway.Message{Channel: "c", Offset: offset, Timestamp: 1, Data: AppendValue(nil, seq, time.Now().UnixNano(), 0)}, nil)
	}
	send(10, 1)
	send(11, 2)
	send(12, 6) // seq 3, 4, 5 missing
	send(12, 6) // the same record again
	send(13, 7)
	waitFor(t, 10*time.Second, "five deliveries", func() bool { return p.Stats().Deliveries == 5 })
	if s := p.Stats(); s.Gaps != 3 || s.Dups != 1 {
		t.Fatalf("gaps %d dups %d, want 3 and 1", s.Gaps, s.Dups)
	}
}

// TestAnswersPingsAndSurvivesIdleTimeout holds connections past kpush's
// idle timeout: only answered pings keep them open.
func TestAnswersPingsAndSurvivesIdleTimeout(t *testing.T) {
	const conns = 50
	// kpush sweeps for pings and idle connections once a second.
	srv, url := startGateway(t, func(c *gateway.Config) {
		c.PingInterval = 500 * time.Millisecond
		c.IdleTimeout = 2500 * time.Millisecond
	})
	p := newPool(t, Config{URL: url, Channels: []string{"c"}})
	openReady(t, p, conns, func(int) []int32 { return []int32{0} })
	// Four pings each, a second or more apart, span more than the idle
	// timeout.
	waitFor(t, 20*time.Second, "four pings per connection", func() bool { return p.Stats().Pings >= 4*conns })
	if s := p.Stats(); s.Open != conns || s.Closed != 0 || s.Lost != 0 || srv.Connections() != conns {
		t.Fatalf("after the idle timeout: pool %+v, gateway %d connections; want all %d open", s, srv.Connections(), conns)
	}
}

// TestDropAndReconnect cuts every connection and brings them back
// subscribed, as the reconnect-storm scenario does.
func TestDropAndReconnect(t *testing.T) {
	const conns = 200
	srv, url := startGateway(t, nil)
	p := newPool(t, Config{URL: url, Channels: channels(5), MaxInFlight: 32})
	openReady(t, p, conns, func(i int) []int32 { return []int32{int32(i % 5)} })
	p.Drop(true)
	waitFor(t, 20*time.Second, "resubscribed after the drop", func() bool { return p.Stats().Subscribed == 2*conns })
	if s := p.Stats(); s.Ready != conns || s.Failed != 0 {
		t.Fatalf("after reconnect %+v, want %d ready and no failures", s, conns)
	}
	waitFor(t, 10*time.Second, "gateway to drop the dead connections", func() bool { return srv.Connections() == conns })
	srv.Publish(&gateway.Message{Channel: "bench.S000001", Data: []byte(`1`)}, nil)
	srv.Publish(&gateway.Message{Channel: "bench.S000", Offset: 1, Data: AppendValue(nil, 1, time.Now().UnixNano(), 0)}, nil)
	waitFor(t, 10*time.Second, "a delivery to every subscriber of bench.S000", func() bool { return p.Stats().Deliveries == conns/5 })
}

// TestRefusedUpgradeIsAFailure points the pool at a full server.
func TestRefusedUpgradeIsAFailure(t *testing.T) {
	srv, url := startGateway(t, func(c *gateway.Config) { c.MaxConnections = 5 })
	p := newPool(t, Config{URL: url})
	openReady(t, p, 5, nil)
	// The server counts a connection just after answering its upgrade.
	waitFor(t, 10*time.Second, "the gateway to count five connections", func() bool { return srv.Connections() == 5 })
	p.Open(3, nil)
	waitFor(t, 10*time.Second, "three failures", func() bool { return p.Stats().Failed == 3 })
	if s := p.Stats(); s.Ready != 5 || s.Failures["upgrade: HTTP status 503"] != 3 {
		t.Fatalf("stats %+v, want five ready and three HTTP 503 failures", s)
	}
}

// TestDeflateDeliveries: with Deflate the pool negotiates permessage-deflate,
// inflates compressed records and checks them like plain ones; fewer bytes
// cross the socket than the records' plain size.
func TestDeflateDeliveries(t *testing.T) {
	srv, url := startGateway(t, func(c *gateway.Config) { c.Compression = true; c.CompressionMinBytes = 64 })
	p := newPool(t, Config{URL: url, Channels: []string{"c"}, Loops: 1, Deflate: true})
	openReady(t, p, 2, func(int) []int32 { return []int32{0} })
	b0 := p.Stats().Bytes
	const n = 200
	plain := 0
	for seq := int64(1); seq <= n; seq++ {
		m := &gateway.Message{Channel: "c", Offset: seq, Timestamp: 1, Data: AppendMarketValue(nil, seq, time.Now().UnixNano(), 2048)}
		plain += len(gateway.EncodeMessage(m).Data)
		srv.Publish(m, nil)
	}
	waitFor(t, 10*time.Second, "every delivery", func() bool { return p.Stats().Deliveries == 2*n })
	s := p.Stats()
	if s.Gaps != 0 || s.Dups != 0 {
		t.Fatalf("gaps %d dups %d", s.Gaps, s.Dups)
	}
	if got := s.Bytes - b0; got >= int64(2*plain) {
		t.Fatalf("%d bytes read for %d deliveries of %d plain bytes each: not compressed", got, 2*n, plain/n)
	}
}

// TestNewestLatencyCountsSupersededRecords checks the newest-value latency:
// a frame that skips records (as a capped channel's does) stands for every
// record since the last one received, each timed from its own production,
// and without skips there is one figure per delivery.
func TestNewestLatencyCountsSupersededRecords(t *testing.T) {
	srv, url := startGateway(t, nil)
	sent := NewSendTimes(1)
	p := newPool(t, Config{URL: url, Channels: []string{"c"}, Loops: 1, Sent: sent})
	openReady(t, p, 1, func(int) []int32 { return []int32{0} })
	old := time.Now().Add(-time.Hour).UnixNano()
	for seq := int64(1); seq <= 6; seq++ {
		at := time.Now().UnixNano()
		if seq == 3 {
			at = old // produced an hour ago and never delivered itself
		}
		sent.Record(0, seq, at)
	}
	send := func(offset, seq int64) {
		srv.Publish(&gateway.Message{Channel: "c", Offset: offset, Timestamp: 1, Data: AppendValue(nil, seq, sent.At(0, seq), 0)}, nil)
	}
	send(10, 1)
	send(11, 2)
	send(14, 5) // stands for 3, 4 and 5
	send(15, 6)
	waitFor(t, 10*time.Second, "four deliveries", func() bool { return p.Stats().Deliveries == 4 })
	n := p.NewestLatency().Summary()
	if n.Count != 6 {
		t.Fatalf("%d newest-value latencies for records 1..6, want 6", n.Count)
	}
	if n.Max < 59*time.Minute {
		t.Fatalf("newest-value max %s: record 3, produced an hour before the frame that replaced it, is not counted from its production", n.Max)
	}
	if d := p.Latency().Summary(); d.Count != 4 || d.Max > time.Minute {
		t.Fatalf("delivery latency %+v: want 4 deliveries, none an hour late", d)
	}
	if sent.At(0, 7) != 0 || sent.At(1, 1) != 0 || sent.At(0, 3) != old {
		t.Fatal("SendTimes.At answers for records it was not given, or loses one it was")
	}
}

// TestProtocolsCountEveryDelivery opens connections in each protocol the
// pool speaks against kpush's gateway (its own protocol, Centrifugo's on
// gateway.centrifugo_path, event streams on gateway.sse_path), publishes a
// sequence on every channel, and checks that each protocol's connections
// become ready only once subscribed and count every delivery once, in
// order, with a latency.
func TestProtocolsCountEveryDelivery(t *testing.T) {
	for _, tc := range []struct{ proto, path string }{
		{ProtoV1, "/ws"},
		{ProtoCentrifugo, gateway.DefaultCentrifugoPath},
		{ProtoSSE, gateway.DefaultSSEPath},
	} {
		t.Run(tc.proto, func(t *testing.T) {
			const conns, nch, perChannel = 60, 4, 15
			srv, url := startGateway(t, nil)
			url = strings.TrimSuffix(url, "/ws") + tc.path
			chs := channels(nch)
			p := newPool(t, Config{URL: url, Channels: chs, Loops: 2, MaxInFlight: 16, Protocol: tc.proto})
			openReady(t, p, conns, func(i int) []int32 { return []int32{int32(i % nch), int32((i + 1) % nch)} })
			// Ready means subscribed: kpush counts every subscription.
			waitFor(t, 10*time.Second, "gateway to count the connections", func() bool { return srv.Connections() == conns })
			for seq := int64(1); seq <= perChannel; seq++ {
				for _, ch := range chs {
					srv.Publish(&gateway.Message{Channel: ch, Partition: 0, Offset: 100 + seq, Timestamp: time.Now().UnixMilli(),
						Data: AppendValue(nil, seq, time.Now().UnixNano(), 80)}, nil)
				}
			}
			want := int64(conns * 2 * perChannel)
			waitFor(t, 20*time.Second, "every delivery", func() bool { return p.Stats().Deliveries >= want })
			s := p.Stats()
			if s.Deliveries != want || s.Gaps != 0 || s.Dups != 0 || s.Unknown != 0 || s.Failed != 0 || s.Subscribed != conns {
				t.Fatalf("stats %+v, want %d deliveries, %d subscribed, no gaps, duplicates, unknown or failures", s, want, conns)
			}
			if lat := p.Latency().Summary(); lat.Count != uint64(want) || lat.Max > time.Minute {
				t.Fatalf("latency summary %+v for %d deliveries", lat, want)
			}
		})
	}
}

func TestUnknownProtocolRefused(t *testing.T) {
	if _, err := New(Config{URL: "ws://127.0.0.1:1/ws", Protocol: "mqtt"}); err == nil {
		t.Fatal("New accepted protocol mqtt")
	}
}

// TestCappedFramesCounted drives kpush's frequency cap: a burst on a
// channel capped at 2 a second reaches the client as its first record and
// then the newest, marked "skipped":N. The marked frame is a delivery, the
// skipped records are no gap, and each of the burst's records is
// superseded at the client (newest-value latency) when the marked frame
// arrives.
func TestCappedFramesCounted(t *testing.T) {
	srv, url := startGateway(t, nil)
	sent := NewSendTimes(1)
	p := newPool(t, Config{URL: url, Channels: []string{"c"}, Loops: 1, Sent: sent})
	openReady(t, p, 1, func(int) []int32 { return []int32{0} })
	const burst = 10
	for seq := int64(1); seq <= burst; seq++ {
		now := time.Now().UnixNano()
		sent.Record(0, seq, now)
		srv.Publish(&gateway.Message{Channel: "c", Offset: 100 + seq, Timestamp: time.Now().UnixMilli(), MaxRate: 2,
			Data: AppendValue(nil, seq, now, 0)}, nil)
	}
	waitFor(t, 10*time.Second, "the newest record", func() bool { return p.NewestLatency().Count() == burst })
	s := p.Stats()
	if s.Deliveries != 2 || s.Gaps != 0 || s.Dups != 0 || s.Unknown != 0 {
		t.Fatalf("stats %+v: want 2 deliveries (the first, then the newest with skipped:%d) and no gaps", s, burst-2)
	}
}

// TestSourceAddrsKeepHandshakesUnderKpushShare checks the default spread of
// source addresses: no address has more than 16 handshakes in flight, far
// under kpush's per-address share (an eighth of gateway.max_handshakes,
// 128 by default), however many are in flight at once.
func TestSourceAddrsKeepHandshakesUnderKpushShare(t *testing.T) {
	for _, tc := range []struct {
		inFlight, total, want int
	}{
		{16, 100, 4},
		{256, 2000, 16},
		{1024, 10000, 64},
		{512, 100000, 32},
		{64, 200000, 11}, // one address per 20,000 connections
		{8192, 1000, 254},
	} {
		got := sourceAddrs(Config{MaxInFlight: tc.inFlight}, tc.total)
		if got != tc.want {
			t.Errorf("%d in flight, %d connections: %d source addresses, want %d", tc.inFlight, tc.total, got, tc.want)
		}
		if got < 254 && (tc.inFlight+got-1)/got > maxInFlightPerAddr {
			t.Errorf("%d in flight over %d addresses: more than %d per address", tc.inFlight, got, maxInFlightPerAddr)
		}
	}
	if got := sourceAddrs(Config{SourceAddrs: 3, MaxInFlight: 1024}, 10); got != 3 {
		t.Errorf("explicit SourceAddrs 3: got %d", got)
	}
}
