package main

import (
	"strings"
	"testing"
	"time"

	"github.com/kpush/kpush/configs"
	"github.com/kpush/kpush/router"
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
