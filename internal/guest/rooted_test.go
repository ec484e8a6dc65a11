package guest

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"banger/internal/agentclient"
	"banger/internal/agentproto"
	"banger/internal/errdefs"
	"banger/internal/testkit"
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
	if _, _, err := rootedPaths(root, "", "nope", "/bin"); !errors.Is(err, agentproto.ErrCommandNotFound) {
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

// An exec with a root runs chrooted there, in cwd inside it, with the given credentials and
// the Started callback before any output.
func TestExecInRootWithCredentials(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Missing(t, "chroot and setuid need root")
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		testkit.Missing(t, "a static /bin/busybox (busybox-static): %v", err)
	}
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "bin"), 0o755)
	os.MkdirAll(filepath.Join(root, "srv"), 0o755)
	os.WriteFile(filepath.Join(root, "bin", "busybox"), bb, 0o755)
	os.Symlink("/bin/busybox", filepath.Join(root, "bin", "sh"))
	os.WriteFile(filepath.Join(root, "srv", "marker"), []byte("in the root\n"), 0o644)
	os.Chmod(root, 0o755)

	_, s := newTestAgent(t)
	var out, errOut bytes.Buffer
	var started bool
	code, err := agentclient.Exec(testCtx(t), openStream(t, s),
		agentclient.ExecRequest{Argv: []string{"sh", "-c", `/bin/busybox cat marker; /bin/busybox id -u; /bin/busybox id -G; pwd`}, Env: []string{"PATH=/bin"},
			Cwd: "/srv", Root: root, UID: 1234, GID: 5678, Groups: []uint32{5678, 42}},
		agentclient.ExecIO{Stdout: &out, Stderr: &errOut, Started: func() { started = out.Len() == 0 }})
	if err != nil || code != 0 {
		t.Fatalf("code %d err %v stderr %q", code, err, errOut.String())
	}
	if want := "in the root\n1234\n5678 42\n/srv\n"; out.String() != want {
		t.Fatalf("output %q, want %q", out.String(), want)
	}
	if !started {
		t.Error("Started was not called before the output")
	}
}
