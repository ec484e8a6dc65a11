// Package oci turns an OCI/Docker container image into a banger image: the layers are
// pulled from a registry, flattened (whiteouts and opaque directories honoured by
// go-containerregistry's mutate.Extract), unpacked into a staging tree without ever
// following a path outside it, and written to an ext4 root filesystem; Build pairs that
// with the Debian cloud kernel and the banger initrd into a bundle.
//
// No root is needed. Ownership, permission bits the staging tree cannot hold for an
// unprivileged builder, and device nodes are applied afterwards inside the ext4 image
// with debugfs. Extended attributes (file capabilities, SELinux labels) are not carried.
package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"banger/internal/errdefs"
	"banger/internal/imagebuild"
)

// Options configures a build.
type Options struct {
	// Insecure talks plain HTTP to the registry. Loopback and private-network registries
	// (localhost:5000, 127.0.0.1, 10.x…) get HTTP anyway, as go-containerregistry decides.
	Insecure bool
	// Platform selects from a multi-platform index; empty means linux/amd64.
	Platform string
	// Out is the rootfs image BuildRootfs writes.
	Out string
	// Size of the ext4 image in bytes; 0 sizes it to the content plus headroom.
	Size int64

	// For Build only.
	CacheDir  string // kernel package cache
	WorkDir   string // staging and the bundle directory
	AgentPath string // static guest agent for the initrd
	Log       *slog.Logger
}

func (o *Options) log() *slog.Logger {
	if o.Log != nil {
		return o.Log
	}
	return slog.Default()
}

// ParseRef validates an image reference the way BuildRootfs will use it.
func ParseRef(ref string, insecure bool) (name.Reference, error) {
	var opts []name.Option
	if insecure {
		opts = append(opts, name.Insecure)
	}
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		return nil, errdefs.InvalidArgument("ref", ref, "not a valid image reference: "+err.Error())
	}
	return r, nil
}

func parsePlatform(s string) (v1.Platform, error) {
	if s == "" {
		s = "linux/amd64"
	}
	p, err := v1.ParsePlatform(s)
	if err != nil || p.OS == "" || p.Architecture == "" {
		return v1.Platform{}, errdefs.InvalidArgument("platform", s, "must look like linux/amd64")
	}
	if p.OS != "linux" {
		return v1.Platform{}, errdefs.InvalidArgument("platform", s, "only linux images can boot in a microVM")
	}
	return *p, nil
}

// BuildRootfs pulls ref and writes its flattened filesystem to opts.Out as ext4.
func BuildRootfs(ctx context.Context, ref string, opts Options) error {
	r, err := ParseRef(ref, opts.Insecure)
	if err != nil {
		return err
	}
	platform, err := parsePlatform(opts.Platform)
	if err != nil {
		return err
	}
	if opts.Out == "" {
		return errdefs.InvalidArgument("out", "", "an output path is required")
	}
	log := opts.log().With("ref", r.String())

	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithPlatform(platform),
		remote.WithAuthFromKeychain(authn.DefaultKeychain))
	if err != nil {
		return pullError(r, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return fmt.Errorf("reading digest of %s: %w", r, err)
	}
	log.Info("pulling container image", "digest", digest.String())

	staging, err := os.MkdirTemp(filepath.Dir(opts.Out), ".oci-rootfs-")
	if err != nil {
		return fmt.Errorf("creating staging dir: %w", err)
	}
	defer os.RemoveAll(staging) // staged directories always keep owner rwx, so this works

	// Blobs live next to the staging tree (same file system as the output) and go with it.
	blobs, err := os.MkdirTemp(filepath.Dir(opts.Out), ".oci-blobs-")
	if err != nil {
		return fmt.Errorf("creating blob dir: %w", err)
	}
	defer os.RemoveAll(blobs)
	verified, err := fetchVerified(ctx, img, blobs)
	if err != nil {
		return fmt.Errorf("pulling %s: %w", r, err)
	}

	flat := mutate.Extract(verified)
	defer flat.Close()
	tree, err := unpack(ctx, flat, staging)
	if err != nil {
		return fmt.Errorf("unpacking %s: %w", r, err)
	}

	size := opts.Size
	if size <= 0 {
		size = tree.imageSize()
	}
	log.Info("writing rootfs", "entries", tree.entries, "content_bytes", tree.bytes, "image_bytes", size)
	if err := imagebuild.Ext4FromDir(ctx, staging, opts.Out, size); err != nil {
		return err
	}
	if err := tree.applyFixups(ctx, opts.Out); err != nil {
		os.Remove(opts.Out)
		return err
	}
	return nil
}

func pullError(r name.Reference, err error) error {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "MANIFEST_UNKNOWN") || strings.Contains(msg, "NAME_UNKNOWN") ||
		strings.Contains(msg, "404"):
		return errdefs.New(errdefs.ErrNotFound, "image %s not found in its registry: %w", r, err)
	case strings.Contains(msg, "UNAUTHORIZED") || strings.Contains(msg, "DENIED"):
		return errdefs.WithHint(errdefs.New(errdefs.ErrPermissionDenied, "pulling %s: %w", r, err),
			"log in with `docker login` (banger reads ~/.docker/config.json)")
	case strings.Contains(msg, "no child with platform"):
		return errdefs.New(errdefs.ErrNotFound, "image %s has no linux/amd64 variant: %w", r, err)
	}
	return errdefs.New(errdefs.ErrUnavailable, "pulling %s: %w", r, err)
}

// fixup is an inode property the staging tree could not carry; it is set in the image.
type fixup struct {
	path         string // absolute inside the image
	uid, gid     int
	mode         int64 // full i_mode (type and permission bits); 0 leaves it
	dev          byte  // 'c', 'b' or 'p' for nodes created in the image
	major, minor int64
}

type unpacked struct {
	fixups  []fixup
	entries int64
	bytes   int64
}

// imageSize leaves 30% plus 64 MiB over the content: room for ext4 metadata and for the
// guest's own use before its overlay takes writes. The file is sparse, so slack is free.
func (u *unpacked) imageSize() int64 {
	size := u.bytes + u.bytes*3/10 + 64<<20
	return (size + 1<<20 - 1) &^ (1<<20 - 1)
}

// stagedMode is what the staging tree holds: the owner can always read (and traverse
// directories), otherwise an unprivileged mkfs could not copy a 0000 file.
func stagedMode(h *tar.Header) fs.FileMode {
	perm := fs.FileMode(h.Mode) & (fs.ModePerm)
	if h.Typeflag == tar.TypeDir {
		return perm | 0o700
	}
	return perm | 0o600
}

// iMode builds the on-disk ext4 i_mode for a tar header.
func iMode(h *tar.Header) int64 {
	perm := h.Mode & 0o7777
	switch h.Typeflag {
	case tar.TypeDir:
		return 0o040000 | perm
	case tar.TypeSymlink:
		return 0o120000 | perm
	case tar.TypeChar:
		return 0o020000 | perm
	case tar.TypeBlock:
		return 0o060000 | perm
	case tar.TypeFifo:
		return 0o010000 | perm
	}
	return 0o100000 | perm
}

// unpack writes the flattened tar stream into dir. Paths go through an os.Root, so no entry
// (nor a symlink planted by an earlier one) can make it write outside dir. The stream of
// mutate.Extract lists upper layers first, so a file can precede its parent directory's
// header and a hardlink can precede its target: parents are created on demand and links
// made at the end.
func unpack(ctx context.Context, r io.Reader, dir string) (*unpacked, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()

	// MkdirTemp made the staging root 0700; an image's / is 0755 unless a "./" entry says
	// otherwise.
	if err := root.Chmod(".", 0o755); err != nil {
		return nil, err
	}
	u := &unpacked{}
	type link struct{ name, target string }
	var (
		links []link
		dirs  []*tar.Header
		times []*tar.Header
	)
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			// mutate.Extract writes the end marker even when a layer failed and reports the
			// failure only as the stream's final error: read it.
			if _, err := io.Copy(io.Discard, r); err != nil {
				return nil, fmt.Errorf("reading layer stream: %w", err)
			}
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading layer stream: %w", err)
		}
		rel, err := cleanPath(h.Name)
		if err != nil {
			return nil, err
		}
		if rel == "." {
			// The root directory itself: record its mode and owner.
			if h.Typeflag == tar.TypeDir {
				if err := stageChmod(root, ".", h); err != nil {
					return nil, err
				}
				dirs = append(dirs, h)
				u.addFixup(h, "/")
			}
			continue
		}
		if strings.ContainsAny(rel, "\"\n\\") {
			return nil, errdefs.InvalidArgument("path", h.Name, "contains characters debugfs cannot address")
		}
		if parent := path.Dir(rel); parent != "." {
			if err := root.MkdirAll(parent, 0o755); err != nil {
				return nil, fmt.Errorf("creating %s: %w", parent, err)
			}
		}
		u.entries++
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.Mkdir(rel, stagedMode(h)); err != nil && !errors.Is(err, fs.ErrExist) {
				return nil, fmt.Errorf("creating directory %s: %w", rel, err)
			}
			if err := stageChmod(root, rel, h); err != nil {
				return nil, err
			}
			dirs = append(dirs, h)
			u.bytes += 4096
		case tar.TypeReg:
			if err := writeFile(root, rel, h, tr); err != nil {
				return nil, err
			}
			times = append(times, h)
			u.bytes += (h.Size+4095)&^4095 + 256
		case tar.TypeSymlink:
			if err := root.Symlink(h.Linkname, rel); err != nil {
				return nil, fmt.Errorf("creating symlink %s: %w", rel, err)
			}
			u.bytes += 256
		case tar.TypeLink:
			target, err := cleanPath(h.Linkname)
			if err != nil || target == "." {
				return nil, errdefs.InvalidArgument("hardlink", h.Linkname, "target of "+h.Name+" leaves the image")
			}
			links = append(links, link{rel, target})
			continue // a hardlink shares its target's inode and fixups
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			// Created in the image by debugfs: an unprivileged builder cannot mknod.
			f := fixup{path: "/" + rel, uid: h.Uid, gid: h.Gid, mode: iMode(h), major: h.Devmajor, minor: h.Devminor}
			f.dev = map[byte]byte{tar.TypeChar: 'c', tar.TypeBlock: 'b', tar.TypeFifo: 'p'}[h.Typeflag]
			u.fixups = append(u.fixups, f)
			continue
		default:
			// PAX/GNU metadata records are consumed by archive/tar; anything else (sockets,
			// GNU sparse) has no place in a root filesystem image.
			continue
		}
		u.addFixup(h, "/"+rel)
	}
	for _, l := range links {
		if err := root.Link(l.target, l.name); err != nil {
			return nil, fmt.Errorf("creating hardlink %s -> %s: %w", l.name, l.target, err)
		}
	}
	// Times last: creating entries changes directory mtimes; symlink times are left.
	for _, h := range append(times, dirs...) {
		rel, _ := cleanPath(h.Name)
		if err := root.Chtimes(rel, h.ModTime, h.ModTime); err != nil {
			return nil, fmt.Errorf("setting times of %s: %w", rel, err)
		}
	}
	return u, nil
}

// addFixup records what the image must get that the staging tree lacks: a non-root owner
// (mkfs copies owners and Ext4FromDir resets them to root) or permission bits withheld
// from the staging copy.
func (u *unpacked) addFixup(h *tar.Header, p string) {
	f := fixup{path: p, uid: h.Uid, gid: h.Gid}
	if h.Typeflag != tar.TypeSymlink && int64(stagedMode(h)&fs.ModePerm) != h.Mode&0o7777 {
		f.mode = iMode(h)
	}
	if f.uid != 0 || f.gid != 0 || f.mode != 0 {
		u.fixups = append(u.fixups, f)
	}
}

func writeFile(root *os.Root, rel string, h *tar.Header, r io.Reader) error {
	// A later layer's file replaces whatever a lower layer had (mutate.Extract only sends
	// the topmost version, but a directory-vs-file clash can still reach us).
	if fi, err := root.Lstat(rel); err == nil && !fi.Mode().IsRegular() {
		if err := root.RemoveAll(rel); err != nil {
			return fmt.Errorf("replacing %s: %w", rel, err)
		}
	}
	f, err := root.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, stagedMode(h))
	if err != nil {
		return fmt.Errorf("creating %s: %w", rel, err)
	}
	_, err = io.CopyN(f, r, h.Size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", rel, err)
	}
	return stageChmod(root, rel, h)
}

// stageChmod gives a staged file or directory its staged mode: creation modes are filtered
// by the umask, directories made on demand got 0755, and setuid, setgid and sticky bits
// need an explicit chmod anyway (mkfs copies them into the image).
func stageChmod(root *os.Root, rel string, h *tar.Header) error {
	mode := stagedMode(h)
	if h.Mode&0o4000 != 0 {
		mode |= fs.ModeSetuid
	}
	if h.Mode&0o2000 != 0 {
		mode |= fs.ModeSetgid
	}
	if h.Mode&0o1000 != 0 {
		mode |= fs.ModeSticky
	}
	if err := root.Chmod(rel, mode); err != nil {
		return fmt.Errorf("setting mode of %s: %w", rel, err)
	}
	return nil
}

// cleanPath turns a tar name into a clean relative path, refusing anything that climbs out.
func cleanPath(name string) (string, error) {
	p := path.Clean("/" + strings.TrimPrefix(name, "./"))
	if strings.Contains(name, "\x00") {
		return "", errdefs.InvalidArgument("path", name, "contains NUL")
	}
	rel := strings.TrimPrefix(p, "/")
	if rel == "" {
		return ".", nil
	}
	// path.Clean of an absolute path cannot keep "..", but a raw ".." component in the
	// name means the archive tried to escape: refuse instead of silently re-rooting it.
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", errdefs.InvalidArgument("path", name, "climbs out of the image root")
		}
	}
	return rel, nil
}

// applyFixups sets owners and modes and creates device nodes inside the ext4 image.
func (u *unpacked) applyFixups(ctx context.Context, image string) error {
	if len(u.fixups) == 0 {
		return nil
	}
	debugfs, err := exec.LookPath("debugfs")
	if err != nil {
		return errdefs.WithHint(errdefs.New(errdefs.ErrUnavailable, "debugfs is not installed"), "apt-get install e2fsprogs")
	}
	var cmds bytes.Buffer
	for _, f := range u.fixups {
		if f.dev != 0 {
			// debugfs's mknod takes the name literally (a "/" would end up in the entry
			// name), so it runs in the parent directory.
			dir, base := path.Split(f.path)
			fmt.Fprintf(&cmds, "cd \"%s\"\n", dir)
			if f.dev == 'p' {
				fmt.Fprintf(&cmds, "mknod \"%s\" p\n", base)
			} else {
				fmt.Fprintf(&cmds, "mknod \"%s\" %c %d %d\n", base, f.dev, f.major, f.minor)
			}
			fmt.Fprintf(&cmds, "cd /\n")
		}
		if f.mode != 0 {
			fmt.Fprintf(&cmds, "sif \"%s\" mode 0%o\n", f.path, f.mode)
		}
		fmt.Fprintf(&cmds, "sif \"%s\" uid %d\nsif \"%s\" gid %d\n", f.path, f.uid, f.path, f.gid)
	}
	cmd := exec.CommandContext(ctx, debugfs, "-w", "-f", "-", image)
	cmd.Stdin = &cmds
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("fixing ownership in %s with debugfs: %w: %s", image, err, strings.TrimSpace(stderr.String()))
	}
	// debugfs reports failed commands on stderr and still exits 0; its banner also goes
	// there, so look for the failure shapes only.
	for _, line := range strings.Split(stderr.String(), "\n") {
		if strings.HasPrefix(line, "sif:") || strings.HasPrefix(line, "mknod:") ||
			strings.Contains(line, "File not found") {
			return fmt.Errorf("fixing ownership in %s with debugfs: %s", image, strings.TrimSpace(line))
		}
	}
	return nil
}
