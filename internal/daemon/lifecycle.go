package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"banger/internal/errdefs"
	"banger/internal/model"
	"banger/internal/oplog"
	"banger/internal/vmm"

	"golang.org/x/sys/unix"
)

// lowDiskBytes is the free space below which a failed boot is blamed on a full disk: the
// VMM's sockets and logs in the VM directory need a little, and QEMU's own complaint may
// never reach its log there.
var lowDiskBytes uint64 = 4 << 20

// explainStartFailure adds the likely cause to a failed boot when the VM directory's
// filesystem is (nearly) full.
func (d *Daemon) explainStartFailure(vm *model.VM, err error) error {
	var st unix.Statfs_t
	if unix.Statfs(vm.Dir, &st) != nil {
		return err
	}
	free := st.Bavail * uint64(st.Bsize)
	if free >= lowDiskBytes {
		return err
	}
	return errdefs.WithHint(fmt.Errorf("%w; no space left: the filesystem of %s has %s free", err, vm.Dir, model.FormatSize(int64(free))),
		"free space under the state directory (delete unused VMs or images) and start the VM again")
}

// move records vm's transition to state to (set, if given, changes the lifecycle fields
// written with it) through the store's compare-and-set: it fails with a conflict if the
// row left vm.State meanwhile or the state machine forbids the move. On success vm holds
// what was stored. A cancelled request still records the outcome of what it did.
func (d *Daemon) move(ctx context.Context, vm *model.VM, to model.VMState, set func(*model.VM)) error {
	next := *vm
	next.State = to
	if set != nil {
		set(&next)
	}
	// An error may quote what the guest printed; the stored copy stays bounded.
	next.LastError = model.CapLastError(next.LastError)
	if err := d.store.TransitionVM(context.WithoutCancel(ctx), &next, vm.State); err != nil {
		return err
	}
	*vm = next
	return nil
}

// vmmBinaries are the base names a VMM of this daemon's drivers runs as.
func (d *Daemon) vmmBinaries() []string {
	return []string{d.cfg.Qemu.Binary, d.cfg.Firecracker.Binary}
}

// killVMMs kills every VMM process of vm: the machine this daemon holds, and any process
// on the host that runs a VMM binary on the VM's directory (a VMM whose start was never
// recorded, or one a crashed daemon left behind). Only provably-ours processes are touched.
func (d *Daemon) killVMMs(ctx context.Context, rt *vmRuntime, vm *model.VM) error {
	if m := rt.getMachine(); m != nil {
		m.Kill()
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		err := vmm.Wait(wctx, m)
		cancel()
		if err != nil {
			return fmt.Errorf("waiting for VMM pid %d to exit: %w", m.PID(), err)
		}
	}
	rt.resetSession()
	rt.setMachine(nil)
	owned, err := vmm.FindOwned(d.cfg.VMsDir(), d.vmmBinaries())
	if err != nil {
		return err
	}
	var errs []error
	for _, o := range owned {
		if o.VMID != vm.ID {
			continue
		}
		oplog.G(ctx).Warn("killing untracked VMM of vm", "vm", vm.Name, "pid", o.PID)
		errs = append(errs, vmm.KillOwned(o, d.cfg.VMsDir(), d.vmmBinaries(), 10*time.Second))
	}
	errs = append(errs, d.killShareProcs(vm.ID))
	return errors.Join(errs...)
}

// destroy records the intent to delete vm (state deleting, with why) and then carries it
// out. The caller holds rt.mu.
func (d *Daemon) destroy(ctx context.Context, rt *vmRuntime, vm *model.VM, why string) error {
	if vm.State != model.VMDeleting {
		if err := d.move(ctx, vm, model.VMDeleting, func(v *model.VM) { v.LastError = why }); err != nil {
			return err
		}
	}
	return d.finishDelete(ctx, rt, vm)
}

// finishDelete runs the steps of a recorded delete; each is idempotent, so a delete
// interrupted anywhere is resumed by running it again. The row goes last: until the tap and
// NAT rule are confirmed gone it holds the guest IP, so no other VM can be given an address
// that still has this VM's NAT. A step that fails leaves the row in deleting with the
// reason. The caller holds rt.mu.
//
// The network teardown (the root helper deleting the tap, which waits out the kernel's
// netdev unregistration, ~10-20 ms) runs beside the VMM's kill and the directory's removal
// (~15 ms together): they touch different things, and the directory goes only once no
// VMM can write in it. This is most of `vm run --rm`'s teardown.
func (d *Daemon) finishDelete(ctx context.Context, rt *vmRuntime, vm *model.VM) error {
	ctx = context.WithoutCancel(ctx)
	netDone := make(chan error, 1)
	netVM := *vm // teardownNetwork reads the VM while deleteUnfinished may update vm
	go func() { netDone <- d.teardownNetwork(ctx, &netVM) }()
	var vmmErr, dirErr error
	if vmmErr = d.killVMMs(ctx, rt, vm); vmmErr == nil {
		dirErr = os.RemoveAll(vm.Dir)
	}
	netErr := <-netDone
	switch {
	case vmmErr != nil:
		return d.deleteUnfinished(ctx, vm, fmt.Errorf("killing its VMM: %w", vmmErr))
	case netErr != nil:
		return d.deleteUnfinished(ctx, vm, netErr)
	case dirErr != nil:
		return d.deleteUnfinished(ctx, vm, fmt.Errorf("removing vm directory: %w", dirErr))
	}
	if err := d.store.DeleteVM(ctx, vm.ID); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		return err
	}
	d.dns.Remove(vm.Name)
	d.dropRuntime(vm.ID)
	return nil
}

func (d *Daemon) deleteUnfinished(ctx context.Context, vm *model.VM, cause error) error {
	d.netPending.Store(true)
	msg := "delete unfinished: " + cause.Error()
	if err := d.move(ctx, vm, model.VMDeleting, func(v *model.VM) { v.LastError = msg }); err != nil {
		oplog.G(ctx).Error("recording unfinished delete failed", "vm", vm.Name, "error", err.Error())
	}
	return errdefs.WithHint(errdefs.New(errdefs.ErrUnavailable, "vm %s: %s; it stays in state deleting and bangerd retries", vm.Name, msg),
		"bangerd retries when the root helper answers; `banger vm show "+vm.Name+"` shows progress, `banger vm rm -f "+vm.Name+"` retries now")
}
