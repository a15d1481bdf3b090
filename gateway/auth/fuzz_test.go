package auth

import (
	"strings"
	"testing"
)

// FuzzPattern checks that no pattern or channel crashes the parser or the
// matcher, and that matching agrees with a plain reference implementation.
func FuzzPattern(f *testing.F) {
	for _, s := range [][2]string{
		{"ticks.*", "ticks.AAPL"}, {"user.42.>", "user.42.a.b"}, {"*", "x"}, {">", "a.b"},
		{"a..b", "a..b"}, {"user.{sub}", "user.42"}, {"*.*.>", "a.b"}, {"a.b", "a.b."},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, ch string) {
		p, err := ParsePattern(pattern)
		if err != nil {
			return
		}
		if p.String() != pattern {
			t.Fatalf("String() = %q, want %q", p.String(), pattern)
		}
		if got, want := p.Match(ch), refMatch(strings.Split(pattern, "."), strings.Split(ch, ".")); got != want {
			t.Fatalf("Match(%q, %q) = %v, reference says %v", pattern, ch, got, want)
		}
		if !strings.ContainsAny(pattern, "*>") && !p.Match(pattern) {
			t.Fatalf("literal pattern %q does not match itself", pattern)
		}
		if x, ok := ExpandSubject(pattern, ch); ok && x != pattern {
			t.Fatalf("ExpandSubject changed %q, which has no {sub}", pattern)
		}
	})
}

func refMatch(p, c []string) bool {
	for i, seg := range p {
		if seg == ">" {
			rest := strings.Join(c[i:], ".")
			return len(c) > i && rest != ""
		}
		if i >= len(c) || (seg == "*" && c[i] == "") || (seg != "*" && seg != c[i]) {
			return false
		}
	}
	return len(c) == len(p)
}
