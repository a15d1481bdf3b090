package gateway

import (
	"context"
	"testing"
	"time"

	centrifuge "github.com/centrifugal/centrifuge-go"
	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus"
)

// metricWith sums the samples of name whose labels include every pair of
// want.
func metricWith(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			n := 0
			for _, lp := range m.GetLabel() {
				if v, ok := want[lp.GetName()]; ok && v == lp.GetValue() {
					n++
				}
			}
			if n == len(want) {
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// TestCentrifugoMetricsByProtocol: a protocol v1 connection, two
// Centrifugo connections and one refused Centrifugo upgrade are counted
// under their own protocol label in kpush_handshakes_total and
// kpush_connections.
func TestCentrifugoMetricsByProtocol(t *testing.T) {
	g := startSSEServer(t, func(c *Config) { c.AllowedOrigins = []string{"https://app.example"} })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v1, _, _, err := ws.Dialer{}.Dial(ctx, "ws://"+g.addr+"/ws")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v1.Close() })
	cfClient(t, g.addr, centrifuge.Config{})
	cfClient(t, g.addr, centrifuge.Config{})
	// A refused upgrade on the Centrifugo path (an origin not allowed).
	bad := ws.Dialer{Header: ws.HandshakeHeaderHTTP{"Origin": []string{"https://evil.example"}}}
	if c, _, _, err := bad.Dial(ctx, cfURL(g.addr)); err == nil {
		c.Close()
		t.Fatal("upgrade from a foreign origin accepted")
	}
	secWaitUntil(t, 10*time.Second, "three connections", func() bool { return g.srv.Connections() == 3 })
	// The refusal is counted after it is written: the client may read it
	// first.
	secWaitUntil(t, 10*time.Second, "the refusal to be counted", func() bool {
		return metricWith(t, g.reg, "kpush_handshakes_total", map[string]string{"result": "rejected"}) >= 1
	})
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"v1 handshakes", map[string]string{"protocol": "v1", "result": "ok"}, 1},
		{"centrifugo handshakes", map[string]string{"protocol": "centrifugo", "result": "ok"}, 2},
		{"centrifugo refusals", map[string]string{"protocol": "centrifugo", "result": "rejected"}, 1},
		{"v1 refusals", map[string]string{"protocol": "v1", "result": "rejected"}, 0},
		{"sse handshakes", map[string]string{"protocol": "sse"}, 0},
	} {
		if got := metricWith(t, g.reg, "kpush_handshakes_total", tc.labels); got != tc.want {
			t.Errorf("%s: kpush_handshakes_total%v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	for proto, want := range map[string]float64{"v1": 1, "centrifugo": 2, "sse": 0} {
		if got := metricWith(t, g.reg, "kpush_connections", map[string]string{"protocol": proto}); got != want {
			t.Errorf("kpush_connections{protocol=%q} = %v, want %v", proto, got, want)
		}
	}
}
