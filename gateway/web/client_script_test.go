package web_test

import (
	"context"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// nodeOrSkip returns the path of a node with the built-in test runner
// (node 18 or later), or skips the test.
func nodeOrSkip(t *testing.T) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not on PATH; the JavaScript client tests need it (node 18 or later)")
	}
	out, err := exec.Command(node, "--version").Output()
	if err != nil {
		t.Skipf("node --version: %v", err)
	}
	v := strings.TrimPrefix(strings.TrimSpace(string(out)), "v")
	major, err := strconv.Atoi(strings.SplitN(v, ".", 2)[0])
	if err != nil || major < 18 {
		t.Skipf("node %s has no built-in test runner; need 18 or later", v)
	}
	return node
}

func runNode(t *testing.T, args ...string) {
	t.Helper()
	node := nodeOrSkip(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("node %s:\n%s", strings.Join(args, " "), out)
}

// TestKPushJS runs the client library's own tests (fake WebSocket, fake
// clock): resume positions, duplicate dropping, backoff, request matching.
func TestKPushJS(t *testing.T) {
	runNode(t, "--test", "kpush_test.mjs")
}

// TestDemoJS runs the demo page's script against a DOM stand-in and a fake
// server: subscriptions from the picker, prices, gap and recovery counters.
func TestDemoJS(t *testing.T) {
	runNode(t, "--test", "demo_test.mjs")
}

// TestScriptsParse catches a syntax error in the browser scripts, which the
// browser would only report in its console.
func TestScriptsParse(t *testing.T) {
	for _, f := range []string{"kpush.js", "demo.js"} {
		t.Run(f, func(t *testing.T) { runNode(t, "--check", f) })
	}
}
