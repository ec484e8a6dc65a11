package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// cloneFile copies the regular file src to dst (created, must not exist) cheaply: a reflink
// (FICLONE) where the filesystem shares blocks (btrfs, XFS), otherwise only the data extents
// (SEEK_DATA/SEEK_HOLE, copy_file_range), so a mostly-empty 8 GiB disk costs what it holds,
// not 8 GiB of reads. src is opened without following a symlink. dst is fsynced.
func cloneFile(ctx context.Context, src, dst string) (err error) {
	in, err := os.OpenFile(src, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", src, err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return fmt.Errorf("reading %s: %w", src, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("copying %s: not a regular file", src)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("creating %s: %w", dst, err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("closing %s: %w", dst, cerr)
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) == nil {
		return out.Sync()
	}
	if err := out.Truncate(fi.Size()); err != nil {
		return fmt.Errorf("sizing %s: %w", dst, err)
	}
	if err := copyExtents(ctx, in, out, fi.Size()); err != nil {
		return fmt.Errorf("copying %s to %s: %w", src, dst, err)
	}
	return out.Sync()
}

// copyExtents copies the data regions of in to the same offsets of out.
func copyExtents(ctx context.Context, in, out *os.File, size int64) error {
	var off int64
	for off < size {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole remains
		}
		if err != nil {
			return fmt.Errorf("finding data: %w", err)
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("finding a hole: %w", err)
		}
		for pos := data; pos < hole; {
			src, dst := pos, pos
			n, err := unix.CopyFileRange(int(in.Fd()), &src, int(out.Fd()), &dst, int(min(hole-pos, 64<<20)), 0)
			if err != nil {
				if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
					return copyRange(in, out, pos, hole)
				}
				return err
			}
			if n == 0 {
				return io.ErrUnexpectedEOF // the file shrank under us
			}
			pos += int64(n)
		}
		off = hole
	}
	return nil
}

// copyRange is the plain read/write fallback for [from, to).
func copyRange(in, out *os.File, from, to int64) error {
	_, err := io.Copy(io.NewOffsetWriter(out, from), io.NewSectionReader(in, from, to-from))
	return err
}

// allocatedBytes is the disk space the regular files directly in dir take.
func allocatedBytes(dir string) int64 {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var n int64
	for _, e := range ents {
		var st unix.Stat_t
		if unix.Lstat(dir+"/"+e.Name(), &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG {
			n += st.Blocks * 512
		}
	}
	return n
}
