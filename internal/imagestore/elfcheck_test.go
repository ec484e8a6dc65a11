package imagestore

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/errdefs"
)

// fakeELF returns a minimal x86-64 ELF executable header, with a PT_INTERP program header
// naming interp when interp is not empty: what a cgo-linked Go binary looks like to the kernel.
func fakeELF(interp string) []byte {
	var b bytes.Buffer
	le := binary.LittleEndian
	ident := [16]byte{0x7f, 'E', 'L', 'F', 2, 1, 1}
	b.Write(ident[:])
	phnum := uint16(0)
	if interp != "" {
		phnum = 1
	}
	binary.Write(&b, le, struct {
		Type, Machine                              uint16
		Version                                    uint32
		Entry, Phoff, Shoff                        uint64
		Flags                                      uint32
		Ehsize, Phentsize, Phnum, Shentsize, Shnum uint16
		Shstrndx                                   uint16
	}{Type: 2, Machine: 62, Version: 1, Entry: 0x401000, Phoff: 64, Ehsize: 64, Phentsize: 56, Phnum: phnum, Shentsize: 64})
	if interp != "" {
		data := append([]byte(interp), 0)
		binary.Write(&b, le, struct {
			Type, Flags          uint32
			Off, Vaddr, Paddr    uint64
			Filesz, Memsz, Align uint64
		}{Type: 3, Flags: 4, Off: 120, Filesz: uint64(len(data)), Memsz: uint64(len(data)), Align: 1})
		b.Write(data)
	}
	return b.Bytes()
}

// newc packs files (name → contents, regular 0755) into an uncompressed newc archive.
func newc(files map[string][]byte) []byte {
	var b bytes.Buffer
	pad := func() {
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
	}
	ino := 0
	add := func(name string, mode int, data []byte) {
		ino++
		fmt.Fprintf(&b, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X", ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
		b.WriteString(name + "\x00")
		pad()
		b.Write(data)
		pad()
	}
	add("dev", 0o40755, nil)
	for name, data := range files {
		add(name, 0o100755, data)
	}
	add("TRAILER!!!", 0, nil)
	return b.Bytes()
}

func writeTemp(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func gz(data []byte) []byte {
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	w.Write(data)
	w.Close()
	return b.Bytes()
}

func TestCheckStaticAgent(t *testing.T) {
	dyn := writeTemp(t, "agent", fakeELF("/lib64/ld-linux-x86-64.so.2"))
	err := CheckStaticAgent("agent", dyn)
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "dynamically linked") ||
		!strings.Contains(err.Error(), dyn) || !strings.Contains(err.Error(), "/lib64/ld-linux-x86-64.so.2") {
		t.Fatalf("dynamic agent: want invalid_argument naming the file and its interpreter, got %v", err)
	}
	if !strings.Contains(errdefs.HintOf(err), "CGO_ENABLED=0") {
		t.Fatalf("hint should say how to build it static, got %q", errdefs.HintOf(err))
	}
	if err := CheckStaticAgent("agent", writeTemp(t, "agent", fakeELF(""))); err != nil {
		t.Fatalf("static ELF refused: %v", err)
	}
}

func TestCheckInitrdRefusesDynamicInit(t *testing.T) {
	dyn := newc(map[string][]byte{"init": fakeELF("/lib64/ld-linux-x86-64.so.2")})
	for name, data := range map[string][]byte{"plain": dyn, "gzip": gz(dyn)} {
		p := writeTemp(t, "initrd.img", data)
		err := CheckInitrd(p)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "/init is dynamically linked") || !strings.Contains(err.Error(), p) {
			t.Fatalf("%s: want invalid_argument naming the initrd and its /init, got %v", name, err)
		}
	}
	static := newc(map[string][]byte{"init": fakeELF(""), "lib/modules/x.ko": []byte("module")})
	for name, data := range map[string][]byte{"plain": static, "gzip": gz(static)} {
		if err := CheckInitrd(writeTemp(t, "initrd.img", data)); err != nil {
			t.Fatalf("%s: static /init refused: %v", name, err)
		}
	}
}
