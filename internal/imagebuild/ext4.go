package imagebuild

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"banger/internal/errdefs"
)

// Ext4FromDir writes an ext4 image of dir's tree to out with `mkfs.ext4 -d` (no loop mount,
// no root needed). size <= 0 sizes the file system to the tree plus headroom. Images are
// the read-only lower layer of a guest's root, so they get no journal and no reserved
// blocks; 4 KiB blocks whatever the size (mke2fs would pick 1 KiB for small ones).
//
// mkfs copies owners from dir. When not running as root every file there belongs to the
// invoking user, so ownership is then reset to root:root in the image with debugfs: a guest
// root tree owned by uid 1000 would be wrong in every way.
func Ext4FromDir(ctx context.Context, dir, out string, size int64) error {
	fi, err := os.Stat(dir)
	if err != nil || !fi.IsDir() {
		return errdefs.InvalidArgument("dir", dir, "is not a directory")
	}
	mkfs, err := tool("mkfs.ext4", "e2fsprogs")
	if err != nil {
		return err
	}
	usage, entries, err := treeUsage(dir)
	if err != nil {
		return fmt.Errorf("measuring %s: %w", dir, err)
	}
	if size <= 0 {
		size = autoSize(usage)
	} else if size < usage {
		return errdefs.InvalidArgument("size", size, fmt.Sprintf("is smaller than the %d bytes the tree needs", usage))
	}
	inodes := max(2*entries+1024, size/16384)
	tmp, err := sparseTemp(out, size)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	args := []string{"-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0", "-N", strconv.FormatInt(inodes, 10),
		"-O", "^has_journal", "-L", "rootfs", "-E", "lazy_itable_init=1,lazy_journal_init=1", "-d", dir, tmp}
	if err := run(ctx, mkfs, args...); err != nil {
		return fmt.Errorf("building ext4 from %s: %w", dir, err)
	}
	if os.Geteuid() != 0 {
		if err := chownTreeToRoot(ctx, tmp, dir); err != nil {
			return err
		}
	}
	if err := os.Rename(tmp, out); err != nil {
		return fmt.Errorf("writing %s: %w", out, err)
	}
	return nil
}

// MakeEmptyExt4 creates a sparse file of size bytes holding an empty, journaled ext4 file
// system labelled label: a VM's writable overlay or work disk. Inode tables and the journal
// are left unzeroed (lazy_*_init), which is safe because a new sparse file reads as zeros,
// so the image takes a few MB on disk and the call returns in milliseconds even for 8G.
func MakeEmptyExt4(ctx context.Context, path string, size int64, label string) error {
	if len(label) > 16 || strings.ContainsAny(label, "\x00\n") {
		return errdefs.InvalidArgument("label", label, "must be at most 16 characters")
	}
	if size < 16<<20 {
		return errdefs.InvalidArgument("size", size, "must be at least 16M")
	}
	mkfs, err := tool("mkfs.ext4", "e2fsprogs")
	if err != nil {
		return err
	}
	tmp, err := sparseTemp(path, size)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	args := []string{"-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1"}
	if label != "" {
		args = append(args, "-L", label)
	}
	if err := run(ctx, mkfs, append(args, tmp)...); err != nil {
		return fmt.Errorf("making ext4 %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// sparseTemp creates a sparse file of size bytes next to final, to be renamed over it once
// complete so a failed mkfs never leaves a plausible-looking image behind.
func sparseTemp(final string, size int64) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(final), "."+filepath.Base(final)+".tmp-")
	if err != nil {
		return "", fmt.Errorf("creating %s: %w", final, err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("sizing %s: %w", final, err)
	}
	return f.Name(), nil
}

// treeUsage estimates the bytes a tree takes in ext4 (data in 4 KiB blocks plus one block
// per entry for inodes, directories and symlinks) and counts its entries.
func treeUsage(dir string) (usage, entries int64, err error) {
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		entries++
		usage += 4096
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			usage += (fi.Size() + 4095) &^ 4095
		}
		return nil
	})
	return usage, entries, err
}

// autoSize leaves a quarter again plus 8 MiB for ext4 metadata, rounded to whole MiB, at
// least 16 MiB. The file is sparse, so the slack costs no disk.
func autoSize(usage int64) int64 {
	size := usage + usage/4 + 8<<20
	size = (size + 1<<20 - 1) &^ (1<<20 - 1)
	return max(size, 16<<20)
}

// chownTreeToRoot sets uid and gid 0 on every inode of the image that came from dir.
func chownTreeToRoot(ctx context.Context, image, dir string) error {
	debugfs, err := tool("debugfs", "e2fsprogs")
	if err != nil {
		return err
	}
	var cmds bytes.Buffer
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		target := "/" + filepath.ToSlash(rel)
		if rel == "." {
			target = "/"
		}
		// debugfs splits its commands on whitespace and honours double quotes only.
		if strings.ContainsAny(target, "\"\n\\") {
			return errdefs.InvalidArgument("path", target, "cannot be re-owned in an ext4 image built without root")
		}
		fmt.Fprintf(&cmds, "sif \"%s\" uid 0\nsif \"%s\" gid 0\n", target, target)
		return nil
	})
	if err != nil {
		return fmt.Errorf("listing %s: %w", dir, err)
	}
	cmd := exec.CommandContext(ctx, debugfs, "-w", "-f", "-", image)
	cmd.Stdin = &cmds
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("setting root ownership with debugfs: %w: %s", err, lastLines(stderr.Bytes(), 3))
	}
	// debugfs reports per-command failures on stderr but still exits 0; its only other
	// stderr output is the version banner.
	for _, line := range strings.Split(stderr.String(), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "debugfs ") {
			return fmt.Errorf("setting root ownership with debugfs: %s", line)
		}
	}
	return nil
}

func tool(name, pkg string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return "", errdefs.WithHint(errdefs.New(errdefs.ErrUnavailable, "%s is not installed", name), "apt-get install "+pkg)
	}
	return p, nil
}

func run(ctx context.Context, bin string, args ...string) error {
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", filepath.Base(bin), err, lastLines(out, 5))
	}
	return nil
}
