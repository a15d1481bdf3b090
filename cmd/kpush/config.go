package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/kpush/kpush/consumer"
	"github.com/kpush/kpush/gateway"
	"github.com/kpush/kpush/gateway/auth"
	"github.com/kpush/kpush/router"
	"gopkg.in/yaml.v3"
)

// Config is kpush's whole configuration file. Each package owns its section.
type Config struct {
	Listen      string            `yaml:"listen"`
	AdminListen string            `yaml:"admin_listen"`
	Gateway     gateway.Config    `yaml:"gateway"`
	TLS         gateway.TLSConfig `yaml:"tls"`
	Auth        auth.Config       `yaml:"auth"`
	Kafka       consumer.Config   `yaml:"kafka"`
	Routes      []consumer.Route  `yaml:"routes"`
	Router      router.Config     `yaml:"router"`
	Log         LogConfig         `yaml:"log"`
	// ConfigCheckInterval is how often the configuration file is checked
	// for a change of content, which reloads it (see reload.go).
	ConfigCheckInterval time.Duration `yaml:"config_check_interval"`
}

// LogConfig is the `log` section.
type LogConfig struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

// LoadConfig reads, expands, decodes strictly, defaults and validates a
// configuration file. name labels errors (usually the path).
func LoadConfig(name string, data []byte) (*Config, error) {
	expanded, err := expandEnv(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	var cfg Config
	dec := yaml.NewDecoder(bytes.NewReader(expanded))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: empty configuration", name)
		}
		return nil, fmt.Errorf("%s: %s", name, cleanYAMLError(err))
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%s: invalid configuration:\n%w", name, err)
	}
	return &cfg, nil
}

// LoadConfigFile is LoadConfig on a file.
func LoadConfigFile(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return LoadConfig(path, data)
}

// SetDefaults fills every zero value with its default.
func (c *Config) SetDefaults() {
	if c.Listen == "" {
		c.Listen = ":8080"
	}
	if c.AdminListen == "" {
		c.AdminListen = ":9090"
	}
	c.TLS.SetDefaults()
	c.Auth.SetDefaults()
	c.Gateway.Listen = c.Listen
	c.Gateway.TLS = c.TLS
	c.Gateway.Auth = c.Auth
	c.Gateway.SetDefaults()
	c.Kafka.SetDefaults()
	c.Router.SetDefaults()
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "json"
	}
	if c.ConfigCheckInterval == 0 {
		c.ConfigCheckInterval = 5 * time.Second
	}
}

// Validate reports every problem, each naming its key.
func (c *Config) Validate() error {
	var errs []error
	if c.Listen == c.AdminListen && !strings.HasSuffix(c.Listen, ":0") {
		errs = append(errs, fmt.Errorf("admin_listen: %q is the same address as listen", c.AdminListen))
	}
	errs = append(errs, c.Gateway.Validate(), c.Kafka.Validate(), consumer.ValidateRoutes(c.Routes), c.Router.Validate())
	if _, err := parseLevel(c.Log.Level); err != nil {
		errs = append(errs, err)
	}
	if c.Log.Format != "json" && c.Log.Format != "text" {
		errs = append(errs, fmt.Errorf("log.format: %q must be json or text", c.Log.Format))
	}
	if c.ConfigCheckInterval < 100*time.Millisecond || c.ConfigCheckInterval > time.Hour {
		errs = append(errs, fmt.Errorf("config_check_interval: %s must be between 100ms and 1h", c.ConfigCheckInterval))
	}
	return errors.Join(errs...)
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("log.level: %q must be debug, info, warn or error", s)
	}
	return l, nil
}

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}`)

// expandEnv replaces ${VAR} and ${VAR:-default}. A ${VAR} that is unset is an
// error naming its line, rather than a silent empty value.
func expandEnv(data []byte) ([]byte, error) {
	var errs []error
	lines := bytes.Split(data, []byte("\n"))
	for i, line := range lines {
		if bytes.HasPrefix(bytes.TrimSpace(line), []byte("#")) {
			continue
		}
		lines[i] = envRef.ReplaceAllFunc(line, func(m []byte) []byte {
			sub := envRef.FindSubmatch(m)
			name := string(sub[1])
			if v, ok := os.LookupEnv(name); ok && (v != "" || sub[2] == nil) {
				return []byte(v)
			}
			if sub[2] != nil {
				return sub[3]
			}
			errs = append(errs, fmt.Errorf("line %d: environment variable %s is not set (write ${%s:-default} for a fallback)", i+1, name, name))
			return m
		})
	}
	return bytes.Join(lines, []byte("\n")), errors.Join(errs...)
}

var unknownField = regexp.MustCompile(`field (\S+) not found in type \S+`)

// cleanYAMLError turns yaml.v3's Go-flavoured messages into ones that name
// the YAML key.
func cleanYAMLError(err error) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	msg = strings.ReplaceAll(msg, "unmarshal errors:\n  ", "")
	msg = unknownField.ReplaceAllString(msg, `unknown key "$1"`)
	msg = strings.ReplaceAll(msg, "into time.Duration", "into a duration (e.g. 30s, 250ms)")
	return msg
}

// publicRoutes tells the gateway which channels anonymous clients may
// subscribe to: those a route marked public: true can produce.
type publicRoutes []consumer.Route

func (p publicRoutes) Public(ch string) bool {
	for i := range p {
		r := &p[i]
		if r.Public && r.Template() != nil && r.Template().Match(ch, r.Topic) {
			return true
		}
	}
	return false
}
