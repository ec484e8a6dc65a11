package imagebuild

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
)

// signed appends a PKCS#7-style module signature trailer to body, as sign-file does.
func signed(body []byte, sig []byte) []byte {
	info := make([]byte, moduleSigInfoLen)
	info[2] = pkeyIDPKCS7
	binary.BigEndian.PutUint32(info[8:], uint32(len(sig)))
	out := append(append(append([]byte{}, body...), sig...), info...)
	return append(out, moduleSigMagic...)
}

func TestStripModuleSignature(t *testing.T) {
	body := []byte("\x7fELF module\x00depends=virtio\x00")
	if got, ok := stripModuleSignature(signed(body, bytes.Repeat([]byte{0xab}, 300))); !ok || !bytes.Equal(got, body) {
		t.Errorf("signed module: got %q, %v", got, ok)
	}
	// Anything that is not a well-formed signature stays as it is.
	tooLong := signed(body, []byte("sig"))
	binary.BigEndian.PutUint32(tooLong[len(tooLong)-len(moduleSigMagic)-4:], 1<<20)
	notPKCS7 := signed(body, []byte("sig"))
	notPKCS7[len(notPKCS7)-len(moduleSigMagic)-moduleSigInfoLen+2] = 1
	for name, in := range map[string][]byte{
		"unsigned":          body,
		"only the magic":    []byte(moduleSigMagic),
		"length past start": tooLong,
		"not PKCS#7":        notPKCS7,
		"not an ELF":        signed([]byte("junk"), []byte("sig")),
	} {
		if got, ok := stripModuleSignature(in); ok || !bytes.Equal(got, in) {
			t.Errorf("%s: changed to %q (%v)", name, got, ok)
		}
	}
}

func TestModuleSigForced(t *testing.T) {
	dir := t.TempDir()
	for cfg, want := range map[string]bool{
		"CONFIG_MODULE_SIG=y\n# CONFIG_MODULE_SIG_FORCE is not set\n": false,
		"CONFIG_MODULE_SIG=y\nCONFIG_MODULE_SIG_FORCE=y\n":            true,
	} {
		p := filepath.Join(dir, "config")
		os.WriteFile(p, []byte(cfg), 0o644)
		if got, err := moduleSigForced(p); err != nil || got != want {
			t.Errorf("%q: forced=%v err=%v, want %v", cfg, got, err, want)
		}
	}
	if got, err := moduleSigForced(filepath.Join(dir, "missing")); err == nil || !got {
		t.Errorf("a missing configuration: forced=%v err=%v, want forced with an error", got, err)
	}
}

// TestBuildInitrdDropsSignatures: only modules marked so lose their signature, and the
// order file lists each module's dependencies.
func TestBuildInitrdDropsSignatures(t *testing.T) {
	dir := t.TempDir()
	agent := filepath.Join(dir, "agent")
	os.WriteFile(agent, []byte("agent"), 0o755)
	body := []byte("\x7fELF module\x00depends=virtio,virtio_ring\x00")
	var mods []ModuleFile
	for _, n := range []string{"keep", "drop"} {
		p := filepath.Join(dir, n+".ko")
		os.WriteFile(p, signed(body, []byte("signature")), 0o644)
		mods = append(mods, ModuleFile{Name: n, Path: p, DropSignature: n == "drop"})
	}
	out := filepath.Join(dir, "initrd.img")
	if err := BuildInitrd(context.Background(), out, agent, mods); err != nil {
		t.Fatal(err)
	}
	entries := readNewcFile(t, out)
	got := map[string][]byte{}
	for _, e := range entries {
		got[e.Name] = e.Data
	}
	if d := got[InitrdModulesDir+"/keep.ko"]; !bytes.Equal(d, signed(body, []byte("signature"))) {
		t.Errorf("keep.ko lost its signature: %q", d)
	}
	if d := got[InitrdModulesDir+"/drop.ko"]; !bytes.Equal(d, body) {
		t.Errorf("drop.ko: %q, want it unsigned", d)
	}
	if o := string(got[InitrdModuleList]); o != "keep.ko deps=virtio,virtio_ring\ndrop.ko deps=virtio,virtio_ring\n" {
		t.Errorf("order file %q", o)
	}
}

// TestDebianModulesUnsigned: the real kernel's modules are signed, its configuration does
// not force signatures, and a module without its signature is still a whole ELF object
// with its .modinfo.
func TestDebianModulesUnsigned(t *testing.T) {
	k := testKernel(t)
	forced, err := moduleSigForced(k.ConfigPath())
	if err != nil || forced {
		t.Fatalf("%s: forced=%v err=%v", k.ConfigPath(), forced, err)
	}
	mods, err := GuestModules(k.ModulesDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mods {
		data, err := ReadModule(m.Path)
		if err != nil {
			t.Fatal(err)
		}
		stripped, ok := stripModuleSignature(data)
		if !ok {
			t.Errorf("%s: no signature found", m.Name)
			continue
		}
		f, err := elf.NewFile(bytes.NewReader(stripped))
		if err != nil {
			t.Errorf("%s without its signature: %v", m.Name, err)
			continue
		}
		if f.Section(".modinfo") == nil {
			t.Errorf("%s without its signature has no .modinfo", m.Name)
		}
	}
}
