package kubernetes

import (
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// inMemory copies this module's kustomize directories into an in-memory file
// system rooted at /k, so a test can change an overlay without touching the
// repository.
func inMemory(t *testing.T) filesys.FileSystem {
	t.Helper()
	fsys := filesys.MakeFsInMemory()
	for _, dir := range []string{"base", "overlays", "components"} {
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return fsys.WriteFile(path.Join("/k", filepath.ToSlash(p)), data)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return fsys
}

// Adding components/live-config to an overlay, as deployments/README.md
// says, gives the ConfigMap a fixed name that the Deployment mounts (so
// `kubectl apply` edits it in place and kpush reloads it), and leaves every
// other check of the overlay true. Without it the name carries a content
// hash, so a config change rolls the pods.
func TestLiveConfigComponent(t *testing.T) {
	for _, overlay := range overlays {
		t.Run(overlay, func(t *testing.T) {
			if plain := render(t, overlay); !strings.HasPrefix(plain.configMap.Name, "kpush-config-") {
				t.Errorf("without the component the ConfigMap is %q, want kpush-config-<hash>", plain.configMap.Name)
			}
			fsys := inMemory(t)
			file := "/k/overlays/" + overlay + "/kustomization.yaml"
			data, err := fsys.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(data), "\ncomponents:") {
				t.Fatalf("%s already lists components; add live-config to that list in this test", file)
			}
			data = append(data, "\ncomponents:\n  - ../../components/live-config\n"...)
			if err := fsys.WriteFile(file, data); err != nil {
				t.Fatal(err)
			}
			b := renderFS(t, fsys, "/k/overlays/"+overlay, overlay+" + components/live-config")
			if b.configMap.Name != "kpush-config" {
				t.Errorf("with the component the ConfigMap is %q, want kpush-config", b.configMap.Name)
			}
			b.checkAll(t)
		})
	}
}
