package guest

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

func TestKernelLoadsModules(t *testing.T) {
	proc := t.TempDir()
	if kernelLoadsModules(proc) {
		t.Error("a /proc without modules: a kernel that loads modules")
	}
	if err := os.WriteFile(filepath.Join(proc, "modules"), nil, 0o444); err != nil {
		t.Fatal(err)
	}
	if !kernelLoadsModules(proc) {
		t.Error("a /proc with modules: a kernel without module support")
	}
	// This host's kernel loads modules (Debian's does); the test would not mean much on
	// one built without.
	if _, err := os.Stat("/proc/modules"); err == nil && !kernelLoadsModules("/proc") {
		t.Error("the host's /proc/modules not seen")
	}
}

// An empty module set (what startModules returns for a kernel without modules) neither
// waits nor logs, so init's steps go on at once.
func TestEmptyModSetDoesNotWait(t *testing.T) {
	m := &modSet{l: newModLoader(slog.New(slog.DiscardHandler)), jobs: map[string]*modJob{}}
	m.wait("virtio_mmio", "virtio_blk", "overlay")
	m.finish()
}
