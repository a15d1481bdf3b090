package main

import (
	"testing"

	"github.com/kpush/kpush/configs"
)

// FuzzLoadConfig: no file crashes the loader, and a configuration it accepts
// validates again after defaults (loading is idempotent).
func FuzzLoadConfig(f *testing.F) {
	f.Add(configs.Default)
	f.Add(configs.Dev)
	f.Add([]byte("listen: \":8080\"\nroutes:\n  - topic: t\n    channel: \"x.{key}\"\n    public: true\nauth:\n  mode: jwt\n  hs256_secret: 0123456789abcdef0123456789abcdef\n  grants: [\"user.{sub}.>\"]\n"))
	f.Add([]byte("tls:\n  cert_file: c.pem\n  min_version: \"1.3\"\n"))
	f.Add([]byte("listen: ${NOPE}\n"))
	f.Add([]byte("gateway: [1,2]\n"))
	f.Add([]byte("routes: [{topic: t, channel: \"c.{key}\"}]\ngateway: {ping_interval: 1s}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := LoadConfig("fuzz.yaml", data)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		if len(cfg.Routes) == 0 || cfg.Gateway.Path == "" {
			t.Fatalf("accepted an incomplete config: %+v", cfg)
		}
		cfg.SetDefaults()
		if err := cfg.Validate(); err != nil {
			t.Fatalf("accepted configuration fails validation after defaults: %v", err)
		}
	})
}
