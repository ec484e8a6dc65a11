package daemon

import (
	"net/netip"

	"banger/internal/model"
)

// publishDNS gives vm's name its DNS record (forward and reverse). A warm pool's VM gets
// none while it waits: its pool-* name is no user's, and its address would answer for a VM
// nobody created. claimPoolVM publishes the VM under the name its create asked for.
func (d *Daemon) publishDNS(vm *model.VM) {
	if vm.Pool != "" {
		return
	}
	if ip, err := netip.ParseAddr(vm.GuestIP); err == nil {
		d.dns.Set(vm.Name, ip)
	}
}
