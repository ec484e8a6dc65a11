package imagestore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"

	"banger/internal/errdefs"
)

// Kernel formats KernelFormat recognises.
const (
	KernelELF     = "elf"     // uncompressed vmlinux; boots via PVH (QEMU) and on Firecracker
	KernelBzImage = "bzimage" // x86 boot protocol image; QEMU only
)

const (
	elfMachineX86_64 = 62
	bzHeaderMagicOff = 0x202
)

// KernelFormat reports whether path is an x86_64 vmlinux ELF or a bzImage. Anything else is
// an invalid-argument error naming the file, since a wrong --kernel is the usual cause.
func KernelFormat(path string) (string, error) {
	f, _, err := openInput("kernel", path, true)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var hdr [0x210]byte
	n, err := io.ReadFull(f, hdr[:])
	if err != nil && err != io.ErrUnexpectedEOF {
		return "", readError("kernel", path, err)
	}
	b := hdr[:n]
	if len(b) >= 20 && bytes.Equal(b[:4], []byte("\x7fELF")) {
		if b[4] != 2 { // EI_CLASS: ELFCLASS64
			return "", errdefs.InvalidArgument("kernel", path, "is a 32-bit ELF; need an x86_64 vmlinux")
		}
		if b[5] != 1 { // EI_DATA: little endian
			return "", errdefs.InvalidArgument("kernel", path, "is a big-endian ELF; need an x86_64 vmlinux")
		}
		if m := binary.LittleEndian.Uint16(b[18:20]); m != elfMachineX86_64 {
			return "", errdefs.InvalidArgument("kernel", path, fmt.Sprintf("is an ELF for machine %d, not x86_64", m))
		}
		return KernelELF, nil
	}
	if len(b) >= bzHeaderMagicOff+4 && string(b[bzHeaderMagicOff:bzHeaderMagicOff+4]) == "HdrS" {
		return KernelBzImage, nil
	}
	return "", errdefs.InvalidArgument("kernel", path, "is neither an x86_64 vmlinux ELF nor a bzImage")
}

// CheckKernel checks that path is a kernel banger can boot.
func CheckKernel(path string) error {
	_, err := KernelFormat(path)
	return err
}

// ext4 superblock layout (fs/ext4/ext4.h); the superblock starts at byte 1024.
const (
	sbOffset          = 1024
	sbBlocksCountLo   = 0x04
	sbLogBlockSize    = 0x18
	sbMagic           = 0x38
	sbRevLevel        = 0x4C
	sbFeatureIncompat = 0x60
	sbBlocksCountHi   = 0x150
	ext4Magic         = 0xEF53

	incompatRecover    = 0x4
	incompatJournalDev = 0x8
	incompat64Bit      = 0x80
	// Every INCOMPAT flag Linux 6.x knows; any other bit means the image came from a newer or
	// foreign mkfs and the guest kernel would refuse to mount it.
	incompatKnown = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x1000 | 0x2000 | 0x4000 | 0x8000 | 0x10000 | 0x20000
)

// CheckExt4 checks that path holds an ext2/3/4 file system the guest can mount as its root:
// superblock magic, sane block size, known incompatible features, no pending journal
// recovery, and a file at least as long as the file system claims to be.
func CheckExt4(path string) error {
	f, st, err := openInput("rootfs", path, true)
	if err != nil {
		return err
	}
	defer f.Close()
	var sb [1024]byte
	if _, err := f.ReadAt(sb[:], sbOffset); err != nil {
		if err == io.EOF {
			return errdefs.InvalidArgument("rootfs", path, "is too small to be an ext4 file system")
		}
		return readError("rootfs", path, err)
	}
	le := binary.LittleEndian
	if le.Uint16(sb[sbMagic:]) != ext4Magic {
		return errdefs.InvalidArgument("rootfs", path, "is not an ext4 file system (no ext4 superblock magic at offset 1080)")
	}
	logBS := le.Uint32(sb[sbLogBlockSize:])
	if logBS > 6 { // 1 KiB << 6 = 64 KiB, the largest block size ext4 allows
		return errdefs.InvalidArgument("rootfs", path, fmt.Sprintf("ext4 superblock has an invalid block size (log %d)", logBS))
	}
	blockSize := int64(1024) << logBS
	var incompat uint32
	if le.Uint32(sb[sbRevLevel:]) >= 1 {
		incompat = le.Uint32(sb[sbFeatureIncompat:])
	}
	if incompat&^incompatKnown != 0 {
		return errdefs.InvalidArgument("rootfs", path, fmt.Sprintf("ext4 file system uses unknown incompatible features %#x", incompat&^incompatKnown))
	}
	if incompat&incompatJournalDev != 0 {
		return errdefs.InvalidArgument("rootfs", path, "is an external ext4 journal device, not a file system")
	}
	if incompat&incompatRecover != 0 {
		return errdefs.WithHint(
			errdefs.InvalidArgument("rootfs", path, "ext4 journal needs recovery (the file system was not cleanly unmounted)"),
			"run `e2fsck -fy "+path+"` and import again")
	}
	blocks := int64(le.Uint32(sb[sbBlocksCountLo:]))
	if incompat&incompat64Bit != 0 {
		blocks |= int64(le.Uint32(sb[sbBlocksCountHi:])) << 32
	}
	if blocks == 0 {
		return errdefs.InvalidArgument("rootfs", path, "ext4 superblock reports zero blocks")
	}
	if want := blocks * blockSize; st.Size() < want {
		return errdefs.InvalidArgument("rootfs", path, fmt.Sprintf("is truncated: the file system needs %d bytes, the file has %d", want, st.Size()))
	}
	return nil
}

// CheckInitrd checks that path looks like an initramfs: a newc cpio archive, or one compressed
// with a method the Linux kernel can unpack, whose /init (when it can be read: uncompressed
// or gzip) is not a dynamically linked ELF that the guest could never execute.
func CheckInitrd(path string) error {
	f, _, err := openInput("initrd", path, true)
	if err != nil {
		return err
	}
	defer f.Close()
	var b [6]byte
	if _, err := io.ReadFull(f, b[:]); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return errdefs.InvalidArgument("initrd", path, "is too small to be an initramfs")
		}
		return readError("initrd", path, err)
	}
	for _, magic := range [][]byte{
		[]byte("07070"),                  // cpio newc / crc
		{0x1f, 0x8b},                     // gzip
		{0xfd, '7', 'z', 'X', 'Z', 0x00}, // xz
		{0x28, 0xb5, 0x2f, 0xfd},         // zstd
		{0x02, 0x21, 0x4c, 0x18},         // lz4 legacy
		[]byte("BZh"),                    // bzip2
		{0x5d, 0x00, 0x00},               // lzma
		{0x89, 'L', 'Z', 'O'},            // lzop
	} {
		if bytes.HasPrefix(b[:], magic) {
			return checkInitrdInit(f, path, b[:])
		}
	}
	return errdefs.InvalidArgument("initrd", path, "is not a cpio archive or a compressed one")
}

// openError names the field and path when an input file cannot be read, so a typo in a
// path is an invalid argument, not an internal failure.
func openError(field, path string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return errdefs.InvalidArgument(field, path, "does not exist")
	case errors.Is(err, fs.ErrPermission):
		return errdefs.InvalidArgument(field, path, "is not readable by bangerd")
	}
	return fmt.Errorf("opening %s %s: %w", field, path, err)
}
