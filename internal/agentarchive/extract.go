package agentarchive

import (
	"archive/tar"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"banger/internal/errdefs"
	"banger/internal/model"
)

// extractPolicy is how far the sender of an archive is trusted. The agent receiving a put
// trusts the host (zero policy, modes kept as sent); the host receiving a get does not
// trust the guest at all (hostPolicy).
type Policy struct {
	// want is the only top-level name accepted; "" accepts the first entry's, which every
	// later entry must share.
	Want string
	// maxBytes caps both the stream's bytes and the file sizes the headers claim; 0 is no cap.
	MaxBytes int64
	// mask, when set, strips setuid, setgid and sticky and applies umask to every mode.
	Mask  bool
	Umask fs.FileMode
}

// extractTar unpacks an archive made by writeTar at dst:
//   - dst is an existing directory, or ends in "/" (then it is created): entries land
//     inside it under their own names;
//   - otherwise the archive's first component is renamed to dst, whose parent must exist:
//     a single file becomes dst, a directory becomes dst.
//
// Every entry shares one first component (pol.want when set), and the first entry is the
// top level itself, a file or a directory. Nothing lands outside the destination or goes
// through a symlink, whether the archive made it or it was there: "..", absolute names and
// paths through symlinks are refused, and every operation goes through an os.Root of the
// directory the copy lands in. Only directories, regular files and symlinks are accepted.
// Files are written under a temporary name and renamed into place once complete, so a
// failure leaves no partial file and replaces a file (or symlink) only as a whole, never
// writing through it. Directories that existed before are left as they were (mode and
// times); the ones made here get the archive's mode once extraction ends. Permission bits
// and modification times are applied, masked by pol; ownership is not.
func ExtractTar(r io.Reader, dst string, pol Policy) error {
	base, rename, err := prepareDestination(dst)
	if err != nil {
		return err
	}
	root, err := os.OpenRoot(base)
	if err != nil {
		return fmt.Errorf("opening %s: %w", base, err)
	}
	defer root.Close()
	x := &extractor{root: root, base: base, rename: rename, pol: pol, created: map[string]int{}}
	if pol.MaxBytes > 0 {
		r = &cappedReader{r: r, left: pol.MaxBytes, limit: pol.MaxBytes}
	}
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
	if err := x.finish(); err != nil {
		return err
	}
	// tar.Reader stops at the end-of-archive marker; whatever follows up to data_eof still
	// counts against the cap, so a sender cannot stream forever after it.
	if _, err := io.Copy(io.Discard, r); err != nil {
		return fmt.Errorf("reading past the end of the archive: %w", err)
	}
	return nil
}

// prepareDestination resolves dst to the directory the copy lands in and, when the top
// level is renamed, its new name.
func prepareDestination(dst string) (base, rename string, err error) {
	if dst == "" {
		return "", "", errdefs.InvalidArgument("destination", dst, "a path is required")
	}
	wantDir := strings.HasSuffix(dst, "/")
	dst = filepath.Clean(dst)
	fi, err := os.Stat(dst)
	switch {
	case err == nil && fi.IsDir():
		return dst, "", nil
	case errors.Is(err, fs.ErrNotExist) && wantDir:
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return "", "", fmt.Errorf("creating %s: %w", dst, err)
		}
		return dst, "", nil
	case err == nil && wantDir:
		return "", "", errdefs.InvalidArgument("destination", dst+"/", "exists and is not a directory")
	case err == nil || errors.Is(err, fs.ErrNotExist):
		base, rename = filepath.Dir(dst), filepath.Base(dst)
		pfi, err := os.Stat(base)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return "", "", errdefs.NotFound("directory", base)
			}
			return "", "", fmt.Errorf("checking %s: %w", base, err)
		}
		if !pfi.IsDir() {
			return "", "", errdefs.InvalidArgument("destination", dst, "its parent is not a directory")
		}
		return base, rename, nil
	default:
		return "", "", fmt.Errorf("checking %s: %w", dst, err)
	}
}

// cappedReader fails once more than limit bytes were read.
type cappedReader struct {
	r           io.Reader
	left, limit int64
}

func (c *cappedReader) Read(p []byte) (int, error) {
	if c.left <= 0 {
		// One byte more tells a stream that ends exactly at the limit from a longer one.
		var b [1]byte
		if n, err := c.r.Read(b[:]); n == 0 {
			return 0, err
		}
		return 0, errTooLarge(c.limit)
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	return n, err
}

func errTooLarge(limit int64) error {
	return errdefs.New(errdefs.ErrInvalidArgument, "the archive exceeds the copy size limit of %s (raise it with --max-size)", model.FormatSize(limit))
}

type dirMeta struct {
	path  string // relative to the root
	mode  fs.FileMode
	mtime time.Time
}

type extractor struct {
	root    *os.Root
	base    string // the root's path, for messages
	rename  string // replaces the first component when set
	pol     Policy
	first   string // the archive's first component
	claimed int64  // file sizes claimed so far
	// dirs are the directories this extraction made, in creation order; created indexes
	// them by path. Only these get the archive's mode and time.
	dirs    []dirMeta
	created map[string]int
}

// display names a root-relative path for messages.
func (x *extractor) display(rel string) string { return filepath.Join(x.base, rel) }

// target maps an entry name to a path relative to the root, refusing escapes and making
// missing parent directories (real directories only: never through a symlink).
func (x *extractor) target(name string) (string, error) {
	escapes := errdefs.New(errdefs.ErrPermissionDenied, "archive entry %q escapes the destination %s", name, x.base)
	if name == "" || path.IsAbs(name) || strings.HasPrefix(name, `\`) {
		return "", escapes
	}
	for c := range strings.SplitSeq(name, "/") {
		if c == ".." {
			return "", escapes
		}
	}
	clean := path.Clean(name)
	if clean == "." {
		return "", escapes
	}
	comps := strings.Split(clean, "/")
	switch {
	case x.first == "" && x.pol.Want != "" && comps[0] != x.pol.Want:
		return "", errdefs.New(errdefs.ErrPermissionDenied, "archive entry %q is not under %q, the name that was asked for", name, x.pol.Want)
	case x.first == "":
		if len(comps) > 1 {
			return "", errdefs.InvalidArgument("archive", name, fmt.Sprintf("the first entry must be the top level %q itself", comps[0]))
		}
		x.first = comps[0]
	case comps[0] != x.first:
		return "", errdefs.New(errdefs.ErrPermissionDenied, "archive entry %q is not under %q, the name that was asked for", name, x.first)
	}
	if x.rename != "" {
		comps[0] = x.rename
	}
	cur := ""
	for _, c := range comps[:len(comps)-1] {
		cur = filepath.Join(cur, c)
		fi, err := x.root.Lstat(cur)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := x.mkdir(cur, 0o755, time.Now()); err != nil {
				return "", err
			}
		case err != nil:
			return "", fmt.Errorf("checking %s: %w", x.display(cur), err)
		case fi.Mode()&fs.ModeSymlink != 0:
			return "", errdefs.New(errdefs.ErrPermissionDenied, "archive entry %q would be written through the symlink %s", name, x.display(cur))
		case !fi.IsDir():
			return "", errdefs.InvalidArgument("archive", name, x.display(cur)+" is not a directory")
		}
	}
	return filepath.Join(cur, comps[len(comps)-1]), nil
}

// mkdir makes a directory, owner-writable until finish so its entries can be added.
func (x *extractor) mkdir(rel string, mode fs.FileMode, mtime time.Time) error {
	if err := x.root.Mkdir(rel, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", x.display(rel), err)
	}
	x.created[rel] = len(x.dirs)
	x.dirs = append(x.dirs, dirMeta{path: rel, mode: mode, mtime: mtime})
	return nil
}

// mode is the mode an entry gets, after the policy's masking.
func (x *extractor) mode(tarMode int64) fs.FileMode {
	m := fileMode(tarMode)
	if x.pol.Mask {
		m = m.Perm() &^ x.pol.Umask
	}
	return m
}

func (x *extractor) entry(hdr *tar.Header, r io.Reader) error {
	switch hdr.Typeflag {
	case tar.TypeDir, tar.TypeReg, tar.TypeSymlink:
	default:
		// writeTar sends nothing else; hard links, devices, fifos and the like could only
		// alias or stand for something outside the copy.
		return errdefs.InvalidArgument("archive", hdr.Name, fmt.Sprintf("entry type %s is not a file, directory or symlink", typeName(hdr.Typeflag)))
	}
	if hdr.Size < 0 || (hdr.Typeflag != tar.TypeReg && hdr.Size != 0) {
		return errdefs.InvalidArgument("archive", hdr.Name, fmt.Sprintf("claims a size of %d bytes, which only a regular file can have", hdr.Size))
	}
	if x.pol.MaxBytes > 0 {
		// Checked before a byte is written: a sparse entry or a stream cut short must not
		// leave gigabytes behind first.
		x.claimed += hdr.Size
		if x.claimed > x.pol.MaxBytes {
			return fmt.Errorf("archive entry %q claims %d bytes: %w", hdr.Name, hdr.Size, errTooLarge(x.pol.MaxBytes))
		}
	}
	topLevel := x.first == ""
	p, err := x.target(hdr.Name)
	if err != nil {
		return err
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		return x.dir(p, hdr)
	case tar.TypeReg:
		return x.file(p, hdr, r)
	default:
		if topLevel {
			// writeTar follows a symlink given as the source, so a top-level link is forged.
			return errdefs.InvalidArgument("archive", hdr.Name, "the top level must be a file or a directory, not a symlink")
		}
		return x.symlink(p, hdr)
	}
}

func typeName(t byte) string {
	switch t {
	case tar.TypeLink:
		return "hard link"
	case tar.TypeChar:
		return "character device"
	case tar.TypeBlock:
		return "block device"
	case tar.TypeFifo:
		return "fifo"
	}
	return strconv.QuoteRune(rune(t))
}

func (x *extractor) dir(p string, hdr *tar.Header) error {
	fi, err := x.root.Lstat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return x.mkdir(p, x.mode(hdr.Mode), hdr.ModTime)
	case err != nil:
		return fmt.Errorf("checking %s: %w", x.display(p), err)
	case !fi.IsDir():
		return errdefs.New(errdefs.ErrConflict, "cannot replace %s, which is not a directory, with a directory", x.display(p))
	}
	if i, ok := x.created[p]; ok {
		x.dirs[i].mode, x.dirs[i].mtime = x.mode(hdr.Mode), hdr.ModTime
	}
	return nil
}

// replaceable checks that p may be replaced by a non-directory: it is missing, or it is
// not a directory (a file or symlink is replaced as a whole by the rename).
func (x *extractor) replaceable(p, name string) error {
	fi, err := x.root.Lstat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("checking %s: %w", x.display(p), err)
	case fi.IsDir():
		return errdefs.New(errdefs.ErrConflict, "cannot replace directory %s with the file %q", x.display(p), name)
	}
	return nil
}

// tempName is a fresh name next to p for an entry in progress.
func tempName(p string) (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("choosing a temporary name: %w", err)
	}
	return filepath.Join(filepath.Dir(p), ".banger-cp-"+hex.EncodeToString(b[:])), nil
}

func (x *extractor) file(p string, hdr *tar.Header, r io.Reader) (err error) {
	if err := x.replaceable(p, hdr.Name); err != nil {
		return err
	}
	tmp, err := tempName(p)
	if err != nil {
		return err
	}
	f, err := x.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("creating %s: %w", x.display(tmp), err)
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = x.root.Remove(tmp)
		}
	}()
	if _, err := io.Copy(f, r); err != nil {
		return fmt.Errorf("writing %s: %w", x.display(p), err)
	}
	if err := f.Chmod(x.mode(hdr.Mode)); err != nil {
		return fmt.Errorf("setting the mode of %s: %w", x.display(p), err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", x.display(p), err)
	}
	if err := x.root.Chtimes(tmp, hdr.ModTime, hdr.ModTime); err != nil {
		return fmt.Errorf("setting the time of %s: %w", x.display(p), err)
	}
	if err := x.root.Rename(tmp, p); err != nil {
		return fmt.Errorf("moving %s into place: %w", x.display(p), err)
	}
	return nil
}

// symlink creates a link; its target is never followed here, and target() refuses later
// entries through it, so any link text is safe to create.
func (x *extractor) symlink(p string, hdr *tar.Header) error {
	if err := x.replaceable(p, hdr.Name); err != nil {
		return err
	}
	tmp, err := tempName(p)
	if err != nil {
		return err
	}
	if err := x.root.Symlink(hdr.Linkname, tmp); err != nil {
		return fmt.Errorf("creating symlink %s: %w", x.display(p), err)
	}
	if err := x.root.Rename(tmp, p); err != nil {
		_ = x.root.Remove(tmp)
		return fmt.Errorf("moving symlink %s into place: %w", x.display(p), err)
	}
	return nil
}

// finish applies the modes and times of the directories made here, deepest first, now
// that nothing more is written into them.
func (x *extractor) finish() error {
	for _, d := range slices.Backward(x.dirs) {
		if err := x.root.Chmod(d.path, d.mode); err != nil {
			return fmt.Errorf("setting the mode of %s: %w", x.display(d.path), err)
		}
		if err := x.root.Chtimes(d.path, d.mtime, d.mtime); err != nil {
			return fmt.Errorf("setting the time of %s: %w", x.display(d.path), err)
		}
	}
	return nil
}
