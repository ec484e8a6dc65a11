// Package hostnet performs banger's privileged host network changes: the VM bridge, one
// persistent tap per VM owned by the unprivileged daemon user, and NAT through nftables.
//
// It runs inside the root helper only. Every operation is idempotent, so the daemon can
// replay its desired state after either side restarts, and every operation is confined to
// names banger owns (the configured bridge, taps starting with model.TapPrefix and the
// nftables table "banger"), so a confused or compromised caller cannot reach other
// interfaces or firewall rules. All changes go through netlink; nothing shells out to ip(8)
// or nft(8).
package hostnet

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"sync"

	"banger/internal/errdefs"
	"banger/internal/model"
)

// Net is the host side of banger's VM network.
type Net struct {
	// Bridge is the name of the Linux bridge every tap is enslaved to.
	Bridge string
	// Prefix is the bridge's own address with the subnet length, e.g. 172.30.0.1/24.
	Prefix netip.Prefix
	// Uplink, when set, is the only interface NAT guests may leave through; empty means
	// any interface other than the bridge.
	Uplink string
}

// mu serialises changes: the nftables table is read, compared and rewritten, and taps are
// checked before they are created, so concurrent helper calls must not interleave.
var mu sync.Mutex

// tapName is the only shape of interface name banger creates or deletes.
var tapName = regexp.MustCompile(`^` + model.TapPrefix + `[0-9a-f]{1,12}$`)

// ifName is what Linux accepts as an interface name (IFNAMSIZ-1 bytes, no '/', ':' or spaces).
var ifName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)

// ValidTapName reports whether name is a tap name banger may manage.
func ValidTapName(name string) bool { return tapName.MatchString(name) }

// Validate checks the configuration before anything is changed.
func (n Net) Validate() error {
	if !ifName.MatchString(n.Bridge) {
		return errdefs.InvalidArgument("bridge", n.Bridge, "must be an interface name of 1-15 letters, digits, '_', '.' or '-'")
	}
	if ValidTapName(n.Bridge) {
		return errdefs.InvalidArgument("bridge", n.Bridge, "must not look like a tap name ("+model.TapPrefix+"…)")
	}
	if !n.Prefix.IsValid() || !n.Prefix.Addr().Is4() {
		return errdefs.InvalidArgument("prefix", n.Prefix, "must be an IPv4 address with prefix length, e.g. 172.30.0.1/24")
	}
	if n.Prefix.Bits() < 8 || n.Prefix.Bits() > 30 {
		return errdefs.InvalidArgument("prefix", n.Prefix, "prefix length must be between 8 and 30")
	}
	if n.Prefix.Addr() == n.Prefix.Masked().Addr() || n.Prefix.Addr() == Broadcast(n.Prefix) {
		return errdefs.InvalidArgument("prefix", n.Prefix, "the bridge address must not be the network or broadcast address")
	}
	if n.Uplink != "" {
		if !ifName.MatchString(n.Uplink) {
			return errdefs.InvalidArgument("uplink", n.Uplink, "must be an interface name")
		}
		if n.Uplink == n.Bridge {
			return errdefs.InvalidArgument("uplink", n.Uplink, "must differ from the bridge")
		}
	}
	return nil
}

// Broadcast returns the last address of p's subnet.
func Broadcast(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := (uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// ValidGuestIP checks that ip can belong to a guest on this network: inside the subnet and
// not the network, bridge or broadcast address.
func (n Net) ValidGuestIP(field string, ip netip.Addr) error {
	switch {
	case !ip.IsValid() || !ip.Is4():
		return errdefs.InvalidArgument(field, ip, "must be an IPv4 address")
	case !n.Prefix.Masked().Contains(ip):
		return errdefs.InvalidArgument(field, ip, fmt.Sprintf("must be inside the bridge subnet %s", n.Prefix.Masked()))
	case ip == n.Prefix.Masked().Addr():
		return errdefs.InvalidArgument(field, ip, "must not be the subnet's network address")
	case ip == n.Prefix.Addr():
		return errdefs.InvalidArgument(field, ip, "must not be the bridge's own address")
	case ip == Broadcast(n.Prefix):
		return errdefs.InvalidArgument(field, ip, "must not be the subnet's broadcast address")
	}
	return nil
}

// State reports what banger currently has on the host: the names of its taps (those owned
// by ownerUID and ownerGID) and the guests with NAT. The daemon compares it with its
// database to delete leftovers after a crash.
func (n Net) State(ctx context.Context, ownerUID, ownerGID int) (taps []string, natIPs []netip.Addr, err error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	mu.Lock()
	defer mu.Unlock()
	links, err := listTaps(ownerUID, ownerGID)
	if err != nil {
		return nil, nil, err
	}
	for _, l := range links {
		taps = append(taps, l.Attrs().Name)
	}
	natIPs, err = natGuests()
	if err != nil {
		return nil, nil, err
	}
	return taps, natIPs, nil
}

// Cleanup removes everything banger created: every banger tap (owned by ownerUID and
// ownerGID; other devices with tap-shaped names stay), the nftables table and the bridge.
// It leaves net.ipv4.ip_forward alone because other software may rely on it.
func (n Net) Cleanup(ctx context.Context, ownerUID, ownerGID int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := n.Validate(); err != nil {
		return err
	}
	mu.Lock()
	defer mu.Unlock()
	taps, err := listTaps(ownerUID, ownerGID)
	if err != nil {
		return err
	}
	for _, t := range taps {
		if err := deleteLink(t); err != nil {
			return err
		}
	}
	if err := deleteTable(); err != nil {
		return err
	}
	return deleteBridge(n.Bridge)
}
