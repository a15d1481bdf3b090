package consumer

import (
	"errors"
	"fmt"
	"time"

	"github.com/kpush/kpush/router"
)

// Routes are compiled once, when they are set (New, SetRoutes): defaults
// filled, the channel template parsed, and a router.Policy built that every
// record of the route carries to the router. Nothing on the record path
// looks at a Route again.

// maxHistoryRecords caps history.max_records per channel.
const maxHistoryRecords = 1000000

// compiledRoute is one route, compiled. Never modified once built.
type compiledRoute struct {
	Route  // the route as configured, with its defaults filled in
	tmpl   *Template
	policy *router.Policy
}

// Routes is a set of routes compiled once, indexed by topic. It is never
// modified once built, so it can be read from any goroutine.
type Routes struct {
	all     []*compiledRoute // in configuration order
	byTopic map[string][]*compiledRoute
	topics  []string // in first-route order
}

// ValidateRoutes reports every invalid route, named by its index as in the
// YAML file. It does not modify routes.
func ValidateRoutes(routes []Route) error {
	_, err := CompileRoutes(routes)
	return err
}

// CompileRoutes checks routes, fills their defaults in copies and compiles
// each into its policy. It reports every invalid route, named by its index
// as in the YAML file, and does not modify routes.
func CompileRoutes(routes []Route) (*Routes, error) {
	var errs []error
	if len(routes) == 0 {
		return nil, errors.New("routes: at least one route is needed (a topic and a channel template)")
	}
	t := &Routes{byTopic: make(map[string][]*compiledRoute)}
	for i, r := range routes {
		key := fmt.Sprintf("routes[%d]", i)
		r.SetDefaults() // r is a copy
		if r.Topic == "" {
			errs = append(errs, fmt.Errorf("%s.topic: missing", key))
		}
		if r.Format != FormatJSON && r.Format != FormatBytes {
			errs = append(errs, fmt.Errorf("%s.format: %q must be json or bytes", key, r.Format))
		}
		if r.Slow != SlowDisconnect && r.Slow != SlowConflate {
			errs = append(errs, fmt.Errorf("%s.slow: %q must be disconnect or conflate", key, r.Slow))
		}
		if r.MaxRate != 0 && !(r.MaxRate >= 0.01 && r.MaxRate <= 1000) {
			errs = append(errs, fmt.Errorf("%s.max_rate: %g must be 0 (no cap) or between 0.01 and 1000 records a second", key, r.MaxRate))
		}
		h := &r.History
		if h.MaxRecords < 0 || h.MaxRecords > maxHistoryRecords {
			errs = append(errs, fmt.Errorf("%s.history.max_records: %d must be between 0 (no history) and %d", key, h.MaxRecords, maxHistoryRecords))
		}
		if h.MaxBytes < 0 {
			errs = append(errs, fmt.Errorf("%s.history.max_bytes: must be positive, got %d", key, h.MaxBytes))
		}
		if h.MaxAge < 0 {
			errs = append(errs, fmt.Errorf("%s.history.max_age: must be positive, got %s", key, h.MaxAge))
		}
		tmpl, err := ParseTemplate(r.Channel)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s.channel: %w", key, err))
			continue
		}
		cr := &compiledRoute{Route: r, tmpl: tmpl, policy: &router.Policy{
			Binary:   r.Format == FormatBytes,
			Conflate: r.Slow == SlowConflate,
			MaxRate:  r.MaxRate,
			Public:   r.Public,
			Keep:     r.retention(),
		}}
		t.all = append(t.all, cr)
		if _, ok := t.byTopic[r.Topic]; !ok {
			t.topics = append(t.topics, r.Topic)
		}
		t.byTopic[r.Topic] = append(t.byTopic[r.Topic], cr)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return t, nil
}

// SetDefaults fills the route's zero values with their defaults: format
// json, slow disconnect, and with a history, its max_bytes (1 MiB) and
// max_age (5m). CompileRoutes applies it to its own copies; a
// configuration calls it on its routes so that they compare as they run.
func (r *Route) SetDefaults() {
	if r.Format == "" {
		r.Format = FormatJSON
	}
	if r.Slow == "" {
		r.Slow = SlowDisconnect
	}
	if h := &r.History; h.MaxRecords > 0 {
		if h.MaxBytes == 0 {
			h.MaxBytes = 1 << 20
		}
		if h.MaxAge == 0 {
			h.MaxAge = 5 * time.Minute
		}
	}
}

// retention is what the router keeps of the route's channels; nil for
// nothing. Defaults must be filled in.
func (r *Route) retention() *router.Retention {
	if !r.Snapshot && r.History.MaxRecords == 0 {
		return nil
	}
	return &router.Retention{
		Last:           r.Snapshot,
		HistoryRecords: r.History.MaxRecords,
		HistoryBytes:   r.History.MaxBytes,
		HistoryAge:     r.History.MaxAge,
	}
}

// Public reports whether a route marked public: true can produce channel
// ch, so anonymous clients may subscribe to it.
func (t *Routes) Public(ch string) bool {
	for _, r := range t.all {
		if r.Public && r.tmpl.Match(ch, r.Topic) {
			return true
		}
	}
	return false
}

// retentionKey is what makes a route's retained state reusable across a
// reload: the same channels from the same topic, kept the same way.
type retentionKey struct {
	topic, channel string
	keep           router.Retention
}

// inherit makes t's routes that old already had (same topic, channel
// template and retention keys) share old's Retention, so what the router
// retains of their channels survives the change. It returns the Retentions
// of old's routes that t removed or changed, whose retained state is now
// to be dropped (router.DropRetention). Each old Retention goes to one
// route at most. t must not be in use yet.
func (t *Routes) inherit(old *Routes) (gone []*router.Retention) {
	reuse := make(map[retentionKey]*router.Retention)
	for _, r := range old.all {
		if k := r.policy.Keep; k != nil {
			reuse[retentionKey{r.Topic, r.Channel, *k}] = k
		}
	}
	kept := make(map[*router.Retention]bool)
	for _, r := range t.all {
		k := r.policy.Keep
		if k == nil {
			continue
		}
		key := retentionKey{r.Topic, r.Channel, *k}
		if prev := reuse[key]; prev != nil {
			r.policy.Keep = prev
			kept[prev] = true
			delete(reuse, key) // one route per Retention
		}
	}
	for _, r := range old.all {
		if k := r.policy.Keep; k != nil && !kept[k] {
			gone = append(gone, k)
		}
	}
	return gone
}
