package hostnet

import (
	"context"
	"fmt"
	"net"
	"sort"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"banger/internal/errdefs"
	"banger/internal/model"
)

var errNoDevice = unix.ENODEV

// ValidMAC parses a MAC that may be given to a tap: 6 bytes, unicast, not all zero.
func ValidMAC(field, mac string) (net.HardwareAddr, error) {
	hw, err := net.ParseMAC(mac)
	if err != nil || len(hw) != 6 {
		return nil, errdefs.InvalidArgument(field, mac, "must be a MAC address like 02:00:00:00:00:01")
	}
	if hw[0]&1 != 0 {
		return nil, errdefs.InvalidArgument(field, mac, "must be a unicast MAC (lowest bit of the first byte clear)")
	}
	if hw.String() == "00:00:00:00:00:00" {
		return nil, errdefs.InvalidArgument(field, mac, "must not be all zeros")
	}
	return hw, nil
}

// CreateTap creates the persistent tap name, owned by ownerUID and ownerGID so the
// unprivileged VMM can attach to it without CAP_NET_ADMIN, enslaves it to the bridge
// (creating the bridge if needed) and brings it up. mac, if not empty, is the host-side
// address of the tap; it must differ from the guest's MAC. An existing tap with the same
// owner is accepted as is; one with another owner is a conflict, because the VMM could
// not open it.
//
// The kernel lets a process open a tap only if it matches both the owner and the group
// (unless it has CAP_NET_ADMIN), so ownerGID must be a group the VMM runs with.
func (n Net) CreateTap(ctx context.Context, name string, ownerUID, ownerGID int, mac string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := n.Validate(); err != nil {
		return err
	}
	if !ValidTapName(name) {
		return errdefs.InvalidArgument("tap", name, "must be "+model.TapPrefix+" followed by 1-12 lowercase hex digits")
	}
	if ownerUID < 0 || ownerUID > 1<<31 {
		return errdefs.InvalidArgument("owner_uid", ownerUID, "must be a user id")
	}
	if ownerGID < 0 || ownerGID > 1<<31 {
		return errdefs.InvalidArgument("owner_gid", ownerGID, "must be a group id")
	}
	var hw net.HardwareAddr
	if mac != "" {
		var err error
		if hw, err = ValidMAC("mac", mac); err != nil {
			return err
		}
	}
	mu.Lock()
	defer mu.Unlock()
	br, err := n.ensureBridge()
	if err != nil {
		return err
	}
	link, err := netlink.LinkByName(name)
	switch {
	case isNotFound(err):
		tap := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: name, MasterIndex: br.Attrs().Index},
			Mode:      netlink.TUNTAP_MODE_TAP,
			// TUN_EXCL makes a concurrent creation by someone else fail instead of
			// silently sharing the device. Persistent, single queue: the VMM re-opens it
			// with its own feature flags (vnet header, no packet info).
			Flags: netlink.TUNTAP_TUN_EXCL | netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
			Owner: uint32(ownerUID),
			Group: uint32(ownerGID),
		}
		if err := netlink.LinkAdd(tap); err != nil {
			return fmt.Errorf("creating tap %s: %w", name, err)
		}
		if link, err = netlink.LinkByName(name); err != nil {
			return fmt.Errorf("looking up new tap %s: %w", name, err)
		}
		if err := configureTap(link, br, hw); err != nil {
			// Leave nothing half made behind: the daemon will retry from scratch.
			_ = netlink.LinkDel(link)
			return err
		}
		return nil
	case err != nil:
		return fmt.Errorf("looking up tap %s: %w", name, err)
	}
	tt, ok := link.(*netlink.Tuntap)
	if !ok || tt.Mode != netlink.TUNTAP_MODE_TAP {
		return errdefs.New(errdefs.ErrConflict, "interface %s exists but is a %s, not a tap", name, link.Type())
	}
	if int(tt.Owner) != ownerUID || int(tt.Group) != ownerGID {
		return errdefs.WithHint(
			errdefs.New(errdefs.ErrConflict, "tap %s exists with owner %d:%d, want %d:%d", name, tt.Owner, tt.Group, ownerUID, ownerGID),
			"delete the tap (banger's helper.delete_tap) and create it again")
	}
	return configureTap(link, br, hw)
}

// configureTap enslaves the tap to the bridge, sets its MAC if given and brings it up.
func configureTap(link, br netlink.Link, hw net.HardwareAddr) error {
	name := link.Attrs().Name
	if link.Attrs().MasterIndex != br.Attrs().Index {
		if err := netlink.LinkSetMaster(link, br); err != nil {
			return fmt.Errorf("attaching tap %s to bridge %s: %w", name, br.Attrs().Name, err)
		}
	}
	if hw != nil && link.Attrs().HardwareAddr.String() != hw.String() {
		if err := netlink.LinkSetHardwareAddr(link, hw); err != nil {
			return fmt.Errorf("setting MAC %s on tap %s: %w", hw, name, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bringing up tap %s: %w", name, err)
	}
	return nil
}

// DeleteTap removes the tap; a missing tap is not an error.
func (n Net) DeleteTap(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !ValidTapName(name) {
		return errdefs.InvalidArgument("tap", name, "must be "+model.TapPrefix+" followed by 1-12 lowercase hex digits")
	}
	mu.Lock()
	defer mu.Unlock()
	return deleteTap(name)
}

func deleteTap(name string) error {
	link, err := netlink.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("looking up tap %s: %w", name, err)
	}
	if _, ok := link.(*netlink.Tuntap); !ok {
		return errdefs.New(errdefs.ErrConflict, "interface %s is a %s, not a tap; not deleting it", name, link.Type())
	}
	if err := netlink.LinkDel(link); err != nil && !isNotFound(err) {
		return fmt.Errorf("deleting tap %s: %w", name, err)
	}
	return nil
}

// listTaps returns the names of banger's taps, sorted.
func listTaps() ([]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing interfaces: %w", err)
	}
	var out []string
	for _, l := range links {
		if _, ok := l.(*netlink.Tuntap); ok && ValidTapName(l.Attrs().Name) {
			out = append(out, l.Attrs().Name)
		}
	}
	sort.Strings(out)
	return out, nil
}
