package imagestore

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"

	"banger/internal/errdefs"
	"banger/internal/model"
)

// Sanity limits on the files of an image. Every byte of an imported file is read and hashed,
// holes included, so a limit bounds how long one import can keep the daemon busy as much as
// the disk it may take. They are checked from sizes alone (stat, tar header, manifest)
// before any byte is read.
const (
	// MaxKernelBytes: an x86_64 vmlinux is 30-80 MiB (Debian's cloud kernel ~60 MiB), a
	// bzImage ~10 MiB; one with full debug info stays well under 1 GiB.
	MaxKernelBytes = 1 << 30
	// MaxInitrdBytes: an initramfs is unpacked into guest RAM at boot; a microVM cannot boot
	// one larger than this.
	MaxInitrdBytes = 1 << 30
	// MaxRootfsBytes is the logical size of the ext4 image (it is stored sparsely); VMs get
	// more room from their overlay and work disks, not from the image. Hashing 128 GiB of
	// holes takes about two minutes at 1 GB/s; the client can cancel by hanging up.
	MaxRootfsBytes = 128 << 30
)

// maxFileBytes is the limit for a file of the given role.
func maxFileBytes(role string) int64 {
	switch role {
	case model.RoleKernel:
		return MaxKernelBytes
	case model.RoleInitrd:
		return MaxInitrdBytes
	}
	return MaxRootfsBytes
}

// checkLimits refuses a manifest whose files exceed the sanity limits, before any is read.
func checkLimits(m Manifest) error {
	for i, f := range m.Files {
		if max := maxFileBytes(f.Role); f.Size > max {
			return errdefs.InvalidArgument(fmt.Sprintf("manifest.files[%d].size", i), f.Size,
				fmt.Sprintf("exceeds the %d-byte limit for a %s", max, f.Role))
		}
	}
	return nil
}

// openInput opens a file of untrusted input for reading. It never blocks and never reads a
// device: the path is stat'ed first and anything but a regular file is refused before it is
// opened, and the open itself is non-blocking, so a FIFO swapped in between cannot hang the
// caller either. With follow false a symlink is refused too (files inside a bundle are named
// by the bundle, not the user). An empty file is refused: procfs and sysfs files, which
// report size 0, are not image files. Every refusal is an invalid argument naming field.
func openInput(field, path string, follow bool) (*os.File, fs.FileInfo, error) {
	stat, flags := os.Stat, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC
	if !follow {
		stat, flags = os.Lstat, flags|syscall.O_NOFOLLOW
	}
	before, err := stat(path)
	if err != nil {
		return nil, nil, openError(field, path, err)
	}
	if err := checkRegular(field, path, before); err != nil {
		return nil, nil, err
	}
	f, err := os.OpenFile(path, flags, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, nil, errdefs.InvalidArgument(field, path, "is a symlink; bundle files must be regular files")
		}
		return nil, nil, openError(field, path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("stat %s %s: %w", field, path, err)
	}
	if !os.SameFile(before, fi) {
		f.Close()
		return nil, nil, errdefs.InvalidArgument(field, path, "was replaced while being opened")
	}
	if fi.Size() == 0 {
		f.Close()
		return nil, nil, errdefs.InvalidArgument(field, path, "is empty")
	}
	return f, fi, nil
}

func checkRegular(field, path string, fi fs.FileInfo) error {
	switch m := fi.Mode(); {
	case m.IsRegular():
		return nil
	case m.IsDir():
		return errdefs.InvalidArgument(field, path, "is a directory, not a file")
	case m&fs.ModeSymlink != 0:
		return errdefs.InvalidArgument(field, path, "is a symlink; bundle files must be regular files")
	case m&fs.ModeNamedPipe != 0:
		return errdefs.InvalidArgument(field, path, "is a FIFO, not a regular file")
	case m&fs.ModeDevice != 0:
		return errdefs.InvalidArgument(field, path, "is a device, not a regular file")
	case m&fs.ModeSocket != 0:
		return errdefs.InvalidArgument(field, path, "is a socket, not a regular file")
	}
	return errdefs.InvalidArgument(field, path, "is not a regular file")
}

// readError reports a failed read of an input file as the input's fault: it is what the
// caller named (a /proc file that exists but fails with EIO, for instance).
func readError(field, path string, err error) error {
	return errdefs.InvalidArgument(field, path, "cannot be read: "+err.Error())
}

// readManifestFile reads a bundle directory's manifest without following a symlink,
// blocking on a FIFO or reading more than maxManifestBytes.
func readManifestFile(path string) ([]byte, error) {
	f, fi, err := openInput("bundle manifest", path, false)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi.Size() > maxManifestBytes {
		return nil, errdefs.InvalidArgument("bundle manifest", path, fmt.Sprintf("is larger than %d bytes", maxManifestBytes))
	}
	b, err := io.ReadAll(io.LimitReader(f, maxManifestBytes))
	if err != nil {
		return nil, readError("bundle manifest", path, err)
	}
	return b, nil
}
