package daemon

import (
	"context"
	"fmt"
	"time"

	"banger/internal/agentclient"
	"banger/internal/errdefs"
	"banger/internal/model"
	"banger/internal/opid"
	"banger/internal/oplog"
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
	if !vm.State.Live() {
		return nil, errdefs.New(errdefs.ErrConflict, "vm %s is not running (state %s)", vm.Name, vm.State)
	}
	if err := d.stopLocked(ctx, rt, vm, timeout); err != nil {
		return nil, err
	}
	return vm, nil
}

// stopLocked stops vm: stopping is recorded first, then the guest is halted, then the
// network torn down and stopped recorded. A teardown the root helper cannot do leaves the
// VM stopped with the reason as its last error; reconcile removes the leftovers when the
// helper answers again (the row keeps holding the guest IP meanwhile).
func (d *Daemon) stopLocked(ctx context.Context, rt *vmRuntime, vm *model.VM, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = defaultStopTimeout
	}
	log := oplog.G(ctx).With("vm", vm.Name)
	wasPaused := vm.State == model.VMPaused
	if err := d.move(ctx, vm, model.VMStopping, nil); err != nil {
		return err
	}
	if m := rt.getMachine(); m != nil && wasPaused {
		// A paused guest cannot run its agent's shutdown; resume it so it stops cleanly
		// (if it cannot be resumed, the escalation below ends in a kill).
		if p, err := vmm.AsPauser(m, vm.VMM); err == nil {
			if err := p.Resume(ctx); err != nil {
				log.Warn("resuming paused vm for its shutdown failed", "error", err.Error())
			}
		}
		// The pause may have detached the agent (detach.go); the shutdown needs a session.
		rt.endDetach()
	}
	if m := rt.getMachine(); m != nil {
		how := d.haltMachine(ctx, rt, m, timeout)
		log.Info("vm stopped", "how", how)
		oplog.Stage(ctx, "vmm_exited", "how", how)
	}
	// A VMM this daemon does not hold (its start was interrupted) must not outlive the stop.
	if err := d.killVMMs(ctx, rt, vm); err != nil {
		return d.recordError(ctx, vm, fmt.Errorf("stopping vm %s: %w", vm.Name, err))
	}
	note := ""
	if err := d.teardownNetwork(ctx, vm); err != nil {
		note = err.Error() + " (bangerd retries)"
	}
	return d.move(ctx, vm, model.VMStopped, func(v *model.VM) { v.PID, v.PIDStart, v.LastError = 0, 0, note })
}

// recordError moves vm to error with cause as its last error and returns cause.
func (d *Daemon) recordError(ctx context.Context, vm *model.VM, cause error) error {
	if err := d.move(ctx, vm, model.VMError, func(v *model.VM) { v.LastError = cause.Error() }); err != nil {
		return fmt.Errorf("%w (recording it: %w)", cause, err)
	}
	return cause
}

// haltMachine escalates from a guest shutdown to a kill and reports which step worked.
func (d *Daemon) haltMachine(ctx context.Context, rt *vmRuntime, m vmm.Machine, timeout time.Duration) string {
	log := oplog.G(ctx)
	deadline, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	if st, err := rt.openStream(deadline); err == nil {
		err = agentclient.Shutdown(deadline, st, opid.From(ctx))
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
	if vm.State.Live() {
		if err := d.stopLocked(ctx, rt, vm, timeout); err != nil {
			return nil, err
		}
	}
	if err := d.startRecorded(ctx, rt, vm); err != nil {
		return nil, err
	}
	return vm, nil
}
