package router

import (
	"regexp"
	"testing"
)

var channelRE = regexp.MustCompile(`^[A-Za-z0-9_.:@/-]{1,200}$`)

// FuzzValidChannel: ValidChannel agrees with the documented expression.
func FuzzValidChannel(f *testing.F) {
	for _, s := range []string{"ticks.AAPL", "user.42.orders", "", "a b", "é", "a\x00", "x:y@z/w-v_u"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := ValidChannel(s), channelRE.MatchString(s); got != want {
			t.Fatalf("ValidChannel(%q) = %v, want %v", s, got, want)
		}
	})
}
