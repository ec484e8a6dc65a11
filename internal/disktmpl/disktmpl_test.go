package disktmpl

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"banger/internal/errdefs"
	"banger/internal/imagebuild"
	"banger/internal/testkit"
)

func needMkfs(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"mkfs.ext4", "e2fsck", "dumpe2fs"} {
		if _, err := exec.LookPath(tool); err != nil {
			testkit.Missing(t, "%s not installed (e2fsprogs)", tool)
		}
	}
}

// counting returns a cache whose template maker counts its calls.
func counting(dir string) (*Cache, *atomic.Int32) {
	c := New(dir)
	var n atomic.Int32
	c.mk = func(ctx context.Context, p string, size int64, label string) error {
		n.Add(1)
		return imagebuild.MakeEmptyExt4(ctx, p, size, label)
	}
	return c, &n
}

// checkExt4 runs e2fsck on p and checks its label, size and that it is sparse.
func checkExt4(t *testing.T, p string, size int64, label string) {
	t.Helper()
	if out, err := exec.Command("e2fsck", "-fn", p).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck %s: %v\n%s", p, err, out)
	}
	out, err := exec.Command("dumpe2fs", "-h", p).CombinedOutput()
	if err != nil {
		t.Fatalf("dumpe2fs %s: %v\n%s", p, err, out)
	}
	if !strings.Contains(string(out), "Filesystem volume name:   "+label+"\n") {
		t.Errorf("%s: label is not %q:\n%s", p, label, out)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != size {
		t.Errorf("%s: size %d, want %d", p, st.Size, size)
	}
	if alloc := st.Blocks * 512; alloc > size/16 {
		t.Errorf("%s: %d bytes allocated of %d: not sparse", p, alloc, size)
	}
}

func TestMakeCopiesOneTemplate(t *testing.T) {
	needMkfs(t)
	dir := t.TempDir()
	c, made := counting(filepath.Join(dir, "templates"))
	ctx := context.Background()
	for i, label := range []string{"system", "work", "system"} {
		dst := filepath.Join(dir, fmt.Sprintf("disk%d", i))
		if err := c.Make(ctx, dst, 1<<30, label); err != nil {
			t.Fatal(err)
		}
		checkExt4(t, dst, 1<<30, label)
		// A VM writes its copy; the template and other copies must not change.
		if err := os.WriteFile(dst, []byte("scribble"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if n := made.Load(); n != 2 {
		t.Errorf("mkfs ran %d times for two (label, size) pairs, want 2", n)
	}
	checkExt4(t, c.Path(1<<30, "system"), 1<<30, "system")
	checkExt4(t, c.Path(1<<30, "work"), 1<<30, "work")
	entries, _ := os.ReadDir(filepath.Join(dir, "templates"))
	if len(entries) != 2 {
		t.Errorf("template dir holds %d entries, want the 2 templates: %v", len(entries), entries)
	}
}

func TestMakeConcurrentMakesTemplateOnce(t *testing.T) {
	needMkfs(t)
	dir := t.TempDir()
	c, made := counting(filepath.Join(dir, "templates"))
	var wg sync.WaitGroup
	errs := make([]error, 16)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.Make(context.Background(), filepath.Join(dir, fmt.Sprintf("d%d", i)), 256<<20, "work")
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("make %d: %v", i, err)
		}
	}
	if n := made.Load(); n != 1 {
		t.Errorf("mkfs ran %d times, want 1", n)
	}
	for i := range errs {
		checkExt4(t, filepath.Join(dir, fmt.Sprintf("d%d", i)), 256<<20, "work")
	}
}

func TestFailedTemplateLeavesNothing(t *testing.T) {
	needMkfs(t)
	dir := t.TempDir()
	tdir := filepath.Join(dir, "templates")
	c := New(tdir)
	boom := errors.New("mkfs died")
	c.mk = func(ctx context.Context, p string, size int64, label string) error {
		// Half a file, as a killed mkfs leaves it.
		if err := os.WriteFile(p, make([]byte, 4096), 0o644); err != nil {
			return err
		}
		return boom
	}
	dst := filepath.Join(dir, "disk")
	if err := c.Make(context.Background(), dst, 64<<20, "work"); !errors.Is(err, boom) {
		t.Fatalf("got %v, want the maker's error", err)
	}
	if entries, _ := os.ReadDir(tdir); len(entries) != 0 {
		t.Errorf("a failed template left %v", entries)
	}
	if _, err := os.Lstat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed template left the destination: %v", err)
	}
	// The next attempt makes a real one.
	c.mk = imagebuild.MakeEmptyExt4
	if err := c.Make(context.Background(), dst, 64<<20, "work"); err != nil {
		t.Fatal(err)
	}
	checkExt4(t, dst, 64<<20, "work")
}

func TestDamagedTemplateIsRemade(t *testing.T) {
	needMkfs(t)
	dir := t.TempDir()
	c, made := counting(filepath.Join(dir, "templates"))
	if err := os.MkdirAll(filepath.Join(dir, "templates"), 0o750); err != nil {
		t.Fatal(err)
	}
	// A truncated template (not of the right size) must not be copied.
	if err := os.WriteFile(c.Path(64<<20, "work"), []byte("short"), 0o444); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "disk")
	if err := c.Make(context.Background(), dst, 64<<20, "work"); err != nil {
		t.Fatal(err)
	}
	if made.Load() != 1 {
		t.Errorf("the damaged template was not remade")
	}
	checkExt4(t, dst, 64<<20, "work")
}

func TestMakeRefusesExistingDestinationAndBadInput(t *testing.T) {
	needMkfs(t)
	dir := t.TempDir()
	c := New(filepath.Join(dir, "templates"))
	dst := filepath.Join(dir, "disk")
	if err := os.WriteFile(dst, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.Make(context.Background(), dst, 64<<20, "work"); err == nil {
		t.Fatal("Make overwrote an existing file")
	}
	if b, _ := os.ReadFile(dst); string(b) != "keep me" {
		t.Errorf("existing destination changed to %q", b)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 { // disk + templates
		t.Errorf("temporary files left: %v", entries)
	}
	for _, tc := range []struct {
		size  int64
		label string
		field string
	}{
		{64 << 20, "", "label"},
		{64 << 20, "../x", "label"},
		{64 << 20, "a-label-that-is-too-long", "label"},
		{1 << 20, "work", "size"},
	} {
		err := c.Make(context.Background(), filepath.Join(dir, "new"), tc.size, tc.label)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("Make(%d, %q) = %v, want an invalid %s", tc.size, tc.label, err, tc.field)
		}
	}
	if _, err := os.Lstat(filepath.Join(dir, "new")); !errors.Is(err, os.ErrNotExist) {
		t.Error("bad input created the destination")
	}
}

// TestSparseCopyKeepsHoles: the fallback (no reflink) copies data extents only.
func TestSparseCopyKeepsHoles(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	const size = 64 << 20
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 8 << 20, size - 4096} {
		if _, err := f.WriteAt([]byte(fmt.Sprintf("data at %d", off)), off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	in, _ := os.Open(src)
	defer in.Close()
	out, err := os.Create(filepath.Join(dir, "dst"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if err := sparseCopy(context.Background(), in, out, size); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(out.Name())
	if string(a) != string(b) {
		t.Fatal("copy differs from the source")
	}
	var st syscall.Stat_t
	if err := syscall.Stat(out.Name(), &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 > 1<<20 {
		t.Errorf("copy allocates %d bytes: holes were filled", st.Blocks*512)
	}
}
