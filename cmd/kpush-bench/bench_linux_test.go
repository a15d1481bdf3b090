package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestQuickRunEndToEnd runs every scenario at a tiny size against a real
// kpush process and an embedded broker, and checks what a user of the
// results would rely on: every owed delivery counted once and in order,
// kpush's own figures read, and the JSON written. It asserts no speed.
func TestQuickRunEndToEnd(t *testing.T) {
	dir := t.TempDir()
	bin := buildKpush(t, dir)
	jsonPath := filepath.Join(dir, "results.json")
	o, err := parseFlags([]string{
		"-kpush-bin", bin, "-out", filepath.Join(dir, "out"), "-json", jsonPath,
		"-idle-steps", "40", "-idle-channels", "10", "-settle", "0s",
		"-fanout-subs", "30", "-fanout-rates", "20", "-fanout-step", "1s",
		"-market-conns", "40", "-market-symbols", "20", "-market-subs", "3", "-market-rate", "100",
		"-market-duration", "1s", "-warmup", "500ms", "-market-partitions", "3",
		"-hs-conns", "60", "-hs-inflight", "8", "-storm-conns", "50", "-storm-inflight", "16",
		"-kernel-loop", "200ms",
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	rep, err := runAll(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	printReport(&out, rep)
	if err := writeJSON(jsonPath, rep); err != nil {
		t.Fatal(err)
	}

	if rep.Idle == nil || len(rep.Idle.Steps) != 1 || rep.Idle.Steps[0].Conns != 40 || rep.Idle.Steps[0].RSSBytes <= 0 {
		t.Fatalf("idle result %+v", rep.Idle)
	}
	if g := rep.Idle.Steps[0].GoroutinesPerConn; g > 0.1 {
		t.Errorf("kpush holds %.2f goroutines per idle connection, want none", g)
	}
	f := rep.Fanout
	if f == nil || len(f.Steps) == 0 {
		t.Fatalf("fanout result %+v", f)
	}
	for _, st := range f.Steps {
		if st.Produced == 0 || st.Received != st.Expected || st.Expected != st.Produced*30 || st.Duplicates != 0 || st.Gaps != 0 {
			t.Errorf("fanout step %+v: want every owed delivery exactly once", st)
		}
		if st.KpushCPUSeconds <= 0 || st.Latency.Count != uint64(st.Received) {
			t.Errorf("fanout step: kpush CPU %.3f, %d latencies for %d deliveries", st.KpushCPUSeconds, st.Latency.Count, st.Received)
		}
		// Uncapped, every delivery is the newest value of its channel.
		if st.Newest == nil || st.Newest.Count != uint64(st.Received) {
			t.Errorf("fanout step: newest-value latency %+v for %d deliveries", st.Newest, st.Received)
		}
		if k := st.Kernel; k == nil || k.Sockets != 30 || k.Writes == 0 || k.DeliveriesPerCPU <= 0 || st.KernelRatio <= 0 || st.KernelWriteRatio <= 0 {
			t.Errorf("fanout step: plain writev loop %+v, ratio %v: want one over 30 sockets", k, st.KernelRatio)
		}
	}
	m := rep.Market
	if m == nil || m.Step.Produced == 0 || m.Step.Received != m.Step.Expected || m.Step.Duplicates != 0 || m.Step.Gaps != 0 {
		t.Fatalf("market result %+v: want every owed delivery exactly once", m)
	}
	h := rep.Handshake
	if h == nil || len(h.Rounds) != 1 || h.Rounds[0].Failed != 0 || h.Rounds[0].PerSec <= 0 {
		t.Fatalf("handshake result %+v", h)
	}
	if h.Storm == nil || h.Storm.Failed != 0 || h.Storm.Seconds <= 0 {
		t.Fatalf("storm result %+v", h.Storm)
	}
	if m.Step.Kernel == nil || m.Step.Kernel.Sockets != 40 || m.Step.KernelRatio <= 0 {
		t.Errorf("market: plain writev loop %+v, ratio %v: want one over 40 sockets", m.Step.Kernel, m.Step.KernelRatio)
	}
	for _, heading := range []string{"### Idle connections", "### Fan-out", "### Market mix", "### Handshakes", "Reconnect storm", "Against the plain writev loop"} {
		if !strings.Contains(out.String(), heading) {
			t.Errorf("report lacks %q:\n%s", heading, out.String())
		}
	}
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil || back.Market == nil || back.Market.Step.Received != m.Step.Received {
		t.Fatalf("JSON results do not round-trip: %v", err)
	}
}

func buildKpush(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "kpush")
	build := exec.Command("go", "build", "-o", bin, "github.com/kpush/kpush/cmd/kpush")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build kpush: %v\n%s", err, out)
	}
	return bin
}

// TestProtocolScenarios runs the idle and fan-out scenarios with
// Centrifugo's protocol and with event streams against a real kpush: every
// connection subscribed and counted by kpush, every owed delivery received
// once and in order, and the plain loop run with the protocol's frames.
func TestProtocolScenarios(t *testing.T) {
	dir := t.TempDir()
	bin := buildKpush(t, dir)
	for _, proto := range []string{"centrifugo", "sse"} {
		t.Run(proto, func(t *testing.T) {
			o, err := parseFlags([]string{
				"-kpush-bin", bin, "-out", filepath.Join(dir, proto), "-scenarios", "idle,fanout", "-protocol", proto,
				"-idle-steps", "30", "-idle-channels", "5", "-settle", "0s",
				"-fanout-subs", "25", "-fanout-rates", "20", "-fanout-step", "1s", "-kernel-loop", "100ms",
			})
			if err != nil {
				t.Fatal(err)
			}
			rep, err := runAll(t.Context(), o)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Idle == nil || rep.Idle.Protocol != proto || len(rep.Idle.Steps) != 1 || rep.Idle.Steps[0].Conns != 30 {
				t.Fatalf("idle result %+v", rep.Idle)
			}
			f := rep.Fanout
			if f == nil || f.Protocol != proto || len(f.Steps) == 0 {
				t.Fatalf("fanout result %+v", f)
			}
			for _, st := range f.Steps {
				if st.Produced == 0 || st.Received != st.Expected || st.Expected != st.Produced*25 || st.Duplicates != 0 || st.Gaps != 0 {
					t.Errorf("fanout step %+v: want every owed delivery exactly once", st)
				}
				if st.Kernel == nil || st.Kernel.Writes == 0 {
					t.Errorf("fanout step: no plain loop: %+v", st.Kernel)
				}
			}
		})
	}
}

func TestParseFlagsQuickKeepsExplicitSizes(t *testing.T) {
	o, err := parseFlags([]string{"-quick", "-fanout-subs", "123"})
	if err != nil {
		t.Fatal(err)
	}
	if o.fanoutSubs != 123 || o.marketConns != 2000 || len(o.idleSteps) != 2 {
		t.Fatalf("quick with -fanout-subs 123: subs %d, market conns %d, idle steps %v", o.fanoutSubs, o.marketConns, o.idleSteps)
	}
	for _, bad := range [][]string{
		{"-scenarios", "nope"},
		{"-idle-steps", "0"},
		{"-kpush-ws", "ws://127.0.0.1:1/ws"},
		{"-market-subs", "20", "-market-symbols", "10"},
		{"-protocol", "mqtt"},
		{"-protocol", "sse", "-compression"},
	} {
		if _, err := parseFlags(bad); err == nil {
			t.Errorf("parseFlags(%q) accepted bad flags", bad)
		}
	}
}
