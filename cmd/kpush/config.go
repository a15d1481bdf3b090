package main

import (
	"bytes"
	"errors"
	"fmt"
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

// LoadConfig reads, decodes strictly, expands, defaults and validates a
// configuration file. name labels errors (usually the path).
//
// ${VAR} and ${VAR:-default} are expanded in scalar values after the YAML
// is parsed, never in the raw text: a value may hold '#', ': ', quotes or a
// newline and arrives intact, and a value that looks like YAML ("[a]",
// "{x: 1}") stays a string. Keys and comments are not expanded.
func LoadConfig(name string, data []byte) (*Config, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %s", name, cleanYAMLError(err))
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil, fmt.Errorf("%s: empty configuration", name)
	}
	if err := expandEnv(&doc); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	// yaml.v3's Node.Decode has no KnownFields, so unknown keys are found
	// by a strict decode of the text as written; the values come from the
	// expanded tree, whose nodes keep their lines for type errors.
	if err := unknownKeys(data); err != nil {
		return nil, fmt.Errorf("%s: %s", name, cleanYAMLError(err))
	}
	var cfg Config
	if err := doc.Decode(&cfg); err != nil {
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
	for i := range c.Routes {
		c.Routes[i].SetDefaults()
	}
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

// expandEnv replaces ${VAR} and ${VAR:-default} in every scalar value of the
// tree (mapping keys are left alone). A ${VAR} that is unset is an error
// naming its line, rather than a silent empty value.
//
// An expanded plain (unquoted) scalar is typed again from its new text, so
// `max_connections: ${MAX}` is still a number and `${X:-}` is still empty;
// only a text that would become null ("null", "~") stays the string it is.
// A quoted scalar stays a string.
func expandEnv(doc *yaml.Node) error {
	var errs []error
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		switch n.Kind {
		case yaml.ScalarNode:
			expandScalar(n, &errs)
		case yaml.MappingNode:
			for i := 1; i < len(n.Content); i += 2 {
				walk(n.Content[i])
			}
		case yaml.DocumentNode, yaml.SequenceNode:
			for _, c := range n.Content {
				walk(c)
			}
		}
	}
	walk(doc)
	return errors.Join(errs...)
}

func expandScalar(n *yaml.Node, errs *[]error) {
	if !strings.Contains(n.Value, "${") {
		return
	}
	v := envRef.ReplaceAllStringFunc(n.Value, func(m string) string {
		sub := envRef.FindStringSubmatch(m)
		name := sub[1]
		hasDefault := strings.HasPrefix(m[2+len(name):], ":-")
		if v, ok := os.LookupEnv(name); ok && (v != "" || !hasDefault) {
			return v
		}
		if hasDefault {
			return sub[3]
		}
		*errs = append(*errs, fmt.Errorf("line %d: environment variable %s is not set (write ${%s:-default} for a fallback)", n.Line, name, name))
		return m
	})
	if v == n.Value {
		return
	}
	n.Value = v
	if n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle|yaml.LiteralStyle|yaml.FoldedStyle) != 0 || n.Tag != "!!str" {
		// Quoted, block or explicitly tagged: it stays what it was written as.
		n.Style = yaml.DoubleQuotedStyle
		return
	}
	n.Tag = "" // re-resolve from the new text
	if n.ShortTag() == "!!null" && v != "" {
		n.Tag = "!!str"
	}
	if n.ShortTag() == "!!str" {
		n.Style = yaml.DoubleQuotedStyle // encode it so that it reads back as this exact string
	} else {
		n.Style = 0
	}
}

// unknownKeys decodes data strictly and returns only its unknown-key errors
// (type errors of values not yet expanded are the expanded tree's to report).
func unknownKeys(data []byte) error {
	var probe Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	err := dec.Decode(&probe)
	var te *yaml.TypeError
	if err == nil || !errors.As(err, &te) {
		return nil // syntax errors were reported by the first parse
	}
	var unknown []string
	for _, e := range te.Errors {
		if unknownField.MatchString(e) {
			unknown = append(unknown, e)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	return &yaml.TypeError{Errors: unknown}
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
