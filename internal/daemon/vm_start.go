package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"banger/internal/agentclient"
	"banger/internal/errdefs"
	"banger/internal/model"
	"banger/internal/opid"
	"banger/internal/oplog"
	"banger/internal/vmm"
)

// bootTimeout bounds boot-to-ready. Software-emulated guests on a busy two-core host take
// tens of seconds; a KVM guest takes well under one.
const bootTimeout = 3 * time.Minute

// startLocked boots vm and waits for its agent. The caller holds rt.mu. Every step is
// recorded before it is taken: the state moves to starting before the tap exists, and the
// VMM's pid and start time are stored the moment the process exists (before QMP or the
// agent answer), so a crash at any point leaves a row that reconcile can act on. On
// failure it undoes its own work (VMM killed, tap and NAT removed) and leaves vm in
// starting; callers record the outcome.
func (d *Daemon) startLocked(ctx context.Context, rt *vmRuntime, vm *model.VM, prog progress) (err error) {
	im, err := d.store.GetImage(ctx, vm.ImageID)
	if err != nil {
		return fmt.Errorf("loading image of vm %s: %w", vm.Name, err)
	}
	// A VM made from a snapshot is restored at its first start and boots cold after that
	// (its disks are its own by then).
	var sn *model.Snapshot
	if vm.SnapshotID != "" && vm.StartedAt.IsZero() {
		if sn, err = d.store.GetSnapshot(ctx, vm.SnapshotID); err != nil {
			return fmt.Errorf("loading the snapshot vm %s is restored from: %w", vm.Name, err)
		}
	}
	var (
		drv  vmm.Driver
		info vmm.Info
	)
	if sn != nil {
		drv, info, err = d.snapshotDriver(ctx, sn)
	} else {
		drv, info, err = d.pickDriver(ctx)
	}
	if err != nil {
		return err
	}
	if err := refuseMountsOnDriver(vm, drv); err != nil {
		return err
	}
	spec, err := d.spec(vm, im)
	if err != nil {
		return err
	}
	// tl is this boot's timeline, stored once the agent answered.
	tl := newBootClock()
	// Stale sockets from a previous run would make the VMM fail to bind.
	os.Remove(spec.ChannelPath)
	if err := d.move(ctx, vm, model.VMStarting, func(v *model.VM) {
		v.VMM, v.Accel, v.LastError, v.PID, v.PIDStart = drv.Name(), info.Accel, "", 0, 0
	}); err != nil {
		return err
	}
	// undo grows with each step taken; it runs once, on failure, with a context that
	// outlives a cancelled request.
	var undo []func(context.Context) error
	defer func() {
		if err != nil {
			uctx := context.WithoutCancel(ctx)
			var uerrs []error
			for i := len(undo) - 1; i >= 0; i-- {
				uerrs = append(uerrs, undo[i](uctx))
			}
			if uerr := errors.Join(uerrs...); uerr != nil {
				err = fmt.Errorf("%w (undoing: %w)", err, uerr)
			}
		}
	}()
	undo = append(undo, func(c context.Context) error { return d.teardownNetwork(c, vm) })
	if err := d.setupNetwork(ctx, vm); err != nil {
		return err
	}
	if d.helper != nil {
		tl.mark("network_ready")
		prog.stage(ctx, "network_ready", fmt.Sprintf("tap %s, %s", vm.Tap, vm.GuestIP), "tap", vm.Tap)
	}
	undo = append(undo, func(c context.Context) error { return d.killVMMs(c, rt, vm) })
	spec.OnLaunch = func(pid int, start uint64) error {
		if err := d.move(ctx, vm, model.VMStarting, func(v *model.VM) { v.PID, v.PIDStart = pid, start }); err != nil {
			return err
		}
		tl.mark("vmm_launched")
		oplog.Stage(ctx, "vmm_launched", "pid", pid)
		return nil
	}
	started := time.Now()
	var m vmm.Machine
	if sn != nil {
		m, err = d.restoreMachine(ctx, drv, spec, sn)
	} else {
		m, err = drv.Start(ctx, spec)
	}
	if err != nil {
		return d.explainStartFailure(vm, fmt.Errorf("starting %s: %w", drv.Name(), err))
	}
	tl.mark("vmm_running")
	rt.setMachine(m)
	if err := d.move(ctx, vm, model.VMStarting, func(v *model.VM) { v.PID, v.Accel = m.PID(), m.Accel() }); err != nil {
		return err
	}
	prog.stage(ctx, "vmm_started", fmt.Sprintf("%s/%s pid %d", drv.Name(), m.Accel(), m.PID()), "vmm", drv.Name(), "accel", m.Accel(), "pid", m.PID())

	var pinfo agentclient.PingInfo
	if sn != nil {
		// A restored guest's first request is its identity: its agent answered pings
		// before the snapshot (same protocol), and the identity's answer is as good a
		// readiness proof. A ping first would only cost the guest a request under TCG
		// (~0.13 s of CPU per fork with a cold translation cache). sendIdentity bounds
		// each attempt and retries on a fresh session, as waitReady does for a ping.
		if err := d.applyIdentity(ctx, rt, vm, m); err != nil {
			if tail := vmm.LogTail(spec.LogPath, 0, consoleTailLines); tail != "" {
				err = fmt.Errorf("%w\nlast console lines:\n%s", err, tail)
			}
			return d.explainStartFailure(vm, err)
		}
		prog.stage(ctx, "identity_applied", fmt.Sprintf("%s %s %s", vm.Name, vm.GuestIP, vm.MAC))
		pinfo.Hostname = vm.Name
	} else {
		readyCtx, cancel := context.WithTimeout(ctx, bootTimeout)
		defer cancel()
		pinfo, err = d.waitReady(readyCtx, rt, opid.From(ctx))
		if err != nil {
			tail := vmm.LogTail(spec.LogPath, 0, consoleTailLines)
			msg := fmt.Sprintf("vm %s did not become ready: %v", vm.Name, err)
			if tail != "" {
				msg += "\nlast console lines:\n" + tail
			}
			// An agent of another protocol version is a conflict (rebuild the image), not a
			// guest that might still come up.
			kind := errdefs.ErrUnavailable
			if _, ok := errors.AsType[*agentclient.ProtocolMismatchError](err); ok {
				kind = errdefs.ErrConflict
			}
			return errdefs.WithHint(d.explainStartFailure(vm, errdefs.New(kind, "%s", msg)),
				"see the full console log with `banger vm logs "+vm.Name+"` (kept only if the VM was not being created)")
		}
	}
	boot := time.Since(started)
	tl.mark("agent_ready")
	d.metrics.bootTime.WithLabelValues(drv.Name(), m.Accel()).Observe(boot.Seconds())
	// Reaching running also ends a create: from here a crash keeps the VM.
	if err := d.move(ctx, vm, model.VMRunning, func(v *model.VM) {
		v.StartedAt, v.Creating = time.Now().UTC(), false
	}); err != nil {
		return err
	}
	if pinfo.BootDropped > 0 {
		oplog.G(ctx).Warn("guest boot stages dropped", "vm", vm.Name, "count", pinfo.BootDropped, "first", pinfo.BootDroppedWhy)
	}
	timeline := tl.timeline(pinfo.Boot)
	if err := d.store.SetVMBoot(ctx, vm.ID, timeline); err != nil {
		// The VM runs; a timeline it cannot show is not worth failing the boot for.
		oplog.G(ctx).Warn("recording the boot timeline failed", "vm", vm.Name, "error", err.Error())
	} else {
		vm.Boot = timeline
	}
	answered := fmt.Sprintf("%s answered after %.1fs", pinfo.Hostname, boot.Seconds())
	if pinfo.Kernel != "" {
		answered += " (kernel " + pinfo.Kernel + ")"
	}
	prog.stage(ctx, "agent_ready", answered, "boot_ms", boot.Milliseconds())
	d.watchExit(vm.ID, m)
	return nil
}

// consoleTailLines is how much of the console a failed start quotes.
const consoleTailLines = 15

// watchExit records a VM as stopped when its VMM exits on its own (guest poweroff, crash).
func (d *Daemon) watchExit(id string, m vmm.Machine) {
	go func() {
		<-m.Done()
		rt := d.runtime(id)
		// A stop in progress holds rt.mu, records the state itself and clears the machine,
		// so after waiting for the lock there is nothing left to do.
		rt.mu.Lock()
		defer rt.mu.Unlock()
		if rt.getMachine() != m {
			return
		}
		ctx := d.newOp(context.Background())
		vm, err := d.store.GetVM(ctx, id)
		if err != nil || !vm.State.Settled() {
			return
		}
		log := oplog.G(ctx).With("vm", vm.Name)
		log.Info("vm exited on its own", "pid", vm.PID)
		rt.resetSession()
		rt.setMachine(nil)
		note := ""
		if err := d.teardownNetwork(ctx, vm); err != nil {
			note = err.Error()
		}
		if err := d.move(ctx, vm, model.VMStopped, func(v *model.VM) { v.PID, v.PIDStart, v.LastError = 0, 0, note }); err != nil {
			log.Error("recording vm exit failed", "error", err.Error())
		}
		if vm.AutoRemove {
			d.autoRemove(id, "its VMM exited")
		}
	}()
}

// startVM is vm.start.
func (d *Daemon) startVM(ctx context.Context, ref string) (*model.VM, error) {
	vm, rt, err := d.lockVM(ctx, ref)
	if err != nil {
		return nil, err
	}
	defer rt.mu.Unlock()
	if err := model.CheckTransition(vm.State, model.VMStarting); err != nil || vm.State == model.VMStarting {
		return nil, errdefs.New(errdefs.ErrConflict, "vm %s is %s; it can be started only when stopped", vm.Name, vm.State)
	}
	if err := d.startRecorded(ctx, rt, vm); err != nil {
		return nil, err
	}
	return vm, nil
}

// startRecorded starts an existing VM; a failed start leaves it stopped with the error
// recorded for `vm show`. The caller holds rt.mu.
func (d *Daemon) startRecorded(ctx context.Context, rt *vmRuntime, vm *model.VM) error {
	err := d.startLocked(ctx, rt, vm, progress{})
	if err != nil {
		rt.setMachine(nil)
		rt.resetSession()
		if merr := d.move(ctx, vm, model.VMStopped, func(v *model.VM) {
			v.PID, v.PIDStart, v.LastError = 0, 0, model.CapLastError(err.Error())
		}); merr != nil {
			return fmt.Errorf("%w (recording the failure: %w)", err, merr)
		}
	}
	return err
}
