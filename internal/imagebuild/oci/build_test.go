package oci

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"banger/internal/imagebuild"
	"banger/internal/imagestore"
	"banger/internal/testkit"
)

// requireKernel makes sure the Debian cloud kernel can be had through the shared test
// cache (the imagebuild tests fill the same one), skipping outside CI when it cannot.
func requireKernel(t *testing.T) string {
	t.Helper()
	cache := testkit.CacheDir()
	if _, err := imagebuild.DebianKernel(context.Background(), cache, slog.New(slog.DiscardHandler)); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("Debian kernel unavailable: %v", err)
		}
		t.Skipf("Debian kernel unavailable: %v", err)
	}
	return cache
}

func TestBuildBundleImports(t *testing.T) {
	requireTool(t, "mkfs.ext4")
	requireTool(t, "debugfs")
	cache := requireKernel(t)
	ref := pushTestImage(t, testLayers(t))
	tmp := t.TempDir()
	agent := filepath.Join(tmp, "agent")
	if err := os.WriteFile(agent, []byte("\x7fELF stand-in agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	dir, err := Build(context.Background(), ref, Options{CacheDir: cache, WorkDir: filepath.Join(tmp, "work"), AgentPath: agent})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	m, err := imagestore.ReadManifest(filepath.Join(dir, imagestore.ManifestName))
	if err != nil {
		t.Fatal(err)
	}
	if m.Name != "rootfs-v1" || m.Version != "v1" || len(m.Files) != 3 {
		t.Fatalf("manifest = %+v", m)
	}
	img, err := imagestore.ImportBundle(context.Background(), filepath.Join(tmp, "images"), dir, "")
	if err != nil {
		t.Fatalf("importing the built bundle: %v", err)
	}
	if _, ok := img.FileByRole("rootfs"); !ok {
		t.Fatalf("imported image lacks a rootfs: %+v", img)
	}
}
