package ctrshim

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/agentclient"
	"banger/internal/opid"
)

// writeRootfsTar writes the container's directory as the guest unpacks it: the mounted
// snapshot at rootfs under "rootfs/", and each bind-mounted host file under "binds/N".
// Unlike the agent's copy (which makes everything root's and carries only files,
// directories and symlinks), the image's tree arrives as it is: numeric owners, full
// modes (setuid, sticky), character and block devices, FIFOs and hard links. Names are
// left out of the headers so the guest's tar applies the numbers, not its own users.
// Sockets are skipped (they are made by a process, not copied); extended attributes
// (file capabilities) are not carried.
//
// The image is hostile and the guest's tar follows symlinks: so every symlink is written
// after every other entry. The walk never descends into a symlink, so each entry's parents
// are the image's real directories; with no link unpacked before them, no file, device or
// hard link can be written through one (an image's "etc -> /" cannot carry etc/passwd out
// of the container's root).
//
// rootfs "" sends only the bind files (the root came as a disk).
func writeRootfsTar(w io.Writer, rootfs string, binds []string) error {
	tw := tar.NewWriter(w)
	x := &rootfsArchive{tw: tw, links: map[[2]uint64]string{}}
	if rootfs == "" {
		return writeBinds(tw, binds)
	}
	err := filepath.WalkDir(rootfs, func(p string, d fs.DirEntry, walkErr error) error {
		if walkErr != nil {
			return walkErr
		}
		rel, err := filepath.Rel(rootfs, p)
		if err != nil {
			return err
		}
		name := "rootfs"
		if rel != "." {
			name += "/" + filepath.ToSlash(rel)
		}
		return x.add(p, name)
	})
	if err != nil {
		return fmt.Errorf("archiving the container's rootfs %s: %w", rootfs, err)
	}
	for _, h := range x.symlinks {
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("archiving the container's rootfs %s: %w", rootfs, err)
		}
	}
	return writeBinds(tw, binds)
}

// writeBinds adds the bind files as binds/N and ends the archive.
func writeBinds(tw *tar.Writer, binds []string) error {
	for i, src := range binds {
		if err := addBindFile(tw, src, fmt.Sprintf("binds/%d", i)); err != nil {
			return err
		}
	}
	return tw.Close()
}

// maxSymlinks bounds the symlink headers held back until the end of the archive.
const maxSymlinks = 1 << 20

// rootfsArchive is one rootfs archive in the making.
type rootfsArchive struct {
	tw       *tar.Writer
	links    map[[2]uint64]string // (dev, inode) → the first name of a hard-linked file
	symlinks []*tar.Header        // written last
}

// add adds one lstat'ed entry: WalkDir never follows a symlink, and neither does this, so
// a hostile image's links are archived as links.
func (x *rootfsArchive) add(p, name string) error {
	tw := x.tw
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return fmt.Errorf("reading %s: %w", p, err)
	}
	hdr := &tar.Header{
		Name: name,
		Mode: int64(st.Mode &^ syscall.S_IFMT),
		Uid:  int(st.Uid),
		Gid:  int(st.Gid),
		// Whole seconds and no forced format: plain ustar headers wherever they suffice,
		// which every guest tar (busybox's too) reads.
		ModTime: time.Unix(st.Mtim.Sec, 0),
	}
	switch st.Mode & syscall.S_IFMT {
	case syscall.S_IFDIR:
		hdr.Typeflag, hdr.Name = tar.TypeDir, name+"/"
		return tw.WriteHeader(hdr)
	case syscall.S_IFLNK:
		target, err := os.Readlink(p)
		if err != nil {
			return fmt.Errorf("reading the link %s: %w", p, err)
		}
		if len(x.symlinks) >= maxSymlinks {
			return fmt.Errorf("the image has more than %d symlinks", maxSymlinks)
		}
		hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
		x.symlinks = append(x.symlinks, hdr)
		return nil
	case syscall.S_IFCHR, syscall.S_IFBLK:
		hdr.Typeflag = tar.TypeChar
		if st.Mode&syscall.S_IFMT == syscall.S_IFBLK {
			hdr.Typeflag = tar.TypeBlock
		}
		hdr.Devmajor, hdr.Devminor = int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
		return tw.WriteHeader(hdr)
	case syscall.S_IFIFO:
		hdr.Typeflag = tar.TypeFifo
		return tw.WriteHeader(hdr)
	case syscall.S_IFREG:
		key := [2]uint64{st.Dev, st.Ino}
		if st.Nlink > 1 {
			if first, ok := x.links[key]; ok {
				hdr.Typeflag, hdr.Linkname = tar.TypeLink, first
				return tw.WriteHeader(hdr)
			}
			x.links[key] = name
		}
		return addRegular(tw, p, hdr, st.Size)
	}
	return nil // a socket
}

// addRegular writes a regular file's header and exactly size bytes of it. O_NOFOLLOW: the
// entry was a file when lstat'ed and must not have become a link to elsewhere since.
func addRegular(tw *tar.Writer, p string, hdr *tar.Header, size int64) error {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", p, err)
	}
	defer f.Close()
	hdr.Typeflag, hdr.Size = tar.TypeReg, size
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	// The header promised size bytes: a file that shrank fails, one that grew is cut.
	if _, err := io.CopyN(tw, f, size); err != nil {
		return fmt.Errorf("reading %s: %w", p, err)
	}
	return nil
}

// addBindFile copies a bind-mounted host file (named by containerd's spec) as a root-owned
// file, checked again for being a regular file within maxBindFile.
func addBindFile(tw *tar.Writer, src, name string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("reading the bind-mounted file %s: %w", src, err)
	}
	if !fi.Mode().IsRegular() || fi.Size() > maxBindFile {
		return fmt.Errorf("the bind-mounted file %s is no longer a regular file of at most %d bytes", src, maxBindFile)
	}
	hdr := &tar.Header{Name: name, Mode: int64(fi.Mode().Perm()), ModTime: fi.ModTime().Truncate(time.Second)}
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("opening the bind-mounted file %s: %w", src, err)
	}
	defer f.Close()
	hdr.Typeflag, hdr.Size = tar.TypeReg, fi.Size()
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	if _, err := io.CopyN(tw, f, fi.Size()); err != nil {
		return fmt.Errorf("reading the bind-mounted file %s: %w", src, err)
	}
	return nil
}

// unpackScript makes the container's directory and unpacks the archive on stdin into it
// with the guest's own tar, as root: it applies owners and makes device nodes, which the
// agent's copy deliberately never does for a guest→host or user copy. A fresh directory
// (create fails if it exists) so no earlier container's files are reused.
// With the root on a disk (mounted at dir/rootfs at boot) dir exists and only binds come.
func unpackScript(dir string, fresh bool) string {
	mk := "mkdir -p " + filepath.Dir(dir) + "\nmkdir " + dir
	if !fresh {
		mk = "mkdir -p " + dir
	}
	return fmt.Sprintf("set -e\n%s\nexec tar -x -p -f - -C %s\n", mk, dir)
}

// putContainer streams the container's directory (rootfs, unless "", and bind files) into
// the VM.
func (d *daemonClient) putContainer(ctx context.Context, vm, dir, rootfs string, binds []string) error {
	st, err := d.agentStream(ctx, vm)
	if err != nil {
		return err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeRootfsTar(pw, rootfs, binds)) }()
	defer pr.Close()
	var out capped
	code, err := agentclient.Exec(ctx, st, agentclient.ExecRequest{Argv: []string{"/bin/sh", "-c", unpackScript(dir, rootfs != "")}, OpID: opid.From(ctx)},
		agentclient.ExecIO{Stdin: pr, Stdout: &out, Stderr: &out})
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("unpacking into %s in the guest: tar exited %d: %s", dir, code, strings.TrimSpace(out.String()))
	}
	return nil
}

// removeScript ends every process whose root is the container's (also those that left
// their process group), unmounts what was mounted under its directory (deepest first) and
// removes it. For a container that shares its pod's VM: the VM stays.
func removeScript(dir string) string {
	root := dir + "/rootfs"
	return fmt.Sprintf(`for p in /proc/[0-9]*; do
  r=$(readlink "$p/root" 2>/dev/null) || continue
  case "$r" in %[1]s|%[1]s/*) kill -9 "${p#/proc/}" 2>/dev/null || true;; esac
done
awk '$2 ~ "^%[2]s/" {print $2}' /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
rm -rf %[2]s
`, root, dir)
}
