package e2e

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// contentDigest describes a tree by what git tracks: paths of files and symlinks, the
// executable bit, content and link targets (no times, no directories).
func contentDigest(t *testing.T, root string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == ".git" && d.IsDir() {
			return filepath.SkipDir
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			lines = append(lines, fmt.Sprintf("%s x=%v %q", rel, fi.Mode()&0o100 != 0, b))
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			lines = append(lines, rel+" -> "+target)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("digesting %s: %v", root, err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", src+"/.", dst).CombinedOutput(); err != nil {
		t.Fatalf("cp -a: %v: %s", err, out)
	}
}

// --diff: a command that edits, creates, deletes, chmods, rewrites a binary file and
// retargets a symlink gives a patch that `git apply` turns a fresh copy of the tree into
// exactly what the same command made of it; a command that changes nothing gives an
// empty patch; a text-only patch applies with `patch -p1` too.
func TestWorkspaceDiffReproducesTheGuestsChanges(t *testing.T) {
	x := need(t)
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"edit.txt":            "line 1\nline 2\nline 3\n",
		"same-size.txt":       "aaaa\n",
		"gone.txt":            "delete me\n",
		"mode.txt":            "make me executable\n",
		"run.sh":              "#!/bin/sh\necho hi\n",
		"deep/dir/keep.txt":   "untouched\n",
		"deep/dir/gone.txt":   "also deleted\n",
		"name with space.txt": "spaces\n",
	})
	if err := os.WriteFile(filepath.Join(dir, "blob.bin"), []byte{0, 1, 2, 3, 0xff, 0xfe, 0, 0}, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("edit.txt", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	fresh := t.TempDir()
	copyTree(t, dir, fresh)
	expected := t.TempDir()
	copyTree(t, dir, expected)
	hostBefore := treeDigest(t, dir)

	script := `set -e
echo "line 2.5" >> edit.txt
sed -i 's/line 1/LINE ONE/' edit.txt
echo bbbb > same-size.txt
rm gone.txt deep/dir/gone.txt
chmod +x mode.txt
chmod -x run.sh
printf 'new\n' > new.txt
mkdir -p brand/new/tree && printf 'nested\n' > brand/new/tree/file.txt
printf '\000\377binary\000' > blob.bin
printf '\001\002' > new.bin
rm link && ln -s same-size.txt link
echo changed > "name with space.txt"`
	patch := filepath.Join(t.TempDir(), "changes.patch")
	out, errOut, code := x.cli(nil, "vm", "run", "--rm", "-q", "-W", dir, "--diff", patch, "--", "sh", "-c", script)
	if code != 0 {
		t.Fatalf("vm run --diff: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if got := treeDigest(t, dir); got != hostBefore {
		t.Fatalf("the host tree changed")
	}
	// The same script on the host gives the result the patch must reproduce.
	cmd := exec.Command("sh", "-c", script)
	cmd.Dir = expected
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("running the script on the host: %v: %s", err, b)
	}
	body, err := os.ReadFile(patch)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("patch:\n%s", body)
	for _, want := range []string{"GIT binary patch", "deleted file mode", "new file mode", "new mode 100755"} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("patch lacks %q", want)
		}
	}
	apply := exec.Command("git", "apply", "--whitespace=nowarn", patch)
	apply.Dir = fresh
	if b, err := apply.CombinedOutput(); err != nil {
		t.Fatalf("git apply: %v: %s", err, b)
	}
	if got, want := contentDigest(t, fresh), contentDigest(t, expected); got != want {
		t.Fatalf("git apply of the patch does not reproduce the guest's result:\ngot:\n%s\nwant:\n%s", got, want)
	}

	// Nothing changed: an empty patch (written, so a stale one is never left in place).
	empty := filepath.Join(t.TempDir(), "empty.patch")
	out, errOut, code = x.cli(nil, "vm", "run", "--rm", "-q", "-W", dir, "--diff", empty, "--", "sh", "-c", "cat edit.txt >/dev/null; ls -R >/dev/null")
	if code != 0 {
		t.Fatalf("no-change run: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if b, err := os.ReadFile(empty); err != nil || len(b) != 0 {
		t.Fatalf("no-change run: want an empty patch, got %q (%v)", b, err)
	}

	// --diff - writes the patch after the command's output; text-only, so patch -p1 takes it.
	out, errOut, code = x.cli(nil, "vm", "run", "--rm", "-q", "-W", dir, "--diff", "-", "--", "sh", "-c", "echo command-output; echo appended >> edit.txt; rm gone.txt; echo new > added.txt")
	if code != 0 {
		t.Fatalf("--diff -: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	pre, diff, ok := strings.Cut(out, "diff --git")
	if !ok || pre != "command-output\n" {
		t.Fatalf("--diff -: want the command's output then the patch, got %q", out)
	}
	plain := t.TempDir()
	copyTree(t, dir, plain)
	p := exec.Command("patch", "-p1", "--batch")
	p.Dir = plain
	p.Stdin = strings.NewReader("diff --git" + diff)
	if b, err := p.CombinedOutput(); err != nil {
		t.Fatalf("patch -p1: %v: %s\npatch:\ndiff --git%s", err, b, diff)
	}
	if b, _ := os.ReadFile(filepath.Join(plain, "edit.txt")); string(b) != "line 1\nline 2\nline 3\nappended\n" {
		t.Errorf("patch -p1: edit.txt is %q", b)
	}
	if _, err := os.Stat(filepath.Join(plain, "gone.txt")); !os.IsNotExist(err) {
		t.Errorf("patch -p1: gone.txt still exists (%v)", err)
	}
	if b, _ := os.ReadFile(filepath.Join(plain, "added.txt")); string(b) != "new\n" {
		t.Errorf("patch -p1: added.txt is %q", b)
	}
}
