package main

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestPackageDependencies keeps the map of README.md ("How it is built")
// true: dependencies point one way. The transport (gateway/internal/netpoll)
// and the wire codec (gateway/wire) import nothing of kpush, and the router
// imports neither the gateway nor the consumer. It asks `go list -deps
// -json` for each package's full import graph, tests included.
func TestPackageDependencies(t *testing.T) {
	const module = "github.com/kpush/kpush"
	cases := []struct {
		pkg       string
		forbidden []string // import path prefixes; module alone means all of kpush
	}{
		{module + "/gateway/internal/netpoll", []string{module}},
		{module + "/gateway/wire", []string{module}},
		{module + "/consumer/internal/leaderepoch", []string{module}},
		{module + "/router", []string{module + "/gateway", module + "/consumer"}},
	}
	for _, tc := range cases {
		t.Run(strings.TrimPrefix(tc.pkg, module+"/"), func(t *testing.T) {
			deps := listDeps(t, tc.pkg)
			if len(deps) == 0 {
				t.Fatalf("go list -deps found nothing for %s", tc.pkg)
			}
			for _, d := range deps {
				if d == tc.pkg {
					continue
				}
				for _, f := range tc.forbidden {
					if d == f || strings.HasPrefix(d, f+"/") {
						t.Errorf("%s depends on %s", tc.pkg, d)
					}
				}
			}
		})
	}
}

// listDeps returns the import paths pkg depends on, itself and its tests'
// imports included.
func listDeps(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "-test", "-json=ImportPath", pkg).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("go list -deps %s: %v: %s", pkg, err, ee.Stderr)
		}
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	var paths []string
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p struct{ ImportPath string }
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("decode go list output: %v", err)
		}
		// Test variants are named "path [path.test]"; the path is what counts.
		path, _, _ := strings.Cut(p.ImportPath, " ")
		paths = append(paths, strings.TrimSuffix(path, ".test"))
	}
	return paths
}

// TestGatewaySessionsPortable keeps the gateway's session half portable
// (README.md, "How it is built"): on systems without epoll the package and
// its tests still build and vet (the tests compile too), and the session
// files and their tests are part of it there, not left out as Linux-only.
func TestGatewaySessionsPortable(t *testing.T) {
	const pkg = "github.com/kpush/kpush/gateway"
	want := []string{"session.go", "requests.go", "security.go", "resume_seam.go", "outbound.go", "server.go", "centrifugo_session.go",
		"session_test.go", "security_test.go", "resume_seam_test.go", "outbound_test.go", "centrifugo_session_test.go"}
	for _, goos := range []string{"darwin", "windows"} {
		t.Run(goos, func(t *testing.T) {
			env := append(os.Environ(), "GOOS="+goos, "GOARCH=amd64")
			list := exec.Command("go", "list", "-f", `{{join .GoFiles " "}} {{join .TestGoFiles " "}}`, pkg)
			list.Env = env
			out, err := list.CombinedOutput()
			if err != nil {
				t.Fatalf("GOOS=%s go list %s: %v: %s", goos, pkg, err, out)
			}
			files := strings.Fields(string(out))
			for _, f := range want {
				if !slices.Contains(files, f) {
					t.Errorf("GOOS=%s: %s is not built (files: %s)", goos, f, out)
				}
			}
			vet := exec.Command("go", "vet", pkg)
			vet.Env = env
			if out, err := vet.CombinedOutput(); err != nil {
				t.Fatalf("GOOS=%s go vet %s: %v: %s", goos, pkg, err, out)
			}
		})
	}
}
