package guest

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"banger/internal/errdefs"
)

// A container's symlinks point into its own root: /bin/sh -> /bin/busybox must resolve
// as present even though the agent's own /bin/busybox may not exist.
func TestRootedPathsResolveInsideTheRoot(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "bin"), 0o755)
	os.MkdirAll(filepath.Join(root, "srv", "app"), 0o755)
	os.WriteFile(filepath.Join(root, "bin", "busybox-only-here"), []byte("x"), 0o755)
	os.Symlink("/bin/busybox-only-here", filepath.Join(root, "bin", "sh"))
	os.Symlink("/nowhere", filepath.Join(root, "bin", "dangling"))

	cwd, path, err := rootedPaths(root, "", "sh", "/usr/bin:/bin")
	if err != nil || cwd != "/" || path != "/bin/sh" {
		t.Fatalf("got %q %q %v", cwd, path, err)
	}
	if cwd, path, err = rootedPaths(root, "/srv/app", "/bin/sh", ""); err != nil || cwd != "/srv/app" || path != "/bin/sh" {
		t.Fatalf("got %q %q %v", cwd, path, err)
	}
	if _, _, err := rootedPaths(root, "", "nope", "/bin"); !errors.Is(err, ErrCommandNotFound) {
		t.Fatalf("missing command: %v", err)
	}
	if _, _, err := rootedPaths(root, "/missing", "sh", "/bin"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("missing cwd: %v", err)
	}
	if _, _, err := rootedPaths("relative", "", "sh", "/bin"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("relative root: %v", err)
	}
	if _, _, err := rootedPaths("/", "", "sh", "/bin"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("root /: %v", err)
	}
}
