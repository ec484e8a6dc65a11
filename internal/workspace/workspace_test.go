package workspace

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"banger/internal/agentproto"
	"banger/internal/errdefs"
)

func write(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, c := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func needMkfs(t *testing.T) {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("needs mkfs.ext4")
	}
	if _, err := exec.LookPath("debugfs"); err != nil {
		t.Skip("needs debugfs")
	}
}

// imageList lists a directory of an ext4 image with debugfs (no mount needed).
func imageList(t *testing.T, image, dir string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "ls -l "+dir, image).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs: %v: %s", err, out)
	}
	return string(out)
}

func TestPackHonoursIgnoresAndSkipsSpecialFiles(t *testing.T) {
	needMkfs(t)
	dir := t.TempDir()
	write(t, dir, map[string]string{
		"keep.txt": "k", "build/out.o": "o", "logs/a.log": "l", "src/x.log": "l", ".git/HEAD": "h",
		IgnoreFile: "build/\n*.log\n!src/x.log\n",
	})
	os.Symlink("/etc", filepath.Join(dir, "etc-link"))
	syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o600)
	p, err := Pack(context.Background(), Options{Dir: dir, Excludes: []string{"keep.txt"}, MaxBytes: 1 << 20, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Remove()
	root := imageList(t, p.Image, "/")
	for _, want := range []string{".git", "src", "etc-link", IgnoreFile} {
		if !strings.Contains(root, want) {
			t.Errorf("image root lacks %s:\n%s", want, root)
		}
	}
	for _, gone := range []string{"keep.txt", "build", "fifo"} {
		if strings.Contains(root, " "+gone+" ") || strings.HasSuffix(strings.TrimSpace(root), gone) {
			t.Errorf("image root has %s:\n%s", gone, root)
		}
	}
	if logs := imageList(t, p.Image, "/logs"); strings.Contains(logs, "a.log") {
		t.Errorf("*.log not excluded: %s", logs)
	}
	if src := imageList(t, p.Image, "/src"); !strings.Contains(src, "x.log") {
		t.Errorf("!src/x.log not re-included: %s", src)
	}
	if len(p.Skipped) != 1 || p.Skipped[0] != "fifo" {
		t.Errorf("skipped %v, want [fifo]", p.Skipped)
	}
	out, _ := exec.Command("debugfs", "-R", "stat /etc-link", p.Image).CombinedOutput()
	if !strings.Contains(string(out), "Fast link dest: \"/etc\"") {
		t.Errorf("etc-link is not a symlink to /etc in the image:\n%s", out)
	}
	// The packing directory goes away with Remove, and a failed Pack leaves none.
	p.Remove()
	if _, err := os.Stat(p.Image); !os.IsNotExist(err) {
		t.Errorf("Remove left the image: %v", err)
	}
}

func TestPackRefusesBadInputNamingTheFlag(t *testing.T) {
	tmp := t.TempDir()
	big := t.TempDir()
	write(t, big, map[string]string{"a": strings.Repeat("x", 4096), "b": strings.Repeat("y", 4096)})
	file := filepath.Join(t.TempDir(), "f")
	os.WriteFile(file, nil, 0o644)
	for _, c := range []struct{ dir, want string }{
		{filepath.Join(tmp, "missing"), "does not exist"},
		{file, "is not a directory"},
		{big, "workspace.max_size"},
	} {
		_, err := Pack(context.Background(), Options{Dir: c.dir, MaxBytes: 6000, Flag: "--workspace", TempDir: tmp})
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "--workspace") ||
			!strings.Contains(err.Error(), c.dir) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v", c.dir, err)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(tmp, "banger-workspace-*")); len(left) > 0 {
		t.Errorf("failed packs left %v", left)
	}
}

func TestSendReceiveKeepsHolesAndData(t *testing.T) {
	src := filepath.Join(t.TempDir(), "img")
	f, _ := os.Create(src)
	f.Truncate(64 << 20)
	f.WriteAt([]byte("head"), 0)
	f.WriteAt(bytes.Repeat([]byte("z"), 3<<20), 32<<20)
	f.Close()
	var wire bytes.Buffer
	if err := SendImage(context.Background(), &wire, src); err != nil {
		t.Fatal(err)
	}
	if wire.Len() > 8<<20 {
		t.Errorf("sent %d bytes for a 64 MiB image with ~3 MiB of data: holes were sent", wire.Len())
	}
	dst, _ := os.Create(filepath.Join(t.TempDir(), "out"))
	defer dst.Close()
	if _, err := ReceiveImage(&wire, dst, ReceiveLimits{MaxSize: 64 << 20, MaxData: 8 << 20}); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(dst.Name())
	if !bytes.Equal(a, b) {
		t.Fatal("received image differs")
	}
}

func TestReceiveRefusesOutOfBoundsUploads(t *testing.T) {
	frame := func(size int64, frames ...[]byte) []byte {
		var b bytes.Buffer
		b.WriteByte(frameSize)
		binary.Write(&b, binary.BigEndian, uint64(size))
		for _, f := range frames {
			b.Write(f)
		}
		return b.Bytes()
	}
	data := func(off uint64, n uint32) []byte {
		var b bytes.Buffer
		b.WriteByte(frameData)
		binary.Write(&b, binary.BigEndian, off)
		binary.Write(&b, binary.BigEndian, n)
		b.Write(make([]byte, n))
		return b.Bytes()
	}
	lim := ReceiveLimits{MaxSize: 1 << 20, MaxData: 8192}
	for name, in := range map[string][]byte{
		"size over the cap":   frame(2 << 20),
		"zero size":           frame(0),
		"frame past the end":  frame(1<<20, data(1<<20-100, 200)),
		"offset wraps":        frame(1<<20, data(^uint64(0)-10, 100)),
		"data over the cap":   frame(1<<20, data(0, 4096), data(4096, 4096), data(8192, 4096)),
		"unknown frame":       frame(1<<20, []byte{9}),
		"no end frame":        frame(1<<20, data(0, 10)),
		"no size frame first": {frameEnd},
	} {
		f, _ := os.Create(filepath.Join(t.TempDir(), "img"))
		if _, err := ReceiveImage(bytes.NewReader(in), f, lim); err == nil {
			t.Errorf("%s: accepted", name)
		}
		fi, _ := f.Stat()
		if fi.Size() > lim.MaxSize {
			t.Errorf("%s: file grew to %d", name, fi.Size())
		}
		f.Close()
	}
}

func entry(p string, mode uint32, mt, ct int64, link string) agentproto.ListEntry {
	return agentproto.ListEntry{Path: p, Mode: mode, MTime: mt, CTime: ct, Link: link}
}

func TestCompare(t *testing.T) {
	const reg, dir, lnk = syscall.S_IFREG | 0o644, syscall.S_IFDIR | 0o755, syscall.S_IFLNK | 0o777
	const since = 100
	file, link := ManifestEntry{Mode: 0o644}, ManifestEntry{Mode: fs.ModeSymlink | 0o777, Link: "same"}
	manifest := map[string]ManifestEntry{
		".": {Mode: fs.ModeDir | 0o755}, "same": file, "touched": file, "gone": file, "link": link,
		"sub": {Mode: fs.ModeDir | 0o755}, "sub/chmod": file, "sub/keep": file,
		"quiet": {Mode: fs.ModeDir | 0o755}, "quiet/untouched": file,
		"rmdir": {Mode: fs.ModeDir | 0o755}, "rmdir/a": file, "rmdir/deep/b": file,
		"nowfile": {Mode: fs.ModeDir | 0o755}, "nowfile/c": file,
	}
	// After the command: the root changed (gone deleted, new and file created, rmdir
	// removed, nowfile replaced by a file), so all its entries are listed; sub changed
	// only in a child's mode, so sub itself is unchanged and only that child is listed.
	listing := []agentproto.ListEntry{
		entry(".", dir, 150, 150, ""),
		entry("same", reg, 1, 1, ""),
		entry("touched", reg, 1, 120, ""),
		entry("link", lnk, 1, 130, "touched"),
		entry("sub", dir, 1, 1, ""),
		entry("sub/chmod", syscall.S_IFREG|0o755, 1, 140, ""),
		entry("quiet", dir, 1, 1, ""),
		entry("new", dir, 150, 150, ""),
		entry("new/a", reg, 150, 150, ""),
		entry("new/deeper", dir, 150, 150, ""),
		entry("new/deeper/b", reg, 150, 150, ""),
		entry("file", reg, 150, 150, ""),
		entry("nowfile", reg, 150, 150, ""),
	}
	c := Compare(manifest, listing, since)
	if got, want := strings.Join(c.Fetch, ","), "file,new,nowfile,sub/chmod,touched"; got != want {
		t.Errorf("fetch %s, want %s", got, want)
	}
	if got, want := strings.Join(c.Old, ","), "gone,link,nowfile/c,rmdir/a,rmdir/deep/b,sub/chmod,touched"; got != want {
		t.Errorf("old %s, want %s", got, want)
	}
	if len(c.Links) != 1 || c.Links["link"] != "touched" {
		t.Errorf("links %v", c.Links)
	}
	// Nothing changed: the agent lists nothing.
	if !Compare(manifest, nil, since).Empty() {
		t.Error("an empty listing is not empty changes")
	}
}

func TestRewritePathsTouchesOnlyHeaders(t *testing.T) {
	in := "diff --git a/banger-old/x b/banger-new/x\nindex 1..2 100644\n--- a/banger-old/x\n+++ b/banger-new/x\n@@ -1 +1 @@\n--- a/banger-old/y\n+ b/banger-new/z\n" +
		"diff --git a/banger-new/n b/banger-new/n\nnew file mode 100644\n--- /dev/null\n+++ b/banger-new/n\n" +
		"diff --git \"a/banger-old/q\\tx\" \"b/banger-old/q\\tx\"\ndeleted file mode 100644\n"
	var out bytes.Buffer
	if err := rewritePaths(strings.NewReader(in), &out, "banger-old", "banger-new"); err != nil {
		t.Fatal(err)
	}
	want := "diff --git a/x b/x\nindex 1..2 100644\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n--- a/banger-old/y\n+ b/banger-new/z\n" +
		"diff --git a/n b/n\nnew file mode 100644\n--- /dev/null\n+++ b/n\n" +
		"diff --git \"a/q\\tx\" \"b/q\\tx\"\ndeleted file mode 100644\n"
	if out.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", out.String(), want)
	}
}

func TestMakeLinksStaysInside(t *testing.T) {
	dst := t.TempDir()
	outside := t.TempDir()
	os.Symlink(outside, filepath.Join(dst, "escape"))
	for _, p := range []string{"../x", "/abs", "escape/x", "a/../../x"} {
		if err := MakeLinks(dst, map[string]string{p: "t"}); err == nil {
			t.Errorf("%s: accepted", p)
		}
	}
	if entries, _ := os.ReadDir(outside); len(entries) > 0 {
		t.Fatalf("a symlink landed outside: %v", entries)
	}
	if err := MakeLinks(dst, map[string]string{"d/l": "/etc/passwd"}); err != nil {
		t.Fatal(err)
	}
	if target, err := os.Readlink(filepath.Join(dst, "d", "l")); err != nil || target != "/etc/passwd" {
		t.Fatalf("link: %q %v", target, err)
	}
}
