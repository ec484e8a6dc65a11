package vmm

import (
	"fmt"
	"os"

	"banger/internal/errdefs"
)

// TunDevice is the clone device a VMM opens to attach to its tap.
const TunDevice = "/dev/net/tun"

// TunHint tells an unprivileged daemon's operator how to let its VMMs open TunDevice.
// Mode 0666 is what distributions' udev rules give it and is safe: the kernel still lets a
// process without CAP_NET_ADMIN attach only to taps its uid and gid own, and the root
// helper creates banger's taps owned by the daemon user. Minimal containers without udev
// leave the node root-only.
const TunHint = "the VMM runs as the daemon's user and must open " + TunDevice +
	": chmod 0666 " + TunDevice + " (the mode distributions' udev rules give it; tap access stays limited to the tap's owner)"

// CheckTunAccess reports whether this process may open TunDevice read-write, which a VMM
// started by it needs to attach to a tap. Opening the clone device without TUNSETIFF
// creates nothing. The error carries TunHint.
func CheckTunAccess() error {
	return checkTunAccess(TunDevice)
}

func checkTunAccess(device string) error {
	f, err := os.OpenFile(device, os.O_RDWR, 0)
	if err != nil {
		return errdefs.WithHint(errdefs.New(errdefs.ErrUnavailable, "VMMs of this daemon (uid %d) cannot open %s: %w",
			os.Geteuid(), device, err), TunHint)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", device, err)
	}
	return nil
}
