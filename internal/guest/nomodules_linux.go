package guest

import (
	"log/slog"
	"os"
	"path/filepath"

	"banger/internal/model"
)

// A kernel built without module support (CONFIG_MODULES=n, banger's microvm kernel) has
// every driver built in: init must not look for modules, and its boot timeline says so
// (model.GuestStageNoModules in place of modules_loaded) so a user can tell which kind of
// kernel booted.

// kernelLoadsModules reports whether the running kernel can load modules: /proc/modules
// exists only with CONFIG_MODULES.
func kernelLoadsModules(proc string) bool {
	_, err := os.Stat(filepath.Join(proc, "modules"))
	return err == nil
}

// startModules begins loading the initrd's modules, or, on a kernel without module
// support, loads nothing. It returns the load and the boot stage to mark when it is done.
func startModules(dir string, log *slog.Logger) (*modSet, string) {
	l := newModLoader(log)
	if !kernelLoadsModules("/proc") {
		log.Info("kernel has no module support; every driver is built in, no modules loaded")
		return &modSet{l: l, jobs: map[string]*modJob{}}, model.GuestStageNoModules
	}
	return l.start(dir), model.GuestStageModules
}
