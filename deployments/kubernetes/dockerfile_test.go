package kubernetes

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// buildKpushLine matches the go build command that produces the kpush binary
// (not kpush-feed).
var buildKpushLine = regexp.MustCompile(`go build .*-o bin/kpush \./cmd/kpush$`)

// normalizeBuild makes a Makefile recipe line and a Dockerfile RUN line
// comparable: make's $(VERSION) and the shell's ${VERSION} are the same
// variable, a leading @ only silences make, and RUN's --mount flags only
// add caches.
func normalizeBuild(line string) string {
	f := strings.Fields(line)
	for len(f) > 0 && (f[0] == "RUN" || strings.HasPrefix(f[0], "--mount=") || f[0] == "@") {
		f = f[1:]
	}
	s := strings.TrimPrefix(strings.Join(f, " "), "@")
	return strings.ReplaceAll(s, "$(VERSION)", "${VERSION}")
}

// logicalLines joins backslash-continued lines.
func logicalLines(t *testing.T, file string) []string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	var cur strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if s, ok := strings.CutSuffix(strings.TrimRight(line, " \t"), "\\"); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(line)
		out = append(out, cur.String())
		cur.Reset()
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func findBuildLines(t *testing.T, file string, keep func(string) bool) []string {
	t.Helper()
	var out []string
	for _, l := range logicalLines(t, file) {
		n := normalizeBuild(l)
		if keep(l) && buildKpushLine.MatchString(n) {
			out = append(out, n)
		}
	}
	return out
}

// The image must be built the way `make build` builds: same flags, same
// version stamping. Otherwise the container and a local binary differ.
func TestDockerfileBuildsLikeMake(t *testing.T) {
	docker := findBuildLines(t, filepath.Join(repoRoot, "Dockerfile"), func(l string) bool {
		return strings.HasPrefix(strings.TrimSpace(l), "RUN ")
	})
	if len(docker) != 1 {
		t.Fatalf("Dockerfile: want one RUN that builds bin/kpush from ./cmd/kpush, found %d: %q", len(docker), docker)
	}
	makefile := filepath.Join(repoRoot, "Makefile")
	if _, err := os.Stat(makefile); err != nil {
		t.Skipf("no Makefile yet to compare the Dockerfile's build line with: %v", err)
	}
	// Recipe lines of the build target: tab-indented lines after "build:".
	var recipe []string
	inBuild := false
	for _, l := range logicalLines(t, makefile) {
		switch {
		case strings.HasPrefix(l, "\t"):
			if inBuild {
				recipe = append(recipe, normalizeBuild(l))
			}
		case strings.TrimSpace(l) == "" || strings.HasPrefix(strings.TrimSpace(l), "#"):
		default:
			inBuild = strings.HasPrefix(l, "build:")
		}
	}
	var mk []string
	for _, l := range recipe {
		if buildKpushLine.MatchString(l) {
			mk = append(mk, l)
		}
	}
	if len(mk) != 1 {
		t.Fatalf("Makefile: want one line in the build recipe that builds bin/kpush, found %d in %q", len(mk), recipe)
	}
	if docker[0] != mk[0] {
		t.Errorf("Dockerfile and make build differ:\n  Dockerfile: %s\n  Makefile:   %s", docker[0], mk[0])
	}
}

// The runtime image has no shell: the health check must be exec form and run
// kpush itself, and both ports are exposed.
func TestDockerfileRuntime(t *testing.T) {
	lines := logicalLines(t, filepath.Join(repoRoot, "Dockerfile"))
	var stages []string
	var health, expose, user string
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		switch strings.ToUpper(f[0]) {
		case "FROM":
			stages = append(stages, l)
			health, expose, user = "", "", ""
		case "HEALTHCHECK":
			health = l
		case "EXPOSE":
			expose = l
		case "USER":
			user = l
		}
	}
	if len(stages) == 0 {
		t.Fatal("Dockerfile has no FROM")
	}
	final := stages[len(stages)-1]
	if !strings.Contains(final, "gcr.io/distroless/static") || !strings.Contains(final, ":nonroot") {
		t.Errorf("final stage %q is not distroless static nonroot", final)
	}
	if !strings.Contains(health, `CMD ["/usr/local/bin/kpush", "healthcheck"`) {
		t.Errorf("final stage HEALTHCHECK %q must run `kpush healthcheck` in exec form (no shell in the image)", health)
	}
	for _, p := range []string{"8080", "9090"} {
		if !strings.Contains(expose, p) {
			t.Errorf("final stage EXPOSE %q lacks %s", expose, p)
		}
	}
	if !strings.Contains(user, "nonroot") && !strings.Contains(user, "65532") {
		t.Errorf("final stage USER %q is not the nonroot user", user)
	}
}
