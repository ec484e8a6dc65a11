package imagebuild

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func e2fsck(t *testing.T, image string) {
	t.Helper()
	out, err := exec.Command(requireTool(t, "e2fsck"), "-fn", image).CombinedOutput()
	if err != nil {
		t.Fatalf("e2fsck -fn %s: %v\n%s", image, err, out)
	}
}

func debugfsCmd(t *testing.T, image, req string) string {
	t.Helper()
	out, err := exec.Command(requireTool(t, "debugfs"), "-R", req, image).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs -R %q: %v\n%s", req, err, out)
	}
	return string(out)
}

func TestExt4FromDir(t *testing.T) {
	requireTool(t, "mkfs.ext4")
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "hello"), []byte("hello ext4\n"), 0o644)
	os.MkdirAll(filepath.Join(src, "etc/deep"), 0o755)
	os.WriteFile(filepath.Join(src, "etc/deep/file"), make([]byte, 100000), 0o600)
	os.Symlink("/hello", filepath.Join(src, "link"))
	os.Mkdir(filepath.Join(src, "tmp"), 0o755)
	os.Chmod(filepath.Join(src, "tmp"), 0o777|os.ModeSticky)
	out := filepath.Join(t.TempDir(), "rootfs.ext4")
	if err := Ext4FromDir(context.Background(), src, out, 0); err != nil {
		t.Fatal(err)
	}
	e2fsck(t, out)
	if got := debugfsCmd(t, out, "cat /hello"); !strings.Contains(got, "hello ext4") {
		t.Fatalf("cat /hello: %q", got)
	}
	if got := debugfsCmd(t, out, "stat /tmp"); !strings.Contains(got, "Mode:  01777") {
		t.Fatalf("/tmp not 1777:\n%s", got)
	}
	if got := debugfsCmd(t, out, "stat /link"); !strings.Contains(got, "Fast link dest: \"/hello\"") {
		t.Fatalf("symlink:\n%s", got)
	}
	if got := debugfsCmd(t, out, "stat /"); !strings.Contains(got, "User:     0   Group:     0") {
		t.Fatalf("root dir not owned by root:\n%s", got)
	}
	fi, _ := os.Stat(out)
	if fi.Size() != 16<<20 {
		t.Fatalf("auto size %d, want the 16 MiB minimum", fi.Size())
	}
	if err := Ext4FromDir(context.Background(), src, out+"2", 4096); err == nil {
		t.Fatal("a size smaller than the tree was accepted")
	}
}

// TestChownTreeToRoot exercises the debugfs ownership fix used when building without root,
// by building (as root) from a tree owned by another user.
func TestChownTreeToRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create files owned by another user")
	}
	requireTool(t, "mkfs.ext4")
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "a dir/sub"), 0o755)
	os.WriteFile(filepath.Join(src, "a dir/sub/f"), []byte("x"), 0o644)
	os.Symlink("/nowhere", filepath.Join(src, "dangling"))
	filepath.Walk(src, func(p string, _ os.FileInfo, _ error) error { return os.Lchown(p, 1234, 1234) })
	out := filepath.Join(t.TempDir(), "img")
	if err := sparseMkfsForTest(t, src, out); err != nil {
		t.Fatal(err)
	}
	if got := debugfsCmd(t, out, "stat \"/a dir/sub/f\""); !strings.Contains(got, "User:  1234") {
		t.Fatalf("precondition: mkfs should copy uid 1234:\n%s", got)
	}
	if err := chownTreeToRoot(context.Background(), out, src); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/", "/a dir", "/a dir/sub/f", "/dangling"} {
		if got := debugfsCmd(t, out, "stat \""+p+"\""); !strings.Contains(got, "User:     0   Group:     0") {
			t.Fatalf("%s not re-owned:\n%s", p, got)
		}
	}
	e2fsck(t, out)
}

func sparseMkfsForTest(t *testing.T, src, out string) error {
	tmp, err := sparseTemp(out, 16<<20)
	if err != nil {
		return err
	}
	if err := run(context.Background(), requireTool(t, "mkfs.ext4"), "-q", "-F", "-d", src, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

func TestMakeEmptyExt4(t *testing.T) {
	requireTool(t, "mkfs.ext4")
	dir := t.TempDir()
	for _, size := range []int64{4 << 30, 8 << 30} {
		p := filepath.Join(dir, "disk.ext4")
		start := time.Now()
		if err := MakeEmptyExt4(context.Background(), p, size, "work"); err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		t.Logf("MakeEmptyExt4 %dG: %v, %d KiB allocated", size>>30, took, st.Blocks/2)
		if st.Size != size {
			t.Fatalf("size %d, want %d", st.Size, size)
		}
		if st.Blocks*512 > 64<<20 {
			t.Fatalf("%dG image allocates %d bytes; expected a sparse file", size>>30, st.Blocks*512)
		}
		e2fsck(t, p)
		if got := debugfsCmd(t, p, "stats"); !strings.Contains(got, "Filesystem volume name:   work") || !strings.Contains(got, "has_journal") {
			t.Fatalf("unexpected superblock:\n%s", got)
		}
		os.Remove(p)
	}
	if err := MakeEmptyExt4(context.Background(), filepath.Join(dir, "x"), 1<<30, "this-label-is-too-long"); err == nil {
		t.Fatal("long label accepted")
	}
}
