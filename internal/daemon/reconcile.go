package daemon

import (
	"context"
	"errors"
	"net/netip"
	"os"

	"banger/internal/model"
	"banger/internal/opid"
	"banger/internal/vmm"
)

// reconcile brings the store and the host back in line after a restart or crash, as
// nomad's RecoverTask does: VMs whose VMM still runs are re-adopted, VMs whose VMM is gone
// are marked stopped, half-created VMs are removed, and taps and NAT rules are made to
// match the VMs that run.
func (d *Daemon) reconcile(ctx context.Context) error {
	log := opid.Logger(ctx, d.log)
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return err
	}
	running := map[string]*model.VM{}
	for i := range vms {
		vm := &vms[i]
		switch vm.State {
		case model.VMCreated:
			// The daemon died mid-create: the create's caller got an error, so undo it.
			os.RemoveAll(vm.Dir)
			if err := d.store.DeleteVM(ctx, vm.ID); err == nil {
				log.Info("reconcile: removed half-created vm", "vm", vm.Name, "vm_id", vm.ID)
			}
		case model.VMRunning, model.VMStarting, model.VMStopping:
			if d.adopt(ctx, vm) {
				running[vm.ID] = vm
				log.Info("reconcile: re-adopted running vm", "vm", vm.Name, "pid", vm.PID, "vmm", vm.VMM)
				continue
			}
			log.Warn("reconcile: vm's VMM process is gone; marking stopped", "vm", vm.Name, "pid", vm.PID, "was", vm.State)
			vm.State, vm.PID = model.VMStopped, 0
			if err := d.store.UpdateVM(ctx, vm); err != nil {
				return err
			}
		}
	}
	return d.reconcileNetwork(ctx, running)
}

func (d *Daemon) adopt(ctx context.Context, vm *model.VM) bool {
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
	m, err := drv.Recover(ctx, spec, vm.PID)
	if err != nil {
		if !errors.Is(err, vmm.ErrNotRunning) {
			opid.Logger(ctx, d.log).Warn("reconcile: recover failed", "vm", vm.Name, "error", err.Error())
		}
		return false
	}
	rt := d.runtime(vm.ID)
	rt.setMachine(m)
	if vm.State != model.VMRunning {
		vm.State = model.VMRunning
		d.store.UpdateVM(ctx, vm)
	}
	d.watchExit(vm.ID, m)
	return true
}

func (d *Daemon) reconcileNetwork(ctx context.Context, running map[string]*model.VM) error {
	if d.helper == nil {
		return nil
	}
	log := opid.Logger(ctx, d.log)
	st, err := d.helper.State(ctx)
	if err != nil {
		return err
	}
	wantTap := map[string]bool{}
	wantNAT := map[netip.Addr]bool{}
	for _, vm := range running {
		wantTap[vm.Tap] = true
		if vm.NAT {
			if ip, err := netip.ParseAddr(vm.GuestIP); err == nil {
				wantNAT[ip] = true
			}
		}
	}
	for _, tap := range st.Taps {
		if !wantTap[tap] {
			if err := d.helper.DeleteTap(ctx, tap); err != nil {
				log.Warn("reconcile: deleting stale tap failed", "tap", tap, "error", err.Error())
			} else {
				log.Info("reconcile: deleted stale tap", "tap", tap)
			}
		}
	}
	have := map[netip.Addr]bool{}
	for _, ip := range st.NATIPs {
		have[ip] = true
		if !wantNAT[ip] {
			if err := d.helper.DisableNAT(ctx, ip); err == nil {
				log.Info("reconcile: removed stale NAT rule", "guest_ip", ip.String())
			}
		}
	}
	for ip := range wantNAT {
		if !have[ip] {
			if err := d.helper.EnableNAT(ctx, ip); err != nil {
				log.Warn("reconcile: restoring NAT failed", "guest_ip", ip.String(), "error", err.Error())
			}
		}
	}
	return nil
}
