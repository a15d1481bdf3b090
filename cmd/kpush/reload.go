package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/kpush/kpush/consumer"
	"github.com/kpush/kpush/gateway"
	"github.com/kpush/kpush/router"
	"github.com/prometheus/client_golang/prometheus"
)

// Reloading. kpush re-reads its configuration file on SIGHUP, and when the
// file's content changes: every config_check_interval it reads the file by
// its path and compares a hash of the content. Polling the path (not an
// inotify watch on the file) is what sees a Kubernetes ConfigMap volume
// update, which swaps a symlink to a new directory rather than writing the
// file.
//
// A new file is loaded and validated like at start-up; if that fails the
// reload is rejected whole and the running configuration stays. Otherwise
// the keys that can change while running are applied (routes, router,
// log.level, config_check_interval and the gateway's Limits), and every other key that
// changed is logged as needing a restart; those keep their running values.
// Which keys need a restart is found by comparing the configurations
// field by field, so a key added later needs a restart until it is made
// live here.

// limitsSetter is the gateway's side of a reload. SetLimits applies the
// live-changeable keys of cfg, changes nothing if cfg is invalid, and is
// safe to call while the gateway serves.
type limitsSetter interface {
	SetLimits(cfg gateway.Config) error
}

// routesSetter is the consumer's side of a reload. SetRoutes swaps the
// route table, changes nothing if the routes are invalid, and is safe to
// call while the consumer runs.
type routesSetter interface {
	SetRoutes(routes []consumer.Route) error
}

// routerSetter is the router's side of a reload, when routesSetter also
// has one (the app does): SetRouterConfig applies the `router` keys.
type routerSetter interface {
	SetRouterConfig(cfg router.Config) error
}

// reloader applies configuration reloads. Its goroutine is run (owned by
// app.Run); check and apply are also safe to call directly.
type reloader struct {
	gw     limitsSetter
	routes routesSetter
	log    *slog.Logger
	// hup receives SIGHUP (serve passes it to signal.Notify): reload now.
	hup chan os.Signal

	results *prometheus.CounterVec
	pending prometheus.Gauge

	mu    sync.Mutex     // guards the fields below; held for a whole check
	path  string         // "" when kpush runs on an embedded configuration
	level *slog.LevelVar // nil: log.level cannot change without a restart
	cur   *Config        // the configuration in force
	seen  string         // the file content last acted on: its hash, or why it could not be read
}

// Reload results, the values of kpush_config_reloads_total's result label.
const (
	reloadApplied   = "applied"   // something changed and was applied
	reloadUnchanged = "unchanged" // nothing that can change while running changed
	reloadRejected  = "rejected"  // unreadable or invalid file; nothing applied
)

func newReloader(cfg *Config, gw limitsSetter, routes routesSetter, reg prometheus.Registerer, log *slog.Logger) (*reloader, error) {
	r := &reloader{
		gw:     gw,
		routes: routes,
		log:    log,
		hup:    make(chan os.Signal, 1),
		cur:    cfg,
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kpush_config_reloads_total",
			Help: "Configuration reloads by result: applied, unchanged, or rejected (unreadable or invalid file; the running configuration stays).",
		}, []string{"result"}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kpush_config_restart_pending",
			Help: "1 when the configuration file changes keys that take effect only after a restart.",
		}),
	}
	for _, res := range []string{reloadApplied, reloadUnchanged, reloadRejected} {
		r.results.WithLabelValues(res) // export zeros, so rate() and alerts see the series
	}
	for _, c := range []prometheus.Collector{r.results, r.pending} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("config: register metrics: %w", err)
		}
	}
	return r, nil
}

// watch sets what a reload reads and changes: the file at path (whose
// content at start-up was data; "" for an embedded configuration) and the
// level variable of kpush's logger.
func (r *reloader) watch(path string, data []byte, level *slog.LevelVar) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.path, r.level = path, level
	if path != "" {
		r.seen = contentID(data, nil)
	}
}

// run checks for reloads until ctx ends.
func (r *reloader) run(ctx context.Context) {
	t := time.NewTimer(r.interval())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.hup:
			r.check("SIGHUP", true)
		case <-t.C:
			r.check("file change", false)
		}
		t.Reset(r.interval())
	}
}

func (r *reloader) interval() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur.ConfigCheckInterval
}

// check reads the file and reloads it if its content changed since the last
// check, or always when force is set (SIGHUP). It returns the result, or ""
// when it did nothing.
func (r *reloader) check(trigger string, force bool) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.path == "" {
		if force {
			r.log.Warn("config reload requested, but kpush runs on its embedded configuration: start it with -config FILE to reload", "trigger", trigger)
		}
		return ""
	}
	data, err := os.ReadFile(r.path)
	id := contentID(data, err)
	if id == r.seen && !force {
		r.log.Debug("config file unchanged", "path", r.path)
		return ""
	}
	r.seen = id
	if err != nil {
		return r.reject(trigger, fmt.Errorf("config: %w", err))
	}
	next, err := LoadConfig(r.path, data)
	if err != nil {
		return r.reject(trigger, err)
	}
	return r.applyLocked(next, trigger)
}

func (r *reloader) reject(trigger string, err error) string {
	r.results.WithLabelValues(reloadRejected).Inc()
	r.log.Error("config reload rejected; the running configuration stays", "trigger", trigger, "path", r.path, "err", err.Error())
	return reloadRejected
}

// apply makes next (loaded and validated) the configuration in force, as
// far as it can change without a restart.
func (r *reloader) apply(next *Config, trigger string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.applyLocked(next, trigger)
}

// applyLocked is apply; caller holds r.mu.
func (r *reloader) applyLocked(next *Config, trigger string) string {
	live := r.withLiveKeys(r.cur, next)
	changed := changedKeys(r.cur, &live)
	restart := changedKeys(&live, next)
	if len(restart) > 0 {
		r.pending.Set(1)
		r.log.Warn("config keys changed that take effect only after a restart; they keep their running values", "trigger", trigger, "keys", restart)
	} else {
		r.pending.Set(0)
	}
	if len(changed) == 0 {
		r.results.WithLabelValues(reloadUnchanged).Inc()
		r.log.Info("config reloaded; nothing to apply", "trigger", trigger)
		return reloadUnchanged
	}
	// Both were validated with next; they fail only on a programming error,
	// and then before anything else is changed.
	if hasKey(changed, "routes") {
		if err := r.routes.SetRoutes(live.Routes); err != nil {
			return r.reject(trigger, err)
		}
	}
	if rs, ok := r.routes.(routerSetter); ok && hasKey(changed, "router") {
		if err := rs.SetRouterConfig(live.Router); err != nil {
			return r.reject(trigger, err)
		}
	}
	if hasKey(changed, "gateway") {
		if err := r.gw.SetLimits(live.Gateway); err != nil {
			return r.reject(trigger, err)
		}
	}
	if hasKey(changed, "log.level") {
		level, _ := parseLevel(live.Log.Level) // validated
		r.level.Set(level)
	}
	r.cur = &live
	r.results.WithLabelValues(reloadApplied).Inc()
	r.log.Info("config reloaded", "trigger", trigger, "changed", changed)
	return reloadApplied
}

// withLiveKeys returns cur with the keys a reload can change taken from
// next.
func (r *reloader) withLiveKeys(cur, next *Config) Config {
	live := *cur
	live.Routes = next.Routes
	if _, ok := r.routes.(routerSetter); ok {
		live.Router = next.Router
	}
	live.Gateway.SetLimits(next.Gateway.Limits())
	live.ConfigCheckInterval = next.ConfigCheckInterval
	if r.level != nil {
		live.Log.Level = next.Log.Level
	}
	return live
}

// hasKey reports whether keys holds key or a key under it.
func hasKey(keys []string, key string) bool {
	for _, k := range keys {
		if k == key || strings.HasPrefix(k, key+".") || strings.HasPrefix(k, key+"[") {
			return true
		}
	}
	return false
}

func contentID(data []byte, err error) string {
	if err != nil {
		return "unreadable: " + err.Error()
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// changedKeys returns the YAML keys (as written in the file, e.g.
// "gateway.max_subscriptions", "routes[1].channel") whose values differ
// between two configurations. Fields with yaml:"-" and unexported fields are
// not compared; lists of structs of the same length are compared element by
// element, other lists as a whole.
func changedKeys(a, b *Config) []string {
	return diffValues("", reflect.ValueOf(*a), reflect.ValueOf(*b))
}

func diffValues(key string, a, b reflect.Value) []string {
	switch a.Kind() {
	case reflect.Struct:
		if !hasExportedField(a.Type()) {
			break // e.g. time.Time: compare whole
		}
		var keys []string
		for i := 0; i < a.NumField(); i++ {
			f := a.Type().Field(i)
			name, inline := yamlKey(f)
			if !f.IsExported() || name == "-" {
				continue
			}
			sub := key
			if !inline {
				sub = joinKey(key, name)
			}
			keys = append(keys, diffValues(sub, a.Field(i), b.Field(i))...)
		}
		return keys
	case reflect.Slice, reflect.Array:
		if k := a.Type().Elem().Kind(); k != reflect.Struct && k != reflect.Pointer {
			break // a list of values (brokers, origins) is one key
		}
		if a.Len() != b.Len() {
			return []string{key}
		}
		var keys []string
		for i := 0; i < a.Len(); i++ {
			keys = append(keys, diffValues(fmt.Sprintf("%s[%d]", key, i), a.Index(i), b.Index(i))...)
		}
		return keys
	case reflect.Pointer:
		if a.IsNil() || b.IsNil() {
			if a.IsNil() != b.IsNil() {
				return []string{key}
			}
			return nil
		}
		return diffValues(key, a.Elem(), b.Elem())
	}
	if !reflect.DeepEqual(a.Interface(), b.Interface()) {
		return []string{key}
	}
	return nil
}

func hasExportedField(t reflect.Type) bool {
	for i := 0; i < t.NumField(); i++ {
		if t.Field(i).IsExported() {
			return true
		}
	}
	return false
}

// yamlKey returns the key yaml.v3 uses for a field, and whether the field is
// inlined into its parent.
func yamlKey(f reflect.StructField) (name string, inline bool) {
	tag := f.Tag.Get("yaml")
	name, opts, _ := strings.Cut(tag, ",")
	if name == "" {
		name = strings.ToLower(f.Name)
	}
	return name, strings.Contains(opts, "inline")
}

func joinKey(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}
