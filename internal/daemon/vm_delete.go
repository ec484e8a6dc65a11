package daemon

import (
	"context"
	"fmt"
	"os"

	"banger/internal/errdefs"
	"banger/internal/model"
)

// deleteVM removes a VM, its disks and its DNS name. A running VM needs force, and is then
// killed rather than shut down cleanly: its disks are deleted anyway, so a clean guest
// shutdown would only cost time (it is most of `vm run --rm`'s teardown).
func (d *Daemon) deleteVM(ctx context.Context, ref string, force bool) (*model.VM, error) {
	vm, rt, err := d.lockVM(ctx, ref)
	if err != nil {
		return nil, err
	}
	defer rt.mu.Unlock()
	if vm.State == model.VMRunning || vm.State == model.VMStarting || vm.State == model.VMStopping {
		if !force {
			return nil, errdefs.WithHint(errdefs.New(errdefs.ErrConflict, "vm %s is %s", vm.Name, vm.State),
				"stop it first (banger vm stop "+vm.Name+") or delete with --force")
		}
		if err := d.stopLocked(ctx, rt, vm, 0, false); err != nil {
			return nil, fmt.Errorf("stopping vm %s before delete: %w", vm.Name, err)
		}
	}
	if err := os.RemoveAll(vm.Dir); err != nil {
		return nil, fmt.Errorf("removing vm directory: %w", err)
	}
	if err := d.store.DeleteVM(ctx, vm.ID); err != nil {
		return nil, err
	}
	d.dns.Remove(vm.Name)
	d.dropRuntime(vm.ID)
	return vm, nil
}
