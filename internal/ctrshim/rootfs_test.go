package ctrshim

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"banger/internal/testkit"
)

// imageTree makes what an image may hold and the old agent copy lost: a file owned by
// 1000:1000 with mode 0640, a setuid file, a FIFO, a character device, a hard link and a
// symlink pointing out of the tree. Needs root (chown, mknod).
func imageTree(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		testkit.Missing(t, "making device nodes and other users' files needs root")
	}
	src := filepath.Join(t.TempDir(), "rootfs")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "data"), 0o755))
	owned := filepath.Join(src, "data", "owned")
	must(os.WriteFile(owned, []byte("secret\n"), 0o600))
	must(os.Chown(owned, 1000, 1000))
	must(os.Chmod(owned, 0o640))
	must(os.WriteFile(filepath.Join(src, "data", "suid"), []byte("x"), 0o755))
	must(os.Chmod(filepath.Join(src, "data", "suid"), os.ModeSetuid|0o755))
	must(unix.Mkfifo(filepath.Join(src, "data", "fifo"), 0o620))
	must(os.Chmod(filepath.Join(src, "data", "fifo"), 0o620)) // past the umask
	must(unix.Mknod(filepath.Join(src, "data", "null"), syscall.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(os.Chmod(filepath.Join(src, "data", "null"), 0o666))
	must(os.Link(owned, filepath.Join(src, "data", "link")))
	must(os.Symlink("/etc/shadow", filepath.Join(src, "data", "out")))
	// A linked directory sorting before the files: its entries must still come first.
	must(os.Symlink("/", filepath.Join(src, "data", "a-root")))
	return src
}

func TestRootfsTarKeepsOwnersModesDevicesFifosAndLinks(t *testing.T) {
	src := imageTree(t)
	bind := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(bind, []byte("nameserver 10.0.0.1\n"), 0o644)
	var buf bytes.Buffer
	if err := writeRootfsTar(&buf, src, []string{bind}); err != nil {
		t.Fatal(err)
	}
	got := map[string]*tar.Header{}
	tr := tar.NewReader(bytes.NewReader(buf.Bytes()))
	sawSymlink := ""
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got[h.Name] = h
		// No entry may follow a symlink: the guest's tar would write through it.
		if h.Typeflag == tar.TypeSymlink {
			sawSymlink = h.Name
		} else if sawSymlink != "" && !strings.HasPrefix(h.Name, "binds/") {
			t.Errorf("%s comes after the symlink %s", h.Name, sawSymlink)
		}
	}
	check := func(name string, ok bool) {
		t.Helper()
		if !ok {
			t.Errorf("%s: %+v", name, got["rootfs/data/"+name])
		}
	}
	// The walk is in name order: "link" comes first and carries the data, "owned" links to it.
	h := got["rootfs/data/link"]
	check("link", h != nil && h.Uid == 1000 && h.Gid == 1000 && h.Mode == 0o640 && h.Typeflag == tar.TypeReg && h.Uname == "")
	h = got["rootfs/data/suid"]
	check("suid", h != nil && h.Mode == 0o4755)
	h = got["rootfs/data/fifo"]
	check("fifo", h != nil && h.Typeflag == tar.TypeFifo && h.Mode == 0o620)
	h = got["rootfs/data/null"]
	check("null", h != nil && h.Typeflag == tar.TypeChar && h.Devmajor == 1 && h.Devminor == 3)
	h = got["rootfs/data/owned"]
	check("owned", h != nil && h.Typeflag == tar.TypeLink && h.Linkname == "rootfs/data/link")
	h = got["rootfs/data/out"]
	check("out", h != nil && h.Typeflag == tar.TypeSymlink && h.Linkname == "/etc/shadow")
	h = got["binds/0"]
	check("binds/0", h != nil && h.Typeflag == tar.TypeReg && h.Size == int64(len("nameserver 10.0.0.1\n")))

	// The guest unpacks it with its own tar (the tiny image's is busybox's): so does this.
	bb := testkit.Tool(t, "busybox")
	dst := t.TempDir()
	cmd := exec.Command(bb, "tar", "-x", "-p", "-f", "-", "-C", dst)
	cmd.Stdin = bytes.NewReader(buf.Bytes())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("busybox tar: %v %s", err, out)
	}
	var st unix.Stat_t
	for _, c := range []struct {
		name     string
		mode     uint32
		uid, gid uint32
	}{
		{"data/owned", syscall.S_IFREG | 0o640, 1000, 1000},
		{"data/suid", syscall.S_IFREG | 0o4755, 0, 0},
		{"data/fifo", syscall.S_IFIFO | 0o620, 0, 0},
		{"data/null", syscall.S_IFCHR | 0o666, 0, 0},
	} {
		if err := unix.Lstat(filepath.Join(dst, "rootfs", c.name), &st); err != nil {
			t.Fatal(err)
		}
		if st.Mode != c.mode || st.Uid != c.uid || st.Gid != c.gid {
			t.Errorf("%s unpacked as mode %o %d:%d, want %o %d:%d", c.name, st.Mode, st.Uid, st.Gid, c.mode, c.uid, c.gid)
		}
	}
	var a, b unix.Stat_t
	unix.Lstat(filepath.Join(dst, "rootfs/data/owned"), &a)
	unix.Lstat(filepath.Join(dst, "rootfs/data/link"), &b)
	if a.Ino != b.Ino || a.Nlink != 2 {
		t.Errorf("the hard link was not kept: inodes %d and %d, %d links", a.Ino, b.Ino, a.Nlink)
	}
}
