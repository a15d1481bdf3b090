package main

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/kpush/kpush/configs"
	"github.com/kpush/kpush/consumer"
	"github.com/kpush/kpush/router"
	"github.com/prometheus/client_golang/prometheus"
)

func TestRouterConfig(t *testing.T) {
	const routes = "routes: [{topic: ticks, channel: \"ticks.{key}\", snapshot: true}]\n"
	min, err := LoadConfig("min", []byte(routes))
	if err != nil {
		t.Fatal(err)
	}
	if min.Router.MaxRetainedBytes != router.DefaultMaxRetainedBytes || min.Router.MaxAge != router.DefaultMaxAge {
		t.Fatalf("router defaults = %+v", min.Router)
	}
	full, err := LoadConfig("kpush.yaml", configs.Default)
	if err != nil {
		t.Fatal(err)
	}
	if full.Router != min.Router {
		t.Fatalf("configs/kpush.yaml router %+v, built-in defaults %+v", full.Router, min.Router)
	}
	set, err := LoadConfig("set", []byte(routes+"router: {max_retained_bytes: 67108864, max_age: 10m}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if set.Router.MaxRetainedBytes != 64<<20 || set.Router.MaxAge != 10*time.Minute {
		t.Fatalf("router = %+v", set.Router)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"router: {max_retained_bytes: -1}\n", "router.max_retained_bytes"},
		{"router: {max_age: -1s}\n", "router.max_age"},
		{"router: {max_bytes: 5}\n", `unknown key "max_bytes"`},
	} {
		if _, err := LoadConfig("bad", []byte(routes+tc.yaml)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want one naming %s", tc.yaml, err, tc.want)
		}
	}
}

// fakeRouterRoutes is a routesSetter that also takes the router keys, as
// the app does.
type fakeRouterRoutes struct {
	fakeRoutes
	router []router.Config
}

func (f *fakeRouterRoutes) SetRouterConfig(cfg router.Config) error {
	f.router = append(f.router, cfg)
	return nil
}

func TestReloadAppliesRouterKeys(t *testing.T) {
	log, _ := newLeveledLogger(LogConfig{Level: "error", Format: "json"}, io.Discard)
	rt := &fakeRouterRoutes{}
	r, err := newReloader(mustLoad(t, reloadBase), &fakeLimits{}, rt, prometheus.NewRegistry(), log)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.apply(mustLoad(t, reloadBase+"router: {max_retained_bytes: 1048576, max_age: 1m}\n"), "test"); got != reloadApplied {
		t.Fatalf("result %q, want %q", got, reloadApplied)
	}
	if len(rt.router) != 1 || rt.router[0].MaxRetainedBytes != 1<<20 || rt.router[0].MaxAge != time.Minute || len(rt.got) != 0 {
		t.Fatalf("SetRouterConfig calls %+v, SetRoutes calls %d; want one router call only", rt.router, len(rt.got))
	}
	if metricValue(r.pending) != 0 {
		t.Fatal("router keys reported as needing a restart")
	}

	// The app applies them to its router.
	k := startKafka(t)
	a := startApp(t, k, []consumer.Route{{Topic: k.topic(t, "rk", 1), Channel: "c.{key}", Snapshot: true}}, nil)
	if err := a.SetRouterConfig(router.Config{MaxRetainedBytes: 1 << 20, MaxAge: time.Minute}); err != nil {
		t.Fatal(err)
	}
	if got := a.router.Config(); got.MaxRetainedBytes != 1<<20 || got.MaxAge != time.Minute {
		t.Fatalf("router config %+v after SetRouterConfig", got)
	}
}
