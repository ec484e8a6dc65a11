package guest

import (
	"archive/tar"
	"bufio"
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"banger/internal/agentarchive"
	"banger/internal/agentclient"
	"banger/internal/agentproto"
	"banger/internal/errdefs"
)

// makeTree builds a small tree with distinct modes, an empty directory and a symlink.
func makeTree(t *testing.T, root string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "sub", "empty"), 0o755))
	must(os.WriteFile(filepath.Join(root, "a.txt"), []byte("alpha\n"), 0o640))
	must(os.WriteFile(filepath.Join(root, "sub", "run.sh"), []byte("#!/bin/sh\necho hi\n"), 0o755))
	must(os.WriteFile(filepath.Join(root, "sub", "big.bin"), bytes.Repeat([]byte{0, 1, 2, 3, 250}, 100_000), 0o600))
	must(os.Chmod(filepath.Join(root, "sub", "empty"), 0o700))
	must(os.Symlink("a.txt", filepath.Join(root, "link")))
	old := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	must(os.Chtimes(filepath.Join(root, "a.txt"), old, old))
}

// treeDigest describes a tree: per path its type, permission bits, content or link target.
func treeDigest(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		desc := fi.Mode().String()
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			desc += " -> " + target
		case fi.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			desc += " " + string(b)
		}
		out[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameTree(t *testing.T, want, got string) {
	t.Helper()
	w, g := treeDigest(t, want), treeDigest(t, got)
	if len(w) != len(g) {
		t.Errorf("tree %s has %d entries, want %d (%v vs %v)", got, len(g), len(w), keys(g), keys(w))
	}
	for k, v := range w {
		if g[k] != v {
			t.Errorf("%s/%s: got %.80q, want %.80q", got, k, g[k], v)
		}
	}
}

func keys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

func TestPutGetRoundTrip(t *testing.T) {
	_, s := newTestAgent(t)
	ctx := testCtx(t)
	hostDir := t.TempDir()
	src := filepath.Join(hostDir, "proj")
	makeTree(t, src)
	guestDir := t.TempDir()

	// Into an existing directory: lands under its own name.
	if err := agentclient.Put(ctx, openStream(t, s), "op-put1", src, guestDir, agentclient.CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	sameTree(t, src, filepath.Join(guestDir, "proj"))
	fi, err := os.Stat(filepath.Join(guestDir, "proj", "a.txt"))
	if err != nil || !fi.ModTime().Equal(time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)) {
		t.Errorf("a.txt mtime %v (err %v), want it preserved", fi.ModTime(), err)
	}

	// To a new path: the directory becomes that path.
	renamed := filepath.Join(guestDir, "copy")
	if err := agentclient.Put(ctx, openStream(t, s), "", src, renamed, agentclient.CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	sameTree(t, src, renamed)

	// Back to the host.
	back := t.TempDir()
	if err := agentclient.Get(ctx, openStream(t, s), "op-get1", renamed, back, agentclient.CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	sameTree(t, src, filepath.Join(back, "copy"))
	if err := agentclient.Get(ctx, openStream(t, s), "", renamed, filepath.Join(back, "again"), agentclient.CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	sameTree(t, src, filepath.Join(back, "again"))
}

func TestPutGetSingleFile(t *testing.T) {
	_, s := newTestAgent(t)
	ctx := testCtx(t)
	src := filepath.Join(t.TempDir(), "notes.txt")
	if err := os.WriteFile(src, []byte("hello\n"), 0o604); err != nil {
		t.Fatal(err)
	}
	guestDir := t.TempDir()
	check := func(p string) {
		t.Helper()
		b, err := os.ReadFile(p)
		fi, serr := os.Stat(p)
		if err != nil || serr != nil || string(b) != "hello\n" || fi.Mode().Perm() != 0o604 {
			t.Errorf("%s: content %q mode %v (%v, %v), want %q 0604", p, b, fi.Mode(), err, serr, "hello\n")
		}
	}
	if err := agentclient.Put(ctx, openStream(t, s), "", src, guestDir, agentclient.CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	check(filepath.Join(guestDir, "notes.txt"))
	// A file path that does not exist, then one that does (overwritten).
	target := filepath.Join(guestDir, "renamed.txt")
	for range 2 {
		if err := agentclient.Put(ctx, openStream(t, s), "", src, target, agentclient.CopyOptions{}); err != nil {
			t.Fatal(err)
		}
		check(target)
	}
	// A trailing slash asks for a directory, created on demand.
	if err := agentclient.Put(ctx, openStream(t, s), "", src, filepath.Join(guestDir, "newdir")+"/", agentclient.CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	check(filepath.Join(guestDir, "newdir", "notes.txt"))

	hostOut := filepath.Join(t.TempDir(), "out.txt")
	if err := agentclient.Get(ctx, openStream(t, s), "", target, hostOut, agentclient.CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	check(hostOut)
}

func TestTransferErrors(t *testing.T) {
	_, s := newTestAgent(t)
	ctx := testCtx(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	srcDir := filepath.Join(dir, "tree")
	makeTree(t, srcDir)

	cases := []struct {
		name string
		err  error
		kind error
	}{
		{"get missing", agentclient.Get(ctx, openStream(t, s), "", filepath.Join(dir, "missing"), t.TempDir(), agentclient.CopyOptions{}), errdefs.ErrNotFound},
		{"get relative", agentclient.Get(ctx, openStream(t, s), "", "relative/path", t.TempDir(), agentclient.CopyOptions{}), errdefs.ErrInvalidArgument},
		{"put missing source", agentclient.Put(ctx, openStream(t, s), "", filepath.Join(dir, "missing"), dir, agentclient.CopyOptions{}), errdefs.ErrNotFound},
		{"put dir onto file", agentclient.Put(ctx, openStream(t, s), "", srcDir, file, agentclient.CopyOptions{}), errdefs.ErrConflict},
		{"put into missing parent", agentclient.Put(ctx, openStream(t, s), "", file, filepath.Join(dir, "no", "such", "x"), agentclient.CopyOptions{}), errdefs.ErrNotFound},
	}
	for _, c := range cases {
		if c.err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		if !errors.Is(c.err, c.kind) {
			t.Errorf("%s: err %v, want kind %v", c.name, c.err, c.kind)
		}
	}
}

type tarEntry struct {
	name, link string
	typ        byte
	body       string
}

func buildTar(t *testing.T, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: 0o644, Size: int64(len(e.body))}
		if e.typ == tar.TypeDir {
			hdr.Mode = 0o755
		}
		if e.typ != tar.TypeReg {
			hdr.Size = 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

var escapes = []struct {
	name    string
	entries []tarEntry
	outside string // path relative to the parent of the destination that must not appear
}{
	{"dotdot", []tarEntry{{name: "x/", typ: tar.TypeDir}, {name: "x/../../evil", typ: tar.TypeReg, body: "pwned"}}, "evil"},
	{"absolute", []tarEntry{{name: "/x/evil", typ: tar.TypeReg, body: "pwned"}}, "x/evil"},
	{"through own symlink", []tarEntry{
		{name: "x/", typ: tar.TypeDir},
		{name: "x/link", typ: tar.TypeSymlink, link: "OUTSIDE"},
		{name: "x/link/evil", typ: tar.TypeReg, body: "pwned"},
	}, "outside/evil"},
	{"hard link out", []tarEntry{{name: "x/", typ: tar.TypeDir}, {name: "x/h", typ: tar.TypeLink, link: "../../secret"}}, ""},
	{"two roots", []tarEntry{{name: "x/", typ: tar.TypeDir}, {name: "y/evil", typ: tar.TypeReg, body: "pwned"}}, ""},
}

func TestPutRefusesEscapes(t *testing.T) {
	_, s := newTestAgent(t)
	for _, c := range escapes {
		t.Run(c.name, func(t *testing.T) {
			base := t.TempDir()
			outside := filepath.Join(base, "outside")
			if err := os.Mkdir(outside, 0o755); err != nil {
				t.Fatal(err)
			}
			dst := filepath.Join(base, "dst")
			if err := os.Mkdir(dst, 0o755); err != nil {
				t.Fatal(err)
			}
			entries := make([]tarEntry, len(c.entries))
			copy(entries, c.entries)
			for i := range entries {
				entries[i].link = strings.ReplaceAll(entries[i].link, "OUTSIDE", outside)
			}
			archive := buildTar(t, entries)

			st := openStream(t, s)
			defer st.Close()
			if err := agentproto.WriteJSONLine(st, agentproto.Request{Type: agentproto.TypePut, Path: dst}); err != nil {
				t.Fatal(err)
			}
			fw := &agentproto.FrameWriter{W: st}
			dw := agentproto.DataWriter{FW: fw}
			if _, err := dw.Write(archive); err != nil {
				t.Fatal(err)
			}
			if err := dw.Close(); err != nil {
				t.Fatal(err)
			}
			var r agentproto.Reply
			if err := agentproto.ReadJSONLine(bufio.NewReader(st), &r); err != nil {
				t.Fatal(err)
			}
			if r.OK {
				t.Fatalf("agent accepted an archive that escapes")
			}
			if c.outside != "" {
				if _, err := os.Lstat(filepath.Join(base, c.outside)); err == nil {
					t.Errorf("%s was written outside the destination", c.outside)
				}
			}
			t.Logf("refused: %s", r.Error)
		})
	}
}

func TestExtractRefusesExistingSymlink(t *testing.T) {
	// The guest is untrusted on Get: a symlink already in the host destination must not
	// redirect entries, nor may one in the guest.
	base := t.TempDir()
	outside := filepath.Join(base, "outside")
	dst := filepath.Join(base, "dst")
	for _, d := range []string{outside, dst} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(outside, filepath.Join(dst, "x")); err != nil {
		t.Fatal(err)
	}
	archive := buildTar(t, []tarEntry{{name: "x/", typ: tar.TypeDir}, {name: "x/evil", typ: tar.TypeReg, body: "pwned"}})
	err := agentarchive.ExtractTar(bytes.NewReader(archive), dst, agentarchive.Policy{})
	if !errors.Is(err, errdefs.ErrPermissionDenied) && !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("err %v, want a refusal", err)
	}
	if _, err := os.Lstat(filepath.Join(outside, "evil")); err == nil {
		t.Error("an entry was written through the symlink")
	}
}
