package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"banger/internal/agentproto"
	"banger/internal/errdefs"
	"banger/internal/model"
	"banger/internal/oplog"
	"banger/internal/rpc"
	"banger/internal/vmm"
	"banger/internal/vmm/qemu"
)

// Shared folders (`--mount`): unlike a workspace, which the CLI packs as the user, a
// shared folder is a host path the daemon hands to virtiofsd, which then reads (and for
// :rw writes) it as the daemon's user. So the daemon only accepts mounts from a client
// that could do the same itself: its own user, or root (SO_PEERCRED of the request's
// connection). Another member of the socket's group is refused; see docs/security.md.

// authorizeMounts refuses mounts from a client that is neither the daemon's user nor root.
func authorizeMounts(ctx context.Context) error {
	cred, ok := rpc.Peer(ctx)
	if !ok {
		return errdefs.New(errdefs.ErrPermissionDenied, "%s: the caller's identity is unknown (not a unix socket client); shared folders are refused", model.MountFlag)
	}
	if cred.Uid == 0 || int(cred.Uid) == os.Geteuid() {
		return nil
	}
	return errdefs.WithHint(errdefs.New(errdefs.ErrPermissionDenied,
		"%s: uid %d may not share host directories through this daemon, which runs as uid %d and would read them as itself",
		model.MountFlag, cred.Uid, os.Geteuid()), "use --workspace (a copy packed as you), or run your own bangerd")
}

// resolveMounts checks mounts from a request and returns them with their host paths'
// symlinks resolved: each HOSTDIR must be absolute and an existing directory. Nothing is
// created.
func (d *Daemon) resolveMounts(ctx context.Context, ms []model.Mount) ([]model.Mount, error) {
	if err := authorizeMounts(ctx); err != nil {
		return nil, err
	}
	if err := d.checkMountDriver(ctx); err != nil {
		return nil, err
	}
	out := make([]model.Mount, 0, len(ms))
	for _, m := range ms {
		value := m.HostDir + ":" + m.GuestPath
		if !filepath.IsAbs(m.HostDir) {
			return nil, errdefs.InvalidArgument(model.MountFlag, value, "HOSTDIR must be absolute (the CLI resolves it against its working directory)")
		}
		if err := model.ValidateMountGuestPath(value, m.GuestPath); err != nil {
			return nil, err
		}
		real, err := filepath.EvalSymlinks(m.HostDir)
		if err != nil {
			reason := err.Error()
			if pe, ok := errors.AsType[*fs.PathError](err); ok {
				reason = pe.Err.Error()
			}
			return nil, errdefs.InvalidArgument(model.MountFlag, value, "HOSTDIR "+m.HostDir+" is not accessible: "+reason)
		}
		fi, err := os.Stat(real)
		if err != nil {
			return nil, errdefs.InvalidArgument(model.MountFlag, value, "HOSTDIR "+m.HostDir+" is not accessible: "+err.Error())
		}
		if !fi.IsDir() {
			return nil, errdefs.InvalidArgument(model.MountFlag, value, "HOSTDIR "+m.HostDir+" is not a directory")
		}
		if strings.Contains(real, "\n") {
			return nil, errdefs.InvalidArgument(model.MountFlag, value, "HOSTDIR must not contain a newline")
		}
		out = append(out, model.Mount{HostDir: real, GuestPath: m.GuestPath, ReadOnly: m.ReadOnly})
	}
	if err := model.ValidateMounts(out); err != nil {
		return nil, err
	}
	return out, nil
}

// checkMountDriver refuses mounts when VMs would run under a VMM without shared folders.
func (d *Daemon) checkMountDriver(ctx context.Context) error {
	var drv vmm.Driver
	var err error
	if d.cfg.VMM == "auto" {
		drv, _, err = d.pickDriver(ctx)
	} else {
		// A configured VMM is refused for what it is, whether or not it runs here.
		drv, err = d.driver(d.cfg.VMM)
	}
	if err != nil {
		return err
	}
	if !vmm.CanShare(drv) {
		return errdefs.InvalidArgument(model.MountFlag, drv.Name(), drv.Name()+" "+vmm.ErrNoSharesMessage)
	}
	return nil
}

// checkMountsAgainstWorkspace refuses a mount over or under the workspace's mount point.
func checkMountsAgainstWorkspace(ms []model.Mount, ws string) error {
	if ws == "" {
		return nil
	}
	for _, m := range ms {
		if m.GuestPath == ws || strings.HasPrefix(m.GuestPath, ws+"/") || strings.HasPrefix(ws, m.GuestPath+"/") {
			return errdefs.InvalidArgument(model.MountFlag, m.HostDir+":"+m.GuestPath, "GUESTPATH overlaps the workspace at "+ws)
		}
	}
	return nil
}

// shareTag is the virtiofs tag of a VM's i-th mount.
func shareTag(i int) string { return "bgr" + strconv.Itoa(i) }

// addMounts puts vm's mounts into its spec: shares for the driver, and where the guest
// mounts them on the kernel command line.
func addMounts(s *vmm.Spec, vm *model.VM, args []string) []string {
	if len(vm.Mounts) == 0 {
		return args
	}
	var gm []agentproto.Mount
	for i, m := range vm.Mounts {
		tag := shareTag(i)
		s.Shares = append(s.Shares, vmm.Share{Tag: tag, Source: m.HostDir, ReadOnly: m.ReadOnly})
		gm = append(gm, agentproto.Mount{Tag: tag, Path: m.GuestPath, ReadOnly: m.ReadOnly})
	}
	return append(args, agentproto.MountsParam(gm))
}

// refuseMountsOnDriver is a start's check: a VM with mounts cannot run on drv.
func refuseMountsOnDriver(vm *model.VM, drv vmm.Driver) error {
	if len(vm.Mounts) == 0 || vmm.CanShare(drv) {
		return nil
	}
	return errdefs.New(errdefs.ErrConflict, "vm %s has shared folders, but %s %s", vm.Name, drv.Name(), vmm.ErrNoSharesMessage)
}

// virtiofsdBinaries are the base names of shared-folder processes of this daemon's VMs.
func virtiofsdBinaries() []string { return []string{qemu.VirtiofsdBinary} }

// killShareProcs kills every virtiofsd on vm's directory (they exit with their VMM; this
// catches one that did not, or a VMM the daemon never held).
func (d *Daemon) killShareProcs(vmID string) error {
	owned, err := vmm.FindOwned(d.cfg.VMsDir(), virtiofsdBinaries())
	if err != nil {
		return err
	}
	var errs []error
	for _, o := range owned {
		if o.VMID == vmID {
			errs = append(errs, vmm.KillOwned(o, d.cfg.VMsDir(), virtiofsdBinaries(), 5*time.Second))
		}
	}
	return errors.Join(errs...)
}

// sweepShareProcs kills virtiofsd processes of VMs that are not live (or have no row).
func (d *Daemon) sweepShareProcs(ctx context.Context) error {
	owned, err := vmm.FindOwned(d.cfg.VMsDir(), virtiofsdBinaries())
	if err != nil {
		return err
	}
	var errs []error
	for _, o := range owned {
		d.withIdle(o.VMID, func(vm *model.VM) {
			if vm != nil && vm.State.Live() {
				return
			}
			oplog.G(ctx).Warn("reconcile: killing virtiofsd of a vm that is not live", "pid", o.PID, "vm_id", o.VMID)
			if err := vmm.KillOwned(o, d.cfg.VMsDir(), virtiofsdBinaries(), 5*time.Second); err != nil {
				errs = append(errs, fmt.Errorf("killing stray virtiofsd: %w", err))
			}
		})
	}
	return errors.Join(errs...)
}
