package web_test

import (
	"html"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/kpush/kpush/gateway/web"
)

// serve starts a real HTTP server on a loopback port for h.
func serve(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

type response struct {
	status int
	header http.Header
	body   string
}

func do(t *testing.T, method, url string, header http.Header) response {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatalf("new request %s %s: %v", method, url, err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: string(body)}
}

func get(t *testing.T, url string) response { return do(t, http.MethodGet, url, nil) }

func TestRoutes(t *testing.T) {
	srv := serve(t, web.Handler(web.Config{}))
	tests := []struct {
		name, method, path string
		status             int
		contentType        string
		contains           string
	}{
		{"page", "GET", "/", 200, "text/html; charset=utf-8", `<meta name="kpush-ws-path" content="/ws">`},
		{"client library", "GET", "/kpush.js", 200, "text/javascript; charset=utf-8", "class KPush"},
		{"demo script", "GET", "/demo.js", 200, "text/javascript; charset=utf-8", "window.kpushDemo"},
		{"demo stylesheet", "GET", "/demo.css", 200, "text/css; charset=utf-8", ".flash-up"},
		{"head page", "HEAD", "/", 200, "text/html; charset=utf-8", ""},
		{"index.html is not an alias", "GET", "/index.html", 404, "text/plain; charset=utf-8", "404 page not found"},
		{"unknown path", "GET", "/favicon.ico", 404, "text/plain; charset=utf-8", ""},
		{"path below an asset", "GET", "/kpush.js/x", 404, "text/plain; charset=utf-8", ""},
		{"go source is not served", "GET", "/web.go", 404, "text/plain; charset=utf-8", ""},
		{"node test is not served", "GET", "/kpush_test.mjs", 404, "text/plain; charset=utf-8", ""},
		{"dot segments", "GET", "/a/../kpush.js/..", 404, "text/plain; charset=utf-8", ""},
		{"post", "POST", "/kpush.js", 405, "text/plain; charset=utf-8", "method not allowed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, tc.method, srv.URL+tc.path, nil)
			if r.status != tc.status {
				t.Fatalf("%s %s: status %d, want %d (body %q)", tc.method, tc.path, r.status, tc.status, r.body)
			}
			if got := r.header.Get("Content-Type"); got != tc.contentType {
				t.Errorf("Content-Type %q, want %q", got, tc.contentType)
			}
			if !strings.Contains(r.body, tc.contains) {
				t.Errorf("body does not contain %q", tc.contains)
			}
			if tc.method == "HEAD" && r.body != "" {
				t.Errorf("HEAD returned a body of %d bytes", len(r.body))
			}
			if tc.status == 405 && r.header.Get("Allow") != "GET, HEAD" {
				t.Errorf("405 without Allow: GET, HEAD (got %q)", r.header.Get("Allow"))
			}
			// Security headers go on every answer, errors included.
			if got := r.header.Get("X-Content-Type-Options"); got != "nosniff" {
				t.Errorf("X-Content-Type-Options %q, want nosniff", got)
			}
			if got := r.header.Get("Cache-Control"); got != "no-cache" {
				t.Errorf("Cache-Control %q, want no-cache", got)
			}
			csp := r.header.Get("Content-Security-Policy")
			for _, want := range []string{"default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self' ws: wss:", "frame-ancestors 'none'"} {
				if !strings.Contains(csp, want) {
					t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
				}
			}
			if strings.Contains(csp, "unsafe-") {
				t.Errorf("Content-Security-Policy allows unsafe sources: %q", csp)
			}
		})
	}
}

var metaRE = regexp.MustCompile(`<meta name="kpush-ws-path" content="([^"<>]*)">`)

// wsPathOf returns the WebSocket path the page will read from its meta tag.
func wsPathOf(t *testing.T, page string) string {
	t.Helper()
	m := metaRE.FindAllStringSubmatch(page, -1)
	if len(m) != 1 {
		t.Fatalf("want exactly one well-formed kpush-ws-path meta tag, found %d in:\n%s", len(m), page)
	}
	return html.UnescapeString(m[0][1])
}

func TestPageCarriesWSPathEscaped(t *testing.T) {
	tests := []struct{ name, path string }{
		{"default", ""},
		{"plain", "/push/ws"},
		{"other port", ":8081/ws"},
		{"absolute", "wss://push.example.com/ws?x=1&y=2"},
		{"quote breaks out of the attribute", `/ws"><script>alert(1)</script>`},
		{"single quotes and ampersands", `/ws'&amp;<x>`},
		{"javascript scheme", `javascript:alert(1)`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := serve(t, web.Handler(web.Config{WSPath: tc.path}))
			r := get(t, srv.URL+"/")
			want := tc.path
			if want == "" {
				want = web.DefaultWSPath
			}
			if got := wsPathOf(t, r.body); got != want {
				t.Errorf("page connects to %q, want %q", got, want)
			}
			assertOnlyOwnScripts(t, r.body)
		})
	}
}

func TestPageTitleEscaped(t *testing.T) {
	title := `</title><script>alert("t")</script> & co`
	srv := serve(t, web.Handler(web.Config{Title: title}))
	r := get(t, srv.URL+"/")
	if strings.Contains(r.body, title) {
		t.Fatal("the title reached the page unescaped")
	}
	escaped := html.EscapeString(title)
	if strings.Count(r.body, escaped) != 2 {
		t.Errorf("want the escaped title in <title> and <h1>, page:\n%s", r.body)
	}
	assertOnlyOwnScripts(t, r.body)

	r = get(t, serve(t, web.Handler(web.Config{})).URL+"/")
	if !strings.Contains(r.body, "<title>"+web.DefaultTitle+"</title>") {
		t.Errorf("default title missing from the page")
	}
}

var (
	tagRE       = regexp.MustCompile(`(?i)<script\b[^>]*>`)
	scriptRE    = regexp.MustCompile(`<script src="([a-z.]+)"></script>`)
	inlineEvent = regexp.MustCompile(`(?i)\son[a-z]+\s*=`)
	inlineStyle = regexp.MustCompile(`(?i)\sstyle\s*=`)
)

// assertOnlyOwnScripts checks that the page holds exactly its two external
// scripts and nothing the CSP would block (inline code, handlers, styles).
func assertOnlyOwnScripts(t *testing.T, page string) {
	t.Helper()
	if n := len(tagRE.FindAllString(page, -1)); n != 2 {
		t.Errorf("page has %d <script> tags, want 2", n)
	}
	var srcs []string
	for _, m := range scriptRE.FindAllStringSubmatch(page, -1) {
		srcs = append(srcs, m[1])
	}
	if strings.Join(srcs, ",") != "kpush.js,demo.js" {
		t.Errorf("scripts %v, want kpush.js then demo.js, each empty with a src", srcs)
	}
	if inlineEvent.MatchString(page) {
		t.Errorf("page has an inline event handler: %q", inlineEvent.FindString(page))
	}
	if inlineStyle.MatchString(page) {
		t.Errorf("page has an inline style attribute")
	}
}

var refRE = regexp.MustCompile(`(?:src|href)="([^"]+)"`)

// Every asset the page refers to is served with its right type.
func TestPageReferencesResolve(t *testing.T) {
	srv := serve(t, web.Handler(web.Config{}))
	page := get(t, srv.URL+"/").body
	types := map[string]string{".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
	seen := 0
	for _, m := range refRE.FindAllStringSubmatch(page, -1) {
		ref := m[1]
		if strings.HasPrefix(ref, "data:") {
			continue
		}
		if strings.Contains(ref, ":") || strings.HasPrefix(ref, "/") {
			t.Errorf("page refers to %q; refs must be relative to work under a prefix and stay same-origin", ref)
			continue
		}
		seen++
		r := get(t, srv.URL+"/"+ref)
		if r.status != 200 {
			t.Errorf("page refers to %q, served with status %d", ref, r.status)
		}
		ext := ref[strings.LastIndex(ref, "."):]
		if got := r.header.Get("Content-Type"); got != types[ext] {
			t.Errorf("%s: Content-Type %q, want %q", ref, got, types[ext])
		}
	}
	if seen != 4 { // demo.css, kpush.js (footer link), kpush.js, demo.js
		t.Errorf("page refers to %d assets, want 4", seen)
	}
}

func TestPageOffersSymbols(t *testing.T) {
	page := get(t, serve(t, web.Handler(web.Config{})).URL+"/").body
	boxes := regexp.MustCompile(`<input type="checkbox" name="symbol" value="([A-Z]+)"( checked)?>`).FindAllStringSubmatch(page, -1)
	var all, checked []string
	for _, b := range boxes {
		all = append(all, b[1])
		if b[2] != "" {
			checked = append(checked, b[1])
		}
	}
	if got, want := strings.Join(all, " "), "AAPL MSFT GOOG AMZN TSLA NVDA META NFLX AMD INTC"; got != want {
		t.Errorf("symbols %q, want %q", got, want)
	}
	if got, want := strings.Join(checked, " "), "AAPL MSFT GOOG AMZN TSLA"; got != want {
		t.Errorf("checked at start %q, want %q", got, want)
	}
}

func TestRevalidationGets304(t *testing.T) {
	srv := serve(t, web.Handler(web.Config{}))
	for _, path := range []string{"/", "/kpush.js"} {
		first := get(t, srv.URL+path)
		etag := first.header.Get("ETag")
		if etag == "" {
			t.Fatalf("%s: no ETag", path)
		}
		again := do(t, "GET", srv.URL+path, http.Header{"If-None-Match": {etag}})
		if again.status != http.StatusNotModified || again.body != "" {
			t.Errorf("%s with If-None-Match: status %d, %d bytes; want 304 and no body", path, again.status, len(again.body))
		}
	}
	// A different config is a different page, so a different ETag.
	other := serve(t, web.Handler(web.Config{WSPath: "/other"}))
	if get(t, srv.URL+"/").header.Get("ETag") == get(t, other.URL+"/").header.Get("ETag") {
		t.Error("pages with different WSPath share an ETag")
	}
}

func TestUnderPrefix(t *testing.T) {
	mux := http.NewServeMux()
	mux.Handle("/demo/", http.StripPrefix("/demo", web.Handler(web.Config{})))
	srv := serve(t, mux)
	for _, path := range []string{"/demo/", "/demo/kpush.js", "/demo/demo.js", "/demo/demo.css"} {
		if r := get(t, srv.URL+path); r.status != 200 {
			t.Errorf("%s: status %d, want 200", path, r.status)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		path    string
		wantErr string
	}{
		{"", ""},
		{"/ws", ""},
		{"/a/b?x=1", ""},
		{":8080/ws", ""},
		{":443", ""},
		{"ws://push.example.com/ws", ""},
		{"wss://push.example.com:8443/ws?t=1", ""},
		{"ws", "want a path starting with /"},
		{"http://example.com/ws", "want a path starting with /"},
		{"javascript:alert(1)", "want a path starting with /"},
		{":0/ws", "not a port number"},
		{":99999/ws", "not a port number"},
		{":08080/ws", "not a port number"},
		{":x/ws", "not a port number"},
		{"/w s", "spaces or control characters"},
		{"/ws\n", "spaces or control characters"},
		{"wss:///ws", "no host"},
		{"ws://h/ws#frag", "fragment"},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			err := web.Config{WSPath: tc.path}.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("Validate: %v, want nil", err)
			case tc.wantErr != "" && err == nil:
				t.Errorf("Validate: nil, want an error containing %q", tc.wantErr)
			case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
				t.Errorf("Validate: %v, want it to contain %q", err, tc.wantErr)
			case err != nil && !strings.HasPrefix(err.Error(), "web: ws_path "):
				t.Errorf("Validate: %v, want it to name the key", err)
			}
		})
	}
}
