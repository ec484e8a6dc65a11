package workspace

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// BenchmarkPack is the host side of a workspace: walk, shadow tree, mkfs.ext4 -d, and
// the sparse upload encoding (to io.Discard), for trees of 1,000 files (4 MiB) and
// 20,000 files (200 MiB).
func BenchmarkPack(b *testing.B) {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		b.Skip("needs mkfs.ext4")
	}
	for _, c := range []struct{ n, size int }{{1000, 4096}, {20000, 10 << 10}} {
		dir := b.TempDir()
		buf := make([]byte, c.size)
		for i := 0; i < c.n; i++ {
			d := filepath.Join(dir, fmt.Sprintf("d%03d", i/100))
			os.MkdirAll(d, 0o755)
			buf[0] = byte(i)
			os.WriteFile(filepath.Join(d, fmt.Sprintf("f%05d", i)), buf, 0o644)
		}
		b.Run(fmt.Sprintf("%dfiles", c.n), func(b *testing.B) {
			b.SetBytes(int64(c.n * c.size))
			for i := 0; i < b.N; i++ {
				p, err := Pack(context.Background(), Options{Dir: dir, MaxBytes: 1 << 30})
				if err != nil {
					b.Fatal(err)
				}
				if err := SendImage(context.Background(), io.Discard, p.Image); err != nil {
					b.Fatal(err)
				}
				p.Remove()
			}
		})
	}
}
