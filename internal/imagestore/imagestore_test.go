package imagestore

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/errdefs"
	"banger/internal/model"
)

func TestImportFilesAndIdempotence(t *testing.T) {
	ctx := context.Background()
	kernel, initrd, rootfs := bundleFiles(t)
	store := t.TempDir()
	im, err := ImportFiles(ctx, store, "myimg", kernel, initrd, rootfs)
	if err != nil {
		t.Fatal(err)
	}
	if !ValidID(im.ID) || im.Name != "myimg" || im.Arch != ArchX86_64 || !filepath.IsAbs(im.Dir) {
		t.Fatalf("unexpected image: %+v", im)
	}
	if im.Dir != filepath.Join(store, im.ID) {
		t.Fatalf("dir %s, want %s", im.Dir, filepath.Join(store, im.ID))
	}
	if len(im.Files) != 3 {
		t.Fatalf("files: %+v", im.Files)
	}
	kf, _ := im.FileByRole(model.RoleKernel)
	if kf.Name != KernelName {
		t.Fatalf("kernel stored as %q", kf.Name)
	}
	if err := VerifyFiles(im); err != nil {
		t.Fatal(err)
	}
	for _, f := range im.Files {
		orig := map[string]string{model.RoleKernel: kernel, model.RoleInitrd: initrd, model.RoleRootfs: rootfs}[f.Role]
		_, sum, err := HashFile(orig)
		if err != nil {
			t.Fatal(err)
		}
		if sum != f.SHA256 {
			t.Fatalf("%s digest %s, source has %s", f.Role, f.SHA256, sum)
		}
	}
	loaded, err := Load(store, im.ID)
	if err != nil {
		t.Fatal(err)
	}
	if loaded.Name != "myimg" || len(loaded.Files) != 3 {
		t.Fatalf("loaded %+v", loaded)
	}

	again, err := ImportFiles(ctx, store, "myimg", kernel, initrd, rootfs)
	if err != nil {
		t.Fatal(err)
	}
	if again.ID != im.ID {
		t.Fatalf("re-import gave id %s, want %s", again.ID, im.ID)
	}
	if got := storeEntries(t, store); len(got) != 1 || got[0] != im.ID {
		t.Fatalf("store holds %v after re-import", got)
	}

	if err := Remove(store, im.ID); err != nil {
		t.Fatal(err)
	}
	if got := storeEntries(t, store); len(got) != 0 {
		t.Fatalf("store holds %v after remove", got)
	}
	if err := Remove(store, im.ID); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("second remove: %v", err)
	}
}

func TestImportBadKernel(t *testing.T) {
	_, initrd, rootfs := bundleFiles(t)
	bad := filepath.Join(t.TempDir(), "random-kernel")
	junk := make([]byte, 4096)
	for i := range junk {
		junk[i] = byte(i*7 + 3)
	}
	if err := os.WriteFile(bad, junk, 0o644); err != nil {
		t.Fatal(err)
	}
	store := t.TempDir()
	_, err := ImportFiles(context.Background(), store, "x", bad, initrd, rootfs)
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("want invalid argument, got %v", err)
	}
	if !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "kernel") {
		t.Fatalf("error does not name the kernel path: %v", err)
	}
	if got := storeEntries(t, store); len(got) != 0 {
		t.Fatalf("store holds %v", got)
	}
}

func TestImportNonExt4Rootfs(t *testing.T) {
	kernel, initrd, _ := bundleFiles(t)
	notfs := filepath.Join(t.TempDir(), "rootfs.img")
	if err := os.WriteFile(notfs, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := ImportFiles(context.Background(), t.TempDir(), "x", kernel, initrd, notfs)
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), notfs) {
		t.Fatalf("want invalid argument naming %s, got %v", notfs, err)
	}
}

func TestCheckExt4Truncated(t *testing.T) {
	_, _, rootfs := bundleFiles(t)
	if err := CheckExt4(rootfs); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(rootfs, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := CheckExt4(rootfs); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("want truncated error, got %v", err)
	}
}

// writeBundleDir lays out a bundle directory with a digest-bearing manifest.
func writeBundleDir(t *testing.T) string {
	t.Helper()
	kernel, initrd, rootfs := bundleFiles(t)
	dir := t.TempDir()
	m := Manifest{Schema: SchemaVersion, Name: "bund", Version: "1.0", Arch: ArchX86_64, KernelArgs: "quiet"}
	for _, f := range []struct{ role, name, src string }{
		{model.RoleRootfs, RootfsName, rootfs}, {model.RoleKernel, KernelName, kernel}, {model.RoleInitrd, InitrdName, initrd},
	} {
		b, err := os.ReadFile(f.src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f.name), b, 0o644); err != nil {
			t.Fatal(err)
		}
		n, sum, err := HashFile(f.src)
		if err != nil {
			t.Fatal(err)
		}
		m.Files = append(m.Files, model.File{Role: f.role, Name: f.name, Size: n, SHA256: sum})
	}
	mb, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ManifestName), mb, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestImportBundleDirAndRename(t *testing.T) {
	dir := writeBundleDir(t)
	store := t.TempDir()
	im, err := ImportBundle(context.Background(), store, dir, "")
	if err != nil {
		t.Fatal(err)
	}
	if im.Name != "bund" || im.Version != "1.0" || im.KernelArgs != "quiet" {
		t.Fatalf("image %+v", im)
	}
	if im.Files[0].Role != model.RoleKernel || im.Files[2].Role != model.RoleRootfs {
		t.Fatalf("files not in canonical order: %+v", im.Files)
	}
	renamed, err := ImportBundle(context.Background(), store, dir, "other")
	if err != nil {
		t.Fatal(err)
	}
	if renamed.Name != "other" || renamed.ID == im.ID {
		t.Fatalf("renamed import: %+v (first id %s)", renamed, im.ID)
	}
	if _, err := ImportBundle(context.Background(), store, dir, "Bad_Name"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("bad name accepted: %v", err)
	}
}

func TestImportBundleTamperedLeavesNothing(t *testing.T) {
	dir := writeBundleDir(t)
	f, err := os.OpenFile(filepath.Join(dir, KernelName), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0xAA}, 100); err != nil {
		t.Fatal(err)
	}
	f.Close()
	store := t.TempDir()
	_, err = ImportBundle(context.Background(), store, dir, "")
	if err == nil || !strings.Contains(err.Error(), "digest mismatch") {
		t.Fatalf("want digest mismatch, got %v", err)
	}
	if got := storeEntries(t, store); len(got) != 0 {
		t.Fatalf("store holds %v after failed import", got)
	}
}

func writeTar(t *testing.T, dir, out string, gz bool, prefix string) {
	t.Helper()
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var w io.Writer = f
	var zw *gzip.Writer
	if gz {
		zw = gzip.NewWriter(f)
		w = zw
	}
	tw := tar.NewWriter(w)
	if prefix != "" {
		if err := tw.WriteHeader(&tar.Header{Name: prefix + "/", Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
			t.Fatal(err)
		}
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		name := e.Name()
		if prefix != "" {
			name = prefix + "/" + name
		}
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestImportTarballs(t *testing.T) {
	dir := writeBundleDir(t)
	store := t.TempDir()
	fromDir, err := ImportBundle(context.Background(), store, dir, "")
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	for _, tc := range []struct {
		name, prefix string
		gz           bool
	}{{"b.tar", "", false}, {"b.tar.gz", "bund", true}} {
		p := filepath.Join(tmp, tc.name)
		writeTar(t, dir, p, tc.gz, tc.prefix)
		im, err := ImportBundle(context.Background(), store, p, "")
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if im.ID != fromDir.ID {
			t.Fatalf("%s: id %s, directory import gave %s", tc.name, im.ID, fromDir.ID)
		}
	}
	if got := storeEntries(t, store); len(got) != 1 {
		t.Fatalf("store holds %v", got)
	}
}

func TestImportTarTamperedAndTraversal(t *testing.T) {
	dir := writeBundleDir(t)
	if err := os.WriteFile(filepath.Join(dir, RootfsName+".extra"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	store := t.TempDir()
	p := filepath.Join(t.TempDir(), "b.tar")
	writeTar(t, dir, p, false, "")
	if _, err := ImportBundle(context.Background(), store, p, ""); err == nil || !strings.Contains(err.Error(), "not listed") {
		t.Fatalf("extra file accepted: %v", err)
	}
	if got := storeEntries(t, store); len(got) != 0 {
		t.Fatalf("store holds %v", got)
	}

	evil := filepath.Join(t.TempDir(), "evil.tar")
	f, _ := os.Create(evil)
	tw := tar.NewWriter(f)
	tw.WriteHeader(&tar.Header{Name: "a/b/c/vmlinux", Mode: 0o644, Size: 1, Typeflag: tar.TypeReg})
	tw.Write([]byte{1})
	tw.Close()
	f.Close()
	if _, err := ImportBundle(context.Background(), store, evil, ""); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("nested entry accepted: %v", err)
	}
	if got := storeEntries(t, store); len(got) != 0 {
		t.Fatalf("store holds %v", got)
	}
}

func TestWriteSparseMakesHoles(t *testing.T) {
	data := make([]byte, 8<<20)
	copy(data, "head")
	copy(data[len(data)-4:], "tail")
	out, err := os.Create(filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	n, _, err := WriteSparse(context.Background(), out, strings.NewReader(string(data)))
	if err != nil || n != int64(len(data)) {
		t.Fatalf("n=%d err=%v", n, err)
	}
	back, err := os.ReadFile(out.Name())
	if err != nil || string(back) != string(data) {
		t.Fatalf("content differs (err %v)", err)
	}
	if blocks := allocatedBytes(t, out.Name()); blocks >= 1<<20 {
		t.Fatalf("8 MiB mostly-zero file allocates %d bytes; not sparse", blocks)
	}
}

func TestManifestValidation(t *testing.T) {
	bad := []string{
		`{"schema":2,"name":"a","version":"1","arch":"x86_64","kernel_args":"","files":[]}`,
		`{"schema":1,"name":"A","version":"1","arch":"x86_64","kernel_args":"","files":[]}`,
		`{"schema":1,"name":"a","version":"1","arch":"x86_64","kernel_args":"","files":[{"role":"rootfs","name":"r","size":1,"sha256":"` + strings.Repeat("a", 64) + `"}]}`,
		`{"schema":1,"name":"a","version":"1","arch":"x86_64","kernel_args":"","files":[{"role":"kernel","name":"../k","size":1,"sha256":"` + strings.Repeat("a", 64) + `"},{"role":"rootfs","name":"r","size":1,"sha256":"` + strings.Repeat("a", 64) + `"}]}`,
		`{"schema":1,"name":"a","version":"1","arch":"arm64","kernel_args":"","files":[]}`,
		`{"schema":1,"name":"a","version":"1","arch":"x86_64","kernel_args":"","files":[],"extra":1}`,
	}
	for _, b := range bad {
		if _, err := ParseManifest([]byte(b)); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("accepted or wrong kind (%v): %s", err, b)
		}
	}
}
