package kubernetes

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// composeFile is the subset of the Compose file format the test checks.
type composeFile struct {
	Services map[string]struct {
		Image string `json:"image"`
		Build *struct {
			Context    string `json:"context"`
			Dockerfile string `json:"dockerfile"`
			Target     string `json:"target"`
		} `json:"build"`
		Environment     map[string]any `json:"environment"`
		Command         []string       `json:"command"`
		Volumes         []string       `json:"volumes"`
		StopGracePeriod string         `json:"stop_grace_period"`
		DependsOn       map[string]struct {
			Condition string `json:"condition"`
		} `json:"depends_on"`
	} `json:"services"`
}

func TestCompose(t *testing.T) {
	dir := filepath.Join("..", "compose")
	data, err := os.ReadFile(filepath.Join(dir, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatal(err)
	}
	kafka, ok := c.Services["kafka"]
	if !ok || !strings.HasPrefix(kafka.Image, "apache/kafka:") {
		t.Errorf("kafka service must use the official apache/kafka image, got %q", kafka.Image)
	}
	if roles, _ := kafka.Environment["KAFKA_PROCESS_ROLES"].(string); !strings.Contains(roles, "controller") {
		t.Errorf("kafka must run in KRaft mode (KAFKA_PROCESS_ROLES with controller), got %q", roles)
	}

	dockerfile, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	for name, target := range map[string]string{"kpush": "kpush", "kpush-feed": "feed"} {
		s, ok := c.Services[name]
		if !ok || s.Build == nil {
			t.Errorf("service %s: not built from the Dockerfile", name)
			continue
		}
		ctx := filepath.Join(dir, s.Build.Context)
		if abs, _ := filepath.Abs(ctx); abs != mustAbs(t, repoRoot) {
			t.Errorf("service %s: build context %s is not the repository root", name, s.Build.Context)
		}
		if s.Build.Target != target || !regexp.MustCompile(`(?m)^FROM .* AS `+target+`$`).Match(dockerfile) {
			t.Errorf("service %s: build target %q, want Dockerfile stage %q", name, s.Build.Target, target)
		}
		if s.DependsOn["kafka-init"].Condition != "service_completed_successfully" {
			t.Errorf("service %s: must wait for the topic to be created", name)
		}
	}

	kp := c.Services["kpush"]
	var mounted bool
	for _, v := range kp.Volumes {
		src, dst, _ := strings.Cut(strings.TrimSuffix(v, ":ro"), ":")
		if dst == "/etc/kpush/kpush.yaml" {
			mounted = true
			if _, err := os.Stat(filepath.Join(dir, src)); err != nil {
				t.Errorf("kpush config %s: %v", src, err)
			}
		}
	}
	if !mounted {
		t.Error("kpush service does not mount a config at /etc/kpush/kpush.yaml")
	}
	var cfg kpushConfig
	raw, err := os.ReadFile(filepath.Join(dir, "kpush.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	drain := cfg.drainTimeout(t)
	grace, err := time.ParseDuration(kp.StopGracePeriod)
	if err != nil || grace <= drain {
		t.Errorf("kpush stop_grace_period %q must exceed gateway.drain_timeout %v", kp.StopGracePeriod, drain)
	}
	var brokers struct {
		Kafka struct {
			Brokers []string `json:"brokers"`
		} `json:"kafka"`
	}
	_ = yaml.Unmarshal(raw, &brokers)
	feed := c.Services["kpush-feed"].Command
	i := slices.Index(feed, "-brokers")
	if i < 0 || i+1 >= len(feed) || !slices.Contains(brokers.Kafka.Brokers, feed[i+1]) {
		t.Errorf("kpush-feed %v and kpush (%v) must use the same brokers", feed, brokers.Kafka.Brokers)
	}
}

func mustAbs(t *testing.T, p string) string {
	t.Helper()
	abs, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return abs
}
