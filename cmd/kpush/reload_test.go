package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kpush/kpush/consumer"
	"github.com/kpush/kpush/gateway"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

const reloadBase = `
listen: "127.0.0.1:8080"
admin_listen: "127.0.0.1:9090"
kafka: {brokers: ["127.0.0.1:9092"]}
routes: [{topic: t, channel: "t.{key}"}]
`

func mustLoad(t *testing.T, yaml string) *Config {
	t.Helper()
	cfg, err := LoadConfig("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestChangedKeysNamesYAMLKeys(t *testing.T) {
	cases := []struct {
		name, next string
		want       []string
	}{
		{"same", reloadBase, nil},
		{"top-level key", strings.Replace(reloadBase, "127.0.0.1:8080", "127.0.0.1:8081", 1), []string{"listen"}},
		{"nested key", reloadBase + "gateway: {max_subscriptions: 7, workers: 3}\n", []string{"gateway.max_subscriptions", "gateway.workers"}},
		{"list of values is one key", strings.Replace(reloadBase, `["127.0.0.1:9092"]`, `["127.0.0.1:9092", "127.0.0.2:9092"]`, 1), []string{"kafka.brokers"}},
		{"route field", strings.Replace(reloadBase, `"t.{key}"`, `"u.{key}"`, 1), []string{"routes[0].channel"}},
		{"route added", strings.Replace(reloadBase, `}]`, `}, {topic: u, channel: "u"}]`, 1), []string{"routes"}},
		{"log", reloadBase + "log: {level: debug, format: text}\n", []string{"log.level", "log.format"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := changedKeys(mustLoad(t, reloadBase), mustLoad(t, tc.next))
			if !slices.Equal(got, tc.want) {
				t.Fatalf("changed keys %q, want %q", got, tc.want)
			}
		})
	}
}

type fakeLimits struct{ got []gateway.Limits }

func (f *fakeLimits) SetLimits(c gateway.Config) error {
	f.got = append(f.got, c.Limits())
	return nil
}

type fakeRoutes struct{ got [][]consumer.Route }

func (f *fakeRoutes) SetRoutes(r []consumer.Route) error {
	f.got = append(f.got, r)
	return nil
}

// testReloader returns a reloader over fakes, started on reloadBase, whose
// JSON log goes to the returned buffer.
func testReloader(t *testing.T) (*reloader, *fakeLimits, *fakeRoutes, *slog.LevelVar, *bytes.Buffer) {
	t.Helper()
	var logs bytes.Buffer
	log, level := newLeveledLogger(LogConfig{Level: "info", Format: "json"}, &logs)
	gw, rt := &fakeLimits{}, &fakeRoutes{}
	r, err := newReloader(mustLoad(t, reloadBase), gw, rt, prometheus.NewRegistry(), log)
	if err != nil {
		t.Fatal(err)
	}
	r.watch("", nil, level)
	return r, gw, rt, level, &logs
}

// logged returns the log records with message msg.
func logged(t *testing.T, logs *bytes.Buffer, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range bytes.Split(logs.Bytes(), []byte("\n")) {
		var m map[string]any
		if json.Unmarshal(line, &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

const restartMsg = "config keys changed that take effect only after a restart; they keep their running values"

func TestReloadAppliesLiveKeysAndReportsTheRest(t *testing.T) {
	cases := []struct {
		name, next  string
		result      string
		restart     []string // keys logged as needing a restart
		routes      bool     // SetRoutes called
		maxSubs     int      // SetLimits called with this max_subscriptions (0: not called)
		level       slog.Level
		checkPeriod time.Duration
	}{
		{name: "same file", next: reloadBase, result: reloadUnchanged},
		{name: "routes", next: strings.Replace(reloadBase, `}]`, `}, {topic: u, channel: "u.{key}"}]`, 1), result: reloadApplied, routes: true},
		{name: "limit", next: reloadBase + "gateway: {max_subscriptions: 7}\n", result: reloadApplied, maxSubs: 7},
		{name: "log level and check interval", next: reloadBase + "log: {level: debug}\nconfig_check_interval: 250ms\n", result: reloadApplied, level: slog.LevelDebug, checkPeriod: 250 * time.Millisecond},
		{name: "restart keys only", next: strings.Replace(reloadBase, "127.0.0.1:9090", "127.0.0.1:9091", 1) + "gateway: {path: /push}\n",
			result: reloadUnchanged, restart: []string{"admin_listen", "gateway.path"}},
		{name: "both", next: strings.Replace(reloadBase, `["127.0.0.1:9092"]`, `["127.0.0.2:9092"]`, 1) + "gateway: {max_subscriptions: 9, workers: 2}\nlog: {format: text}\n",
			result: reloadApplied, restart: []string{"gateway.workers", "kafka.brokers", "log.format"}, maxSubs: 9},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, gw, rt, level, logs := testReloader(t)
			next := mustLoad(t, tc.next)
			if got := r.apply(next, "test"); got != tc.result {
				t.Fatalf("result %q, want %q\n%s", got, tc.result, logs)
			}
			if got := metricValue(r.results.WithLabelValues(tc.result)); got != 1 {
				t.Errorf("kpush_config_reloads_total{result=%q} = %v, want 1", tc.result, got)
			}
			var restart []string
			for _, m := range logged(t, logs, restartMsg) {
				for _, k := range m["keys"].([]any) {
					restart = append(restart, k.(string))
				}
			}
			slices.Sort(restart)
			if !slices.Equal(restart, tc.restart) {
				t.Errorf("keys logged as needing a restart %q, want %q", restart, tc.restart)
			}
			wantPending := 0.0
			if len(tc.restart) > 0 {
				wantPending = 1
			}
			if got := metricValue(r.pending); got != wantPending {
				t.Errorf("kpush_config_restart_pending = %v, want %v", got, wantPending)
			}
			if (len(rt.got) == 1) != tc.routes || len(rt.got) > 1 {
				t.Errorf("SetRoutes called %d times, want %v", len(rt.got), tc.routes)
			}
			if tc.routes && len(rt.got[0]) != len(next.Routes) {
				t.Errorf("SetRoutes got %d routes, want %d", len(rt.got[0]), len(next.Routes))
			}
			switch {
			case tc.maxSubs == 0 && len(gw.got) > 0:
				t.Errorf("SetLimits called with %+v, want no call", gw.got)
			case tc.maxSubs > 0 && (len(gw.got) != 1 || gw.got[0].MaxSubscriptions != tc.maxSubs):
				t.Errorf("SetLimits calls %+v, want one with max_subscriptions %d", gw.got, tc.maxSubs)
			}
			if level.Level() != tc.level {
				t.Errorf("log level %s, want %s", level.Level(), tc.level)
			}
			if tc.checkPeriod != 0 && r.interval() != tc.checkPeriod {
				t.Errorf("check interval %s, want %s", r.interval(), tc.checkPeriod)
			}
			// Restart keys keep their running values: reloading the same
			// file again applies nothing and still reports them.
			if r.cur.Listen != "127.0.0.1:8080" || r.cur.AdminListen != "127.0.0.1:9090" || r.cur.Gateway.Path != "/ws" || r.cur.Kafka.Brokers[0] != "127.0.0.1:9092" {
				t.Errorf("a key that needs a restart changed in the running config: %+v", r.cur)
			}
			if got := r.apply(next, "again"); got != reloadUnchanged {
				t.Errorf("same file again: %q, want %q", got, reloadUnchanged)
			}
			if got := metricValue(r.pending); got != wantPending {
				t.Errorf("after the same file again, kpush_config_restart_pending = %v, want %v", got, wantPending)
			}
		})
	}
}

// writeFileAtomic replaces path's content the way editors and config
// management do, so a poll never reads half a file.
func writeFileAtomic(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestReloadCheckRejectsBadFilesOnce(t *testing.T) {
	r, gw, rt, _, logs := testReloader(t)
	path := filepath.Join(t.TempDir(), "kpush.yaml")
	writeFileAtomic(t, path, reloadBase)
	r.watch(path, []byte(reloadBase), r.level)

	steps := []struct {
		name, content string // content "" removes the file
		force         bool
		want          string
	}{
		{"unchanged file is not reloaded", reloadBase, false, ""},
		{"SIGHUP reloads even an unchanged file", reloadBase, true, reloadUnchanged},
		{"invalid file is rejected", reloadBase + "gateway: {max_subscriptions: -1}\n", false, reloadRejected},
		{"the same invalid file is not retried by polling", reloadBase + "gateway: {max_subscriptions: -1}\n", false, ""},
		{"but is by SIGHUP", reloadBase + "gateway: {max_subscriptions: -1}\n", true, reloadRejected},
		{"unknown key is rejected", reloadBase + "gateway: {max_subscription: 5}\n", false, reloadRejected},
		{"missing file is rejected", "", false, reloadRejected},
		{"still missing: nothing new", "", false, ""},
		{"valid file applies", reloadBase + "gateway: {max_subscriptions: 5}\n", false, reloadApplied},
	}
	for _, s := range steps {
		if s.content == "" {
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
		} else {
			writeFileAtomic(t, path, s.content)
		}
		if got := r.check("test", s.force); got != s.want {
			t.Fatalf("%s: result %q, want %q\n%s", s.name, got, s.want, logs)
		}
		if s.want == reloadRejected && (len(gw.got) > 0 || len(rt.got) > 0 || r.cur.Gateway.MaxSubscriptions != 100) {
			t.Fatalf("%s: a rejected reload changed something: limits %+v, routes %v", s.name, gw.got, rt.got)
		}
	}
	rejected := logged(t, logs, "config reload rejected; the running configuration stays")
	if len(rejected) != 4 || metricValue(r.results.WithLabelValues(reloadRejected)) != 4 {
		t.Fatalf("%d rejections logged, counter %v; want 4", len(rejected), metricValue(r.results.WithLabelValues(reloadRejected)))
	}
	// The log line names the key at fault.
	if err := rejected[0]["err"].(string); !strings.Contains(err, "gateway.max_subscriptions") {
		t.Errorf("rejection log %q does not name gateway.max_subscriptions", err)
	}
	if len(gw.got) != 1 || gw.got[0].MaxSubscriptions != 5 {
		t.Fatalf("SetLimits calls %+v, want one with max_subscriptions 5", gw.got)
	}
}

func TestReloadWithoutFile(t *testing.T) {
	r, _, _, _, logs := testReloader(t)
	if got := r.check("SIGHUP", true); got != "" {
		t.Fatalf("result %q with an embedded configuration, want none", got)
	}
	if !strings.Contains(logs.String(), "start it with -config FILE to reload") {
		t.Fatalf("no warning that there is no file to reload:\n%s", logs)
	}
}

// metricValue reads a counter or gauge.
func metricValue(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		return -1
	}
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	return d.Gauge.GetValue()
}
