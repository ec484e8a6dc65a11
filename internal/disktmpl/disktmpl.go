// Package disktmpl makes a VM's empty ext4 disks (the system overlay and the work disk)
// without running mkfs.ext4 per VM: one template per (label, size) is made once with
// imagebuild.MakeEmptyExt4, under a per-template lock, and published atomically (written
// under a temporary name, fsynced, renamed); each VM then gets a copy, a reflink (FICLONE)
// where the file system supports it and a sparse copy of the template's data extents
// otherwise. An empty ext4 holds nothing of any image, so templates are shared by every
// image that asks for the same label and size.
//
// A failure at any point leaves no partial template and no partial copy: both are written
// under temporary names and renamed only once complete. Two processes sharing the
// directory may both make a template; each renames a complete file, and a copy in
// progress keeps reading the inode it opened.
//
// Every copy of a template carries the template's file system UUID. Nothing in banger
// mounts by UUID (the guest finds disks by virtio serial), and one VM's two disks come
// from different templates.
package disktmpl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"

	"banger/internal/errdefs"
	"banger/internal/imagebuild"
)

// Cache holds the templates in one directory.
type Cache struct {
	dir string
	// mk makes an empty ext4 at path; imagebuild.MakeEmptyExt4 outside tests.
	mk func(ctx context.Context, path string, size int64, label string) error

	mu    sync.Mutex
	locks map[string]*sync.Mutex // per template file name
}

// New returns a cache keeping its templates in dir (created on first use).
func New(dir string) *Cache {
	return &Cache{dir: dir, mk: imagebuild.MakeEmptyExt4, locks: map[string]*sync.Mutex{}}
}

// labelRe is what a template's label may be: it becomes part of a file name and the ext4
// volume label (at most 16 bytes).
var labelRe = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,15}$`)

// minSize is MakeEmptyExt4's lower bound.
const minSize = 16 << 20

// Make writes an empty ext4 file system of size bytes labelled label at dst, which must
// not exist yet.
func (c *Cache) Make(ctx context.Context, dst string, size int64, label string) error {
	if !labelRe.MatchString(label) {
		return errdefs.InvalidArgument("label", label, "must be 1-16 of a-z, 0-9, _ and -, starting with a letter or digit")
	}
	if size < minSize {
		return errdefs.InvalidArgument("size", size, "must be at least 16M")
	}
	tmpl, err := c.template(ctx, size, label)
	if err != nil {
		return err
	}
	if err := copyDisk(ctx, tmpl, dst, size); err != nil {
		return fmt.Errorf("copying the %s disk template to %s: %w", label, dst, err)
	}
	return nil
}

// Path is where the template for (size, label) lives once made.
func (c *Cache) Path(size int64, label string) string {
	return filepath.Join(c.dir, label+"-"+strconv.FormatInt(size, 10)+".ext4")
}

// template returns the path of the published template for (size, label), making it first
// if needed. Only callers asking for the same template wait for each other.
func (c *Cache) template(ctx context.Context, size int64, label string) (string, error) {
	p := c.Path(size, label)
	if ok, err := published(p, size); err != nil || ok {
		return p, err
	}
	c.mu.Lock()
	l := c.locks[p]
	if l == nil {
		l = &sync.Mutex{}
		c.locks[p] = l
	}
	c.mu.Unlock()
	l.Lock()
	defer l.Unlock()
	if ok, err := published(p, size); err != nil || ok {
		return p, err // made by whoever held the lock before us
	}
	if err := os.MkdirAll(c.dir, 0o750); err != nil {
		return "", fmt.Errorf("creating the disk template directory: %w", err)
	}
	if err := c.publish(ctx, p, size, label); err != nil {
		return "", fmt.Errorf("making the %s disk template (%d bytes): %w", label, size, err)
	}
	return p, nil
}

// published reports whether a complete template is at p. A file of another size (a
// template damaged by hand) is removed so it is made again; only rename ever puts a file
// there, so any file of the right size is complete.
func published(p string, size int64) (bool, error) {
	fi, err := os.Lstat(p)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("checking disk template %s: %w", p, err)
	case fi.Mode().IsRegular() && fi.Size() == size:
		return true, nil
	}
	if err := os.Remove(p); err != nil {
		return false, fmt.Errorf("removing damaged disk template %s: %w", p, err)
	}
	return false, nil
}

// publish makes the template under a temporary name, syncs it and renames it to p.
func (c *Cache) publish(ctx context.Context, p string, size int64, label string) error {
	tmp := filepath.Join(c.dir, fmt.Sprintf(".%s.tmp-%d", filepath.Base(p), os.Getpid()))
	_ = os.Remove(tmp) // a crash of an earlier daemon with the same pid
	defer os.Remove(tmp)
	if err := c.mk(ctx, tmp, size, label); err != nil {
		return err
	}
	f, err := os.Open(tmp)
	if err != nil {
		return err
	}
	err = f.Sync()
	f.Close()
	if err != nil {
		return fmt.Errorf("syncing: %w", err)
	}
	if err := os.Chmod(tmp, 0o444); err != nil {
		return err
	}
	if err := os.Rename(tmp, p); err != nil {
		return err
	}
	if d, err := os.Open(c.dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// copyDisk copies the template src to dst (which must not exist) through a temporary file
// renamed into place: a reflink when the file system can, else a sparse copy.
func copyDisk(ctx context.Context, src, dst string, size int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("%s already exists", dst)
	}
	out, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-")
	if err != nil {
		return err
	}
	tmp := out.Name()
	ok := false
	defer func() {
		if !ok {
			out.Close()
			os.Remove(tmp)
		}
	}()
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err != nil {
		if !cloneUnsupported(err) {
			return fmt.Errorf("cloning: %w", err)
		}
		if err := sparseCopy(ctx, in, out, size); err != nil {
			return err
		}
	}
	if err := out.Chmod(0o644); err != nil {
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return err
	}
	ok = true
	return nil
}

// cloneUnsupported: the errors FICLONE gives when the file system (ext4, tmpfs) or the
// pair of files (another file system) cannot share extents.
func cloneUnsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EXDEV) ||
		errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM)
}

// sparseCopy sizes out to size and copies only in's data extents (SEEK_DATA/SEEK_HOLE),
// so holes stay holes: an empty ext4 of 8G has a few MB of data.
func sparseCopy(ctx context.Context, in, out *os.File, size int64) error {
	if err := out.Truncate(size); err != nil {
		return fmt.Errorf("sizing: %w", err)
	}
	var off int64
	for off < size {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole is left
		}
		if err != nil {
			return fmt.Errorf("finding data: %w", err)
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("finding a hole: %w", err)
		}
		if hole > size {
			hole = size
		}
		if err := copyRange(in, out, data, hole-data); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

// copyRange copies n bytes at off from in to out at the same offset: copy_file_range
// (in the kernel, no user-space buffer), falling back to pread/pwrite where the kernel
// refuses it.
func copyRange(in, out *os.File, off, n int64) error {
	for n > 0 {
		roff, woff := off, off
		c, err := unix.CopyFileRange(int(in.Fd()), &roff, int(out.Fd()), &woff, int(min(n, 1<<30)), 0)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			break
		}
		if c == 0 {
			return fmt.Errorf("copying at %d: unexpected end of template", off)
		}
		off += int64(c)
		n -= int64(c)
	}
	if n == 0 {
		return nil
	}
	c, err := io.Copy(io.NewOffsetWriter(out, off), io.NewSectionReader(in, off, n))
	if err != nil {
		return fmt.Errorf("copying at %d: %w", off, err)
	}
	if c != n {
		return fmt.Errorf("copying at %d: unexpected end of template", off+c)
	}
	return nil
}
