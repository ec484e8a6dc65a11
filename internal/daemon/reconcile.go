package daemon

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"banger/internal/errdefs"
	"banger/internal/model"
	"banger/internal/oplog"
	"banger/internal/vmm"
)

// reconcile brings the store and the host back in line at start-up, before anything is
// served. Each VM's fate is decided from its recorded intent and the host's ground truth
// (its VMM found by pid + start time + command line, taps, NAT set elements):
//
//   - deleting: the delete is finished.
//   - creating (any state): the create is undone — its caller never got the VM.
//   - auto-remove (vm run --rm): deleted — the run's connection died with the old daemon.
//   - running or paused with its VMM alive: re-adopted, the state taken from what the VMM
//     says (a crash between a pause and its record); with it gone: stopped, saying so.
//   - starting or stopping (a start or stop was interrupted): its VMM is killed and it is
//     recorded stopped with the reason.
//
// Then every VMM process of this daemon's VMs directory that no live row holds is killed,
// VM directories without a row are removed, and taps and NAT rules are made to match the
// VMs that run.
func (d *Daemon) reconcile(ctx context.Context) error {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return err
	}
	for i := range vms {
		vm := &vms[i]
		rt := d.runtime(vm.ID)
		rt.mu.Lock()
		d.recoverVM(ctx, rt, vm)
		rt.mu.Unlock()
	}
	if err := d.sweepVMMs(ctx); err != nil {
		oplog.G(ctx).Warn("reconcile: sweeping VMM processes failed", "error", err.Error())
	}
	d.sweepDirs(ctx)
	d.sweepSnapshots(ctx)
	if err := d.reconcileNetwork(ctx); err != nil {
		// Not fatal: the periodic reconcile retries once the helper answers.
		d.netPending.Store(true)
		oplog.G(ctx).Warn("reconcile: network not reconciled", "error", err.Error())
	}
	return nil
}

// recoverVM decides one VM's fate after a restart (see reconcile). The caller holds rt.mu.
func (d *Daemon) recoverVM(ctx context.Context, rt *vmRuntime, vm *model.VM) {
	log := oplog.G(ctx).With("vm", vm.Name, "vm_id", vm.ID, "was", vm.State)
	var err error
	switch {
	case vm.State == model.VMDeleting:
		log.Info("reconcile: finishing interrupted delete")
		err = d.finishDelete(ctx, rt, vm)
	case vm.Creating:
		log.Info("reconcile: undoing interrupted create")
		err = d.destroy(ctx, rt, vm, "create interrupted by a bangerd restart")
	case vm.AutoRemove:
		log.Info("reconcile: removing vm run --rm VM whose run ended with the previous bangerd")
		err = d.destroy(ctx, rt, vm, "auto-removed: its vm run ended with the previous bangerd")
	case vm.State.Settled():
		if d.adopt(ctx, rt, vm) {
			log.Info("reconcile: re-adopted vm", "pid", vm.PID, "vmm", vm.VMM)
			d.settleRunState(ctx, rt, vm)
			d.resumeAfterSnapshot(ctx, rt, vm)
			return
		}
		log.Warn("reconcile: vm's VMM process is gone; marking stopped", "pid", vm.PID)
		err = d.settleStopped(ctx, rt, vm, "its VMM exited while bangerd was not running")
	case vm.State == model.VMStarting, vm.State == model.VMStopping:
		log.Warn("reconcile: finishing interrupted start/stop: VMM killed, vm stopped", "pid", vm.PID)
		err = d.settleStopped(ctx, rt, vm, string(vm.State)+" interrupted by a bangerd restart")
	}
	if err != nil {
		log.Warn("reconcile: vm not settled", "error", err.Error())
	}
}

// settleStopped kills whatever VMM vm still has and records it stopped with why.
func (d *Daemon) settleStopped(ctx context.Context, rt *vmRuntime, vm *model.VM, why string) error {
	if err := d.killVMMs(ctx, rt, vm); err != nil {
		return d.recordError(ctx, vm, err)
	}
	if vm.State == model.VMStarting || vm.State.Settled() {
		// running → stopped is legal too, but one path for both keeps the record uniform.
		if err := d.move(ctx, vm, model.VMStopping, nil); err != nil {
			return err
		}
	}
	note := why
	if err := d.teardownNetwork(ctx, vm); err != nil {
		note += "; " + err.Error() + " (bangerd retries)"
	}
	return d.move(ctx, vm, model.VMStopped, func(v *model.VM) { v.PID, v.PIDStart, v.LastError = 0, 0, note })
}

// settleRunState makes a re-adopted VM's recorded state match its VMM's: a pause or
// resume whose record a crash cut off. The caller holds rt.mu.
func (d *Daemon) settleRunState(ctx context.Context, rt *vmRuntime, vm *model.VM) {
	m := rt.getMachine()
	if m == nil {
		return
	}
	paused, known := vmmPaused(ctx, m)
	if !known {
		return
	}
	want := model.VMRunning
	if paused {
		want = model.VMPaused
	}
	if want == vm.State {
		return
	}
	log := oplog.G(ctx).With("vm", vm.Name)
	if err := d.move(ctx, vm, want, nil); err != nil {
		log.Warn("reconcile: recording the VMM's run state failed", "error", err.Error())
		return
	}
	log.Info("reconcile: recorded the VMM's run state", "state", want)
}

// adopt re-attaches a running VM's VMM: the recorded pid must still be the process that
// was recorded (start time) running this VM's VMM (command line).
func (d *Daemon) adopt(ctx context.Context, rt *vmRuntime, vm *model.VM) bool {
	if vm.PID <= 0 {
		return false
	}
	drv, err := d.driver(vm.VMM)
	if err != nil {
		return false
	}
	im, err := d.store.GetImage(ctx, vm.ImageID)
	if err != nil {
		return false
	}
	spec, err := d.spec(vm, im)
	if err != nil {
		return false
	}
	spec.PIDStart = vm.PIDStart
	m, err := drv.Recover(ctx, spec, vm.PID)
	if err != nil {
		if !errors.Is(err, vmm.ErrNotRunning) {
			oplog.G(ctx).Warn("reconcile: recover failed", "vm", vm.Name, "error", err.Error())
		}
		return false
	}
	rt.setMachine(m)
	d.watchExit(vm.ID, m)
	return true
}

// sweepVMMs kills every VMM process running on this daemon's VMs directory that no live
// row accounts for: one whose VM has no row, or whose VM is not in a live state, or that
// is not the process its running VM's row records. Each is re-checked under the VM's lock.
func (d *Daemon) sweepVMMs(ctx context.Context) error {
	owned, err := vmm.FindOwned(d.cfg.VMsDir(), d.vmmBinaries())
	if err != nil {
		return err
	}
	var errs []error
	for _, o := range owned {
		d.withIdle(o.VMID, func(vm *model.VM) {
			if vm != nil && vm.State.Live() && (vm.PID == o.PID || !vm.State.Settled()) {
				return // the VM's own VMM, or one its start or stop in progress owns
			}
			oplog.G(ctx).Warn("reconcile: killing VMM with no live row", "pid", o.PID, "vm_id", o.VMID)
			err := vmm.KillOwned(o, d.cfg.VMsDir(), d.vmmBinaries(), 10*time.Second)
			errs = append(errs, err)
			if err == nil && vm != nil && !vm.State.Live() && vm.PID != 0 {
				errs = append(errs, d.move(ctx, vm, vm.State, func(v *model.VM) { v.PID, v.PIDStart = 0, 0 }))
			}
		})
	}
	errs = append(errs, d.sweepShareProcs(ctx))
	return errors.Join(errs...)
}

var vmDirName = regexp.MustCompile(`^[0-9a-f]{32}$`)

// sweepDirs removes VM directories that no row owns (a row is inserted before its
// directory is made and deleted after it is removed, so these are leftovers).
func (d *Daemon) sweepDirs(ctx context.Context) {
	ents, err := os.ReadDir(d.cfg.VMsDir())
	if err != nil {
		return
	}
	for _, e := range ents {
		if !e.IsDir() || !vmDirName.MatchString(e.Name()) {
			continue
		}
		d.withIdle(e.Name(), func(vm *model.VM) {
			if vm == nil {
				oplog.G(ctx).Info("reconcile: removing VM directory without a row", "vm_id", e.Name())
				os.RemoveAll(filepath.Join(d.cfg.VMsDir(), e.Name()))
			}
		})
	}
}

// withIdle runs fn with the VM's lifecycle lock held and its fresh record (nil if it has
// no row), unless an operation holds the lock: that operation owns the VM's processes and
// network for now, and the next pass looks again.
func (d *Daemon) withIdle(id string, fn func(vm *model.VM)) {
	rt := d.runtime(id)
	if !rt.mu.TryLock() {
		d.netPending.Store(true)
		return
	}
	defer rt.mu.Unlock()
	vm, err := d.store.GetVM(context.Background(), id)
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		fn(nil)
		d.dropRuntime(id)
	case err == nil:
		fn(vm)
	}
}

// reconcileNetwork makes taps and NAT set elements match the VMs in a live state. The
// helper's view is read before the store's, so every tap or rule it reports was made for a
// row that the listing still shows (rows go only after their network is gone); each
// change is re-checked under the VM's lock, so an operation in progress is never undone.
func (d *Daemon) reconcileNetwork(ctx context.Context) error {
	if d.helper == nil {
		return nil
	}
	log := oplog.G(ctx)
	st, err := d.helper.State(ctx)
	if err != nil {
		return err
	}
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return err
	}
	byTap, byIP := map[string]string{}, map[netip.Addr]string{}
	for _, vm := range vms {
		byTap[vm.Tap] = vm.ID
		if ip, err := netip.ParseAddr(vm.GuestIP); err == nil {
			byIP[ip] = vm.ID
		}
	}
	var errs []error
	for _, tap := range st.Taps {
		id, ok := byTap[tap]
		if !ok {
			// Tap names derive from VM ids, which are never reused: no one else wants it.
			errs = append(errs, d.dropTap(ctx, tap))
			continue
		}
		d.withIdle(id, func(vm *model.VM) {
			if vm == nil || !vm.State.Live() {
				err := d.dropTap(ctx, tap)
				errs = append(errs, err)
				d.clearNetNote(ctx, vm, err)
			}
		})
	}
	have := map[netip.Addr]bool{}
	for _, ip := range st.NATIPs {
		have[ip] = true
		id, ok := byIP[ip]
		if !ok {
			errs = append(errs, d.dropStrayNAT(ctx, ip))
			continue
		}
		d.withIdle(id, func(vm *model.VM) {
			if vm == nil || !vm.State.Live() || !vm.NAT {
				err := d.helper.DisableNAT(ctx, ip)
				if err != nil {
					errs = append(errs, err)
				} else {
					log.Info("reconcile: removed stale NAT rule", "guest_ip", ip.String())
				}
				d.clearNetNote(ctx, vm, err)
			}
		})
	}
	for _, vm := range vms {
		ip, err := netip.ParseAddr(vm.GuestIP)
		if err != nil || have[ip] || !vm.NAT || !vm.State.Live() {
			continue
		}
		d.withIdle(vm.ID, func(vm *model.VM) {
			if vm != nil && vm.NAT && vm.State.Live() {
				if err := d.helper.EnableNAT(ctx, ip); err != nil {
					errs = append(errs, err)
				} else {
					log.Info("reconcile: restored NAT", "vm", vm.Name, "guest_ip", ip.String())
				}
			}
		})
	}
	return errors.Join(errs...)
}

// clearNetNote drops a stopped VM's "network teardown failed" last error once reconcile
// has removed the leftovers it was about.
func (d *Daemon) clearNetNote(ctx context.Context, vm *model.VM, err error) {
	if err != nil || vm == nil || vm.State == model.VMDeleting || !strings.Contains(vm.LastError, netTeardownNote) {
		return
	}
	if err := d.move(ctx, vm, vm.State, func(v *model.VM) { v.LastError = "" }); err != nil {
		oplog.G(ctx).Warn("reconcile: clearing network note failed", "vm", vm.Name, "error", err.Error())
	}
}

func (d *Daemon) dropTap(ctx context.Context, tap string) error {
	if err := d.helper.DeleteTap(ctx, tap); err != nil {
		return err
	}
	oplog.G(ctx).Info("reconcile: deleted stale tap", "tap", tap)
	return nil
}

// dropStrayNAT removes a NAT element no row accounts for. It holds the reservation lock,
// re-checking that no create took the address meanwhile, so the address cannot be handed
// out until its rule is gone.
func (d *Daemon) dropStrayNAT(ctx context.Context, ip netip.Addr) error {
	d.reserveMu.Lock()
	defer d.reserveMu.Unlock()
	used, err := d.store.UsedGuestIPs(ctx)
	if err != nil {
		return err
	}
	for _, u := range used {
		if u == ip {
			return nil // a new VM holds it now; the next pass judges it by that VM
		}
	}
	if err := d.helper.DisableNAT(ctx, ip); err != nil {
		return err
	}
	oplog.G(ctx).Info("reconcile: removed NAT rule without a VM", "guest_ip", ip.String())
	return nil
}

// reconcileEvery is how often the periodic reconcile runs while something is pending (a
// failed teardown, an unreachable helper, a busy VM); reconcileIdle bounds the gap when all
// looked settled.
const (
	reconcileEvery = 2 * time.Second
	reconcileIdle  = time.Minute
)

// reconcileLoop converges the host while the daemon runs: unfinished deletes are resumed
// and taps/NAT are made to match, soon after a failure (so within seconds of the root
// helper coming back) and once a minute otherwise.
func (d *Daemon) reconcileLoop(ctx context.Context) {
	t := time.NewTicker(d.reconcileInterval)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !d.netPending.Load() && time.Since(last) < reconcileIdle {
			continue
		}
		last = time.Now()
		d.reconcilePass(d.newOp(ctx))
	}
}

// reconcilePass is one periodic pass; it clears netPending only if everything settled.
func (d *Daemon) reconcilePass(ctx context.Context) {
	d.netPending.Store(false)
	log := oplog.G(ctx)
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		d.netPending.Store(true)
		return
	}
	for _, vm := range vms {
		if vm.State != model.VMDeleting {
			continue
		}
		d.withIdle(vm.ID, func(vm *model.VM) {
			if vm == nil || vm.State != model.VMDeleting {
				return
			}
			if err := d.finishDelete(ctx, d.runtime(vm.ID), vm); err != nil {
				log.Warn("reconcile: delete still unfinished", "vm", vm.Name, "error", err.Error())
			} else {
				log.Info("reconcile: finished delete", "vm", vm.Name)
			}
		})
	}
	if err := d.sweepVMMs(ctx); err != nil {
		d.netPending.Store(true)
		log.Warn("reconcile: sweeping VMM processes failed", "error", err.Error())
	}
	if err := d.reconcileNetwork(ctx); err != nil {
		d.netPending.Store(true)
		oplog.G(ctx).Warn("reconcile: network not reconciled", "error", err.Error())
	}
}
