package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"banger/internal/model"
	"banger/internal/oplog"
)

// setupNetwork creates the VM's tap and NAT through the root helper.
func (d *Daemon) setupNetwork(ctx context.Context, vm *model.VM) error {
	if d.helper == nil {
		return nil
	}
	if err := d.helper.CreateTap(ctx, vm.Tap); err != nil {
		return fmt.Errorf("creating tap %s: %w", vm.Tap, err)
	}
	if vm.NAT {
		ip, _ := netip.ParseAddr(vm.GuestIP)
		if err := d.helper.EnableNAT(ctx, ip); err != nil {
			return fmt.Errorf("enabling NAT for %s: %w", vm.GuestIP, err)
		}
	}
	return nil
}

// teardownNetwork removes what setupNetwork made. Both helper calls are idempotent; their
// failures are returned (joined), since a NAT rule left behind would follow the guest IP
// to its next owner: callers keep the row (and so the IP) until this succeeds.
func (d *Daemon) teardownNetwork(ctx context.Context, vm *model.VM) error {
	if d.helper == nil {
		return nil
	}
	var errs []error
	if vm.NAT {
		ip, _ := netip.ParseAddr(vm.GuestIP)
		if err := d.helper.DisableNAT(ctx, ip); err != nil {
			errs = append(errs, fmt.Errorf("disabling NAT for %s: %w", vm.GuestIP, err))
		}
	}
	if err := d.helper.DeleteTap(ctx, vm.Tap); err != nil {
		errs = append(errs, fmt.Errorf("deleting tap %s: %w", vm.Tap, err))
	}
	if err := errors.Join(errs...); err != nil {
		d.netPending.Store(true)
		oplog.G(ctx).Warn("network teardown failed; reconcile retries", "vm", vm.Name, "error", err.Error())
		return fmt.Errorf("%s: %w", netTeardownNote, err)
	}
	return nil
}

// netTeardownNote starts every error about network objects left behind.
const netTeardownNote = "network teardown failed"
