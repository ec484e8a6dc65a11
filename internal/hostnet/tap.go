package hostnet

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strconv"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
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
			"it is not banger's (or was made for another owner); remove it with `ip link delete "+name+"` if nothing uses it")
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

// DeleteTap removes the tap if it is banger's: a tap owned by ownerUID and ownerGID. A
// missing tap is not an error; a tun, or a tap with any other owner, is a conflict and is
// left alone, since the name alone does not make a device banger's.
func (n Net) DeleteTap(ctx context.Context, name string, ownerUID, ownerGID int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !ValidTapName(name) {
		return errdefs.InvalidArgument("tap", name, "must be "+model.TapPrefix+" followed by 1-12 lowercase hex digits")
	}
	mu.Lock()
	defer mu.Unlock()
	link, err := netlink.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("looking up tap %s: %w", name, err)
	}
	if err := checkOwnTap(link, ownerUID, ownerGID); err != nil {
		return err
	}
	return deleteLink(link)
}

func deleteLink(link netlink.Link) error {
	if err := netlink.LinkDel(link); err != nil && !isNotFound(err) {
		return fmt.Errorf("deleting tap %s: %w", link.Attrs().Name, err)
	}
	return nil
}

// checkOwnTap returns nil if link is a tap banger created: tap mode (not tun) with both
// owner and group set to banger's. The owner is read from the kernel's attributes rather
// than netlink.Tuntap, which reports a device without an owner as owned by uid 0.
func checkOwnTap(link netlink.Link, ownerUID, ownerGID int) error {
	name := link.Attrs().Name
	tt, ok := link.(*netlink.Tuntap)
	if !ok {
		return errdefs.New(errdefs.ErrConflict, "interface %s is a %s, not a tap; not deleting it", name, link.Type())
	}
	if tt.Mode != netlink.TUNTAP_MODE_TAP {
		return errdefs.New(errdefs.ErrConflict, "interface %s is a tun, not a tap; not deleting it", name)
	}
	uid, gid, err := tunOwner(link.Attrs().Index)
	if err != nil {
		return fmt.Errorf("reading the owner of tap %s: %w", name, err)
	}
	if uid != int64(ownerUID) || gid != int64(ownerGID) {
		return errdefs.New(errdefs.ErrConflict, "tap %s is owned by %s:%s, not banger's %d:%d; not deleting it",
			name, idString(uid), idString(gid), ownerUID, ownerGID)
	}
	return nil
}

func idString(id int64) string {
	if id < 0 {
		return "none"
	}
	return strconv.FormatInt(id, 10)
}

// tunOwner returns the owner and group of the tun/tap device with the given index, -1 for
// one that is not set.
func tunOwner(index int) (uid, gid int64, err error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	req.AddData(msg)
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil {
		return -1, -1, err
	}
	if len(msgs) != 1 || len(msgs[0]) < unix.SizeofIfInfomsg {
		return -1, -1, fmt.Errorf("unexpected netlink answer (%d messages)", len(msgs))
	}
	uid, gid = -1, -1
	data, err := nestedAttr(msgs[0][unix.SizeofIfInfomsg:], unix.IFLA_LINKINFO, nl.IFLA_INFO_DATA)
	if err != nil || data == nil {
		return uid, gid, err
	}
	attrs, err := nl.ParseRouteAttr(data)
	if err != nil {
		return -1, -1, err
	}
	for _, a := range attrs {
		if len(a.Value) < 4 {
			continue
		}
		switch a.Attr.Type {
		case nl.IFLA_TUN_OWNER:
			uid = int64(nl.NativeEndian().Uint32(a.Value))
		case nl.IFLA_TUN_GROUP:
			gid = int64(nl.NativeEndian().Uint32(a.Value))
		}
	}
	return uid, gid, nil
}

// nestedAttr follows the attribute types in path through nested netlink attributes and
// returns the innermost value, nil if one is missing.
func nestedAttr(b []byte, path ...uint16) ([]byte, error) {
	for _, typ := range path {
		attrs, err := nl.ParseRouteAttr(b)
		if err != nil {
			return nil, err
		}
		b = nil
		for _, a := range attrs {
			if a.Attr.Type&^(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER) == typ {
				b = a.Value
				break
			}
		}
		if b == nil {
			return nil, nil
		}
	}
	return b, nil
}

// listTaps returns the names of banger's taps, sorted: tap-named taps owned by ownerUID and
// ownerGID. Anything else with a tap-shaped name belongs to someone else.
func listTaps(ownerUID, ownerGID int) ([]netlink.Link, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing interfaces: %w", err)
	}
	var out []netlink.Link
	for _, l := range links {
		if ValidTapName(l.Attrs().Name) && checkOwnTap(l, ownerUID, ownerGID) == nil {
			out = append(out, l)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Attrs().Name < out[j].Attrs().Name })
	return out, nil
}
