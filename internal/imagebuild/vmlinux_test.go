package imagebuild

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"banger/internal/errdefs"
)

func TestExtractVmlinuxDebianKernel(t *testing.T) {
	k := testKernel(t)
	out := filepath.Join(t.TempDir(), "vmlinux")
	if err := ExtractVmlinux(k.VmlinuzPath, out); err != nil {
		t.Fatal(err)
	}
	machine, entry := elfEntry(t, out)
	if machine != uint16(elf.EM_X86_64) || entry == 0 {
		t.Fatalf("machine %d entry %#x", machine, entry)
	}
	// QEMU boots an ELF kernel only through its PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY).
	if err := CheckPVHEntry(out); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(out + ".tmp"); !os.IsNotExist(err) {
		t.Fatal("temporary file left behind")
	}
}

func TestExtractVmlinuxRejectsGarbage(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk")
	os.WriteFile(junk, make([]byte, 8192), 0o644)
	err := ExtractVmlinux(junk, filepath.Join(dir, "out"))
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("want invalid argument, got %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "out")); !os.IsNotExist(err) {
		t.Fatal("output written for a bad kernel")
	}
}

func TestExtractVmlinuxTruncatedPayload(t *testing.T) {
	k := testKernel(t)
	img, err := os.ReadFile(k.VmlinuzPath)
	if err != nil {
		t.Fatal(err)
	}
	payload, err := bzPayload(img)
	if err != nil {
		t.Fatal(err)
	}
	// A payload cut short: the block stream ends mid-block and the size trailer is garbage.
	binary.LittleEndian.PutUint32(img[hdrPayloadLength:], uint32(len(payload)/2))
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, img, 0o644)
	if err := ExtractVmlinux(bad, filepath.Join(dir, "out")); err == nil {
		t.Fatal("corrupted payload extracted without error")
	}
	if _, err := os.Stat(filepath.Join(dir, "out")); !os.IsNotExist(err) {
		t.Fatal("output written for a corrupt kernel")
	}
}
