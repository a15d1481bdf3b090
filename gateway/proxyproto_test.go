package gateway

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"
)

// proxyV2 builds a version 2 header: ver_cmd and fam bytes, then body.
func proxyV2(verCmd, fam byte, body []byte) []byte {
	b := append([]byte{}, proxyV2Sig...)
	b = append(b, verCmd, fam, 0, 0)
	binary.BigEndian.PutUint16(b[14:], uint16(len(body)))
	return append(b, body...)
}

// proxyV2TCP4 is a PROXY TCP4 body: src, dst, ports, then tlvs.
func proxyV2TCP4(src, dst string, sport, dport uint16, tlvs ...byte) []byte {
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	b := append(s[:], d[:]...)
	b = binary.BigEndian.AppendUint16(b, sport)
	b = binary.BigEndian.AppendUint16(b, dport)
	return append(b, tlvs...)
}

func proxyV2TCP6(src, dst string, sport, dport uint16) []byte {
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	b := append(s[:], d[:]...)
	b = binary.BigEndian.AppendUint16(b, sport)
	return binary.BigEndian.AppendUint16(b, dport)
}

// A real header from each version, then every way the format can break:
// the parser takes exactly the header and leaves what follows, and each
// refusal has its result label.
func TestReadProxyHeader(t *testing.T) {
	const after = "GET /ws HTTP/1.1\r\n"
	awsTLV := []byte{0xEA, 0x00, 0x0E, 0x01, 'v', 'p', 'c', 'e', '-', '0', '1', '2', '3', '4', '5', '6', '7'}
	tests := []struct {
		name    string
		version int
		in      []byte
		src     string // "" for no client address
		result  string // "" for success
	}{
		{"v1 tcp4", 1, []byte("PROXY TCP4 192.0.2.7 10.0.0.5 56324 8080\r\n"), "192.0.2.7:56324", ""},
		{"v1 tcp6", 1, []byte("PROXY TCP6 2001:db8::7 2001:db8::1 4711 443\r\n"), "[2001:db8::7]:4711", ""},
		{"v1 longest", 1, []byte("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"), "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535", ""},
		{"v1 unknown", 1, []byte("PROXY UNKNOWN\r\n"), "", ""},
		{"v1 unknown with addresses", 1, []byte("PROXY UNKNOWN ffff::1 ::1 1 2\r\n"), "", ""},
		{"v1 no header", 1, []byte("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"), "", proxyMissing},
		{"v1 got v2", 1, proxyV2(0x21, 0x11, proxyV2TCP4("1.2.3.4", "5.6.7.8", 1, 2)), "", proxyMalformed},
		{"v1 too long", 1, []byte("PROXY TCP4 " + strings.Repeat("1", 120) + "\r\n"), "", proxyMalformed},
		{"v1 no CR", 1, []byte("PROXY TCP4 192.0.2.7 10.0.0.5 56324 8080\n"), "", proxyMalformed},
		{"v1 family", 1, []byte("PROXY UDP4 192.0.2.7 10.0.0.5 56324 8080\r\n"), "", proxyMalformed},
		{"v1 tcp4 with v6", 1, []byte("PROXY TCP4 2001:db8::7 10.0.0.5 1 2\r\n"), "", proxyMalformed},
		{"v1 tcp6 with v4", 1, []byte("PROXY TCP6 192.0.2.7 2001:db8::1 1 2\r\n"), "", proxyMalformed},
		{"v1 port range", 1, []byte("PROXY TCP4 192.0.2.7 10.0.0.5 65536 8080\r\n"), "", proxyMalformed},
		{"v1 port sign", 1, []byte("PROXY TCP4 192.0.2.7 10.0.0.5 +1 8080\r\n"), "", proxyMalformed},
		{"v1 fields", 1, []byte("PROXY TCP4 192.0.2.7 10.0.0.5 1\r\n"), "", proxyMalformed},
		{"v1 double space", 1, []byte("PROXY TCP4  192.0.2.7 10.0.0.5 1 2\r\n"), "", proxyMalformed},
		{"v1 zone", 1, []byte("PROXY TCP6 fe80::1%eth0 fe80::2 1 2\r\n"), "", proxyMalformed},
		{"v1 cut", 1, []byte("PROXY TCP4 192.0.2.7 10.0"), "", proxyTruncated},
		{"v1 empty", 1, nil, "", proxyTruncated},

		{"v2 tcp4", 2, proxyV2(0x21, 0x11, proxyV2TCP4("198.51.100.9", "10.0.0.5", 40000, 8080)), "198.51.100.9:40000", ""},
		{"v2 tcp4 with AWS TLV", 2, proxyV2(0x21, 0x11, proxyV2TCP4("198.51.100.9", "10.0.0.5", 40000, 8080, awsTLV...)), "198.51.100.9:40000", ""},
		{"v2 tcp6", 2, proxyV2(0x21, 0x21, proxyV2TCP6("2001:db8::9", "2001:db8::1", 1234, 443)), "[2001:db8::9]:1234", ""},
		{"v2 tcp6 mapped v4", 2, proxyV2(0x21, 0x21, proxyV2TCP6("::ffff:198.51.100.9", "::1", 1234, 443)), "198.51.100.9:1234", ""},
		{"v2 local", 2, proxyV2(0x20, 0x00, nil), "", ""},
		{"v2 local with addresses", 2, proxyV2(0x20, 0x11, proxyV2TCP4("1.2.3.4", "5.6.7.8", 1, 2)), "", ""},
		{"v2 unspec", 2, proxyV2(0x21, 0x00, []byte{1, 2, 3}), "", ""},
		{"v2 unix", 2, proxyV2(0x21, 0x31, make([]byte, 216)), "", ""},
		{"v2 no header", 2, []byte("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"), "", proxyMissing},
		{"v2 tls hello", 2, append([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01}, make([]byte, 40)...), "", proxyMissing},
		{"v2 got v1", 2, []byte("PROXY TCP4 192.0.2.7 10.0.0.5 56324 8080\r\n"), "", proxyMalformed},
		{"v2 version 1 nibble", 2, proxyV2(0x11, 0x11, proxyV2TCP4("1.2.3.4", "5.6.7.8", 1, 2)), "", proxyMalformed},
		{"v2 command", 2, proxyV2(0x22, 0x11, proxyV2TCP4("1.2.3.4", "5.6.7.8", 1, 2)), "", proxyMalformed},
		{"v2 family", 2, proxyV2(0x21, 0x41, proxyV2TCP4("1.2.3.4", "5.6.7.8", 1, 2)), "", proxyMalformed},
		{"v2 udp", 2, proxyV2(0x21, 0x12, proxyV2TCP4("1.2.3.4", "5.6.7.8", 1, 2)), "", proxyMalformed},
		{"v2 short addresses", 2, proxyV2(0x21, 0x21, proxyV2TCP4("1.2.3.4", "5.6.7.8", 1, 2)), "", proxyMalformed},
		{"v2 bad TLV", 2, proxyV2(0x21, 0x11, proxyV2TCP4("1.2.3.4", "5.6.7.8", 1, 2, 0x01, 0x00, 0x09, 'x')), "", proxyMalformed},
		{"v2 cut TLV", 2, proxyV2(0x21, 0x11, proxyV2TCP4("1.2.3.4", "5.6.7.8", 1, 2, 0x01, 0x00)), "", proxyMalformed},
		{"v2 too long", 2, append(append([]byte{}, proxyV2Sig...), 0x21, 0x11, 0x08, 0x01), "", proxyMalformed},
		{"v2 cut body", 2, proxyV2(0x21, 0x11, proxyV2TCP4("1.2.3.4", "5.6.7.8", 1, 2))[:20], "", proxyTruncated},
		{"v2 cut fixed", 2, proxyV2Sig[:10], "", proxyTruncated},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := bytes.NewReader(append(append([]byte{}, tc.in...), after...))
			if tc.result == proxyTruncated {
				r = bytes.NewReader(tc.in) // the connection ends there
			}
			h, err := readProxyHeader(r, tc.version)
			if tc.result != "" {
				var pe *proxyError
				if !errors.As(err, &pe) {
					t.Fatalf("err = %v (%T), want a *proxyError %s", err, err, tc.result)
				}
				if pe.result != tc.result {
					t.Fatalf("result %s (%v), want %s", pe.result, err, tc.result)
				}
				if tc.result == proxyTruncated && !errors.Is(err, io.EOF) {
					t.Fatalf("truncated header error %v does not wrap io.EOF", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			got := ""
			if h.src.IsValid() {
				got = h.src.String()
			}
			if got != tc.src {
				t.Fatalf("source %q, want %q", got, tc.src)
			}
			// Not one byte past the header was read.
			rest, _ := io.ReadAll(r)
			if string(rest) != after {
				t.Fatalf("left %q after the header, want %q", rest, after)
			}
		})
	}
}

// FuzzProxyHeader: no input crashes the PROXY header reader, it never reads
// past the header it accepts, and what it accepts parses to the same
// address again.
func FuzzProxyHeader(f *testing.F) {
	f.Add([]byte("PROXY TCP4 192.0.2.7 10.0.0.5 56324 8080\r\nGET"), true)
	f.Add([]byte("PROXY TCP6 2001:db8::7 2001:db8::1 4711 443\r\n"), true)
	f.Add([]byte("PROXY UNKNOWN\r\n"), true)
	f.Add(proxyV2(0x21, 0x11, proxyV2TCP4("198.51.100.9", "10.0.0.5", 40000, 8080, 0xEA, 0, 1, 1)), false)
	f.Add(proxyV2(0x21, 0x21, proxyV2TCP6("2001:db8::9", "2001:db8::1", 1234, 443)), false)
	f.Add(proxyV2(0x20, 0x00, nil), false)
	f.Add(proxyV2(0x21, 0x31, make([]byte, 216)), false)
	f.Fuzz(func(t *testing.T, in []byte, v1 bool) {
		version := 2
		if v1 {
			version = 1
		}
		r := bytes.NewReader(in)
		h, err := readProxyHeader(r, version)
		if err != nil {
			var pe *proxyError
			if !errors.As(err, &pe) {
				t.Fatalf("error %T is not a *proxyError", err)
			}
			return
		}
		used := len(in) - r.Len()
		if version == 1 && used > proxyV1Max || version == 2 && used > proxyV2Fixed+maxProxyV2Body {
			t.Fatalf("accepted a %d-byte header", used)
		}
		again, err := readProxyHeader(bytes.NewReader(in[:used]), version)
		if err != nil || again != h {
			t.Fatalf("the accepted header %q reads back as %v, %v", in[:used], again, err)
		}
		if h.src.IsValid() && h.src.Addr().Is4In6() {
			t.Fatalf("source %v left IPv4-mapped", h.src)
		}
	})
}
