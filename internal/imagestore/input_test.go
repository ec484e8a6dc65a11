package imagestore

import (
	"banger/internal/testkit"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// mkfifo makes a FIFO at p. Whatever blocks opening it for reading is released at cleanup
// by opening it read-write (which never blocks on Linux), so a failing test ends.
func mkfifo(t *testing.T, p string) {
	t.Helper()
	if err := syscall.Mkfifo(p, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if f, err := os.OpenFile(p, os.O_RDWR, 0); err == nil {
			f.Close()
		}
	})
}

// within runs fn and fails the test if it has not returned after a bound far beyond what
// a refusal takes, instead of hanging the whole test binary.

func TestImportRefusesFIFOsWithoutBlocking(t *testing.T) {
	ctx := context.Background()
	kernel, initrd, rootfs := bundleFiles(t)
	fifo := filepath.Join(t.TempDir(), "fifo")
	mkfifo(t, fifo)
	store := t.TempDir()
	for _, tc := range []struct {
		field string
		run   func() error
	}{
		{"kernel", func() error { _, err := ImportFiles(ctx, store, "f", fifo, initrd, rootfs); return err }},
		{"initrd", func() error { _, err := ImportFiles(ctx, store, "f", kernel, fifo, rootfs); return err }},
		{"rootfs", func() error { _, err := ImportFiles(ctx, store, "f", kernel, initrd, fifo); return err }},
		{"bundle", func() error { _, err := ImportBundle(ctx, store, fifo, ""); return err }},
	} {
		err := testkit.Within(t, tc.field+" FIFO", tc.run)
		testkit.WantInvalidArgument(t, tc.field+" FIFO", err, tc.field, fifo)
	}

	// Inside a bundle directory: the manifest, and a file the manifest lists.
	for _, name := range []string{ManifestName, KernelName} {
		dir := writeBundleDir(t)
		os.Remove(filepath.Join(dir, name))
		mkfifo(t, filepath.Join(dir, name))
		err := testkit.Within(t, name+" FIFO in a bundle", func() error { _, err := ImportBundle(ctx, store, dir, ""); return err })
		testkit.WantInvalidArgument(t, name+" FIFO in a bundle", err, name, "FIFO")
	}
	if got := storeEntries(t, store); len(got) != 0 {
		t.Fatalf("store holds %v after refused imports", got)
	}
}

// A bundle's files are named by the bundle, so a symlink in it (to ~/.ssh/id_ed25519, say)
// is refused, not followed.
func TestImportBundleRefusesSymlinks(t *testing.T) {
	dir := writeBundleDir(t)
	real := filepath.Join(t.TempDir(), "vmlinux")
	if err := os.Rename(filepath.Join(dir, KernelName), real); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, filepath.Join(dir, KernelName)); err != nil {
		t.Fatal(err)
	}
	store := t.TempDir()
	_, err := ImportBundle(context.Background(), store, dir, "")
	testkit.WantInvalidArgument(t, "symlinked kernel", err, KernelName, "symlink")
	if got := storeEntries(t, store); len(got) != 0 {
		t.Fatalf("store holds %v", got)
	}
}

// A directory or /proc/self/mem where a file is expected is the caller's mistake and says
// which field, not an internal error.
func TestImportNonFilesAreInvalidArguments(t *testing.T) {
	ctx := context.Background()
	kernel, initrd, rootfs := bundleFiles(t)
	dir := t.TempDir()
	store := t.TempDir()
	for _, bad := range []string{dir, "/proc/self/mem"} {
		_, err := ImportFiles(ctx, store, "x", bad, initrd, rootfs)
		testkit.WantInvalidArgument(t, "kernel "+bad, err, "kernel", bad)
		_, err = ImportFiles(ctx, store, "x", kernel, bad, rootfs)
		testkit.WantInvalidArgument(t, "initrd "+bad, err, "initrd", bad)
		_, err = ImportFiles(ctx, store, "x", kernel, initrd, bad)
		testkit.WantInvalidArgument(t, "rootfs "+bad, err, "rootfs", bad)
	}
	_, err := ImportBundle(ctx, store, "/proc/self/mem", "")
	testkit.WantInvalidArgument(t, "bundle /proc/self/mem", err, "bundle", "/proc/self/mem")
}

// A loose kernel beyond MaxKernelBytes is refused from its size alone. The file is sparse:
// 2 GiB that cost nothing to make and that the old code read and hashed in full.
func TestImportRefusesOversizedKernel(t *testing.T) {
	_, initrd, rootfs := bundleFiles(t)
	kernel := filepath.Join(t.TempDir(), "vmlinux")
	fakeVmlinux(t, kernel)
	if err := os.Truncate(kernel, 2<<30); err != nil {
		t.Fatal(err)
	}
	store := t.TempDir()
	_, err := ImportFiles(context.Background(), store, "big", kernel, initrd, rootfs)
	testkit.WantInvalidArgument(t, "2 GiB kernel", err, "kernel", kernel, "limit")
	if got := storeEntries(t, store); len(got) != 0 {
		t.Fatalf("store holds %v", got)
	}
}

// ustarHeader is a raw tar header block; archive/tar's writer cannot produce the sparse
// entries below, so the tests build them by hand.
func ustarHeader(name string, typ byte, size int64) []byte {
	b := make([]byte, 512)
	copy(b[0:], name)
	copy(b[100:], "0000644\x00")
	copy(b[108:], "0000000\x00")
	copy(b[116:], "0000000\x00")
	copy(b[124:], fmt.Sprintf("%011o\x00", size))
	copy(b[136:], "00000000000\x00")
	b[156] = typ
	copy(b[257:], "ustar\x0000")
	copy(b[148:], "        ")
	var sum int64
	for _, c := range b {
		sum += int64(c)
	}
	copy(b[148:], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

func padBlock(b []byte) []byte { return append(b, make([]byte, (512-len(b)%512)%512)...) }

// paxSparseEntry is a PAX (GNU sparse 0.1) entry for a file of realSize bytes that are all
// hole: it stores no data, so a tarball of a few KiB claims terabytes. archive/tar reads it
// as a regular file of realSize zero bytes.
func paxSparseEntry(name string, realSize int64) []byte {
	var recs strings.Builder
	for _, kv := range [][2]string{
		{"GNU.sparse.major", "0"}, {"GNU.sparse.minor", "1"}, {"GNU.sparse.name", name},
		{"GNU.sparse.realsize", fmt.Sprint(realSize)}, {"GNU.sparse.numblocks", "1"}, {"GNU.sparse.map", "0,0"},
	} {
		// A record is "<len> key=value\n", <len> counting its own digits.
		rec := " " + kv[0] + "=" + kv[1] + "\n"
		n := len(rec) + len(fmt.Sprint(len(rec)))
		if len(fmt.Sprint(n)) > len(fmt.Sprint(len(rec))) {
			n++
		}
		recs.WriteString(fmt.Sprint(n) + rec)
	}
	out := ustarHeader("PaxHeaders/"+name, 'x', int64(recs.Len()))
	out = append(out, padBlock([]byte(recs.String()))...)
	return append(out, ustarHeader(name, '0', 0)...)
}

// A 16 TiB sparse vmlinux in a tiny tarball is refused by its header, before the manifest
// that would name its size, without reading (and hashing) its holes for hours.
func TestImportTarRefusesHugeSparseEntry(t *testing.T) {
	var tb bytes.Buffer
	tb.Write(paxSparseEntry(KernelName, 16<<40))
	tb.Write(make([]byte, 1024)) // end of archive
	p := filepath.Join(t.TempDir(), "sparse.tar")
	if err := os.WriteFile(p, tb.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	store := t.TempDir()
	// The deadline only stops a regression from hashing for hours; the refusal is instant.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := ImportBundle(ctx, store, p, "")
	testkit.WantInvalidArgument(t, "16 TiB sparse entry", err, KernelName, "17592186044416")
	if got := storeEntries(t, store); len(got) != 0 {
		t.Fatalf("store holds %v", got)
	}
}

// Once the manifest has been read, an entry must have exactly the size it gives.
func TestImportTarEntryMustMatchManifestSize(t *testing.T) {
	dir := writeBundleDir(t)
	mb, err := os.ReadFile(filepath.Join(dir, ManifestName))
	if err != nil {
		t.Fatal(err)
	}
	var tb bytes.Buffer
	tb.Write(ustarHeader(ManifestName, '0', int64(len(mb))))
	tb.Write(padBlock(mb))
	tb.Write(paxSparseEntry(KernelName, 100<<30))
	tb.Write(make([]byte, 1024))
	p := filepath.Join(t.TempDir(), "b.tar")
	if err := os.WriteFile(p, tb.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = ImportBundle(ctx, t.TempDir(), p, "")
	testkit.WantInvalidArgument(t, "kernel entry larger than its manifest size", err, KernelName, "size mismatch")
}

func TestImportCancelledLeavesNothing(t *testing.T) {
	kernel, initrd, _ := bundleFiles(t)
	rootfs := filepath.Join(t.TempDir(), "rootfs.ext4")
	makeExt4(t, rootfs)
	// 100 GiB of holes after a real file system: minutes of hashing, no disk.
	if err := os.Truncate(rootfs, 100<<30); err != nil {
		t.Fatal(err)
	}
	store := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := ImportFiles(ctx, store, "big", kernel, initrd, rootfs)
		done <- err
	}()
	waitStaged(t, store, RootfsName)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled import returned %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("import still running 30s after its context was cancelled")
	}
	if got := storeEntries(t, store); len(got) != 0 {
		t.Fatalf("store holds %v after a cancelled import", got)
	}
}

// waitStaged waits until an import is copying name into a staging directory of store.
func waitStaged(t *testing.T, store, name string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if m, _ := filepath.Glob(filepath.Join(store, ".tmp-*", name)); len(m) > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no import started copying %s within 30s", name)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
