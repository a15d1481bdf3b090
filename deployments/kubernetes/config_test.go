package kubernetes

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"sigs.k8s.io/yaml"
)

var kpushBinary struct {
	once sync.Once
	path string
	err  error
	out  []byte
}

// buildKpush builds cmd/kpush once per test run, in kpush's own module (so
// the binary has exactly the dependency versions that ship, not ones bumped
// by this module's Kubernetes libraries). It skips the test only when the
// binary cannot be built.
func buildKpush(t *testing.T) string {
	t.Helper()
	kpushBinary.once.Do(func() {
		dir, err := os.MkdirTemp("", "kpush-deploy-test-")
		if err != nil {
			kpushBinary.err = err
			return
		}
		kpushBinary.path = filepath.Join(dir, "kpush")
		cmd := exec.Command("go", "build", "-o", kpushBinary.path, "./cmd/kpush")
		cmd.Dir = repoRoot
		cmd.Env = append(os.Environ(), "GOWORK=off")
		kpushBinary.out, kpushBinary.err = cmd.CombinedOutput()
	})
	if kpushBinary.err != nil {
		t.Skipf("cannot build cmd/kpush, so kpush's own config loader cannot be run: %v\n%s", kpushBinary.err, kpushBinary.out)
	}
	return kpushBinary.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if kpushBinary.path != "" {
		os.RemoveAll(filepath.Dir(kpushBinary.path))
	}
	os.Exit(code)
}

// validate runs `kpush validate -config FILE` and fails the test with kpush's
// own error output when the file is rejected.
func validate(t *testing.T, bin, file string) {
	t.Helper()
	cmd := exec.Command(bin, "validate", "-config", file)
	var stderr bytes.Buffer
	cmd.Stdout = &stderr
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		t.Errorf("kpush validate -config %s: exit %d:\n%s", file, exit.ExitCode(), stderr.String())
	case err != nil:
		t.Errorf("kpush validate -config %s: %v", file, err)
	}
}

// The config each overlay actually deploys, and the one compose mounts, must
// load with kpush's own loader (strict keys, validation, defaults).
func TestConfigMapPassesKpushValidate(t *testing.T) {
	bin := buildKpush(t)
	for _, overlay := range overlays {
		t.Run(overlay, func(t *testing.T) {
			b := render(t, overlay)
			key, _, raw := b.configFile(t)
			file := filepath.Join(t.TempDir(), key)
			if err := os.WriteFile(file, []byte(raw), 0o644); err != nil {
				t.Fatal(err)
			}
			validate(t, bin, file)
		})
	}
	t.Run("compose", func(t *testing.T) {
		validate(t, bin, filepath.Join("..", "compose", "kpush.yaml"))
	})
	// A broken file must fail, or the checks above prove nothing.
	t.Run("rejects unknown key", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "bad.yaml")
		if err := os.WriteFile(file, []byte("listen: \":8080\"\nno_such_key: 1\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := exec.Command(bin, "validate", "-config", file).Run(); err == nil {
			t.Error("kpush validate accepted a file with an unknown key")
		}
	})
}

// keyPaths flattens a YAML document into dotted key paths of its mappings
// (lists are leaves: routes are examples, not a schema).
func keyPaths(t *testing.T, file string) []string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var out []string
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			p := prefix + k
			out = append(out, p)
			if sub, ok := v.(map[string]any); ok {
				walk(p+".", sub)
			}
		}
	}
	walk("", doc)
	sort.Strings(out)
	return out
}

// The deployed copies are kept in step with configs/kpush.yaml, which
// documents every key: a key added there must be decided on here too.
func TestDeployedConfigsCarryEveryKey(t *testing.T) {
	reference := filepath.Join(repoRoot, "configs", "kpush.yaml")
	if _, err := os.Stat(reference); err != nil {
		t.Skipf("no %s to compare with yet: %v", reference, err)
	}
	want := keyPaths(t, reference)
	for _, file := range []string{
		"base/kpush.yaml",
		"overlays/dev/kpush.yaml",
		"../compose/kpush.yaml",
	} {
		t.Run(file, func(t *testing.T) {
			have := map[string]bool{}
			for _, k := range keyPaths(t, file) {
				have[k] = true
			}
			var missing []string
			for _, k := range want {
				if !have[k] {
					missing = append(missing, k)
				}
			}
			if len(missing) > 0 {
				t.Errorf("%s lacks keys that configs/kpush.yaml documents: %s\n(copy them with the value this deployment needs)", file, strings.Join(missing, ", "))
			}
		})
	}
}
