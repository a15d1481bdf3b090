package gateway

import (
	"strings"
	"testing"
)

func TestForwardedClient(t *testing.T) {
	trusted, errs := parseTrustedProxies([]string{"10.0.0.0/8", "192.168.1.1", "fd00::/8"})
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	tests := []struct {
		name, xff, want string // want "" for no address (the peer stands)
	}{
		{"one hop", "203.0.113.9", "203.0.113.9"},
		{"client spoofs a left entry", "6.6.6.6, 203.0.113.9", "203.0.113.9"},
		{"through two trusted proxies", "203.0.113.9, 10.1.2.3, 192.168.1.1", "203.0.113.9"},
		{"spoof behind trusted chain", "1.1.1.1, 203.0.113.9, 10.1.2.3", "203.0.113.9"},
		{"every hop trusted", "10.9.9.9, 10.1.2.3", "10.9.9.9"},
		{"ipv6", "2001:db8::5, fd00::1", "2001:db8::5"},
		{"with ports", "[2001:db8::5]:4711, 10.0.0.1:80", "2001:db8::5"},
		{"v4 with port", "203.0.113.9:5555", "203.0.113.9"},
		{"mapped", "::ffff:203.0.113.9", "203.0.113.9"},
		{"brackets", "[2001:db8::5]", "2001:db8::5"},
		{"spaces and empty elements", " 203.0.113.9 , ,10.0.0.2,", "203.0.113.9"},
		{"garbage right of a trusted hop", "203.0.113.9, 10.0.0.3, bogus", ""},
		{"garbage left of a trusted hop", "bogus, 10.0.0.3", "10.0.0.3"},
		{"garbage left of the client", "bogus, 203.0.113.9", "203.0.113.9"},
		{"unknown", "unknown", ""},
		{"empty", "", ""},
		{"zone dropped", "fe80::1%eth0", "fe80::1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, ok := forwardedClient([]byte(tc.xff), trusted)
			got := ""
			if ok {
				got = a.String()
			}
			if got != tc.want {
				t.Fatalf("client %q, want %q", got, tc.want)
			}
		})
	}
}

func TestClientAddrConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		trusted []string
		pp      string
		wantErr string // "" for valid
	}{
		{"defaults", nil, "", ""},
		{"cidrs and addresses", []string{"10.0.0.0/8", "192.168.0.7", "fd00::/8", "::ffff:10.0.0.0/104"}, "v2", ""},
		{"v1", []string{"10.0.0.0/8"}, "v1", ""},
		{"host bits", []string{"10.0.0.1/8"}, "", "gateway.trusted_proxies[0]: \"10.0.0.1/8\" has host bits set; write the network as 10.0.0.0/8"},
		{"not an address", []string{"10.0.0.0/8", "proxy.local"}, "", "gateway.trusted_proxies[1]"},
		{"bad prefix", []string{"10.0.0.0/33"}, "", "gateway.trusted_proxies[0]"},
		{"proxy protocol value", []string{"10.0.0.0/8"}, "v3", "gateway.proxy_protocol: \"v3\" is not v1, v2 or off"},
		{"proxy protocol without trusted peers", nil, "v2", "gateway.proxy_protocol: v2 needs gateway.trusted_proxies"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := Config{TrustedProxies: tc.trusted, ProxyProtocol: tc.pp}
			c.SetDefaults()
			err := c.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}
