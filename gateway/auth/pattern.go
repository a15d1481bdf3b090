package auth

import (
	"fmt"
	"strings"

	"github.com/kpush/kpush/router"
)

// Pattern is a parsed channel permission such as "ticks.*" or "user.42.>".
type Pattern struct {
	src  string
	segs []string // literal segments, "*" (one segment) or a final ">" (the rest)
}

// ParsePattern parses a channel pattern. Segments are separated by '.'; each
// is "*", a final ">", or a non-empty run of channel characters
// ([A-Za-z0-9_:@/-]).
func ParsePattern(s string) (Pattern, error) {
	if s == "" {
		return Pattern{}, fmt.Errorf("auth: empty channel pattern")
	}
	if len(s) > router.MaxChannelLen {
		return Pattern{}, fmt.Errorf("auth: channel pattern longer than %d bytes", router.MaxChannelLen)
	}
	segs := strings.Split(s, ".")
	for i, seg := range segs {
		switch {
		case seg == "*":
		case seg == ">":
			if i != len(segs)-1 {
				return Pattern{}, fmt.Errorf("auth: channel pattern %q: '>' must be the last segment", s)
			}
		case seg == "":
			return Pattern{}, fmt.Errorf("auth: channel pattern %q has an empty segment", s)
		case !router.ValidChannel(seg):
			return Pattern{}, fmt.Errorf("auth: channel pattern %q: segment %q may hold only A-Z a-z 0-9 _ : @ / - (or be * or a final >)", s, seg)
		}
	}
	return Pattern{src: s, segs: segs}, nil
}

func (p Pattern) String() string { return p.src }

// Match reports whether channel ch is covered by the pattern. It does not
// allocate.
func (p Pattern) Match(ch string) bool {
	if len(p.segs) == 0 {
		return false
	}
	pos := 0 // start of the next segment of ch; -1 once ch is used up
	for _, seg := range p.segs {
		if pos < 0 {
			return false
		}
		if seg == ">" {
			return pos < len(ch)
		}
		part, next := ch[pos:], -1
		if i := strings.IndexByte(part, '.'); i >= 0 {
			part, next = part[:i], pos+i+1
		}
		if seg == "*" {
			if part == "" {
				return false
			}
		} else if part != seg {
			return false
		}
		pos = next
	}
	return pos < 0
}

// SubjectPlaceholder in a pattern stands for the token's subject.
const SubjectPlaceholder = "{sub}"

// ExpandSubject replaces every {sub} in pattern with sub. It reports false
// when the pattern needs a subject that is not a valid channel name (empty,
// or holding characters such as '*' or '>' that would widen the grant).
func ExpandSubject(pattern, sub string) (string, bool) {
	if !strings.Contains(pattern, SubjectPlaceholder) {
		return pattern, true
	}
	if !router.ValidChannel(sub) || strings.Contains(sub, ".") {
		return "", false
	}
	return strings.ReplaceAll(pattern, SubjectPlaceholder, sub), true
}

// ValidateTemplate checks a configured pattern that may contain {sub}.
func ValidateTemplate(s string) error {
	x, _ := ExpandSubject(s, "x")
	if _, err := ParsePattern(x); err != nil {
		return fmt.Errorf("%q: %w", s, err)
	}
	return nil
}
