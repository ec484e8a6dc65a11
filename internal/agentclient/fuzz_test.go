package agentclient

import (
	"archive/tar"
	"banger/internal/agentarchive"
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// hostileArchives are the seeds of FuzzExtractTar: the attacks of issue 9 and friends, all
// aimed at a host that asked for /root/out.
func hostileArchives(f *testing.F) [][]byte {
	reg := func(name string, mode int64, body string) *tar.Header {
		return &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(body))}
	}
	dir := func(name string, mode int64) *tar.Header {
		return &tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: mode}
	}
	link := func(name, target string) *tar.Header {
		return &tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target}
	}
	var out [][]byte
	add := func(hdrs []*tar.Header, bodies ...string) { out = append(out, rawTar(f, hdrs, bodies...)) }
	add([]*tar.Header{dir("out/", 0o755), reg("out/a", 0o644, "alpha"), link("out/l", "a")}, "", "alpha")
	add([]*tar.Header{reg("out", 0o644, "file")}, "file")
	add([]*tar.Header{reg(".bashrc", 0o644, "pwned")}, "pwned")
	add([]*tar.Header{dir(".ssh/", 0o700), reg(".ssh/authorized_keys", 0o600, "pwned")}, "", "pwned")
	add([]*tar.Header{dir("out/", 0o755), reg("out/../../evil", 0o644, "pwned")}, "", "pwned")
	add([]*tar.Header{reg("/etc/evil", 0o644, "pwned")}, "pwned")
	add([]*tar.Header{dir("out/", 0o755), link("out/l", "../outside"), reg("out/l/evil", 0o644, "pwned")}, "", "", "pwned")
	add([]*tar.Header{dir("out/", 0o755), link("out/l", "/"), dir("out/l/tmp/", 0o777)})
	add([]*tar.Header{dir("out/", 0o7777), reg("out/suid", 0o4755, "#!"), reg("out/sgid", 0o2777, "#!")}, "", "#!", "#!")
	add([]*tar.Header{dir("out/", 0o755), {Name: "out/h", Typeflag: tar.TypeLink, Linkname: "out/../../outside/canary"}})
	add([]*tar.Header{dir("out/", 0o755), {Name: "out/f", Typeflag: tar.TypeFifo, Mode: 0o666}})
	add([]*tar.Header{dir("out/", 0o755), {Name: "out/sda", Typeflag: tar.TypeBlock, Mode: 0o666, Devmajor: 8}})
	add([]*tar.Header{link("out", "../outside")})
	add([]*tar.Header{dir("out/", 0o755), reg("out/a", 0o644, "x"), dir("out/a/", 0o755)}, "", "x")
	// A claimed size far beyond the cap, with only a little data behind it.
	var huge bytes.Buffer
	tw := tar.NewWriter(&huge)
	_ = tw.WriteHeader(&tar.Header{Name: "out", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1 << 40})
	_, _ = tw.Write(bytes.Repeat([]byte("x"), 4096))
	out = append(out, huge.Bytes())
	return out
}

// FuzzExtractTar feeds arbitrary archives to the host side of a get and checks what the
// trust boundary promises, whatever the outcome: nothing appears or changes outside the
// requested name, no setuid/setgid/sticky or umask-forbidden bit, no temporary file left,
// the pre-existing directory keeps its mode, and no more than the cap is written.
func FuzzExtractTar(f *testing.F) {
	for _, a := range hostileArchives(f) {
		f.Add(a, false)
		f.Add(a, true)
	}
	const capBytes = 64 << 10
	f.Fuzz(func(t *testing.T, archive []byte, rename bool) {
		base := t.TempDir()
		outside := filepath.Join(base, "outside")
		dst := filepath.Join(base, "dst")
		for _, d := range []string{outside, dst} {
			if err := os.Mkdir(d, 0o750); err != nil {
				t.Fatal(err)
			}
		}
		mustWrite(t, filepath.Join(outside, "canary"), "canary")
		mustWrite(t, filepath.Join(dst, ".bashrc"), "mine")
		target := dst
		top := "out"
		if rename {
			target = filepath.Join(dst, "renamed")
			top = "renamed"
		}
		pol := agentarchive.Policy{Want: "out", MaxBytes: capBytes, Mask: true, Umask: 0o022}
		err := agentarchive.ExtractTar(bytes.NewReader(archive), target, pol)

		if e := entriesOf(t, outside); len(e) != 1 || e[0] != "canary" {
			t.Fatalf("outside changed: %v (err %v)", e, err)
		}
		if b, _ := os.ReadFile(filepath.Join(outside, "canary")); string(b) != "canary" {
			t.Fatalf("canary now %q", b)
		}
		if b, _ := os.ReadFile(filepath.Join(dst, ".bashrc")); string(b) != "mine" {
			t.Fatalf(".bashrc now %q", b)
		}
		for _, d := range []string{outside, dst} {
			if fi, _ := os.Stat(d); fi.Mode().Perm() != 0o750 {
				t.Fatalf("%s: mode now %v", d, fi.Mode())
			}
		}
		var written int64
		for _, e := range entriesOf(t, dst) {
			if e != ".bashrc" && e != top && !strings.HasPrefix(e, top+"/") {
				t.Fatalf("%s appeared beside the requested name (err %v)", e, err)
			}
			if strings.HasPrefix(filepath.Base(e), ".banger-cp-") {
				t.Fatalf("temporary file %s left behind (err %v)", e, err)
			}
			fi, lerr := os.Lstat(filepath.Join(dst, e))
			if lerr != nil {
				t.Fatal(lerr)
			}
			if fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != 0 || fi.Mode()&0o022 != 0 && fi.Mode()&fs.ModeSymlink == 0 {
				t.Fatalf("%s: mode %v after umask 022", e, fi.Mode())
			}
			switch {
			case fi.Mode().IsRegular():
				written += fi.Size()
				if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink != 1 {
					t.Fatalf("%s has %d links", e, st.Nlink)
				}
			case fi.IsDir(), fi.Mode()&fs.ModeSymlink != 0:
			default:
				t.Fatalf("%s: unexpected type %v", e, fi.Mode())
			}
		}
		if written > capBytes {
			t.Fatalf("%d bytes written, cap %d", written, capBytes)
		}
		if e := entriesOf(t, dst); err == nil && !rename && len(e) < 2 {
			t.Fatalf("success without writing anything: %v", e)
		}
	})
}

func mustWrite(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o640); err != nil {
		t.Fatal(err)
	}
}
