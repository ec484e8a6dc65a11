package imagestore

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"banger/internal/errdefs"
)

// StaticAgentHint is what to do about a dynamically linked guest agent.
const StaticAgentHint = "the guest has no dynamic loader: build the agent static with `CGO_ENABLED=0 go build -o banger-agent ./cmd/banger-agent` (or `make build`)"

// DynamicELF reports why the ELF executable in r cannot run as PID 1 of an initramfs that
// holds nothing but itself: an interpreter (PT_INTERP) or shared libraries it needs. It
// returns "" for a static ELF and for anything that is not an ELF file at all.
func DynamicELF(r io.ReaderAt) string {
	f, err := elf.NewFile(r)
	if err != nil {
		return ""
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		// The interpreter path is small; a hostile header claiming gigabytes is cut short.
		b, _ := io.ReadAll(io.LimitReader(p.Open(), 4096))
		return "is dynamically linked (ELF interpreter " + strconv.Quote(string(bytes.TrimRight(b, "\x00"))) + ")"
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		return "is dynamically linked (needs " + strings.Join(libs, ", ") + ")"
	}
	return ""
}

// CheckStaticAgent refuses a guest agent binary that needs a dynamic loader: such an agent
// builds and packs fine, and every VM of the image then panics at boot with "Failed to
// execute /init (error -2)" and no word about the cause.
func CheckStaticAgent(field, path string) error {
	f, _, err := openInput(field, path, true)
	if err != nil {
		return err
	}
	defer f.Close()
	if why := DynamicELF(f); why != "" {
		return errdefs.WithHint(errdefs.InvalidArgument(field, path, why), StaticAgentHint)
	}
	return nil
}

// maxInitScan bounds how much of an initramfs is read looking for /init, so a hostile (or
// compressed-bomb) initrd cannot keep an import busy; the banger initrd is ~10 MiB.
const maxInitScan = 256 << 20

// checkInitrdInit looks for /init in an uncompressed or gzip-compressed newc initramfs and
// refuses it when it is a dynamically linked ELF. Other compressions, or an /init that is not
// a regular file, are not inspected (the kernel's own diagnostics apply then).
func checkInitrdInit(f *os.File, path string, magic []byte) error {
	// f is the initrd CheckInitrd opened (and checked is a regular file), read from the start.
	var r io.Reader = io.NewSectionReader(f, 0, 1<<62)
	if bytes.HasPrefix(magic, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(r)
		if err != nil {
			return errdefs.InvalidArgument("initrd", path, "is not valid gzip: "+err.Error())
		}
		defer zr.Close()
		r = zr
	} else if !bytes.HasPrefix(magic, []byte("07070")) {
		return nil
	}
	init, err := findNewcInit(io.LimitReader(r, maxInitScan))
	if err != nil || init == nil {
		return nil // a malformed archive is the kernel's to judge; only a found /init is checked
	}
	if why := DynamicELF(bytes.NewReader(init)); why != "" {
		return errdefs.WithHint(errdefs.InvalidArgument("initrd", path, "its /init "+why), StaticAgentHint)
	}
	return nil
}

// maxInitSize caps the /init read into memory; a static agent is ~10 MiB.
const maxInitSize = 64 << 20

// findNewcInit returns the contents of the regular file "init" of the first newc archive in
// r, or nil when there is none before the trailer.
func findNewcInit(r io.Reader) ([]byte, error) {
	var off int64
	read := func(n int64) ([]byte, error) {
		b := make([]byte, n)
		k, err := io.ReadFull(r, b)
		off += int64(k)
		return b, err
	}
	skip := func(n int64) error {
		k, err := io.CopyN(io.Discard, r, n)
		off += k
		return err
	}
	pad := func() error { return skip((4 - off%4) % 4) }
	for {
		hdr, err := read(110)
		if err != nil {
			return nil, err
		}
		if !bytes.HasPrefix(hdr, []byte("07070")) {
			return nil, errors.New("bad cpio magic")
		}
		field := func(i int) (int64, error) {
			return strconv.ParseInt(string(hdr[6+8*i:14+8*i]), 16, 64)
		}
		mode, err1 := field(1)
		size, err2 := field(6)
		nameLen, err3 := field(11)
		if err := errors.Join(err1, err2, err3); err != nil || nameLen > 4096 {
			return nil, fmt.Errorf("bad cpio header: %v", err)
		}
		nb, err := read(nameLen)
		if err != nil {
			return nil, err
		}
		name := strings.TrimPrefix(string(bytes.TrimRight(nb, "\x00")), "./")
		if name == "TRAILER!!!" {
			return nil, nil
		}
		if err := pad(); err != nil {
			return nil, err
		}
		if name == "init" && mode&0o170000 == 0o100000 && size <= maxInitSize {
			return read(size)
		}
		if err := skip(size); err != nil {
			return nil, err
		}
		if err := pad(); err != nil {
			return nil, err
		}
	}
}
