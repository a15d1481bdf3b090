package kubernetes

import (
	"os"
	"testing"

	"sigs.k8s.io/yaml"
)

// promtoolTests is the part of alerts_test.yaml (promtool's rule unit tests)
// this test reads.
type promtoolTests struct {
	RuleFiles []string `json:"rule_files"`
	Tests     []struct {
		Name          string `json:"name"`
		AlertRuleTest []struct {
			Alertname string `json:"alertname"`
			ExpAlerts []struct {
				ExpLabels map[string]string `json:"exp_labels"`
			} `json:"exp_alerts"`
		} `json:"alert_rule_test"`
	} `json:"tests"`
}

// TestEveryAlertHasAPromtoolTest: every alert of base/prometheusrule.yaml
// has a promtool case in alerts_test.yaml that expects it to fire, so a new
// alert cannot go untested. promtool itself runs them in .ci/run
// (promtool-test.sh); this check needs no promtool.
func TestEveryAlertHasAPromtoolTest(t *testing.T) {
	var rule prometheusRule
	data, err := os.ReadFile("base/prometheusrule.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &rule); err != nil {
		t.Fatal(err)
	}
	var tests promtoolTests
	data, err = os.ReadFile("alerts_test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// Fields this test does not model (input_series, ...) are ignored.
	if err := yaml.Unmarshal(data, &tests); err != nil {
		t.Fatal(err)
	}
	fires := map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			}
		}
	}
	n := 0
	for _, g := range rule.Spec.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			n++
			if !fires[r.Alert] {
				t.Errorf("alert %s has no promtool case in alerts_test.yaml that expects it to fire", r.Alert)
			}
		}
	}
	if n == 0 {
		t.Fatal("no alerts read from base/prometheusrule.yaml")
	}
}
