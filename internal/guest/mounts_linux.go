package guest

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"banger/internal/agentproto"
)

// mountShares mounts the VM's shared folders (virtiofs, tag → path under the new root),
// once the fuse and virtiofs modules are in: the loader loads them only when a virtiofs
// device exists (modVirtioFS), so a VM without shared folders pays nothing.
func mountShares(p agentproto.BootParams, mods *modSet, log *slog.Logger) error {
	if len(p.Mounts) == 0 {
		return nil
	}
	mods.wait(append(transports(), "fuse", "virtiofs")...)
	for _, m := range p.Mounts {
		dst := filepath.Join(newRoot, m.Path)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return fmt.Errorf("creating the mount point %s: %w", m.Path, err)
		}
		flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV)
		if m.ReadOnly {
			flags |= unix.MS_RDONLY
		}
		if err := unix.Mount(m.Tag, dst, "virtiofs", flags, ""); err != nil {
			hint := ""
			if _, serr := os.Stat("/sys/fs/fuse"); serr != nil {
				hint = " (this image's initrd has no virtiofs module: rebuild the image with this banger)"
			}
			return fmt.Errorf("mounting shared folder %s on %s: %w%s", m.Tag, m.Path, err, hint)
		}
		log.Info("shared folder mounted", "tag", m.Tag, "path", m.Path, "read_only", m.ReadOnly)
	}
	return nil
}
