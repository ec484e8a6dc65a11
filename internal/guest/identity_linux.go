package guest

import (
	"banger/internal/agentproto"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// applyIdentity makes this guest the VM id describes (see the identity request). The
// clock and entropy go first: everything after may log or pick random numbers.
func applyIdentity(id agentproto.Identity, log *slog.Logger) error {
	p, err := id.Validate()
	if err != nil {
		return err
	}
	ts := unix.NsecToTimespec(p.UnixNanos)
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return fmt.Errorf("setting the clock: %w", err)
	}
	if err := reseed(p.Seed); err != nil {
		return fmt.Errorf("reseeding the RNG: %w", err)
	}
	if p.Addr.IsValid() {
		if err := renumber(p); err != nil {
			return err
		}
	}
	if err := writeIdentity(p.BootParams); err != nil {
		return err
	}
	if err := replaceFile("/etc/machine-id", []byte(p.MachineID+"\n")); err != nil {
		return err
	}
	log.Info("identity applied", "name", p.Name, "addr", p.Addr.String(), "mac", p.MAC.String(),
		"clock", time.Unix(0, p.UnixNanos).UTC().Format(time.RFC3339Nano))
	return nil
}

// reseed credits seed to the kernel's input pool (RNDADDENTROPY) and forces the CRNG to
// reseed from it (RNDRESEEDCRNG), so a restored guest never repeats its snapshot's random
// numbers, whether or not the VMM offers a VM generation id.
func reseed(seed []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	buf := make([]byte, 8+len(seed))
	*(*int32)(unsafe.Pointer(&buf[0])) = int32(len(seed) * 8)
	*(*int32)(unsafe.Pointer(&buf[4])) = int32(len(seed))
	copy(buf[8:], seed)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&buf[0]))); e != 0 {
		return fmt.Errorf("RNDADDENTROPY: %w", e)
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDRESEEDCRNG, 0); e != 0 {
		return fmt.Errorf("RNDRESEEDCRNG: %w", e)
	}
	return nil
}

// renumber gives eth0 the new MAC and address (dropping the snapshot's) and the default
// route. The MAC is the guest's to set: QEMU's migration stream carries the NIC's MAC,
// so the device keeps the source's until the guest changes it.
func renumber(p agentproto.ParsedIdentity) error {
	eth, err := netlink.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("finding eth0: %w", err)
	}
	if p.MAC != nil && eth.Attrs().HardwareAddr.String() != p.MAC.String() {
		if err := netlink.LinkSetDown(eth); err != nil {
			return fmt.Errorf("bringing eth0 down: %w", err)
		}
		if err := netlink.LinkSetHardwareAddr(eth, p.MAC); err != nil {
			return fmt.Errorf("setting eth0's MAC to %s: %w", p.MAC, err)
		}
	}
	addrs, err := netlink.AddrList(eth, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("listing eth0's addresses: %w", err)
	}
	want := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr.Addr().AsSlice(), Mask: net.CIDRMask(p.Addr.Bits(), 32)}}
	for _, a := range addrs {
		if a.IPNet.String() != want.IPNet.String() {
			if err := netlink.AddrDel(eth, &a); err != nil {
				return fmt.Errorf("removing %s from eth0: %w", a.IPNet, err)
			}
		}
	}
	if err := netlink.AddrReplace(eth, want); err != nil {
		return fmt.Errorf("adding %s to eth0: %w", p.Addr, err)
	}
	if err := netlink.LinkSetUp(eth); err != nil {
		return fmt.Errorf("bringing eth0 up: %w", err)
	}
	if p.Gateway.IsValid() {
		route := &netlink.Route{LinkIndex: eth.Attrs().Index, Gw: p.Gateway.AsSlice()}
		if err := netlink.RouteReplace(route); err != nil {
			return fmt.Errorf("adding the default route via %s: %w", p.Gateway, err)
		}
	}
	// Neighbours learnt as the old VM would answer for it: start afresh.
	neighs, _ := netlink.NeighList(eth.Attrs().Index, netlink.FAMILY_V4)
	for _, n := range neighs {
		_ = netlink.NeighDel(&n)
	}
	return nil
}
