package agentproto

import (
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"

	"banger/internal/errdefs"
	"banger/internal/model"
)

// Identity is what a restored guest must become: the new VM's name, network identity and
// machine id, the host's clock, and fresh entropy. Every field is checked before anything
// is applied (Validate).
type Identity struct {
	Name      string   `json:"name"`
	Addr      string   `json:"addr,omitempty"` // CIDR; empty: no network
	Gateway   string   `json:"gateway,omitempty"`
	DNS       []string `json:"dns,omitempty"`
	MAC       string   `json:"mac,omitempty"`
	MachineID string   `json:"machine_id"` // 32 lowercase hex digits, as /etc/machine-id holds
	UnixNanos int64    `json:"unix_nanos"` // the host's clock when it sent the request
	Seed      string   `json:"seed"`       // 32 random bytes in hex, mixed into the guest's RNG
}

// maxDNS bounds the nameservers of an identity (resolv.conf uses three).
const maxDNS = 3

// parsedIdentity is an Identity after Validate.
type ParsedIdentity struct {
	BootParams
	MAC       net.HardwareAddr
	MachineID string
	UnixNanos int64
	Seed      []byte
}

// Validate checks every field, naming the first bad one.
func (id Identity) Validate() (ParsedIdentity, error) {
	var p ParsedIdentity
	if !model.IsDNSLabel(id.Name) {
		return p, errdefs.InvalidArgument("identity.name", id.Name, "must be a DNS label")
	}
	p.Name = id.Name
	if id.Addr != "" {
		a, err := netip.ParsePrefix(id.Addr)
		if err != nil || !a.Addr().Is4() {
			return p, errdefs.InvalidArgument("identity.addr", id.Addr, "must be an IPv4 address with prefix length")
		}
		p.Addr = a
		if id.MAC == "" {
			return p, errdefs.InvalidArgument("identity.mac", id.MAC, "is required with an address")
		}
	}
	if id.Gateway != "" {
		g, err := netip.ParseAddr(id.Gateway)
		if err != nil || !g.Is4() || !p.Addr.IsValid() || !p.Addr.Masked().Contains(g) {
			return p, errdefs.InvalidArgument("identity.gateway", id.Gateway, "must be an IPv4 address in the address's network")
		}
		p.Gateway = g
	}
	if len(id.DNS) > maxDNS {
		return p, errdefs.InvalidArgument("identity.dns", id.DNS, fmt.Sprintf("at most %d servers", maxDNS))
	}
	for _, s := range id.DNS {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return p, errdefs.InvalidArgument("identity.dns", s, "must be IP addresses")
		}
		p.DNS = append(p.DNS, a)
	}
	if id.MAC != "" {
		hw, err := net.ParseMAC(id.MAC)
		if err != nil || len(hw) != 6 || hw[0]&1 != 0 {
			return p, errdefs.InvalidArgument("identity.mac", id.MAC, "must be a unicast MAC like 02:b4:ac:1e:00:09")
		}
		p.MAC = hw
	}
	if !model.IsLowerHex(id.MachineID, 32) {
		return p, errdefs.InvalidArgument("identity.machine_id", id.MachineID, "must be 32 lowercase hex digits")
	}
	p.MachineID = id.MachineID
	if id.UnixNanos <= 0 {
		return p, errdefs.InvalidArgument("identity.unix_nanos", id.UnixNanos, "must be the host's clock in nanoseconds since 1970")
	}
	p.UnixNanos = id.UnixNanos
	if !model.IsLowerHex(id.Seed, 64) {
		return p, errdefs.InvalidArgument("identity.seed", id.Seed, "must be 64 lowercase hex digits")
	}
	p.Seed, _ = hex.DecodeString(id.Seed)
	return p, nil
}
