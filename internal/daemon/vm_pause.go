package daemon

import (
	"context"
	"fmt"

	"banger/internal/errdefs"
	"banger/internal/model"
	"banger/internal/oplog"
	"banger/internal/vmm"
)

// pauseVM is vm.pause: the guest's vCPUs stop; its memory, devices, tap and processes stay.
// paused is recorded only after the VMM confirms, so a crash between the two leaves a row
// saying running for a stopped guest; reconcile asks the VMM and corrects it (see
// recoverVM).
func (d *Daemon) pauseVM(ctx context.Context, ref string) (*model.VM, error) {
	vm, rt, err := d.lockVM(ctx, ref)
	if err != nil {
		return nil, err
	}
	defer rt.mu.Unlock()
	if vm.State != model.VMRunning {
		return nil, errdefs.New(errdefs.ErrConflict, "vm %s is %s; only a running vm can be paused", vm.Name, vm.State)
	}
	if err := d.pauseLocked(ctx, rt, vm); err != nil {
		return nil, err
	}
	return vm, nil
}

// pauseLocked pauses a running vm and records it paused. The caller holds rt.mu.
func (d *Daemon) pauseLocked(ctx context.Context, rt *vmRuntime, vm *model.VM) error {
	p, err := d.pauser(rt, vm)
	if err != nil {
		return err
	}
	d.detachAgent(ctx, rt, vm)
	if err := p.Pause(ctx); err != nil {
		rt.endDetach()
		return errdefs.New(errdefs.ErrUnavailable, "pausing vm %s: %w", vm.Name, err)
	}
	if err := d.move(ctx, vm, model.VMPaused, nil); err != nil {
		// The row moved under us (it cannot while we hold the lock, but the store is the
		// judge): do not leave a guest frozen that the record calls running.
		_ = p.Resume(context.WithoutCancel(ctx))
		rt.endDetach()
		return fmt.Errorf("recording vm %s paused: %w", vm.Name, err)
	}
	oplog.Stage(ctx, "vm_paused")
	return nil
}

// resumeVM is vm.resume.
func (d *Daemon) resumeVM(ctx context.Context, ref string) (*model.VM, error) {
	vm, rt, err := d.lockVM(ctx, ref)
	if err != nil {
		return nil, err
	}
	defer rt.mu.Unlock()
	if vm.State != model.VMPaused {
		return nil, errdefs.New(errdefs.ErrConflict, "vm %s is %s; only a paused vm can be resumed", vm.Name, vm.State)
	}
	if err := d.resumeLocked(ctx, rt, vm); err != nil {
		return nil, err
	}
	return vm, nil
}

// resumeLocked resumes a paused vm and records it running. The VMM goes first: a crash
// after it leaves paused recorded for a running guest, which reconcile corrects.
func (d *Daemon) resumeLocked(ctx context.Context, rt *vmRuntime, vm *model.VM) error {
	p, err := d.pauser(rt, vm)
	if err != nil {
		return err
	}
	if err := p.Resume(ctx); err != nil {
		return errdefs.New(errdefs.ErrUnavailable, "resuming vm %s: %w", vm.Name, err)
	}
	rt.endDetach()
	if err := d.move(ctx, vm, model.VMRunning, nil); err != nil {
		return fmt.Errorf("recording vm %s running: %w", vm.Name, err)
	}
	oplog.Stage(ctx, "vm_resumed")
	return nil
}

func (d *Daemon) pauser(rt *vmRuntime, vm *model.VM) (vmm.Pauser, error) {
	m := rt.getMachine()
	if m == nil {
		return nil, errdefs.New(errdefs.ErrConflict, "vm %s has no VMM this daemon holds (state %s)", vm.Name, vm.State)
	}
	return vmm.AsPauser(m, vm.VMM)
}

// runStater is what reconcile asks a re-adopted VMM: whether its guest is paused.
type runStater interface {
	Status(ctx context.Context) (string, error)
}

// vmmPaused reports whether m's guest is paused, and whether that could be learnt.
func vmmPaused(ctx context.Context, m vmm.Machine) (paused, known bool) {
	s, ok := m.(runStater)
	if !ok {
		return false, false
	}
	st, err := s.Status(ctx)
	if err != nil {
		return false, false
	}
	// qemu: "paused" (also "postmigrate" after a snapshot's migrate); firecracker: "Paused".
	switch st {
	case "paused", "postmigrate", "Paused":
		return true, true
	}
	return false, true
}
