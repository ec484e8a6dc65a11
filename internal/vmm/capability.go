package vmm

import (
	"context"

	"banger/internal/errdefs"
)

// Capabilities beyond Machine are small interfaces a driver's Machine may implement; callers
// find them with a type assertion (As*), so a VMM that lacks one is refused with a clear
// conflict rather than failing somewhere inside.

// Pauser stops and restarts a running guest's vCPUs. The VMM process, its devices and the
// guest's memory stay as they are: a paused guest's clock and processes resume where they
// were.
type Pauser interface {
	// Pause stops the vCPUs. Pausing a paused guest is not an error.
	Pause(ctx context.Context) error
	// Resume restarts them. Resuming a running guest is not an error.
	Resume(ctx context.Context) error
}

// AsPauser returns m as a Pauser, or a conflict naming the driver when it cannot pause.
func AsPauser(m Machine, driver string) (Pauser, error) {
	if p, ok := m.(Pauser); ok {
		return p, nil
	}
	return nil, errdefs.New(errdefs.ErrConflict, "the %s driver cannot pause a VM", driver)
}

// Snapshotter writes a paused guest's memory and device state to a file, from which a
// Restorer of the same driver starts a new VMM that continues from that moment. The guest
// stays paused; the caller copies the writable disks meanwhile (the VMM has flushed them)
// and then resumes it or not.
type Snapshotter interface {
	// Snapshot writes the state to memPath (created, must not exist) and, for a VMM that
	// keeps device state apart from memory, to files beside it in the same directory; it
	// returns what a restore has to reproduce.
	Snapshot(ctx context.Context, memPath string) (RestoreInfo, error)
}

// AsSnapshotter returns m as a Snapshotter, or a conflict naming the driver.
func AsSnapshotter(m Machine, driver string) (Snapshotter, error) {
	if s, ok := m.(Snapshotter); ok {
		return s, nil
	}
	return nil, errdefs.New(errdefs.ErrConflict, "the %s driver cannot snapshot a VM", driver)
}

// RestoreInfo is what a restore must reproduce of the VM a snapshot was taken of. Drivers
// fill it when snapshotting (SnapshotInfo) and check it when restoring: a mismatch is a
// conflict, never a guest that resumes on the wrong machine.
type RestoreInfo struct {
	Driver  string `json:"driver"`
	Accel   string `json:"accel"`
	Machine string `json:"machine,omitempty"` // qemu machine type
	// BootArgs is the kernel command line the source booted with: QEMU's loader state
	// (fw_cfg) must match it, and the guest's /proc/cmdline is in its memory anyway.
	BootArgs string `json:"boot_args"`
}

// Restorer starts a VMM that continues a snapshot: spec describes the new VM (its own
// disks, tap, channel), with the same device layout as the snapshotted one. Like Start, it
// returns once the VMM runs the guest.
type Restorer interface {
	Restore(ctx context.Context, spec Spec, info RestoreInfo, memPath string) (Machine, error)
}

// AsRestorer returns d as a Restorer, or a conflict naming it.
func AsRestorer(d Driver) (Restorer, error) {
	if r, ok := d.(Restorer); ok {
		return r, nil
	}
	return nil, errdefs.New(errdefs.ErrConflict, "the %s driver cannot restore a snapshot", d.Name())
}

// Linker connects and disconnects a VM's NIC from its tap (the guest sees the link go up
// or down). A Restorer starts a restored VM with its link down, because the guest still
// uses the snapshot's address and MAC until it is told its own; the caller brings it up.
type Linker interface {
	SetLink(ctx context.Context, up bool) error
}

// SharedPreparer turns a snapshot into a form from which many VMs restore sharing the
// guest memory none of them changed (copy-on-write), instead of each loading its own copy.
// spec describes a VMM that only loads and saves (it never runs the guest): the snapshot's
// own disks, a directory of its own. Restores from the snapshot use the form once it exists.
type SharedPreparer interface {
	PrepareShared(ctx context.Context, spec Spec, info RestoreInfo, memPath string) error
}

// Sharer is a Driver that can give a guest shared folders (Spec.Shares).
type Sharer interface {
	SharesFolders() bool
}

// CanShare reports whether drv can start a Spec with Shares.
func CanShare(drv Driver) bool {
	s, ok := drv.(Sharer)
	return ok && s.SharesFolders()
}

// ErrNoSharesMessage is what a driver without shared folders says about --mount.
const ErrNoSharesMessage = "has no shared folders (--mount): use --workspace to give the VM a copy of a host directory instead, or run it under qemu"

// AgentDetacher makes the guest let go of its end of the agent channel. A guest snapshotted
// while it holds an agent session resumes inside that session, and the session a new host
// opens then collides with it (yamux: duplicate stream). Detached first, the guest waits for
// a fresh session in every copy of the snapshot. Drivers whose restore resets the channel
// itself (Firecracker's vsock) do not implement it.
type AgentDetacher interface {
	// DetachAgent calls hangUp, which closes the host's end of the agent channel, and
	// returns once the guest has closed its end (its agent session has ended), or with an
	// error when that cannot be observed within ctx.
	DetachAgent(ctx context.Context, hangUp func()) error
}

// AgentWatcher reports the guest dropping the agent session a request is pending on.
type AgentWatcher interface {
	// WatchAgent returns a channel closed when the guest, having opened its end of the
	// agent channel, closes it again before ctx ends: a session the host's request went
	// to has ended on the guest's side, and its answer will not come. While it watches
	// it also keeps the VMM's channel serviced (qemu: see Machine.WatchAgent).
	WatchAgent(ctx context.Context) <-chan struct{}
}

// SnapshotAborter ends a snapshot a previous daemon began and did not finish: the VMM may
// still be writing the state (QEMU keeps migrating to a descriptor it holds after the
// daemon died) and would stop the guest once done, whatever the daemon did meanwhile. A
// daemon calls it before resuming a guest an interrupted snapshot paused.
type SnapshotAborter interface {
	AbortSnapshot(ctx context.Context) error
}
