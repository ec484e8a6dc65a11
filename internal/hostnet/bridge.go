package hostnet

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/google/nftables"

	"github.com/vishvananda/netlink"

	"banger/internal/errdefs"
	"banger/internal/model"
)

// EnsureBridge creates the bridge if it is missing, gives it the configured address and a
// fixed MAC, and brings it up; it also puts banger's firewall table in its wanted shape, so
// guests without NAT are contained from their first packet and an upgraded helper replaces
// rules an older one made. Calling it again changes nothing.
func (n Net) EnsureBridge(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := n.Validate(); err != nil {
		return err
	}
	mu.Lock()
	defer mu.Unlock()
	if _, err := n.ensureBridge(); err != nil {
		return err
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("opening nftables: %w", err)
	}
	_, err = n.ensureRuleset(c)
	return err
}

// ensureBridge does EnsureBridge's work with mu held and returns the bridge link.
func (n Net) ensureBridge() (netlink.Link, error) {
	// A Linux bridge takes the lowest MAC of its ports unless one is set explicitly, so
	// without a fixed MAC the guests' gateway MAC would change whenever a tap comes or goes
	// and their ARP caches would point at nothing. The MAC is derived from the bridge IP in
	// the same scheme as guest MACs; the bridge IP is never a guest IP, so it cannot clash.
	mac, err := net.ParseMAC(model.MACForIP(n.Prefix.Addr()))
	if err != nil {
		return nil, fmt.Errorf("deriving bridge MAC: %w", err)
	}
	link, err := netlink.LinkByName(n.Bridge)
	switch {
	case isNotFound(err):
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.Bridge, HardwareAddr: mac}}
		if err := netlink.LinkAdd(br); err != nil {
			return nil, fmt.Errorf("creating bridge %s: %w", n.Bridge, err)
		}
		if link, err = netlink.LinkByName(n.Bridge); err != nil {
			return nil, fmt.Errorf("looking up new bridge %s: %w", n.Bridge, err)
		}
	case err != nil:
		return nil, fmt.Errorf("looking up bridge %s: %w", n.Bridge, err)
	case link.Type() != "bridge":
		return nil, errdefs.WithHint(
			errdefs.New(errdefs.ErrConflict, "interface %s exists but is a %s, not a bridge", n.Bridge, link.Type()),
			"choose another network.bridge in the banger config or remove that interface")
	}
	if link.Attrs().HardwareAddr.String() != mac.String() {
		if err := netlink.LinkSetHardwareAddr(link, mac); err != nil {
			return nil, fmt.Errorf("setting MAC of bridge %s: %w", n.Bridge, err)
		}
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{
		IP:   n.Prefix.Addr().AsSlice(),
		Mask: net.CIDRMask(n.Prefix.Bits(), 32),
	}}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return nil, fmt.Errorf("setting address %s on bridge %s: %w", n.Prefix, n.Bridge, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("bringing up bridge %s: %w", n.Bridge, err)
	}
	return link, nil
}

// deleteBridge removes the bridge if it exists; an interface of another type by that name
// is left alone.
func deleteBridge(name string) error {
	link, err := netlink.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("looking up bridge %s: %w", name, err)
	}
	if link.Type() != "bridge" {
		return errdefs.New(errdefs.ErrConflict, "interface %s is a %s, not a bridge; not deleting it", name, link.Type())
	}
	if err := netlink.LinkDel(link); err != nil && !isNotFound(err) {
		return fmt.Errorf("deleting bridge %s: %w", name, err)
	}
	return nil
}

// isNotFound reports whether a netlink lookup failed because the link does not exist.
func isNotFound(err error) bool {
	if err == nil {
		return false
	}
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, errNoDevice)
}
