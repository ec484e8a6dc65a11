package daemon

import (
	"context"

	"banger/internal/errdefs"
	"banger/internal/model"
)

// deleteVM removes a VM, its VMM, network, disks and DNS name. The intent (state deleting)
// is recorded before any step, so a crash or an unreachable root helper leaves a row that
// says so and that reconcile finishes; a VM in deleting is deleted again by a retry. A
// running VM needs force, and is then killed rather than shut down cleanly: its disks are
// deleted anyway, so a clean guest shutdown would only cost time (it is most of
// `vm run --rm`'s teardown).
func (d *Daemon) deleteVM(ctx context.Context, ref string, force bool) (*model.VM, error) {
	vm, rt, err := d.lockVM(ctx, ref)
	if err != nil {
		return nil, err
	}
	defer rt.mu.Unlock()
	if vm.State.Live() && !force {
		return nil, errdefs.WithHint(errdefs.New(errdefs.ErrConflict, "vm %s is %s", vm.Name, vm.State),
			"stop it first (banger vm stop "+vm.Name+") or delete with --force")
	}
	if err := d.destroy(ctx, rt, vm, ""); err != nil {
		return nil, err
	}
	return vm, nil
}
