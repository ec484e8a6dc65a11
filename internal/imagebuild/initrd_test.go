package imagebuild

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestBuildInitrdNewc(t *testing.T) {
	dir := t.TempDir()
	agent := filepath.Join(dir, "agent")
	agentData := bytes.Repeat([]byte("agent!"), 1001) // not a multiple of 4: exercises padding
	os.WriteFile(agent, agentData, 0o700)
	var mods []ModuleFile
	for _, n := range []string{"virtio_ring", "virtio", "overlay"} {
		p := filepath.Join(dir, n+".ko")
		os.WriteFile(p, []byte("\x7fELF module "+n), 0o644)
		mods = append(mods, ModuleFile{Name: n, Path: p})
	}
	out := filepath.Join(dir, "initrd.img")
	if err := BuildInitrd(context.Background(), out, agent, mods); err != nil {
		t.Fatal(err)
	}
	entries := readNewcFile(t, out)
	byName := map[string]cpioEntryInfo{}
	for _, e := range entries {
		byName[e.Name] = e
	}
	init := byName["init"]
	if init.Mode != 0o100755 || !bytes.Equal(init.Data, agentData) {
		t.Fatalf("init: mode %o, %d bytes", init.Mode, len(init.Data))
	}
	if c := byName["dev/console"]; c.Mode != 0o020600 || c.RMajor != 5 || c.RMin != 1 {
		t.Fatalf("dev/console: %+v", c)
	}
	for _, d := range []string{"dev", "proc", "sys", "run", "mnt", "newroot", "tmp", InitrdModulesDir} {
		if e, ok := byName[d]; !ok || e.Mode&0o170000 != 0o040000 {
			t.Errorf("directory %s missing or not a dir", d)
		}
	}
	if byName["tmp"].Mode&0o7777 != 0o1777 {
		t.Errorf("tmp mode %o", byName["tmp"].Mode)
	}
	if got := string(byName[InitrdModuleList].Data); got != "virtio_ring.ko deps=\nvirtio.ko deps=\noverlay.ko deps=\n" {
		t.Fatalf("order file %q", got)
	}
	if got := string(byName[InitrdModulesDir+"/overlay.ko"].Data); got != "\x7fELF module overlay" {
		t.Fatalf("overlay.ko %q", got)
	}

	// Cross-check with GNU cpio when the host has it.
	if cpio, err := exec.LookPath("cpio"); err == nil {
		cmd := exec.Command(cpio, "-t", "--quiet")
		cmd.Stdin, _ = os.Open(out)
		listing, err := cmd.Output()
		if err != nil {
			t.Fatalf("cpio -t: %v", err)
		}
		for _, want := range []string{"init", "dev/console", InitrdModuleList} {
			if !strings.Contains("\n"+string(listing), "\n"+want+"\n") {
				t.Errorf("cpio -t does not list %s:\n%s", want, listing)
			}
		}
	}

	// Same inputs, same bytes: image digests are reproducible.
	out2 := filepath.Join(dir, "initrd2.img")
	if err := BuildInitrd(context.Background(), out2, agent, mods); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(out)
	b, _ := os.ReadFile(out2)
	if !bytes.Equal(a, b) {
		t.Fatal("initrd is not reproducible")
	}
}

func TestBuildInitrdMissingAgent(t *testing.T) {
	out := filepath.Join(t.TempDir(), "initrd.img")
	err := BuildInitrd(context.Background(), out, "/nonexistent/agent", nil)
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/agent") {
		t.Fatalf("want error naming the agent, got %v", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatal("initrd written without an agent")
	}
}
