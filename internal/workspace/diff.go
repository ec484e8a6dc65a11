package workspace

import (
	"banger/internal/agentproto"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// Changes are what a command changed in a workspace. Only files and symlinks count: git
// tracks no directories.
type Changes struct {
	// Fetch are the guest paths (relative) to copy back: changed or new files, and new
	// directories whole (one copy covers their tree).
	Fetch []string
	// Links are changed or new symlinks (path → target), made from the listing itself:
	// a symlink has nothing to fetch.
	Links map[string]string
	// Old are the paths whose original the patch needs: changed or deleted files and
	// symlinks that were packed.
	Old []string
}

// Empty reports whether nothing changed.
func (c Changes) Empty() bool { return len(c.Fetch) == 0 && len(c.Old) == 0 && len(c.Links) == 0 }

const typeMask = syscall.S_IFMT

// Compare finds what changed from what was packed (manifest) and a listing the agent made
// after the command with since (agentproto.Request.Since): the listing holds every entry whose
// ctime or mtime is at or after since — ctime moves on every write, chmod, rename and
// link, and programs cannot set it back — and every entry of a directory that changed.
// So an entry missing from a changed directory was deleted (with everything below it),
// and an entry not listed under an unchanged directory is unchanged. A listed entry that
// did not really change (a clock skew making packed ctimes look recent) is only fetched
// for nothing: git diff then finds no difference.
func Compare(manifest map[string]ManifestEntry, listing []agentproto.ListEntry, since int64) Changes {
	listed := make(map[string]agentproto.ListEntry, len(listing))
	for _, e := range listing {
		listed[e.Path] = e
	}
	isDir := func(e agentproto.ListEntry) bool { return e.Mode&typeMask == syscall.S_IFDIR }
	changed := func(e agentproto.ListEntry) bool { return e.CTime >= since || e.MTime >= since }
	newDirs := map[string]bool{}
	changedDirs := map[string]bool{}
	for _, e := range listing {
		if !isDir(e) {
			continue
		}
		if m, ok := manifest[e.Path]; !ok || !m.Mode.IsDir() {
			newDirs[e.Path] = true
		}
		if changed(e) {
			changedDirs[e.Path] = true
		}
	}
	underNew := func(p string) bool {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if newDirs[d] {
				return true
			}
		}
		return false
	}
	var c Changes
	for _, e := range listing {
		if e.Path == "." || underNew(e.Path) {
			continue
		}
		m, packed := manifest[e.Path]
		switch t := e.Mode & typeMask; {
		case newDirs[e.Path]:
			c.Fetch = append(c.Fetch, e.Path)
		case t == syscall.S_IFREG && (changed(e) || !packed || !m.Mode.IsRegular()):
			c.Fetch = append(c.Fetch, e.Path)
		case t == syscall.S_IFLNK && (changed(e) || !packed || m.Link != e.Link):
			if c.Links == nil {
				c.Links = map[string]string{}
			}
			c.Links[e.Path] = e.Link
		}
	}
	for p, m := range manifest {
		if !m.Mode.IsRegular() && m.Mode&fs.ModeSymlink == 0 {
			continue
		}
		if e, ok := listed[p]; ok {
			if changed(e) || isDir(e) {
				c.Old = append(c.Old, p)
			}
			continue
		}
		if deleted(p, listed, changedDirs) {
			c.Old = append(c.Old, p)
		}
	}
	sort.Strings(c.Fetch)
	sort.Strings(c.Old)
	return c
}

// deleted reports whether the packed path p, absent from the listing, is gone: it, or
// one of its ancestors, is missing from a directory that changed, or an ancestor is now
// something other than a directory.
func deleted(p string, listed map[string]agentproto.ListEntry, changedDirs map[string]bool) bool {
	for x := p; x != "."; x = path.Dir(x) {
		e, ok := listed[x]
		if !ok && changedDirs[path.Dir(x)] {
			return true
		}
		if ok && x != p && e.Mode&typeMask != syscall.S_IFDIR {
			return true
		}
	}
	return false
}

// CopyOriginals copies the host tree's versions of paths (relative to root) into dst,
// files with their permission bits, symlinks as symlinks; a path missing on the host is
// skipped. Nothing is followed: a path through a symlink is refused by the os.Root.
func CopyOriginals(root, dst string, paths []string) error {
	r, err := os.OpenRoot(root)
	if err != nil {
		return fmt.Errorf("opening the workspace %s: %w", root, err)
	}
	defer r.Close()
	for _, p := range paths {
		fp := filepath.FromSlash(p)
		fi, err := r.Lstat(fp)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("reading the original of %s: %w", p, err)
		}
		out := filepath.Join(dst, fp)
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			return err
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := r.Readlink(fp)
			if err != nil {
				return fmt.Errorf("reading the original of %s: %w", p, err)
			}
			if err := os.Symlink(target, out); err != nil {
				return err
			}
		case fi.Mode().IsRegular():
			in, err := r.OpenFile(fp, os.O_RDONLY|syscallNoFollow, 0)
			if err != nil {
				return fmt.Errorf("reading the original of %s: %w", p, err)
			}
			f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fi.Mode().Perm())
			if err == nil {
				_, err = io.Copy(f, in)
				if cerr := f.Close(); err == nil {
					err = cerr
				}
			}
			in.Close()
			if err != nil {
				return fmt.Errorf("copying the original of %s: %w", p, err)
			}
			if err := os.Chmod(out, fi.Mode().Perm()); err != nil {
				return err
			}
		}
	}
	return nil
}

// MakeLinks creates the symlinks of links (relative path → target) under dst. Paths come
// from the guest: they are created through an os.Root, so none lands outside dst or
// through a symlink, and no target is ever followed.
func MakeLinks(dst string, links map[string]string) error {
	r, err := os.OpenRoot(dst)
	if err != nil {
		return err
	}
	defer r.Close()
	for p, target := range links {
		if !agentproto.ValidListPath(p) || p == "." {
			return fmt.Errorf("refusing symlink path %q from the guest", p)
		}
		fp := filepath.FromSlash(p)
		if d := filepath.Dir(fp); d != "." {
			if err := r.MkdirAll(d, 0o755); err != nil {
				return fmt.Errorf("making symlink %s: %w", p, err)
			}
		}
		if err := r.Symlink(target, fp); err != nil {
			return fmt.Errorf("making symlink %s: %w", p, err)
		}
	}
	return nil
}

// GitDiff writes the patch from tree a (originals) to tree b (the guest's versions) to w:
// `git diff --no-index --binary`, with the trees' own names stripped from the paths so
// the patch applies at the workspace's root with `git apply` or `patch -p1`. The user's
// git configuration is not read (no external diff drivers, renames or colours).
func GitDiff(ctx context.Context, a, b string, w io.Writer) error {
	gitBin, err := exec.LookPath("git")
	if err != nil {
		return fmt.Errorf("--diff needs git on the host: %w", err)
	}
	parent := filepath.Dir(a)
	if filepath.Dir(b) != parent {
		return fmt.Errorf("diff trees %s and %s must share a parent", a, b)
	}
	cmd := exec.CommandContext(ctx, gitBin, "-c", "core.quotepath=off", "diff", "--no-index", "--binary", "--no-renames",
		"--no-ext-diff", "--no-textconv", "--no-color", "--full-index", "--", filepath.Base(a), filepath.Base(b))
	cmd.Dir = parent
	cmd.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null", "HOME=/nonexistent", "LC_ALL=C")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	var ee *exec.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 1) {
		return fmt.Errorf("git diff: %w: %s", err, lastLine(stderr.Bytes()))
	}
	return rewritePaths(&stdout, w, filepath.Base(a), filepath.Base(b))
}

// rewritePaths turns git's "a/<a>/x" and "b/<b>/x" header paths into "a/x" and "b/x".
// Only header lines (from "diff --git" to the first hunk or binary patch) are touched,
// so content lines that happen to look alike are left alone.
func rewritePaths(r io.Reader, w io.Writer, an, bn string) error {
	// A new file is "a/<b>/x b/<b>/x", a deleted one "a/<a>/x b/<a>/x".
	var pairs []string
	for _, pfx := range []string{"a/", "b/"} {
		for _, tree := range []string{an, bn} {
			pairs = append(pairs, " "+pfx+tree+"/", " "+pfx, "\""+pfx+tree+"/", "\""+pfx)
		}
	}
	repl := strings.NewReplacer(pairs...)
	br := bufio.NewReader(r)
	bw := bufio.NewWriter(w)
	header := false
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			switch {
			case strings.HasPrefix(line, "diff --git "):
				header = true
			case strings.HasPrefix(line, "@@") || strings.HasPrefix(line, "GIT binary patch"):
				header = false
			}
			if header {
				line = repl.Replace(line)
			}
			if _, err := bw.WriteString(line); err != nil {
				return err
			}
		}
		if err == io.EOF {
			return bw.Flush()
		}
		if err != nil {
			return err
		}
	}
}
