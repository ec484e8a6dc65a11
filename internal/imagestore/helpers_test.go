package imagestore

import (
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// requireTool skips when a host tool is missing, except in CI where that is a failure.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is required in CI: %v", name, err)
		}
		t.Skipf("%s not available: %v", name, err)
	}
	return p
}

// fakeVmlinux writes an x86_64 ELF header followed by data, enough for CheckKernel.
func fakeVmlinux(t *testing.T, path string) {
	t.Helper()
	b := make([]byte, 64+8192)
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = 2, 1, 1
	binary.LittleEndian.PutUint16(b[16:], 2)  // ET_EXEC
	binary.LittleEndian.PutUint16(b[18:], 62) // EM_X86_64
	for i := 64; i < 4096; i++ {
		b[i] = byte(i)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func makeExt4(t *testing.T, path string) {
	t.Helper()
	mkfs := requireTool(t, "mkfs.ext4")
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "hello"), []byte("hi\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(context.Background(), mkfs, "-q", "-F", "-d", src, path, "8M").CombinedOutput()
	if err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
}

// bundleFiles creates kernel, initrd and rootfs files in a new directory.
func bundleFiles(t *testing.T) (kernel, initrd, rootfs string) {
	t.Helper()
	d := t.TempDir()
	kernel, initrd, rootfs = filepath.Join(d, "k"), filepath.Join(d, "i"), filepath.Join(d, "r")
	fakeVmlinux(t, kernel)
	if err := os.WriteFile(initrd, []byte("070701"+string(make([]byte, 200))), 0o644); err != nil {
		t.Fatal(err)
	}
	makeExt4(t, rootfs)
	return
}

// storeEntries lists everything in imagesDir, including hidden temp dirs.
func storeEntries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}
