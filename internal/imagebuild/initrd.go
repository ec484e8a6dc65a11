package imagebuild

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"banger/internal/agentproto"
	"banger/internal/errdefs"
)

// Where BuildInitrd puts things inside the initramfs; the guest agent reads the same paths.
const (
	InitrdModulesDir = "lib/modules/banger"
	InitrdModuleList = InitrdModulesDir + "/order"
)

// BuildInitrd writes an initramfs to out holding the guest agent as /init, the given kernel
// modules (uncompressed) under /lib/modules/banger with their load order and dependencies
// in /lib/modules/banger/order (agentproto.ModuleOrderLine), the mount-point directories the agent uses, and /dev/console
// (c 5 1) so the kernel opens a console for /init before devtmpfs is mounted.
//
// The archive is deliberately not compressed: it is ~10 MB (a static agent plus a few
// hundred KB of modules), QEMU and Firecracker copy it into guest memory at host speed, and
// gunzip inside the guest costs far more, above all under TCG where guest instructions are
// emulated. Disk cost is small and the bundle is stored once.
func BuildInitrd(ctx context.Context, out string, agentPath string, modules []ModuleFile) error {
	agent, err := os.Open(agentPath)
	if err != nil {
		if os.IsNotExist(err) {
			return errdefs.WithHint(errdefs.InvalidArgument("agent", agentPath, "does not exist"),
				"build the guest agent (go build ./cmd/banger-agent) or set agent_path in the config")
		}
		return fmt.Errorf("opening guest agent: %w", err)
	}
	defer agent.Close()
	fi, err := agent.Stat()
	if err != nil {
		return fmt.Errorf("stat guest agent: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return errdefs.InvalidArgument("agent", agentPath, "is not a regular file")
	}

	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-")
	if err != nil {
		return fmt.Errorf("creating initrd: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	defer tmp.Close()

	w := newNewcWriter(tmp)
	for _, d := range []string{"dev", "proc", "sys", "run", "mnt", "newroot", "lib", "lib/modules", InitrdModulesDir} {
		if err := w.dir(d, 0o755); err != nil {
			return fmt.Errorf("writing initrd: %w", err)
		}
	}
	if err := w.dir("tmp", 0o1777); err != nil {
		return fmt.Errorf("writing initrd: %w", err)
	}
	if err := w.charDev("dev/console", 0o600, 5, 1); err != nil {
		return fmt.Errorf("writing initrd: %w", err)
	}
	if err := w.fileFrom("init", 0o755, fi.Size(), agent); err != nil {
		return fmt.Errorf("writing initrd: %w", err)
	}
	var order strings.Builder
	seen := map[string]bool{}
	for _, m := range modules {
		if err := ctx.Err(); err != nil {
			return err
		}
		if m.Name == "" || strings.ContainsAny(m.Name, "/ \t\r\n") || seen[m.Name] {
			return errdefs.InvalidArgument("module", m.Name, "must be a unique module name")
		}
		seen[m.Name] = true
		data, err := ReadModule(m.Path)
		if err != nil {
			return fmt.Errorf("reading module %s: %w", m.Name, err)
		}
		if m.DropSignature {
			data, _ = stripModuleSignature(data)
		}
		file := m.Name + ".ko"
		if err := w.file(path.Join(InitrdModulesDir, file), 0o644, data); err != nil {
			return fmt.Errorf("writing initrd: %w", err)
		}
		// The dependencies travel in the order file, so the guest need not read the
		// modules to find them (agentproto/modorder.go).
		order.WriteString(agentproto.ModuleOrderLine(file, agentproto.ModuleDepends(data)) + "\n")
	}
	if err := w.file(InitrdModuleList, 0o644, []byte(order.String())); err != nil {
		return fmt.Errorf("writing initrd: %w", err)
	}
	if err := w.close(); err != nil {
		return fmt.Errorf("writing initrd: %w", err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("writing initrd: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing initrd: %w", err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return fmt.Errorf("writing initrd: %w", err)
	}
	return nil
}

// BuildInitOnlyInitrd writes an initramfs to out holding just /init (a copy of initPath)
// and /dev/console: the smallest archive a kernel can boot into. The floor benchmark uses
// it to measure what booting costs before any of banger's own init runs.
func BuildInitOnlyInitrd(out, initPath string) error {
	data, err := os.ReadFile(initPath)
	if err != nil {
		return fmt.Errorf("reading init %s: %w", initPath, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-")
	if err != nil {
		return fmt.Errorf("creating initrd: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	defer tmp.Close()
	w := newNewcWriter(tmp)
	err = w.dir("dev", 0o755)
	if err == nil {
		err = w.charDev("dev/console", 0o600, 5, 1)
	}
	if err == nil {
		err = w.file("init", 0o755, data)
	}
	if err == nil {
		err = w.close()
	}
	if err == nil {
		err = tmp.Close()
	}
	if err == nil {
		err = os.Rename(tmp.Name(), out)
	}
	if err != nil {
		return fmt.Errorf("writing initrd %s: %w", out, err)
	}
	return nil
}
