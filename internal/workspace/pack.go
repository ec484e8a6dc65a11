// Package workspace copies a host tree into a VM and brings back what the VM changed.
//
// The CLI (which runs as the user, so it reads exactly what the user may read) walks the
// tree without following symlinks, leaves out what --exclude and .bangerignore name and
// special files, mirrors the rest in a temporary shadow tree (hard links where the file
// system allows, copies otherwise) and packs it with `mkfs.ext4 -d` into a sparse image:
// no loop mount, no root. The daemon attaches the image as one more virtio disk, which
// both QEMU and Firecracker serve, and the guest init mounts it at /work. After a command,
// Changes compares two listings the agent made of the mounted tree, and Diff turns the
// changed files, fetched through the hardened guest→host extractor, into a git patch.
package workspace

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	ignore "github.com/sabhiram/go-gitignore"

	"banger/internal/errdefs"
	"banger/internal/model"
)

// IgnoreFile is read from the root of a workspace: gitignore syntax, patterns left out.
const IgnoreFile = ".bangerignore"

// Options say what to pack.
type Options struct {
	Dir      string   // the host tree
	Excludes []string // gitignore-syntax patterns (--exclude), added to IgnoreFile's
	MaxBytes int64    // the largest total of regular file bytes (the daemon's workspace.max_size)
	// Flag names the CLI flag in errors ("workspace").
	Flag string
	// TempDir is where the shadow tree and image go; "" is os.TempDir().
	TempDir string
}

// Packed is a packed workspace. Remove deletes its files.
type Packed struct {
	Root     string // the host tree, symlinks in its own path resolved
	Image    string // the sparse ext4 image
	Files    int    // regular files packed
	Bytes    int64  // their bytes
	Excluded int    // entries left out by patterns
	Skipped  []string
	// Manifest is what was packed, by slash path relative to the root ("." is the root):
	// the before side of --diff.
	Manifest map[string]ManifestEntry
	tmp      string
}

// ManifestEntry is one packed entry.
type ManifestEntry struct {
	Mode fs.FileMode // type and permission bits
	Size int64
	Link string // symlink target
}

// Remove deletes the image and the temporary directory.
func (p *Packed) Remove() {
	if p != nil && p.tmp != "" {
		os.RemoveAll(p.tmp)
	}
}

// ImageSize is the apparent size of the image for a tree of usage bytes: the tree twice
// (ext4 metadata, and room for the guest's writes: build outputs, caches) plus 2 GiB free.
// The file is sparse and holes are never sent, so the free space costs nothing.
func ImageSize(usage int64) int64 {
	size := 2*usage + 2<<30
	return (size + 1<<20 - 1) &^ (1<<20 - 1)
}

// Pack walks o.Dir and packs it. Bad input (a missing or non-directory DIR, a tree over
// the limit) is an invalid_argument naming o.Flag, found before anything is written.
func Pack(ctx context.Context, o Options) (*Packed, error) {
	if o.Flag == "" {
		o.Flag = "--workspace"
	}
	root, err := filepath.Abs(o.Dir)
	if err == nil {
		// Only DIR itself may be reached through a symlink (a user's ~/src → /data/src);
		// nothing below it is followed.
		root, err = filepath.EvalSymlinks(root)
	}
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, errdefs.InvalidArgument(o.Flag, o.Dir, "does not exist")
		}
		return nil, errdefs.InvalidArgument(o.Flag, o.Dir, err.Error())
	}
	if fi, err := os.Stat(root); err != nil || !fi.IsDir() {
		return nil, errdefs.InvalidArgument(o.Flag, o.Dir, "is not a directory")
	}
	match, err := matcher(root, o.Excludes)
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(o.TempDir, "banger-workspace-")
	if err != nil {
		return nil, fmt.Errorf("creating a temporary directory for the workspace: %w", err)
	}
	p := &Packed{Root: root, tmp: tmp, Manifest: map[string]ManifestEntry{}}
	ok := false
	defer func() {
		if !ok {
			p.Remove()
		}
	}()
	shadow := filepath.Join(tmp, "tree")
	usage, entries, err := mirror(ctx, root, shadow, match, o, p)
	if err != nil {
		return nil, err
	}
	p.Image = filepath.Join(tmp, "workspace.ext4")
	if err := mkfs(ctx, shadow, p.Image, ImageSize(usage), entries); err != nil {
		return nil, err
	}
	os.RemoveAll(shadow)
	ok = true
	return p, nil
}

// matcher compiles IgnoreFile and the excludes; nil when there are none.
func matcher(root string, excludes []string) (*ignore.GitIgnore, error) {
	var lines []string
	b, err := os.ReadFile(filepath.Join(root, IgnoreFile))
	switch {
	case err == nil:
		lines = strings.Split(string(b), "\n")
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("reading %s: %w", IgnoreFile, err)
	}
	lines = append(lines, excludes...)
	if len(lines) == 0 {
		return nil, nil
	}
	return ignore.CompileIgnoreLines(lines...), nil
}

// mirror recreates root's tree at shadow: directories made, regular files hard-linked
// (or copied), symlinks recreated with the same target, anything else skipped. It
// returns the ext4 usage estimate and the entry count.
func mirror(ctx context.Context, root, shadow string, match *ignore.GitIgnore, o Options, p *Packed) (int64, int64, error) {
	type dirMeta struct {
		path string
		fi   fs.FileInfo
	}
	var dirs []dirMeta
	var usage, entries int64
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("reading the workspace: %w", err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		dst := filepath.Join(shadow, rel)
		if rel != "." && match != nil {
			slash := filepath.ToSlash(rel)
			if match.MatchesPath(slash) || (d.IsDir() && match.MatchesPath(slash+"/")) {
				p.Excluded++
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
		}
		fi, err := d.Info()
		if err != nil {
			return fmt.Errorf("reading the workspace: %w", err)
		}
		entries++
		usage += 4096
		slash := filepath.ToSlash(rel)
		switch t := fi.Mode().Type(); {
		case t.IsDir():
			if err := os.Mkdir(dst, 0o700); err != nil {
				return fmt.Errorf("mirroring the workspace: %w", err)
			}
			dirs = append(dirs, dirMeta{dst, fi})
			p.Manifest[slash] = ManifestEntry{Mode: fi.Mode()}
		case t.IsRegular():
			p.Files++
			p.Bytes += fi.Size()
			usage += (fi.Size() + 4095) &^ 4095
			if o.MaxBytes > 0 && p.Bytes > o.MaxBytes {
				return errdefs.WithHint(errdefs.InvalidArgument(o.Flag, o.Dir, fmt.Sprintf("holds more than %s of files, the limit (workspace.max_size in the bangerd config)",
					model.FormatSize(o.MaxBytes))), "leave build outputs and caches out with --exclude PATTERN or a .bangerignore file")
			}
			if err := linkOrCopy(path, dst, fi); err != nil {
				return err
			}
			p.Manifest[slash] = ManifestEntry{Mode: fi.Mode(), Size: fi.Size()}
		case t == fs.ModeSymlink:
			target, err := os.Readlink(path)
			if err != nil {
				return fmt.Errorf("reading the workspace: %w", err)
			}
			if err := os.Symlink(target, dst); err != nil {
				return fmt.Errorf("mirroring the workspace: %w", err)
			}
			p.Manifest[slash] = ManifestEntry{Mode: fi.Mode(), Link: target}
		default:
			// FIFOs, sockets and devices have no content to copy, and opening one could
			// block or touch hardware.
			entries--
			usage -= 4096
			p.Skipped = append(p.Skipped, slash)
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		m := dirs[i]
		if err := os.Chmod(m.path, m.fi.Mode().Perm()|0o700); err != nil {
			return 0, 0, fmt.Errorf("mirroring the workspace: %w", err)
		}
		os.Chtimes(m.path, m.fi.ModTime(), m.fi.ModTime())
	}
	return usage, entries, nil
}

// linkOrCopy makes dst the file src: a hard link shares the inode (no bytes copied; mkfs
// reads through it), a copy when the link is impossible (another file system, a file of
// another owner under protected_hardlinks).
func linkOrCopy(src, dst string, fi fs.FileInfo) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.OpenFile(src, os.O_RDONLY|syscallNoFollow, 0)
	if err != nil {
		return fmt.Errorf("reading %s: %w", src, err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fi.Mode().Perm())
	if err != nil {
		return fmt.Errorf("mirroring the workspace: %w", err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copying %s: %w", src, err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("copying %s: %w", src, err)
	}
	os.Chmod(dst, fi.Mode().Perm())
	return os.Chtimes(dst, fi.ModTime(), fi.ModTime())
}

// mkfs packs tree into a sparse ext4 image of size bytes at out.
func mkfs(ctx context.Context, tree, out string, size, entries int64) error {
	bin, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		return errdefs.WithHint(errdefs.New(errdefs.ErrUnavailable, "mkfs.ext4 is not installed"), "apt-get install e2fsprogs")
	}
	f, err := os.OpenFile(out, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("creating the workspace image: %w", err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sizing the workspace image: %w", err)
	}
	inodes := max(2*entries+4096, size/16384)
	cmd := exec.CommandContext(ctx, bin, "-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0",
		"-N", strconv.FormatInt(inodes, 10), "-L", "workspace",
		"-E", "lazy_itable_init=1,lazy_journal_init=1", "-d", tree, out)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("packing the workspace with mkfs.ext4: %w: %s", err, lastLine(stderr.Bytes()))
	}
	return nil
}

func lastLine(b []byte) string {
	var last string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if s := strings.TrimSpace(sc.Text()); s != "" {
			last = s
		}
	}
	return last
}
