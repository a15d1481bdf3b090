package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kpush/kpush/configs"
)

func TestEmbeddedConfigsLoad(t *testing.T) {
	for name, data := range map[string][]byte{"kpush.yaml": configs.Default, "dev.yaml": configs.Dev} {
		cfg, err := LoadConfig(name, data)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if cfg.Gateway.Path != "/ws" || len(cfg.Routes) == 0 {
			t.Fatalf("%s loaded as %+v", name, cfg)
		}
	}
	// kpush.yaml documents every default: loading it must equal loading
	// the minimum config and filling defaults.
	full, _ := LoadConfig("kpush.yaml", configs.Default)
	min, err := LoadConfig("min", []byte("routes: [{topic: ticks, channel: \"ticks.{key}\"}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if full.Gateway.PingInterval != min.Gateway.PingInterval || full.Gateway.MaxQueueBytes != min.Gateway.MaxQueueBytes ||
		full.Kafka.FetchMaxWait != min.Kafka.FetchMaxWait || full.Kafka.MetadataInterval != min.Kafka.MetadataInterval ||
		full.Listen != min.Listen || full.AdminListen != min.AdminListen || full.Log != min.Log ||
		full.Gateway.ResumeConcurrency != min.Gateway.ResumeConcurrency || full.Gateway.ResumeQueue != min.Gateway.ResumeQueue ||
		full.Gateway.ResumeTimeout != min.Gateway.ResumeTimeout || full.Kafka.ReplayMaxScanned != min.Kafka.ReplayMaxScanned ||
		full.ConfigCheckInterval != min.ConfigCheckInterval {
		t.Fatalf("configs/kpush.yaml disagrees with the built-in defaults:\n%+v\n%+v", full, min)
	}
}

func TestLoadConfigErrors(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       []string // substrings the error must contain
	}{
		{"unknown key", "routes: [{topic: t, channel: c}]\ngateway:\n  pth: /ws\n", []string{"test.yaml", "line 3", `unknown key "pth"`}},
		{"unknown top key", "routs: []\n", []string{"line 1", `unknown key "routs"`}},
		{"wrong type", "routes: [{topic: t, channel: c}]\ngateway: {max_connections: lots}\n", []string{"line 2", "lots"}},
		{"bad duration", "routes: [{topic: t, channel: c}]\ngateway: {ping_interval: 3x}\n", []string{"line 2", "duration"}},
		{"missing routes", "listen: \":8080\"\n", []string{"routes", "at least one route"}},
		{"bad template", "routes: [{topic: t, channel: \"c.{nope}\"}]\n", []string{"routes[0].channel", "{nope}"}},
		{"bad start", "routes: [{topic: t, channel: c}]\nkafka: {start: middle}\n", []string{"kafka.start", "middle"}},
		{"idle below ping", "routes: [{topic: t, channel: c}]\ngateway: {ping_interval: 30s, idle_timeout: 10s}\n", []string{"gateway.idle_timeout"}},
		{"bad origin", "routes: [{topic: t, channel: c}]\ngateway: {allowed_origins: [example.com]}\n", []string{"gateway.allowed_origins"}},
		{"bad level", "routes: [{topic: t, channel: c}]\nlog: {level: loud}\n", []string{"log.level"}},
		{"same ports", "listen: \":1\"\nadmin_listen: \":1\"\nroutes: [{topic: t, channel: c}]\n", []string{"admin_listen"}},
		{"unset env", "routes: [{topic: t, channel: c}]\nkafka: {brokers: [\"${KPUSH_TEST_SURELY_UNSET}\"]}\n", []string{"line 2", "KPUSH_TEST_SURELY_UNSET"}},
		{"empty", "", []string{"empty"}},
		{"bad slow policy", "routes: [{topic: t, channel: c, slow: drop}]\n", []string{"routes[0].slow", "drop"}},
		{"negative history", "routes: [{topic: t, channel: c, history: {max_records: -1}}]\n", []string{"routes[0].history.max_records"}},
		{"negative history age", "routes: [{topic: t, channel: c, history: {max_records: 5, max_age: -1s}}]\n", []string{"routes[0].history.max_age"}},
		{"bad resume timeout", "routes: [{topic: t, channel: c}]\ngateway: {resume_timeout: -1s}\n", []string{"gateway.resume_timeout"}},
		{"bad replay limit", "routes: [{topic: t, channel: c}]\nkafka: {replay_max_scanned: -5}\n", []string{"kafka.replay_max_scanned"}},
		{"config check too often", "routes: [{topic: t, channel: c}]\nconfig_check_interval: 10ms\n", []string{"config_check_interval", "10ms"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadConfig("test.yaml", []byte(tc.yaml))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestConfigEnvExpansion(t *testing.T) {
	t.Setenv("KPUSH_TEST_BROKER", "10.1.2.3:9092")
	cfg, err := LoadConfig("env.yaml", []byte(`
kafka: {brokers: ["${KPUSH_TEST_BROKER}", "${KPUSH_TEST_UNSET_WITH_DEFAULT:-b:9092}"]}
gateway: {drain_timeout: 3s}
routes: [{topic: t, channel: "c.{key}"}]
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Kafka.Brokers; len(got) != 2 || got[0] != "10.1.2.3:9092" || got[1] != "b:9092" {
		t.Fatalf("brokers = %v", got)
	}
	if cfg.Gateway.DrainTimeout != 3*time.Second {
		t.Fatalf("drain_timeout = %s", cfg.Gateway.DrainTimeout)
	}
}

func TestValidateCommand(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(good, configs.Default, 0o644)
	os.WriteFile(bad, []byte("routes: []\nbogus: 1\n"), 0o644)
	if code := run([]string{"validate", "-config", good}); code != 0 {
		t.Fatalf("validate good config: exit %d", code)
	}
	if code := run([]string{"validate", "-config", bad}); code != 1 {
		t.Fatalf("validate bad config: exit %d, want 1", code)
	}
	if code := run([]string{"validate"}); code != 2 {
		t.Fatalf("validate without -config: exit %d, want 2", code)
	}
}

// Secrets are expanded after parsing: YAML syntax inside a value is data.
func TestConfigEnvExpansionKeepsValuesIntact(t *testing.T) {
	secrets := map[string]string{
		"hash":      "abc#def # not a comment",
		"colon":     "user: admin",
		"quotes":    `he said "hi" and 'bye'`,
		"newline":   "line one\nline two",
		"flow":      "[a, b]",
		"mapping":   "{x: 1}",
		"null-word": "null",
		"anchor":    "*ref &x !tag",
	}
	for name, secret := range secrets {
		secret = "0123456789abcdef0123456789abcdef " + secret // HS256 wants 32 bytes
		t.Run(name, func(t *testing.T) {
			t.Setenv("KPUSH_TEST_SECRET", secret)
			t.Setenv("KPUSH_TEST_MAXCONN", "1234")
			for _, form := range []string{`${KPUSH_TEST_SECRET}`, `"${KPUSH_TEST_SECRET}"`, `'${KPUSH_TEST_SECRET}'`} {
				cfg, err := LoadConfig("env.yaml", []byte(`
auth:
  mode: jwt
  hs256_secret: `+form+`
gateway:
  max_connections: ${KPUSH_TEST_MAXCONN}
  drain_timeout: ${KPUSH_TEST_UNSET_DRAIN:-}
routes: [{topic: t, channel: "c.{key}"}]
`))
				if err != nil {
					t.Fatalf("%s: %v", form, err)
				}
				if cfg.Auth.HS256Secret != secret {
					t.Fatalf("%s: hs256_secret = %q, want %q", form, cfg.Auth.HS256Secret, secret)
				}
				if cfg.Gateway.MaxConnections != 1234 {
					t.Fatalf("max_connections = %d, want 1234 (a plain ${VAR} keeps its type)", cfg.Gateway.MaxConnections)
				}
				var def Config
				def.SetDefaults()
				if cfg.Gateway.DrainTimeout != def.Gateway.DrainTimeout {
					t.Fatalf("drain_timeout = %s, want the default %s (an empty expansion is unset)", cfg.Gateway.DrainTimeout, def.Gateway.DrainTimeout)
				}
			}
		})
	}
}

// Errors name the line of the file as written, blank lines and comments
// included, whether the value was expanded or not.
func TestConfigErrorLinesAfterExpansion(t *testing.T) {
	t.Setenv("KPUSH_TEST_BAD_INT", "lots")
	doc := "# comment\n\nroutes: [{topic: t, channel: c}]\n\n\ngateway:\n  max_connections: ${KPUSH_TEST_BAD_INT}\n\n  pth: /ws\n"
	_, err := LoadConfig("lines.yaml", []byte(doc))
	if err == nil || !strings.Contains(err.Error(), `line 9: unknown key "pth"`) {
		t.Fatalf("unknown key error = %v, want it on line 9", err)
	}
	doc = "# comment\n\nroutes: [{topic: t, channel: c}]\n\n\ngateway:\n  max_connections: ${KPUSH_TEST_BAD_INT}\n"
	_, err = LoadConfig("lines.yaml", []byte(doc))
	if err == nil || !strings.Contains(err.Error(), "line 7") || !strings.Contains(err.Error(), "lots") {
		t.Fatalf("type error = %v, want line 7 and the value", err)
	}
	// A reference in a comment is not expanded, so an unset one is no error.
	if _, err := LoadConfig("c.yaml", []byte("# ${KPUSH_TEST_SURELY_UNSET}\nroutes: [{topic: t, channel: c}] # ${KPUSH_TEST_SURELY_UNSET}\n")); err != nil {
		t.Fatalf("reference in a comment: %v", err)
	}
}
