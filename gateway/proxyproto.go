package gateway

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
)

// The PROXY protocol (HAProxy's proxy-protocol.txt), versions 1 and 2: a
// header a proxy sends before the client's first byte, naming the client's
// address. AWS Network Load Balancers send version 2, HAProxy sends either
// (send-proxy, send-proxy-v2).
//
// The header is read with exact reads, never past its end: what follows
// (a TLS ClientHello, the HTTP upgrade) stays in the socket for the next
// reader, and the socket is later handed to epoll as a bare descriptor, so
// nothing may be left behind in a buffer. Version 1 is read in one read of
// its shortest form and then byte by byte up to its 107-byte maximum;
// version 2 in one read of its 16-byte fixed part and one of the length it
// announces, at most maxProxyV2Body. The caller's deadline bounds the
// whole.

const (
	proxyV1Max     = 107 // longest version 1 header, CRLF included
	proxyV1Min     = 15  // "PROXY UNKNOWN\r\n"
	proxyV2Fixed   = 16
	maxProxyV2Body = 2048 // addresses and TLVs; AWS and HAProxy send far less
)

var proxyV2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")

// proxyHeader is what a PROXY header says.
type proxyHeader struct {
	// src is the client's address and port; invalid when the header names
	// no TCP client (v1 UNKNOWN, v2 LOCAL, an unspecified or unix family):
	// then the connection's own peer stands.
	src netip.AddrPort
}

// Outcomes of reading a PROXY header; the result label of
// kpush_proxy_protocol_headers_total.
const (
	proxyOK        = "ok"        // a header naming a client address
	proxyLocal     = "local"     // a valid header that names none (health checks)
	proxyMissing   = "missing"   // the connection did not start with a header
	proxyMalformed = "malformed" // it started like one but broke the format
	proxyTruncated = "truncated" // the peer closed, or the deadline passed, mid-header
)

// proxyError is why a PROXY header was refused.
type proxyError struct {
	result string // proxyMissing, proxyMalformed or proxyTruncated
	msg    string
	err    error // the read error, for proxyTruncated
}

func (e *proxyError) Error() string {
	if e.err != nil {
		return "gateway: PROXY protocol header: " + e.msg + ": " + e.err.Error()
	}
	return "gateway: PROXY protocol header: " + e.msg
}

func (e *proxyError) Unwrap() error { return e.err }

func proxyBad(format string, args ...any) error {
	return &proxyError{result: proxyMalformed, msg: fmt.Sprintf(format, args...)}
}

// readProxyHeader reads one PROXY header of the given version (1 or 2) from
// r, reading no byte past it. Errors are *proxyError.
func readProxyHeader(r io.Reader, version int) (proxyHeader, error) {
	var buf [proxyV1Max]byte
	first := proxyV1Min
	if version == 2 {
		first = proxyV2Fixed
	}
	if err := readFull(r, buf[:first], "before the first bytes arrived"); err != nil {
		return proxyHeader{}, err
	}
	if version == 2 {
		if !bytes.Equal(buf[:12], proxyV2Sig) {
			return proxyHeader{}, proxyMissingErr(buf[:first], 2)
		}
		n := int(binary.BigEndian.Uint16(buf[14:16]))
		if n > maxProxyV2Body {
			return proxyHeader{}, proxyBad("version 2 announces %d bytes of addresses and TLVs, more than the %d accepted", n, maxProxyV2Body)
		}
		body := make([]byte, n)
		if err := readFull(r, body, "in the addresses"); err != nil {
			return proxyHeader{}, err
		}
		return parseProxyV2(buf[:proxyV2Fixed], body)
	}
	if !bytes.HasPrefix(buf[:first], []byte("PROXY ")) {
		return proxyHeader{}, proxyMissingErr(buf[:first], 1)
	}
	n := first
	for buf[n-1] != '\n' {
		if n == proxyV1Max {
			return proxyHeader{}, proxyBad("version 1 line longer than %d bytes", proxyV1Max)
		}
		if err := readFull(r, buf[n:n+1], "in the version 1 line"); err != nil {
			return proxyHeader{}, err
		}
		n++
	}
	return parseProxyV1(buf[:n])
}

func readFull(r io.Reader, b []byte, where string) error {
	if _, err := io.ReadFull(r, b); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			err = io.EOF
		}
		return &proxyError{result: proxyTruncated, msg: "connection ended or timed out " + where, err: err}
	}
	return nil
}

// proxyMissingErr tells a connection that sent no header from one that sent
// the other version's.
func proxyMissingErr(b []byte, want int) error {
	switch {
	case want == 2 && bytes.HasPrefix(b, []byte("PROXY ")):
		return proxyBad("got a version 1 header; gateway.proxy_protocol is v2")
	case want == 1 && len(b) >= 12 && bytes.Equal(b[:12], proxyV2Sig):
		return proxyBad("got a version 2 header; gateway.proxy_protocol is v1")
	}
	return &proxyError{result: proxyMissing, msg: fmt.Sprintf("the connection does not start with a version %d header", want)}
}

// parseProxyV1 parses a whole version 1 line, CRLF included:
// "PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n" or "PROXY UNKNOWN ...\r\n".
func parseProxyV1(line []byte) (proxyHeader, error) {
	if len(line) > proxyV1Max {
		return proxyHeader{}, proxyBad("version 1 line longer than %d bytes", proxyV1Max)
	}
	body, ok := bytes.CutSuffix(line, []byte("\r\n"))
	if !ok {
		return proxyHeader{}, proxyBad("version 1 line does not end with CRLF")
	}
	rest, ok := bytes.CutPrefix(body, []byte("PROXY "))
	if !ok {
		return proxyHeader{}, proxyBad("version 1 line does not start with \"PROXY \"")
	}
	if bytes.IndexByte(rest, '\r') >= 0 || bytes.IndexByte(rest, '\n') >= 0 {
		return proxyHeader{}, proxyBad("stray CR or LF inside the version 1 line")
	}
	if bytes.Equal(rest, []byte("UNKNOWN")) || bytes.HasPrefix(rest, []byte("UNKNOWN ")) {
		return proxyHeader{}, nil // the rest of the line is to be ignored
	}
	f := bytes.Split(rest, []byte(" "))
	if len(f) != 5 {
		return proxyHeader{}, proxyBad("version 1 line has %d fields after PROXY, want 5 (family, source, destination, two ports)", len(f))
	}
	var want4 bool
	switch string(f[0]) {
	case "TCP4":
		want4 = true
	case "TCP6":
	default:
		return proxyHeader{}, proxyBad("version 1 family %q is not TCP4, TCP6 or UNKNOWN", f[0])
	}
	var addrs [2]netip.Addr
	for i := range addrs {
		a, err := netip.ParseAddr(string(f[1+i]))
		if err != nil || a.Zone() != "" || a.Is4() != want4 {
			return proxyHeader{}, proxyBad("version 1 %s address %q is not a %s address", [2]string{"source", "destination"}[i], f[1+i], f[0])
		}
		addrs[i] = a
	}
	var ports [2]uint16
	for i := range ports {
		p, ok := parsePort(f[3+i])
		if !ok {
			return proxyHeader{}, proxyBad("version 1 %s port %q is not a number from 0 to 65535", [2]string{"source", "destination"}[i], f[3+i])
		}
		ports[i] = p
	}
	return proxyHeader{src: netip.AddrPortFrom(addrs[0].Unmap(), ports[0])}, nil
}

func parsePort(b []byte) (uint16, bool) {
	if len(b) == 0 || len(b) > 5 || (len(b) > 1 && b[0] == '0') {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return uint16(n), n <= 65535
}

// parseProxyV2 parses a version 2 header: its 16-byte fixed part and the
// body of the length the fixed part announces.
func parseProxyV2(fixed, body []byte) (proxyHeader, error) {
	if len(fixed) != proxyV2Fixed || !bytes.Equal(fixed[:12], proxyV2Sig) {
		return proxyHeader{}, proxyBad("version 2 signature missing")
	}
	if n := int(binary.BigEndian.Uint16(fixed[14:16])); n != len(body) {
		return proxyHeader{}, proxyBad("version 2 announces %d bytes, got %d", n, len(body))
	}
	if v := fixed[12] >> 4; v != 2 {
		return proxyHeader{}, proxyBad("version 2 header carries version %d", v)
	}
	fam, proto := fixed[13]>>4, fixed[13]&0x0f
	var addrLen int
	switch cmd := fixed[12] & 0x0f; cmd {
	case 0x0: // LOCAL: the proxy's own connection (a health check); the
		// rest of the block is to be discarded, family included
		return proxyHeader{}, nil
	case 0x1: // PROXY
	default:
		return proxyHeader{}, proxyBad("version 2 command %#x is neither LOCAL nor PROXY", cmd)
	}
	switch fam {
	case 0x0: // AF_UNSPEC: no address to use; the block is ignored
		return proxyHeader{}, nil
	case 0x1:
		addrLen = 12
	case 0x2:
		addrLen = 36
	case 0x3:
		addrLen = 216
	default:
		return proxyHeader{}, proxyBad("version 2 address family %#x is unknown", fam)
	}
	switch proto {
	case 0x1: // STREAM
	case 0x0, 0x2:
		return proxyHeader{}, proxyBad("version 2 transport %#x is not a stream (TCP)", proto)
	default:
		return proxyHeader{}, proxyBad("version 2 transport %#x is unknown", proto)
	}
	if len(body) < addrLen {
		return proxyHeader{}, proxyBad("version 2 body of %d bytes is shorter than its %d-byte addresses", len(body), addrLen)
	}
	if err := checkTLVs(body, addrLen); err != nil {
		return proxyHeader{}, err
	}
	var h proxyHeader
	switch fam {
	case 0x1:
		src := netip.AddrFrom4([4]byte(body[0:4]))
		h.src = netip.AddrPortFrom(src, binary.BigEndian.Uint16(body[8:10]))
	case 0x2:
		src := netip.AddrFrom16([16]byte(body[0:16])).Unmap()
		h.src = netip.AddrPortFrom(src, binary.BigEndian.Uint16(body[32:34]))
	case 0x3: // unix sockets: no IP address to stand for the client
	}
	return h, nil
}

// checkTLVs checks that the type-length-value records after the addresses
// fill the body exactly. Their contents are not used.
func checkTLVs(body []byte, off int) error {
	for off < len(body) {
		if len(body)-off < 3 {
			return proxyBad("version 2 TLV at byte %d is cut short", off)
		}
		n := int(binary.BigEndian.Uint16(body[off+1 : off+3]))
		off += 3
		if n > len(body)-off {
			return proxyBad("version 2 TLV of %d bytes runs past the header", n)
		}
		off += n
	}
	return nil
}
