package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"time"

	"banger/internal/errdefs"
	"banger/internal/guest"
	"banger/internal/model"
	"banger/internal/opid"
	"banger/internal/vmm"
)

// snapshotDriver is the driver that took sn, if it can run here: a snapshot only resumes
// on the VMM (and acceleration) it was taken with.
func (d *Daemon) snapshotDriver(ctx context.Context, sn *model.Snapshot) (vmm.Driver, vmm.Info, error) {
	drv, err := d.driver(sn.VMM)
	if err != nil {
		return nil, vmm.Info{}, errdefs.New(errdefs.ErrConflict, "snapshot %s was taken by %q, which this daemon does not have", sn.Name, sn.VMM)
	}
	if _, err := vmm.AsRestorer(drv); err != nil {
		return nil, vmm.Info{}, err
	}
	info := drv.Probe(ctx)
	if !info.Available {
		return nil, info, errdefs.WithHint(errdefs.New(errdefs.ErrUnavailable, "snapshot %s needs %s, which cannot run here: %s", sn.Name, sn.VMM, info.Detail), info.Fix)
	}
	return drv, info, nil
}

func (d *Daemon) restoreMachine(ctx context.Context, drv vmm.Driver, spec vmm.Spec, sn *model.Snapshot) (vmm.Machine, error) {
	r, err := vmm.AsRestorer(drv)
	if err != nil {
		return nil, err
	}
	info := vmm.RestoreInfo{Driver: sn.VMM, Accel: sn.Accel, Machine: sn.Machine, BootArgs: sn.BootArgs}
	return r.Restore(ctx, spec, info, filepath.Join(sn.Dir, snapshotMemName))
}

// identityTimeout bounds the identity request; the agent answered a ping already.
const identityTimeout = 30 * time.Second

// applyIdentity tells a restored guest who it is now (name, address, MAC, machine id,
// clock, entropy) and then connects its NIC: until the guest has given up the snapshot's
// address and MAC, it must not talk on the bridge, where the source VM may still use them.
func (d *Daemon) applyIdentity(ctx context.Context, rt *vmRuntime, vm *model.VM, m vmm.Machine) error {
	var mid, seed [32]byte
	rand.Read(mid[:16])
	rand.Read(seed[:])
	id := guest.Identity{Name: vm.Name, MachineID: hex.EncodeToString(mid[:16]), Seed: hex.EncodeToString(seed[:]),
		UnixNanos: time.Now().UnixNano()}
	if d.cfg.Network.Enabled {
		id.Addr = fmt.Sprintf("%s/%d", vm.GuestIP, d.prefix.Bits())
		id.Gateway = d.prefix.Addr().String()
		id.DNS = []string{d.prefix.Addr().String()}
		id.MAC = vm.MAC
	}
	ictx, cancel := context.WithTimeout(ctx, identityTimeout)
	defer cancel()
	st, err := rt.openStream(ictx)
	if err != nil {
		return errdefs.New(errdefs.ErrUnavailable, "telling restored vm %s its identity: %w", vm.Name, err)
	}
	if err := guest.SetIdentity(ictx, st, opid.From(ctx), id); err != nil {
		return errdefs.New(errdefs.ErrUnavailable, "telling restored vm %s its identity: %w", vm.Name, err)
	}
	if l, ok := m.(vmm.Linker); ok && d.cfg.Network.Enabled {
		if err := l.SetLink(ictx, true); err != nil {
			return fmt.Errorf("connecting restored vm %s's NIC: %w", vm.Name, err)
		}
	}
	return nil
}
