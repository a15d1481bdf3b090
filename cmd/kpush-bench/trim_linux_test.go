package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestKpushConfigOmitsUnsetKeys checks that the started kpush's
// configuration names the delivery and router keys only when they are set,
// so a before/after comparison can start a kpush that predates them (its
// strict YAML refuses unknown keys).
func TestKpushConfigOmitsUnsetKeys(t *testing.T) {
	o, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{o: o, brokers: []string{"127.0.0.1:9092"}}
	cfg := e.kpushConfig("market", "t")
	for _, key := range []string{"write_delay", "compression", "max_rate", "router:", "history:"} {
		if strings.Contains(cfg, key) {
			t.Errorf("default config names %q:\n%s", key, cfg)
		}
	}
	if cfg := e.kpushConfig("trim", "t"); !strings.Contains(cfg, "router: {max_retained_bytes: 8589934592, max_age: 24h}\n") {
		t.Errorf("trim config lacks the router section:\n%s", cfg)
	}
	o, err = parseFlags([]string{"-trim-router=", "-write-delay", "2ms", "-compression", "-route-max-rate", "5"})
	if err != nil {
		t.Fatal(err)
	}
	e.o = o
	cfg = e.kpushConfig("trim", "t")
	if strings.Contains(cfg, "router:") {
		t.Errorf("-trim-router='' still writes a router section:\n%s", cfg)
	}
	for _, line := range []string{"  write_delay: 2ms\n", "  compression: true\n  compression_min_bytes: 64\n", "    max_rate: 5\n"} {
		if !strings.Contains(cfg, line) {
			t.Errorf("config lacks %q:\n%s", line, cfg)
		}
	}
}

// TestTrimScenarioSmall runs the trim scenario at a tiny size against a
// real kpush and checks that both phases measured every probe delivery and
// that the second one ran with the fill retained. It asserts no speed.
func TestTrimScenarioSmall(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "kpush")
	build := exec.Command("go", "build", "-o", bin, "github.com/kpush/kpush/cmd/kpush")
	build.Env = append(build.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build kpush: %v\n%s", err, out)
	}
	o, err := parseFlags([]string{
		"-scenarios", "trim", "-kpush-bin", bin, "-out", filepath.Join(dir, "out"),
		"-close-conns", "30", "-close-probes", "3", "-close-rate", "100",
		"-market-symbols", "20", "-market-subs", "2",
		"-trim-channels", "2000", "-trim-phase", "1s", "-trim-probe-channels", "4", "-trim-settle", "0s",
	})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := runAll(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	r := rep.Trim
	if r == nil {
		t.Fatal("no trim result")
	}
	if r.Trim.Channels < r.Baseline.Channels+2000 || r.Baseline.Channels > 21 {
		t.Errorf("kpush channels: baseline %.0f, retained %.0f; want ≤ 21, then 2000 more", r.Baseline.Channels, r.Trim.Channels)
	}
	// 100 records/s for 1 s to each of 3 probes.
	for name, ph := range map[string]TrimPhase{"baseline": r.Baseline, "retained": r.Trim} {
		if ph.Latency.Count != 300 || ph.Latency.Max <= 0 || ph.Latency.Max > time.Minute {
			t.Errorf("%s: %d latencies (want 300), max %s", name, ph.Latency.Count, ph.Latency.Max)
		}
	}
	var out strings.Builder
	printReport(&out, rep)
	if !strings.Contains(out.String(), "### Trim: 30 connections × 2 channels open, 3 probes × 4 channels") {
		t.Errorf("report lacks the trim section:\n%s", out.String())
	}
}
