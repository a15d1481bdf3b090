package kubernetes

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
)

// contractMetrics is the documented metrics contract of kpush's /metrics.
// Alerts and dashboards may only use these names, so a renamed metric breaks
// this test instead of silently blanking a panel. When kpush's source is
// present, the names it declares are used instead (see exportedMetrics).
var contractMetrics = map[string]bool{
	"kpush_connections":                    true,
	"kpush_handshakes_total":               true,
	"kpush_subscriptions":                  true,
	"kpush_consumer_records_total":         true,
	"kpush_consumer_records_skipped_total": true,
	"kpush_deliveries_total":               true,
	"kpush_queue_full_total":               true,
	"kpush_slow_consumers_total":           true,
	"kpush_delivery_latency_seconds":       true,
	"kpush_consumer_lag":                   true,
	"kpush_consumer_errors_total":          true,
	"kpush_consumer_ready":                 true,
	"kpush_rejected_total":                 true,
	"kpush_draining":                       true,
}

var metricName = regexp.MustCompile(`\bkpush_[a-z0-9_]+`)

var exported struct {
	once  sync.Once
	names map[string]bool
}

// exportedMetrics returns the kpush_* names declared as string literals in
// kpush's non-test Go source, or the documented contract when there is no
// source to read.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	exported.once.Do(func() {
		declared := regexp.MustCompile(`"(kpush_[a-z0-9_]+)"`)
		names := map[string]bool{}
		err := filepath.WalkDir(repoRoot, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && (d.Name() == "deployments" || strings.HasPrefix(d.Name(), ".") && p != repoRoot) {
				return filepath.SkipDir
			}
			if d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
				return nil
			}
			src, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			for _, m := range declared.FindAllSubmatch(src, -1) {
				names[string(m[1])] = true
			}
			return nil
		})
		if err != nil || len(names) == 0 {
			names = contractMetrics
		}
		exported.names = names
	})
	return exported.names
}

// checkMetricNames reports kpush_* names in a PromQL expression that kpush
// does not export. Histogram series suffixes are accepted on histograms.
func checkMetricNames(t *testing.T, where, expr string) {
	t.Helper()
	for _, name := range metricName.FindAllString(expr, -1) {
		base := name
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if b, ok := strings.CutSuffix(name, suffix); ok && strings.HasSuffix(b, "_seconds") {
				base = b
			}
		}
		if !exportedMetrics(t)[base] {
			t.Errorf("%s: uses %s, which kpush does not export", where, name)
		}
	}
}

// grafanaDashboard is the subset of Grafana's dashboard JSON model the test
// reads; the file itself is imported into Grafana as is.
type grafanaDashboard struct {
	UID        string         `json:"uid"`
	Title      string         `json:"title"`
	Panels     []grafanaPanel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type grafanaPanel struct {
	ID         int            `json:"id"`
	Title      string         `json:"title"`
	Type       string         `json:"type"`
	Datasource map[string]any `json:"datasource"`
	Targets    []struct {
		Expr       string         `json:"expr"`
		Datasource map[string]any `json:"datasource"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"`
}

func TestGrafanaDashboard(t *testing.T) {
	const file = "../grafana/kpush-dashboard.json"
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var d grafanaDashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if d.UID == "" || d.Title == "" {
		t.Error("dashboard needs a uid and a title")
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
	}
	if vars["datasource"] != "datasource" {
		t.Error("no datasource variable: panels would be bound to one Grafana's datasource uid")
	}
	if vars["namespace"] == "" {
		t.Error("no namespace variable to tell dev from prod")
	}

	// What an operator looks for first, by the metrics that answer it.
	wantShown := []string{
		"kpush_connections", "kpush_deliveries_total", "kpush_delivery_latency_seconds",
		"kpush_queue_full_total", "kpush_slow_consumers_total", "kpush_consumer_lag",
		"kpush_rejected_total", "kpush_consumer_records_skipped_total",
	}
	shown := map[string]bool{}
	ids := map[int]bool{}
	var walk func([]grafanaPanel)
	walk = func(ps []grafanaPanel) {
		for _, p := range ps {
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			if ids[p.ID] {
				t.Errorf("panel %q: duplicate id %d", p.Title, p.ID)
			}
			ids[p.ID] = true
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			if uid, _ := p.Datasource["uid"].(string); uid != "${datasource}" {
				t.Errorf("panel %q: datasource uid %q, want ${datasource}", p.Title, uid)
			}
			for _, tg := range p.Targets {
				checkMetricNames(t, "panel "+p.Title, tg.Expr)
				if !strings.Contains(tg.Expr, `namespace="$namespace"`) && !strings.Contains(tg.Expr, `namespace=~"$namespace"`) {
					t.Errorf("panel %q: query %q ignores the namespace variable", p.Title, tg.Expr)
				}
				for _, m := range metricName.FindAllString(tg.Expr, -1) {
					shown[strings.TrimSuffix(m, "_bucket")] = true
				}
			}
		}
	}
	walk(d.Panels)
	for _, m := range wantShown {
		if !shown[m] {
			t.Errorf("no panel shows %s", m)
		}
	}
}
