package consumer

import (
	"fmt"
	"strconv"
	"strings"
)

// Template is a parsed channel template such as "ticks.{key}" or
// "user.{header:user-id}". Placeholders: {key}, {topic}, {partition},
// {header:NAME}.
type Template struct {
	src   string
	parts []tmplPart
}

type tmplKind uint8

const (
	tmplLiteral tmplKind = iota
	tmplKey
	tmplTopic
	tmplPartition
	tmplHeader
)

type tmplPart struct {
	kind tmplKind
	text string // literal text or header name
}

// ParseTemplate parses a channel template.
func ParseTemplate(s string) (*Template, error) {
	if s == "" {
		return nil, fmt.Errorf("empty channel template")
	}
	t := &Template{src: s}
	rest := s
	for rest != "" {
		open := strings.IndexByte(rest, '{')
		if close := strings.IndexByte(rest, '}'); close >= 0 && (open < 0 || close < open) {
			return nil, fmt.Errorf("channel template %q: '}' without '{'", s)
		}
		if open < 0 {
			t.parts = append(t.parts, tmplPart{kind: tmplLiteral, text: rest})
			break
		}
		if open > 0 {
			t.parts = append(t.parts, tmplPart{kind: tmplLiteral, text: rest[:open]})
		}
		end := strings.IndexByte(rest[open:], '}')
		if end < 0 {
			return nil, fmt.Errorf("channel template %q: unclosed '{'", s)
		}
		name := rest[open+1 : open+end]
		switch {
		case name == "key":
			t.parts = append(t.parts, tmplPart{kind: tmplKey})
		case name == "topic":
			t.parts = append(t.parts, tmplPart{kind: tmplTopic})
		case name == "partition":
			t.parts = append(t.parts, tmplPart{kind: tmplPartition})
		case strings.HasPrefix(name, "header:") && len(name) > len("header:"):
			t.parts = append(t.parts, tmplPart{kind: tmplHeader, text: name[len("header:"):]})
		default:
			return nil, fmt.Errorf("channel template %q: unknown placeholder {%s} (want {key}, {topic}, {partition} or {header:NAME})", s, name)
		}
		rest = rest[open+end+1:]
	}
	return t, nil
}

func (t *Template) String() string { return t.src }

// Static reports whether the template has no placeholder.
func (t *Template) Static() bool {
	for _, p := range t.parts {
		if p.kind != tmplLiteral {
			return false
		}
	}
	return true
}

// Fields are the record values a template may use.
type Fields struct {
	Topic     string
	Partition int32
	Key       []byte // nil when the record has no key
	Header    func(name string) ([]byte, bool)
}

// Append renders the template onto dst. It fails when a placeholder has no
// value: a record without a key, or without the named header.
func (t *Template) Append(dst []byte, f *Fields) ([]byte, error) {
	for _, p := range t.parts {
		switch p.kind {
		case tmplLiteral:
			dst = append(dst, p.text...)
		case tmplKey:
			if len(f.Key) == 0 {
				return dst, errNoKey
			}
			dst = append(dst, f.Key...)
		case tmplTopic:
			dst = append(dst, f.Topic...)
		case tmplPartition:
			dst = strconv.AppendInt(dst, int64(f.Partition), 10)
		case tmplHeader:
			var v []byte
			ok := false
			if f.Header != nil {
				v, ok = f.Header(p.text)
			}
			if !ok || len(v) == 0 {
				return dst, fmt.Errorf("record has no header %q", p.text)
			}
			dst = append(dst, v...)
		}
	}
	return dst, nil
}

var errNoKey = fmt.Errorf("record has no key")

// Match reports whether the template, for a record of topic, can render
// channel ch: literals match themselves, {topic} the topic, {partition} a
// run of digits and {key} or {header:NAME} any non-empty text. Channels are
// at most router.MaxChannelLen bytes; longer ones never match.
func (t *Template) Match(ch, topic string) bool {
	const maxLen = 200
	if len(ch) > maxLen {
		return false
	}
	// at[i] is true when the parts so far can render exactly ch[:i].
	var a, b [maxLen + 1]bool
	at, next := &a, &b
	at[0] = true
	n := len(ch)
	for _, p := range t.parts {
		clear(next[:n+1])
		reached := false
		first := -1
		for i := 0; i <= n; i++ {
			if !at[i] {
				continue
			}
			if first < 0 {
				first = i
			}
			switch p.kind {
			case tmplLiteral, tmplTopic:
				lit := p.text
				if p.kind == tmplTopic {
					lit = topic
				}
				if strings.HasPrefix(ch[i:], lit) {
					next[i+len(lit)] = true
					reached = true
				}
			case tmplPartition:
				for j := i; j < n && ch[j] >= '0' && ch[j] <= '9'; j++ {
					next[j+1] = true
					reached = true
				}
			}
		}
		if p.kind == tmplKey || p.kind == tmplHeader {
			// Any non-empty text: every position after the first reachable one.
			if first >= 0 {
				for j := first + 1; j <= n; j++ {
					next[j] = true
					reached = true
				}
			}
		}
		if !reached {
			return false
		}
		at, next = next, at
	}
	return at[n]
}
