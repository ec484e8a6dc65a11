package guest

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"banger/internal/errdefs"
)

// unixMode converts a Go file mode to st_mode bits (type and permissions), the form the
// put header carries.
func unixMode(m fs.FileMode) uint32 {
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
func writeTar(w io.Writer, src string) error {
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
		Mode:    int64(unixMode(info.Mode()) &^ syscall.S_IFMT),
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

// extractTar unpacks an archive made by writeTar at dst:
//   - dst is an existing directory, or ends in "/" (then it is created): entries land
//     inside it under their own names;
//   - otherwise the archive's first component is renamed to dst, whose parent must exist:
//     a single file becomes dst, a directory becomes dst.
//
// Every entry must share one first component, and none may escape the destination: names
// with "..", absolute names, and paths through an existing symlink are refused. Permission
// bits and modification times are applied, ownership is not.
func extractTar(r io.Reader, dst string) error {
	if dst == "" {
		return errdefs.InvalidArgument("destination", dst, "a path is required")
	}
	wantDir := strings.HasSuffix(dst, "/")
	dst = filepath.Clean(dst)
	var base, rename string
	fi, err := os.Stat(dst)
	switch {
	case err == nil && fi.IsDir():
		base = dst
	case errors.Is(err, fs.ErrNotExist) && wantDir:
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", dst, err)
		}
		base = dst
	case err == nil && wantDir:
		return errdefs.InvalidArgument("destination", dst+"/", "exists and is not a directory")
	case err == nil || errors.Is(err, fs.ErrNotExist):
		base, rename = filepath.Dir(dst), filepath.Base(dst)
		pfi, err := os.Stat(base)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return errdefs.NotFound("directory", base)
			}
			return fmt.Errorf("checking %s: %w", base, err)
		}
		if !pfi.IsDir() {
			return errdefs.InvalidArgument("destination", dst, "its parent is not a directory")
		}
	default:
		return fmt.Errorf("checking %s: %w", dst, err)
	}

	x := extractor{base: base, rename: rename}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("reading archive: %w", err)
		}
		if err := x.entry(hdr, tr); err != nil {
			return err
		}
	}
	if x.first == "" {
		return errdefs.InvalidArgument("archive", "", "it is empty")
	}
	return x.finish()
}

type dirMeta struct {
	path  string
	mode  fs.FileMode
	mtime time.Time
}

type extractor struct {
	base   string // directory everything lands in
	rename string // replaces the first component when set
	first  string // the archive's first component
	dirs   []dirMeta
}

// target maps an entry name to a path under x.base, refusing escapes.
func (x *extractor) target(name string) (string, error) {
	escapes := errdefs.New(errdefs.ErrPermissionDenied, "archive entry %q escapes the destination %s", name, x.base)
	if name == "" || path.IsAbs(name) || strings.HasPrefix(name, `\`) {
		return "", escapes
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", escapes
		}
	}
	clean := path.Clean(name)
	if clean == "." {
		return "", escapes
	}
	comps := strings.Split(clean, "/")
	if x.first == "" {
		x.first = comps[0]
	} else if comps[0] != x.first {
		return "", errdefs.InvalidArgument("archive", name, fmt.Sprintf("entries must share the top-level name %q", x.first))
	}
	if x.rename != "" {
		comps[0] = x.rename
	}
	// Intermediate directories must be real directories: a symlink planted by an earlier
	// entry (or already in the guest) must not redirect later entries elsewhere.
	cur := x.base
	for _, c := range comps[:len(comps)-1] {
		cur = filepath.Join(cur, c)
		fi, err := os.Lstat(cur)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := os.Mkdir(cur, 0o755); err != nil {
				return "", fmt.Errorf("creating %s: %w", cur, err)
			}
		case err != nil:
			return "", fmt.Errorf("checking %s: %w", cur, err)
		case fi.Mode()&fs.ModeSymlink != 0:
			return "", errdefs.New(errdefs.ErrPermissionDenied, "archive entry %q would be written through the symlink %s", name, cur)
		case !fi.IsDir():
			return "", errdefs.InvalidArgument("archive", name, cur+" is not a directory")
		}
	}
	return filepath.Join(cur, comps[len(comps)-1]), nil
}

// clearFor removes a non-directory at p so a new entry can take its place.
func clearFor(p string, name string) error {
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("checking %s: %w", p, err)
	}
	if fi.IsDir() {
		return errdefs.New(errdefs.ErrConflict, "cannot replace directory %s with the file %q", p, name)
	}
	if err := os.Remove(p); err != nil {
		return fmt.Errorf("replacing %s: %w", p, err)
	}
	return nil
}

func (x *extractor) entry(hdr *tar.Header, r io.Reader) error {
	switch hdr.Typeflag {
	case tar.TypeDir, tar.TypeReg, tar.TypeSymlink, tar.TypeLink:
	default:
		// Devices, fifos and PAX/GNU metadata types carry nothing a copy needs.
		return nil
	}
	p, err := x.target(hdr.Name)
	if err != nil {
		return err
	}
	mode := fileMode(hdr.Mode)
	switch hdr.Typeflag {
	case tar.TypeDir:
		fi, err := os.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			// Owner-writable until finish, so the directory's own entries can be added.
			if err := os.Mkdir(p, 0o700); err != nil {
				return fmt.Errorf("creating %s: %w", p, err)
			}
		case err != nil:
			return fmt.Errorf("checking %s: %w", p, err)
		case !fi.IsDir():
			return errdefs.New(errdefs.ErrConflict, "cannot replace %s, which is not a directory, with a directory", p)
		}
		x.dirs = append(x.dirs, dirMeta{path: p, mode: mode, mtime: hdr.ModTime})
	case tar.TypeReg:
		if err := clearFor(p, hdr.Name); err != nil {
			return err
		}
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
		if err != nil {
			return fmt.Errorf("creating %s: %w", p, err)
		}
		if _, err := io.Copy(f, r); err != nil {
			f.Close()
			return fmt.Errorf("writing %s: %w", p, err)
		}
		if err := f.Chmod(mode); err != nil {
			f.Close()
			return fmt.Errorf("setting the mode of %s: %w", p, err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("writing %s: %w", p, err)
		}
		if err := os.Chtimes(p, hdr.ModTime, hdr.ModTime); err != nil {
			return fmt.Errorf("setting the time of %s: %w", p, err)
		}
	case tar.TypeSymlink:
		// A symlink's target is not followed here, and target() refuses later entries
		// through it, so any link text is safe to create.
		if err := clearFor(p, hdr.Name); err != nil {
			return err
		}
		if err := os.Symlink(hdr.Linkname, p); err != nil {
			return fmt.Errorf("creating symlink %s: %w", p, err)
		}
	case tar.TypeLink:
		old, err := x.target(hdr.Linkname)
		if err != nil {
			return err
		}
		ofi, err := os.Lstat(old)
		if err != nil {
			return fmt.Errorf("hard link %q: %w", hdr.Name, err)
		}
		if !ofi.Mode().IsRegular() {
			return errdefs.InvalidArgument("archive", hdr.Name, "hard links may only point at regular files")
		}
		if err := clearFor(p, hdr.Name); err != nil {
			return err
		}
		if err := os.Link(old, p); err != nil {
			return fmt.Errorf("creating hard link %s: %w", p, err)
		}
	}
	return nil
}

// finish applies directory modes and times, deepest first, now that nothing more is
// written into them.
func (x *extractor) finish() error {
	for _, d := range slices.Backward(x.dirs) {
		if err := os.Chmod(d.path, d.mode); err != nil {
			return fmt.Errorf("setting the mode of %s: %w", d.path, err)
		}
		if err := os.Chtimes(d.path, d.mtime, d.mtime); err != nil {
			return fmt.Errorf("setting the time of %s: %w", d.path, err)
		}
	}
	return nil
}
