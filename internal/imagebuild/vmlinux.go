package imagebuild

import (
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/pierrec/lz4/v4"

	"banger/internal/errdefs"
	"banger/internal/imagestore"
)

// x86 boot protocol setup header fields (Documentation/arch/x86/boot.rst).
const (
	hdrSetupSects    = 0x1f1
	hdrMagic         = 0x202
	hdrVersion       = 0x206
	hdrPayloadOffset = 0x248
	hdrPayloadLength = 0x24c
	minBootProtocol  = 0x0208 // payload_offset/length appeared in 2.08
)

const lz4LegacyMagic = 0x184C2102

// ExtractVmlinux writes the uncompressed kernel ELF inside the bzImage at bzImagePath to
// outPath. The ELF boots directly via PVH on QEMU's microvm/q35/pc and on Firecracker, and
// under TCG it skips the in-guest decompression a bzImage does on every boot.
//
// The payload is located through the setup header (payload_offset/payload_length, relative
// to the protected-mode code at (setup_sects+1)*512) and decompressed by its magic: LZ4
// legacy (Debian's), gzip and bzip2 in process, xz, lzma, zstd and lzo through their
// command-line tools. The result is checked to be an x86_64 ELF with an entry point and of
// the size the kernel build recorded, then written sparsely and renamed into place.
func ExtractVmlinux(bzImagePath, outPath string) error {
	return ExtractVmlinuxContext(context.Background(), bzImagePath, outPath)
}

// ExtractVmlinuxContext is ExtractVmlinux with a context for cancellation.
func ExtractVmlinuxContext(ctx context.Context, bzImagePath, outPath string) error {
	img, err := os.ReadFile(bzImagePath)
	if err != nil {
		return fmt.Errorf("reading bzImage: %w", err)
	}
	payload, err := bzPayload(img)
	if err != nil {
		return errdefs.InvalidArgument("kernel", bzImagePath, err.Error())
	}
	r, wantSize, wait, err := decompressor(ctx, payload)
	if err != nil {
		return errdefs.InvalidArgument("kernel", bzImagePath, err.Error())
	}
	tmp, err := os.CreateTemp(filepath.Dir(outPath), "."+filepath.Base(outPath)+".tmp-")
	if err != nil {
		return fmt.Errorf("creating vmlinux: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	n, _, werr := imagestore.WriteSparse(ctx, tmp, r)
	if err := wait(); werr == nil {
		werr = err
	}
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return fmt.Errorf("decompressing kernel %s: %w", bzImagePath, werr)
	}
	if wantSize > 0 && n != wantSize {
		return fmt.Errorf("decompressing kernel %s: got %d bytes, the image says %d", bzImagePath, n, wantSize)
	}
	if err := checkVmlinuxELF(tmp.Name()); err != nil {
		return fmt.Errorf("kernel %s: decompressed payload: %w", bzImagePath, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("writing vmlinux: %w", err)
	}
	if err := os.Rename(tmp.Name(), outPath); err != nil {
		return fmt.Errorf("writing vmlinux: %w", err)
	}
	return nil
}

// bzPayload returns the compressed kernel inside a bzImage.
func bzPayload(img []byte) ([]byte, error) {
	if len(img) < 0x250 || string(img[hdrMagic:hdrMagic+4]) != "HdrS" {
		return nil, errors.New("not a bzImage (no \"HdrS\" setup header)")
	}
	le := binary.LittleEndian
	if v := le.Uint16(img[hdrVersion:]); v < minBootProtocol {
		return nil, fmt.Errorf("boot protocol %d.%02d is too old to locate the payload (need 2.08)", v>>8, v&0xff)
	}
	setupSects := int(img[hdrSetupSects])
	if setupSects == 0 {
		setupSects = 4 // the boot protocol's historical default
	}
	pm := (setupSects + 1) * 512
	off := pm + int(le.Uint32(img[hdrPayloadOffset:]))
	length := int(le.Uint32(img[hdrPayloadLength:]))
	if length <= 0 || off < pm || off+length > len(img) || off+length < off {
		return nil, fmt.Errorf("payload (offset %d, length %d) lies outside the %d-byte file", off, length, len(img))
	}
	return img[off : off+length], nil
}

// decompressor picks the decompression for payload by its magic. Every method but gzip has
// the uncompressed size appended as a 4-byte little-endian trailer (the kernel's
// size_append); it is stripped here and returned as wantSize. wait reports errors from an
// external tool once its output has been read.
func decompressor(ctx context.Context, payload []byte) (r io.Reader, wantSize int64, wait func() error, err error) {
	noWait := func() error { return nil }
	withSize := func() []byte {
		wantSize = int64(binary.LittleEndian.Uint32(payload[len(payload)-4:]))
		return payload[:len(payload)-4]
	}
	switch {
	case len(payload) < 8:
		return nil, 0, nil, errors.New("payload is too short")
	case bytes.HasPrefix(payload, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(bytes.NewReader(payload))
		if err != nil {
			return nil, 0, nil, fmt.Errorf("gzip payload: %v", err)
		}
		zr.Multistream(false)
		return zr, 0, noWait, nil
	case binary.LittleEndian.Uint32(payload) == lz4LegacyMagic:
		body := withSize()
		return &lz4LegacyReader{src: body[4:]}, wantSize, noWait, nil
	case bytes.HasPrefix(payload, []byte("BZh")):
		return bzip2.NewReader(bytes.NewReader(withSize())), wantSize, noWait, nil
	case bytes.HasPrefix(payload, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}):
		body := withSize()
		r, wait, err := external(ctx, body, "xz", "-dc", "--single-stream")
		return r, wantSize, wait, err
	case bytes.HasPrefix(payload, []byte{0x5d, 0x00, 0x00}):
		body := withSize()
		r, wait, err := external(ctx, body, "xz", "-dc", "--format=lzma")
		return r, wantSize, wait, err
	case bytes.HasPrefix(payload, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		body := withSize()
		r, wait, err := external(ctx, body, "zstd", "-dcq")
		return r, wantSize, wait, err
	case bytes.HasPrefix(payload, []byte{0x89, 'L', 'Z', 'O'}):
		body := withSize()
		r, wait, err := external(ctx, body, "lzop", "-dc")
		return r, wantSize, wait, err
	}
	return nil, 0, nil, fmt.Errorf("unknown payload compression (magic % x)", payload[:4])
}

// external streams data through a decompression tool.
func external(ctx context.Context, data []byte, tool string, args ...string) (io.Reader, func() error, error) {
	path, err := exec.LookPath(tool)
	if err != nil {
		return nil, nil, errdefs.WithHint(fmt.Errorf("payload needs %s to decompress: %v", tool, err),
			"install it: apt-get install "+map[string]string{"xz": "xz-utils", "zstd": "zstd", "lzop": "lzop"}[tool])
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdin = bytes.NewReader(data)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("starting %s: %v", tool, err)
	}
	wait := func() error {
		if err := cmd.Wait(); err != nil {
			return fmt.Errorf("%s: %v: %s", tool, err, bytes.TrimSpace(stderr.Bytes()))
		}
		return nil
	}
	return out, wait, nil
}

// lz4LegacyReader decodes the LZ4 legacy frame format the kernel uses: after the magic,
// blocks of [uint32 LE compressed size][data], each at most 8 MiB uncompressed. The magic
// may reappear between blocks (concatenated frames). The kernel's size trailer has already
// been cut off, so the frame ends exactly at the end of src.
type lz4LegacyReader struct {
	src []byte
	out []byte // decoded data not yet returned
	buf []byte
}

const lz4LegacyBlockMax = 8 << 20

func (l *lz4LegacyReader) Read(p []byte) (int, error) {
	for len(l.out) == 0 {
		if len(l.src) == 0 {
			return 0, io.EOF
		}
		if len(l.src) < 4 {
			return 0, fmt.Errorf("lz4: %d stray bytes at the end of the payload", len(l.src))
		}
		size := binary.LittleEndian.Uint32(l.src)
		l.src = l.src[4:]
		if size == lz4LegacyMagic {
			continue
		}
		if int64(size) > int64(len(l.src)) {
			return 0, fmt.Errorf("lz4: block of %d bytes overruns the payload (%d left)", size, len(l.src))
		}
		if l.buf == nil {
			l.buf = make([]byte, lz4LegacyBlockMax)
		}
		n, err := lz4.UncompressBlock(l.src[:size], l.buf)
		if err != nil {
			return 0, fmt.Errorf("lz4: %w", err)
		}
		l.src = l.src[size:]
		l.out = l.buf[:n]
	}
	n := copy(p, l.out)
	l.out = l.out[n:]
	return n, nil
}

// checkVmlinuxELF checks that path is an x86_64 ELF executable with an entry point.
func checkVmlinuxELF(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("not an ELF file: %w", err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("ELF is %v %v, not x86_64", f.Class, f.Machine)
	}
	if f.Entry == 0 {
		return errors.New("ELF has no entry point")
	}
	return nil
}
