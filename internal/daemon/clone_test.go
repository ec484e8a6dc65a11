package daemon

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// cloneFile keeps contents and holes: a 64 MiB file with two small data regions is copied
// byte for byte and stays sparse.
func TestCloneFileKeepsDataAndHoles(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(64 << 20)
	f.WriteAt(bytes.Repeat([]byte("a"), 5000), 4096)
	f.WriteAt(bytes.Repeat([]byte("z"), 70000), 40<<20)
	f.Close()
	dst := filepath.Join(dir, "dst")
	if err := cloneFile(context.Background(), src, dst); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(dst)
	if !bytes.Equal(a, b) {
		t.Fatal("copy differs from the source")
	}
	var st unix.Stat_t
	if err := unix.Stat(dst, &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 > 8<<20 {
		t.Fatalf("copy takes %d bytes: holes were filled", st.Blocks*512)
	}
	if err := cloneFile(context.Background(), src, dst); err == nil {
		t.Fatal("cloneFile overwrote an existing file")
	}
	link := filepath.Join(dir, "link")
	os.Symlink(src, link)
	if err := cloneFile(context.Background(), link, filepath.Join(dir, "viaLink")); err == nil {
		t.Fatal("cloneFile followed a symlink")
	}
	if _, err := os.Stat(filepath.Join(dir, "viaLink")); err == nil {
		t.Fatal("a failed copy left its destination")
	}
}
