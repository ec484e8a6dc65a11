package daemon

import (
	"context"
	"errors"

	"banger/internal/errdefs"
	"banger/internal/model"
)

// lockVM resolves ref, takes that VM's lifecycle lock and re-reads its record under the
// lock, since an operation that held it may have changed the VM. The caller unlocks rt.mu.
func (d *Daemon) lockVM(ctx context.Context, ref string) (*model.VM, *vmRuntime, error) {
	vm, err := d.store.ResolveVM(ctx, ref)
	if err != nil {
		return nil, nil, err
	}
	id := vm.ID
	rt := d.runtime(id)
	rt.mu.Lock()
	if vm, err = d.store.GetVM(ctx, vm.ID); err != nil {
		rt.mu.Unlock()
		if errors.Is(err, errdefs.ErrNotFound) {
			// Deleted while we waited (vm run --rm's VM, removed by the daemon itself).
			d.dropRuntime(id)
		}
		return nil, nil, err
	}
	return vm, rt, nil
}
