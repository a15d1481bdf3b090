package consumer

import (
	"strings"
	"testing"
	"time"
)

func TestTemplate(t *testing.T) {
	headers := map[string]string{"user-id": "42", "empty": ""}
	fields := &Fields{
		Topic:     "ticks",
		Partition: 3,
		Key:       []byte("AAPL"),
		Header: func(name string) ([]byte, bool) {
			v, ok := headers[name]
			return []byte(v), ok
		},
	}
	cases := []struct {
		tmpl, want, err string
	}{
		{"ticks.{key}", "ticks.AAPL", ""},
		{"{topic}.{partition}.{key}", "ticks.3.AAPL", ""},
		{"user.{header:user-id}", "user.42", ""},
		{"static", "static", ""},
		{"{key}{key}", "AAPLAAPL", ""},
		{"x.{header:missing}", "", "no header"},
		{"x.{header:empty}", "", "no header"},
	}
	for _, tc := range cases {
		t.Run(tc.tmpl, func(t *testing.T) {
			tm, err := ParseTemplate(tc.tmpl)
			if err != nil {
				t.Fatalf("ParseTemplate: %v", err)
			}
			got, err := tm.Append(nil, fields)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil || string(got) != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	noKey := &Fields{Topic: "t"}
	tm, _ := ParseTemplate("a.{key}")
	if _, err := tm.Append(nil, noKey); err == nil {
		t.Fatal("a record without a key filled {key}")
	}
}

func TestParseTemplateErrors(t *testing.T) {
	for _, s := range []string{"", "a.{key", "a.}b", "{nope}", "{header:}", "{}", "a{b{c}}"} {
		if _, err := ParseTemplate(s); err == nil {
			t.Errorf("ParseTemplate(%q) accepted a bad template", s)
		}
	}
}

func TestValidateRoutes(t *testing.T) {
	if err := ValidateRoutes(nil); err == nil {
		t.Fatal("no routes accepted")
	}
	routes := []Route{{Topic: "t", Channel: "c.{key}"}}
	rs, err := CompileRoutes(routes)
	if err != nil || rs.all[0].Format != FormatJSON || rs.all[0].tmpl == nil || rs.all[0].policy.Binary {
		t.Fatalf("valid route: err=%v", err)
	}
	if routes[0] != (Route{Topic: "t", Channel: "c.{key}"}) {
		t.Fatalf("CompileRoutes modified the caller's route: %+v", routes[0])
	}
	bad := []Route{{Channel: "c"}, {Topic: "t", Channel: "{x}"}, {Topic: "t", Channel: "c", Format: "xml"}}
	err = ValidateRoutes(bad)
	for _, key := range []string{"routes[0].topic", "routes[1].channel", "routes[2].format"} {
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("error %v does not name %s", err, key)
		}
	}
}

func TestValidateRoutesResumeKeys(t *testing.T) {
	cases := []struct {
		name    string
		route   Route
		want    Route // the fields checked after defaults
		wantErr string
	}{
		{"defaults", Route{Topic: "t", Channel: "c"}, Route{Slow: SlowDisconnect}, ""},
		{"history bounds default once on", Route{Topic: "t", Channel: "c", Slow: SlowConflate, History: History{MaxRecords: 10}},
			Route{Slow: SlowConflate, History: History{MaxRecords: 10, MaxBytes: 1 << 20, MaxAge: 5 * time.Minute}}, ""},
		{"history bounds kept", Route{Topic: "t", Channel: "c", History: History{MaxRecords: 10, MaxBytes: 100, MaxAge: time.Second}},
			Route{Slow: SlowDisconnect, History: History{MaxRecords: 10, MaxBytes: 100, MaxAge: time.Second}}, ""},
		{"unknown policy", Route{Topic: "t", Channel: "c", Slow: "drop"}, Route{}, "routes[0].slow"},
		{"too much history", Route{Topic: "t", Channel: "c", History: History{MaxRecords: 2000000}}, Route{}, "routes[0].history.max_records"},
		{"negative bytes", Route{Topic: "t", Channel: "c", History: History{MaxRecords: 1, MaxBytes: -1}}, Route{}, "routes[0].history.max_bytes"},
		{"max_rate", Route{Topic: "t", Channel: "c", MaxRate: 4}, Route{Slow: SlowDisconnect, MaxRate: 4}, ""},
		{"max_rate negative", Route{Topic: "t", Channel: "c", MaxRate: -1}, Route{}, "routes[0].max_rate"},
		{"max_rate too high", Route{Topic: "t", Channel: "c", MaxRate: 5000}, Route{}, "routes[0].max_rate"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			routes := []Route{tc.route}
			rs, err := CompileRoutes(routes)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one naming %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if routes[0] != tc.route {
				t.Fatalf("CompileRoutes modified the caller's route: %+v, was %+v", routes[0], tc.route)
			}
			if r := rs.all[0]; r.Slow != tc.want.Slow || r.History != tc.want.History {
				t.Fatalf("route after defaults: slow %q history %+v, want %q %+v", r.Slow, r.History, tc.want.Slow, tc.want.History)
			}
		})
	}
}
