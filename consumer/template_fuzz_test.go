package consumer

import (
	"strings"
	"testing"
)

// FuzzTemplate: no template crashes the parser, and every channel a parsed
// template renders is one its Match accepts.
func FuzzTemplate(f *testing.F) {
	for _, s := range [][3]string{
		{"ticks.{key}", "AAPL", "v"}, {"user.{header:user-id}", "k", "42"}, {"{topic}.{partition}.{key}", "k", "h"},
		{"a{", "k", "h"}, {"}", "k", "h"}, {"{nope}", "k", "h"}, {"{key}{key}", "ab", "h"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, src, key, header string) {
		tmpl, err := ParseTemplate(src)
		if err != nil {
			return
		}
		if tmpl.String() != src {
			t.Fatalf("String() = %q, want %q", tmpl.String(), src)
		}
		fields := &Fields{Topic: "ticks", Partition: 7, Key: []byte(key), Header: func(string) ([]byte, bool) { return []byte(header), true }}
		out, err := tmpl.Append(nil, fields)
		if err != nil || len(out) > 200 {
			return
		}
		if !tmpl.Match(string(out), "ticks") {
			t.Fatalf("template %q rendered %q but does not match it", src, out)
		}
		if tmpl.Static() && string(out) != src {
			t.Fatalf("static template %q rendered %q", src, out)
		}
		if tmpl.Static() && strings.ContainsAny(src, "{}") {
			t.Fatalf("template %q with braces reported static", src)
		}
	})
}
