// Package web serves kpush's browser assets: the JavaScript client library
// (kpush.js) and the market-feed demo page that uses it.
//
// The assets are embedded in the binary. Handler returns an http.Handler for
// a fixed set of paths:
//
//	/          the demo page (index.html rendered once, with Config applied)
//	/kpush.js  the protocol v1 client library, usable by any page
//	/demo.js   the demo page's script
//	/demo.css  the demo page's stylesheet
//
// Anything else is 404, and methods other than GET and HEAD are 405. Every
// response carries Cache-Control: no-cache (with an ETag, so revalidation is
// a 304), X-Content-Type-Options: nosniff and a Content-Security-Policy that
// allows only the page's own scripts and styles and WebSocket connections
// (connect-src 'self' ws: wss:). The page has no inline script.
//
// The page learns where to connect from <meta name="kpush-ws-path">, which
// Handler fills in from Config.WSPath through html/template, so any value is
// escaped as an attribute. demo.js turns a path into a URL on the page's own
// host, choosing wss: when the page came over https:.
//
// The page refers to its assets by relative URLs, so the handler can also be
// mounted under a prefix with http.StripPrefix (serve the page at "/prefix/").
//
// Use:
//
//	mux.Handle("/", web.Handler(web.Config{WSPath: "/ws"}))
//
// kpush.js documents its own API in its header comment. It and demo.js have
// Node tests (kpush_test.mjs, demo_test.mjs: node's built-in runner, a fake
// WebSocket, no npm packages) that go test runs when node 18 or later is on
// PATH and skips otherwise.
//
// Concurrency: Handler renders everything when it is called; the returned
// handler only reads immutable data and is safe for concurrent use.
package web
