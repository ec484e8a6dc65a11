package daemon

import (
	"context"
	"time"

	"banger/internal/errdefs"
	"banger/internal/guest"
	"banger/internal/model"
	"banger/internal/opid"
	"banger/internal/rpc"
	"banger/internal/vmm"
)

const defaultStopTimeout = 20 * time.Second

// stopVM stops a running VM: the agent powers the guest off (filesystems unmounted
// cleanly); if the guest does not exit by the deadline the VMM is asked (ACPI /
// Ctrl-Alt-Del), and finally killed.
func (d *Daemon) stopVM(ctx context.Context, ref string, timeout time.Duration) (*model.VM, error) {
	vm, rt, err := d.lockVM(ctx, ref)
	if err != nil {
		return nil, err
	}
	defer rt.mu.Unlock()
	if vm.State != model.VMRunning && vm.State != model.VMStarting && vm.State != model.VMStopping {
		return nil, errdefs.New(errdefs.ErrConflict, "vm %s is not running (state %s)", vm.Name, vm.State)
	}
	if err := d.stopLocked(ctx, rt, vm, timeout, true); err != nil {
		return nil, err
	}
	return vm, nil
}

// stopLocked stops vm; graceful false kills the VMM at once, for a VM whose disks are
// about to be deleted, where a clean guest shutdown would only cost time.
func (d *Daemon) stopLocked(ctx context.Context, rt *vmRuntime, vm *model.VM, timeout time.Duration, graceful bool) error {
	if timeout <= 0 {
		timeout = defaultStopTimeout
	}
	log := rpc.Logger(ctx, d.log).With("vm", vm.Name)
	vm.State = model.VMStopping
	d.store.UpdateVM(ctx, vm)
	m := rt.getMachine()
	if m != nil {
		how := "killed (discarded)"
		if graceful {
			how = d.haltMachine(ctx, rt, m, timeout)
		} else {
			m.Kill()
			waitCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			vmm.Wait(waitCtx, m)
			cancel()
		}
		log.Info("vm stopped", "how", how)
		rpc.Stage(ctx, d.log, "vmm_exited", "how", how)
	}
	rt.resetSession()
	rt.setMachine(nil)
	d.teardownNetwork(ctx, vm)
	vm.State, vm.PID = model.VMStopped, 0
	return d.store.UpdateVM(context.WithoutCancel(ctx), vm)
}

// haltMachine escalates from a guest shutdown to a kill and reports which step worked.
func (d *Daemon) haltMachine(ctx context.Context, rt *vmRuntime, m vmm.Machine, timeout time.Duration) string {
	log := rpc.Logger(ctx, d.log)
	deadline, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	if st, err := rt.openStream(deadline); err == nil {
		err = guest.Shutdown(deadline, st, opid.From(ctx))
		st.Close()
		if err != nil {
			log.Warn("guest agent shutdown failed", "error", err.Error())
		} else if vmm.Wait(deadline, m) == nil {
			return "guest shutdown"
		}
	} else {
		log.Warn("guest agent unreachable for shutdown", "error", err.Error())
	}
	grace, cancel2 := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel2()
	if err := m.Shutdown(grace); err == nil && vmm.Wait(grace, m) == nil {
		return "vmm shutdown"
	}
	m.Kill()
	killWait, cancel3 := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel3()
	vmm.Wait(killWait, m)
	return "killed"
}

// restartVM stops (if running) and starts vm.
func (d *Daemon) restartVM(ctx context.Context, ref string, timeout time.Duration) (*model.VM, error) {
	vm, rt, err := d.lockVM(ctx, ref)
	if err != nil {
		return nil, err
	}
	defer rt.mu.Unlock()
	if vm.State == model.VMRunning || vm.State == model.VMStarting {
		if err := d.stopLocked(ctx, rt, vm, timeout, true); err != nil {
			return nil, err
		}
	}
	if err := d.startRecorded(ctx, rt, vm); err != nil {
		return nil, err
	}
	return vm, nil
}
