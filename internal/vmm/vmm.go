// Package vmm defines what bangerd needs from a virtual machine monitor. Drivers
// (vmm/qemu, vmm/firecracker) implement it; the daemon never runs a VMM binary itself.
//
// A Driver starts and re-adopts Machines. A Machine is one running VMM process: it can dial
// the guest agent's channel, ask the guest to power off, be killed, and be waited for.
// Machines outlive the daemon (they run in their own session), so Recover must find a
// running one again from its Spec and pid after bangerd restarts.
package vmm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"
)

// Drive is one block device, in the order the guest sees them (vda, vdb, …).
type Drive struct {
	ID       string // "rootfs", "system", "work"
	Path     string
	ReadOnly bool
	Root     bool // firecracker's is_root_device
}

// Share is a host directory the guest mounts live (a shared folder, `--mount`): a
// virtiofs device with Tag, served from Source (absolute, symlinks already resolved: it is
// opened refusing any symlink), read-only unless ReadOnly is false.
type Share struct {
	Tag      string
	Source   string
	ReadOnly bool
}

// NetIface attaches the VM to a tap device created by the root helper.
type NetIface struct {
	Tap string
	MAC string
}

// Spec is everything a driver needs to start one VM. All paths are absolute.
type Spec struct {
	ID       string
	Name     string
	Dir      string // the VM's directory; drivers keep their sockets and pidfile here
	Kernel   string // vmlinux ELF (PVH) or bzImage
	Initrd   string
	BootArgs string // guest arguments (banger.*, root setup); drivers add console/platform args
	Drives   []Drive
	Net      *NetIface // nil: no NIC
	// Shares are shared folders; a driver without them (vmm.Sharer) refuses a Spec that
	// has any.
	Shares      []Share
	VCPU        int
	MemoryMiB   int
	LogPath     string // serial console and VMM log
	LogMax      int64  // cap of each console log file (see console.go); 0 for the default
	MetricsPath string
	CID         uint32 // vsock guest CID
	// ChannelPath is the unix socket of the host↔guest agent channel: firecracker's hybrid
	// vsock socket, or qemu's virtio-serial chardev.
	ChannelPath string
	// OnLaunch, if set, is called as soon as the VMM process exists, before the driver waits
	// for it to answer, so the caller can record the process durably first; an error kills
	// the process and fails Start.
	OnLaunch func(pid int, start uint64) error
	// PIDStart is, for Recover, the start time recorded by OnLaunch; nonzero makes Recover
	// refuse a process that started at another time (a recycled pid).
	PIDStart uint64
}

// Launched runs OnLaunch for p, killing p if it fails.
func (s Spec) Launched(p *Process) error {
	if s.OnLaunch == nil {
		return nil
	}
	if err := s.OnLaunch(p.PID(), p.StartTime()); err != nil {
		_ = p.Kill()
		<-p.Done()
		return fmt.Errorf("recording VMM pid %d: %w", p.PID(), err)
	}
	return nil
}

// Info describes a driver on this host.
type Info struct {
	Name      string
	Available bool
	Accel     string // kvm or tcg
	Detail    string // why unavailable, or what was found
	Fix       string // how to make it available
}

// Driver starts VMs of one VMM kind.
type Driver interface {
	Name() string
	// Probe checks the host: binary present, acceleration usable.
	Probe(ctx context.Context) Info
	// Start launches the VMM and boots the guest. It returns once the VMM runs; the guest
	// agent may not answer yet.
	Start(ctx context.Context, spec Spec) (Machine, error)
	// Recover re-adopts a VMM started earlier (by this or a previous daemon) with pid. It
	// returns ErrNotRunning when that process is gone or is not this VM's VMM.
	Recover(ctx context.Context, spec Spec, pid int) (Machine, error)
}

// ErrNotRunning reports that a recorded VMM process no longer runs.
var ErrNotRunning = errors.New("vmm process not running")

// Machine is one running VMM process.
type Machine interface {
	PID() int
	Accel() string
	// DialAgent opens a new byte stream to the guest agent's channel.
	DialAgent(ctx context.Context) (net.Conn, error)
	// Shutdown asks the VMM to power the guest off (ACPI powerdown, Ctrl-Alt-Del). It does
	// not wait; use Wait.
	Shutdown(ctx context.Context) error
	// Kill ends the VMM process now.
	Kill() error
	// Done is closed when the VMM process has exited.
	Done() <-chan struct{}
}

// Wait blocks until m exits or ctx ends.
func Wait(ctx context.Context, m Machine) error {
	select {
	case <-m.Done():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// PollInterval is how often drivers check a re-adopted process (not their child) for exit.
const PollInterval = 100 * time.Millisecond
