package imagebuild

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"banger/internal/imagestore"
	"banger/internal/model"
	"banger/internal/testkit"
)

// testAgent builds ./cmd/banger-agent when the repository has it; otherwise /bin/true stands
// in, which is enough to exercise packaging.
func testAgent(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "cmd", "banger-agent")); err == nil {
		out := filepath.Join(t.TempDir(), "banger-agent")
		cmd := exec.Command("go", "build", "-o", out, "./cmd/banger-agent")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("building agent: %v\n%s", err, b)
		}
		return out
	}
	t.Log("cmd/banger-agent not present; packaging /bin/true as the agent")
	return "/bin/true"
}

func TestBuildTinyEndToEnd(t *testing.T) {
	for _, tool := range []string{"mkfs.ext4", "debugfs", "e2fsck"} {
		requireTool(t, tool)
	}
	if missing := CheckTinyPrereqs(); len(missing) > 0 {
		testkit.Missing(t, "tiny prerequisites missing: %+v", missing)
	}
	k := testKernel(t) // fetches into the shared cache, or skips without a kernel
	agent := testAgent(t)
	work := t.TempDir()
	opts := TinyOptions{CacheDir: testCacheDir(), AgentPath: agent, WorkDir: work, Log: testLogger(t)}
	start := time.Now()
	dir, err := BuildTiny(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("BuildTiny (warm kernel cache): %v", time.Since(start))

	m, err := imagestore.ReadManifest(filepath.Join(dir, imagestore.ManifestName))
	if err != nil {
		t.Fatal(err)
	}
	if m.Name != TinyName || !strings.HasPrefix(m.Version, k.Version+"-b") || len(m.Files) != 3 {
		t.Fatalf("manifest %+v", m)
	}
	rootfs := filepath.Join(dir, imagestore.RootfsName)
	e2fsck(t, rootfs)
	rf, _ := m.File(model.RoleRootfs)
	if rf.Size > 64<<20 {
		t.Fatalf("rootfs is %d bytes, over the 64 MiB budget", rf.Size)
	}
	t.Logf("rootfs %d MiB, initrd %d KiB", rf.Size>>20, fileSize(t, filepath.Join(dir, imagestore.InitrdName))>>10)

	if got := debugfsCmd(t, rootfs, "stat /bin/busybox"); !strings.Contains(got, "Type: regular") || !strings.Contains(got, "Mode:  0755") {
		t.Fatalf("/bin/busybox:\n%s", got)
	}
	if got := debugfsCmd(t, rootfs, "stat /bin/sh"); !strings.Contains(got, "Type: symlink") || !strings.Contains(got, "\"/bin/busybox\"") {
		t.Fatalf("/bin/sh:\n%s", got)
	}
	for _, absent := range []string{"/sbin/init", "/linuxrc", "/init"} {
		if got := debugfsCmd(t, rootfs, "stat "+absent); !strings.Contains(got, "File not found") {
			t.Fatalf("%s must not exist in the tiny rootfs:\n%s", absent, got)
		}
	}
	if got := debugfsCmd(t, rootfs, "stat /tmp"); !strings.Contains(got, "Mode:  01777") {
		t.Fatalf("/tmp:\n%s", got)
	}
	if got := debugfsCmd(t, rootfs, "cat /etc/passwd"); !strings.HasPrefix(strings.TrimSpace(lastLine(got)), "root:x:0:0:") {
		t.Fatalf("/etc/passwd: %q", got)
	}
	if got := debugfsCmd(t, rootfs, "stat /etc/shadow"); !strings.Contains(got, "User:     0   Group:     0") {
		t.Fatalf("/etc/shadow not root-owned:\n%s", got)
	}

	// The bundle imports, and the stored kernel is a PVH-bootable x86_64 ELF.
	store := t.TempDir()
	im, err := imagestore.ImportBundle(context.Background(), store, dir, "")
	if err != nil {
		t.Fatal(err)
	}
	kf, _ := im.FileByRole(model.RoleKernel)
	if format, err := imagestore.KernelFormat(filepath.Join(im.Dir, kf.Name)); err != nil || format != imagestore.KernelELF {
		t.Fatalf("stored kernel: %s %v", format, err)
	}
	if err := CheckPVHEntry(filepath.Join(im.Dir, kf.Name)); err != nil {
		t.Fatalf("stored vmlinux: %v", err)
	}

	// A rebuild with the same inputs gives the same image: everything is reproducible.
	start = time.Now()
	dir2, err := BuildTiny(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("BuildTiny rebuild: %v", time.Since(start))
	im2, err := imagestore.ImportBundle(context.Background(), store, dir2, "")
	if err != nil {
		t.Fatal(err)
	}
	if im2.ID != im.ID {
		t.Logf("rebuild gave a different image id (%s vs %s); mkfs embeds a random UUID and timestamps", im2.ID, im.ID)
	}
}

func fileSize(t *testing.T, p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
