package daemon

import (
	"context"

	"banger/internal/errdefs"
	"banger/internal/model"
)

// renameVM gives a VM a new name; its DNS record follows at once. A running guest keeps its
// hostname until its next start, when the new name is passed at boot.
func (d *Daemon) renameVM(ctx context.Context, ref, name string) (*model.VM, error) {
	if err := model.ValidateName("name", name); err != nil {
		return nil, err
	}
	vm, rt, err := d.lockVM(ctx, ref)
	if err != nil {
		return nil, err
	}
	defer rt.mu.Unlock()
	if vm.Name == name {
		return vm, nil
	}
	if vm.State == model.VMDeleting {
		return nil, errdefs.New(errdefs.ErrConflict, "vm %s is being deleted", vm.Name)
	}
	// Names are reserved under the create lock; the store's UNIQUE constraint backs it.
	d.reserveMu.Lock()
	defer d.reserveMu.Unlock()
	if other, err := d.store.ResolveVM(ctx, name); err == nil && other.Name == name {
		return nil, errdefs.New(errdefs.ErrAlreadyExists, "vm name %q already exists", name)
	}
	old := vm.Name
	vm.Name = name
	if err := d.store.UpdateVM(ctx, vm); err != nil {
		return nil, err
	}
	d.dns.Remove(old)
	d.publishDNS(vm)
	return vm, nil
}
