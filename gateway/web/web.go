package web

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
)

var (
	//go:embed index.html
	indexHTML string
	//go:embed kpush.js
	kpushJS []byte
	//go:embed demo.js
	demoJS []byte
	//go:embed demo.css
	demoCSS []byte
)

// The page template is part of the binary; a broken one fails every test.
var pageTemplate = template.Must(template.New("index.html").Parse(indexHTML))

// Defaults for the zero values of Config.
const (
	DefaultWSPath = "/ws"
	DefaultTitle  = "kpush market feed"
)

// contentSecurityPolicy is sent with every response. The page loads its own
// scripts and stylesheet only, and may open WebSockets (CSP level 2 browsers
// do not match ws: and wss: with 'self', hence the explicit schemes).
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

const (
	htmlType = "text/html; charset=utf-8"
	jsType   = "text/javascript; charset=utf-8"
	cssType  = "text/css; charset=utf-8"
)

// demoSymbols are the symbols the demo page offers; the first five start
// checked so that the page shows prices as soon as it connects.
var demoSymbols = []string{"AAPL", "MSFT", "GOOG", "AMZN", "TSLA", "NVDA", "META", "NFLX", "AMD", "INTC"}

const demoChecked = 5

// Config sets what the demo page shows and where it connects.
type Config struct {
	// WSPath is where the page opens its WebSocket: a path on the page's own
	// host ("/ws"), a port and path on the page's host name (":8080/ws"), or
	// a full ws:// or wss:// URL. Default "/ws".
	WSPath string `yaml:"ws_path"`
	// Title is the page's title and heading. Default "kpush market feed".
	Title string `yaml:"title"`
}

func (c Config) withDefaults() Config {
	if c.WSPath == "" {
		c.WSPath = DefaultWSPath
	}
	if c.Title == "" {
		c.Title = DefaultTitle
	}
	return c
}

// Validate reports a WSPath the page could not connect to. Handler escapes
// whatever it is given, so an invalid value is a broken page, not a hole.
func (c Config) Validate() error {
	p := c.WSPath
	if p == "" {
		return nil
	}
	if strings.IndexFunc(p, func(r rune) bool { return unicode.IsControl(r) || unicode.IsSpace(r) }) >= 0 {
		return fmt.Errorf("web: ws_path %q: contains spaces or control characters", p)
	}
	switch {
	case strings.HasPrefix(p, "/"):
		return nil
	case strings.HasPrefix(p, ":"):
		port, _, _ := strings.Cut(p[1:], "/")
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 || port != strconv.Itoa(n) {
			return fmt.Errorf("web: ws_path %q: %q is not a port number", p, port)
		}
		return nil
	case strings.HasPrefix(p, "ws://"), strings.HasPrefix(p, "wss://"):
		u, err := url.Parse(p)
		if err != nil {
			return fmt.Errorf("web: ws_path %q: %w", p, err)
		}
		if u.Host == "" {
			return fmt.Errorf("web: ws_path %q: no host", p)
		}
		if u.Fragment != "" {
			return fmt.Errorf("web: ws_path %q: WebSocket URLs cannot have a fragment", p)
		}
		return nil
	default:
		return fmt.Errorf("web: ws_path %q: want a path starting with /, :port/path, or a ws:// or wss:// URL", p)
	}
}

type symbolChoice struct {
	Name    string
	Checked bool
}

type pageData struct {
	WSPath  string
	Title   string
	Symbols []symbolChoice
}

// asset is one response body with its headers, fixed when Handler is built.
type asset struct {
	body        []byte
	contentType string
	etag        string
}

func newAsset(body []byte, contentType string) asset {
	sum := sha256.Sum256(body)
	return asset{body: body, contentType: contentType, etag: `"` + hex.EncodeToString(sum[:12]) + `"`}
}

type handler struct {
	assets  map[string]asset // read-only after Handler returns
	pageErr error            // rendering the page failed; "/" answers 500
}

// Handler returns the handler for the demo page and the client library.
// Zero fields of cfg take their defaults; cfg is not validated here (see
// Config.Validate), and every value is escaped where the page uses it.
func Handler(cfg Config) http.Handler {
	cfg = cfg.withDefaults()
	data := pageData{WSPath: cfg.WSPath, Title: cfg.Title}
	for i, s := range demoSymbols {
		data.Symbols = append(data.Symbols, symbolChoice{Name: s, Checked: i < demoChecked})
	}
	h := &handler{assets: map[string]asset{
		"/kpush.js": newAsset(kpushJS, jsType),
		"/demo.js":  newAsset(demoJS, jsType),
		"/demo.css": newAsset(demoCSS, cssType),
	}}
	var page bytes.Buffer
	if err := pageTemplate.Execute(&page, data); err != nil {
		h.pageErr = fmt.Errorf("web: render demo page: %w", err)
	} else {
		h.assets["/"] = newAsset(page.Bytes(), htmlType)
	}
	return h
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("Content-Security-Policy", contentSecurityPolicy)
	hdr.Set("Referrer-Policy", "no-referrer")

	path := r.URL.Path
	if path == "" {
		path = "/" // mounted with http.StripPrefix("/prefix", ...)
	}
	a, ok := h.assets[path]
	if !ok {
		if path == "/" && h.pageErr != nil {
			http.Error(w, h.pageErr.Error(), http.StatusInternalServerError)
			return
		}
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		hdr.Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	hdr.Set("Content-Type", a.contentType)
	hdr.Set("ETag", a.etag)
	// ServeContent answers HEAD, If-None-Match (304) and ranges.
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.body))
}
