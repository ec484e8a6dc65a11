package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// makeBenchTree writes n files of size bytes each, 100 to a directory.
func makeBenchTree(b *testing.B, n, size int) string {
	b.Helper()
	dir := b.TempDir()
	buf := make([]byte, size)
	for i := range buf {
		buf[i] = byte('a' + i%26)
	}
	for i := 0; i < n; i++ {
		d := filepath.Join(dir, fmt.Sprintf("d%03d", i/100))
		if i%100 == 0 {
			if err := os.MkdirAll(d, 0o755); err != nil {
				b.Fatal(err)
			}
		}
		buf[0] = byte(i) // distinct content
		if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%05d.txt", i)), buf, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	return dir
}

// BenchmarkWorkspaceRun times `vm run --rm -q [-W DIR] -- true`. The cost of workspace
// preparation (walk, pack, upload, attach, guest mount) is a sub-benchmark minus "none",
// measured in the same invocation; "diff10" is a --diff run that changed 10 files minus
// the same run without --diff ("20000files-edit10").
func BenchmarkWorkspaceRun(b *testing.B) {
	x := needB(b)
	x.warmImage(b)
	small := makeBenchTree(b, 1000, 4096)
	big := makeBenchTree(b, 20000, 10<<10) // 200 MiB
	edit10 := "for i in 00000 00001 00002 00003 00004 00005 00006 00007 00008 00009; do echo changed >> d000/f$i.txt; done"
	patch := filepath.Join(b.TempDir(), "p.patch")
	for _, c := range []struct {
		name string
		args []string
	}{
		{"none", []string{"--", "true"}},
		{"1000files-4MiB", []string{"-W", small, "--", "true"}},
		{"20000files-200MiB", []string{"-W", big, "--", "true"}},
		{"20000files-edit10", []string{"-W", big, "--", "sh", "-c", edit10}},
		{"20000files-edit10-diff", []string{"-W", big, "--diff", patch, "--", "sh", "-c", edit10}},
	} {
		b.Run(c.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if out, errOut, code := x.cli(nil, append([]string{"vm", "run", "--rm", "-q"}, c.args...)...); code != 0 {
					b.Fatalf("vm run: %d %s %s", code, out, errOut)
				}
			}
		})
	}
}
