package agentarchive

import (
	"archive/tar"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"banger/internal/errdefs"
)

// unixMode converts a Go file mode to st_mode bits (type and permissions), the form the
// put header carries.
func UnixMode(m fs.FileMode) uint32 {
	v := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		v |= syscall.S_ISUID
	}
	if m&fs.ModeSetgid != 0 {
		v |= syscall.S_ISGID
	}
	if m&fs.ModeSticky != 0 {
		v |= syscall.S_ISVTX
	}
	switch {
	case m.IsDir():
		v |= syscall.S_IFDIR
	case m&fs.ModeSymlink != 0:
		v |= syscall.S_IFLNK
	case m.IsRegular():
		v |= syscall.S_IFREG
	}
	return v
}

// fileMode converts tar permission bits (which use st_mode values) to a Go file mode.
func fileMode(tarMode int64) fs.FileMode {
	m := fs.FileMode(tarMode & 0o777)
	if tarMode&syscall.S_ISUID != 0 {
		m |= fs.ModeSetuid
	}
	if tarMode&syscall.S_ISGID != 0 {
		m |= fs.ModeSetgid
	}
	if tarMode&syscall.S_ISVTX != 0 {
		m |= fs.ModeSticky
	}
	return m
}

// archiveRootName is the first component of every entry: the source's base name.
func archiveRootName(src string) (string, error) {
	abs, err := filepath.Abs(src)
	if err != nil {
		return "", fmt.Errorf("resolving %s: %w", src, err)
	}
	base := filepath.Base(abs)
	if base == "/" || base == "." {
		return "", errdefs.InvalidArgument("source", src, "the root directory cannot be copied; name a directory inside it")
	}
	return base, nil
}

// writeTar writes src (a file or a directory tree) as a tar archive whose entries all start
// with src's base name. A symlink given as src is followed; symlinks inside a tree are
// archived as links. Sockets, fifos and devices are skipped: they cannot be copied
// meaningfully. Ownership is not recorded because the receiver does not apply it.
func WriteTar(w io.Writer, src string) error {
	root, err := archiveRootName(src)
	if err != nil {
		return err
	}
	real, err := filepath.EvalSymlinks(src)
	if err != nil {
		return fmt.Errorf("resolving %s: %w", src, err)
	}
	tw := tar.NewWriter(w)
	err = filepath.WalkDir(real, func(p string, d fs.DirEntry, walkErr error) error {
		if walkErr != nil {
			return walkErr
		}
		rel, err := filepath.Rel(real, p)
		if err != nil {
			return err
		}
		name := root
		if rel != "." {
			name = root + "/" + filepath.ToSlash(rel)
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		return addTarEntry(tw, p, name, info)
	})
	if err != nil {
		return fmt.Errorf("archiving %s: %w", src, err)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("archiving %s: %w", src, err)
	}
	return nil
}

func addTarEntry(tw *tar.Writer, p, name string, info fs.FileInfo) error {
	hdr := &tar.Header{
		Name:    name,
		Mode:    int64(UnixMode(info.Mode()) &^ syscall.S_IFMT),
		ModTime: info.ModTime().Truncate(time.Second),
	}
	switch {
	case info.IsDir():
		hdr.Typeflag = tar.TypeDir
		hdr.Name += "/"
		return tw.WriteHeader(hdr)
	case info.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(p)
		if err != nil {
			return err
		}
		hdr.Typeflag = tar.TypeSymlink
		hdr.Linkname = target
		return tw.WriteHeader(hdr)
	case info.Mode().IsRegular():
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		hdr.Typeflag = tar.TypeReg
		hdr.Size = info.Size()
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		// The header promised Size bytes; a file that shrank meanwhile must fail loudly,
		// one that grew is cut at the size it had.
		if _, err := io.CopyN(tw, f, hdr.Size); err != nil {
			return fmt.Errorf("reading %s: %w", p, err)
		}
		return nil
	}
	return nil
}
