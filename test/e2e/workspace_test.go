package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// cliIn runs the banger CLI in directory dir (for relative workspace paths).
func (x *env) cliIn(dir string, stdin io.Reader, args ...string) (string, string, int) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(x.bin, "banger"), append([]string{"--socket", x.socket}, args...)...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &stdout, &stderr
	code := 0
	if err := cmd.Run(); err != nil {
		code = -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
	}
	return stdout.String(), stderr.String(), code
}

// treeDigest describes a host tree completely enough to prove it unchanged: every entry's
// path, type, mode, size, mtime and content (or symlink target).
func treeDigest(t *testing.T, root string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		line := fmt.Sprintf("%s %v %d %d", rel, fi.Mode(), fi.Size(), fi.ModTime().UnixNano())
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			line += " " + hex.EncodeToString(sum[:])
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			line += " -> " + target
		}
		if fi.IsDir() {
			line = fmt.Sprintf("%s %v", rel, fi.Mode()) // a directory's mtime/size follow its entries
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatalf("digesting %s: %v", root, err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// writeTree creates files (path → content; a trailing "/" makes a directory) under root.
func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, content := range files {
		full := filepath.Join(root, p)
		if strings.HasSuffix(p, "/") {
			if err := os.MkdirAll(full, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		mode := os.FileMode(0o644)
		if strings.HasSuffix(p, ".sh") {
			mode = 0o755
		}
		if err := os.WriteFile(full, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
}

// A workspace run: the tree is at /work, the command runs there, output and exit code
// come back, .git is included, excluded paths are not, files are root's in the guest, and
// the host tree is byte-for-byte what it was — though the command wrote all over its copy.
func TestWorkspaceRunIsACopy(t *testing.T) {
	x := need(t)
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"hello.txt":         "hello from the host\n",
		"src/main.c":        "int main(void) { return 0; }\n",
		"build.sh":          "#!/bin/sh\necho building in $(pwd)\n",
		".git/HEAD":         "ref: refs/heads/main\n",
		"node_modules/x.js": "junk\n",
		"secret.key":        "do not copy\n",
		".bangerignore":     "# comments work\nnode_modules/\n",
	})
	// A file of another user: git in the guest refuses a repository owned by another user
	// unless safe.directory says otherwise, which the guest's system config does.
	if err := os.Chown(filepath.Join(dir, "src", "main.c"), 1000, 1000); err != nil {
		t.Fatal(err)
	}
	before := treeDigest(t, dir)
	script := `set -e
pwd
cat hello.txt
./build.sh
cat .git/HEAD
test ! -e node_modules && echo no-node-modules
test ! -e secret.key && echo no-secret
echo safe=$(grep -c -e '^	directory = /work$' -e '^	directory = /work/\*$' /etc/gitconfig)
echo changed > hello.txt; rm build.sh; mkdir -p out; echo x > out/new; chmod 600 src/main.c
echo to-stderr >&2
exit 7`
	out, errOut, code := x.cli(nil, "vm", "run", "--rm", "-q", "-W", dir, "--exclude", "secret.key", "--", "sh", "-c", script)
	if code != 7 {
		t.Fatalf("exit %d, want 7\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	for _, want := range []string{"/work\n", "hello from the host\n", "building in /work\n", "ref: refs/heads/main\n",
		"no-node-modules\n", "no-secret\n", "safe=2\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(errOut, "to-stderr") {
		t.Errorf("guest stderr not forwarded: %q", errOut)
	}
	if after := treeDigest(t, dir); after != before {
		t.Fatalf("the host tree changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	// Another guest path, bare -W (the current directory) from inside the tree.
	out, errOut, code = x.cliIn(dir, nil, "vm", "run", "--rm", "-q", "-W=.:/srv/proj", "--", "sh", "-c", "pwd; cat hello.txt; mount | grep -c ' /srv/proj '")
	if code != 0 || !strings.Contains(out, "/srv/proj\nhello from the host\n1\n") {
		t.Fatalf("-W=.:/srv/proj: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
}
