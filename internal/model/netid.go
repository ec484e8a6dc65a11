package model

import (
	"fmt"
	"net/netip"
	"strings"
)

// Identifiers derived from a VM's guest IP or id. Deriving instead of allocating means a
// restarted daemon or the root helper can recompute them and check them without a lookup.

// MACForIP returns the guest MAC for ip: a locally administered unicast address (02:…)
// whose last four bytes are the IPv4 address.
func MACForIP(ip netip.Addr) string {
	b := ip.As4()
	return fmt.Sprintf("02:b4:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3])
}

// CIDForIP returns the vsock context id for ip. CIDs 0-2 are reserved, so the host-order
// low 24 bits of the address are offset by 3; they are unique within any /8 or smaller subnet.
func CIDForIP(ip netip.Addr) uint32 {
	b := ip.As4()
	return (uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])) + 3
}

// TapPrefix starts every tap banger creates; the root helper refuses any other name.
const TapPrefix = "bgr"

// TapForID returns the tap name for a VM id: the prefix and the id's first 12 characters
// (IFNAMSIZ allows 15).
func TapForID(id string) string {
	id = strings.ToLower(id)
	if len(id) > 12 {
		id = id[:12]
	}
	return TapPrefix + id
}
