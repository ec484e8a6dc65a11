package daemon

import (
	"net/netip"

	"banger/internal/errdefs"
)

// lowestFreeIP returns the lowest host address in prefix that is not the network address,
// the bridge (gateway) address, the broadcast address, or in used. Deleted VMs' addresses
// come back into use simply by no longer being in used.
func lowestFreeIP(prefix netip.Prefix, used []netip.Addr) (netip.Addr, error) {
	taken := make(map[netip.Addr]bool, len(used)+1)
	for _, a := range used {
		taken[a] = true
	}
	taken[prefix.Addr()] = true
	network := prefix.Masked().Addr()
	bcast := broadcast(prefix)
	for a := network.Next(); a.IsValid() && a != bcast && prefix.Contains(a); a = a.Next() {
		if !taken[a] {
			return a, nil
		}
	}
	return netip.Addr{}, errdefs.WithHint(
		errdefs.New(errdefs.ErrUnavailable, "no free guest IP left in %s (%d VMs)", prefix.Masked(), len(used)),
		"delete unused VMs (banger vm rm) or configure a larger network.cidr")
}

func broadcast(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	hostBits := 32 - p.Bits()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v |= (1 << hostBits) - 1
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
