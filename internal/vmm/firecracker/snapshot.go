package firecracker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"banger/internal/errdefs"
	"banger/internal/vmm"
)

// A Firecracker snapshot is two files: the guest memory (memPath) and the microVM state
// (StateFileName beside it). A restore starts a bare Firecracker, loads both with the new
// VM's tap (network_overrides) and vsock socket (vsock_override), re-points every writable
// drive at the new VM's copy (PATCH /drives) and resumes.
//
// Known limit: Firecracker records the drives' paths in the state file and opens them at
// load, before the PATCH; a snapshot therefore loads only while the source VM's disk files
// still exist at their paths. (QEMU has no such limit: its drives are given at restore.)

var (
	_ vmm.Snapshotter = (*Machine)(nil)
	_ vmm.Restorer    = (*Driver)(nil)
)

// StateFileName is the microVM state file of a snapshot, next to its memory file.
const StateFileName = "vmstate"

// snapshotTimeout bounds a snapshot create or load when the caller allows longer.
const snapshotTimeout = 5 * time.Minute

// Snapshot writes a paused microVM's memory to memPath and its state beside it.
func (m *Machine) Snapshot(ctx context.Context, memPath string) (vmm.RestoreInfo, error) {
	info := vmm.RestoreInfo{Driver: "firecracker", Accel: "kvm"}
	if m.proc.Exited() {
		return info, fmt.Errorf("snapshotting VM %s: %w", m.spec.ID, vmm.ErrNotRunning)
	}
	st, err := m.Status(ctx)
	if err != nil {
		return info, err
	}
	if st != "Paused" {
		return info, errdefs.New(errdefs.ErrConflict, "snapshotting VM %s: firecracker state is %q; the guest must be paused", m.spec.ID, st)
	}
	statePath := filepath.Join(filepath.Dir(memPath), StateFileName)
	for _, p := range []string{memPath, statePath} {
		if _, err := os.Lstat(p); err == nil {
			return info, fmt.Errorf("snapshotting VM %s: %s already exists", m.spec.ID, p)
		}
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, snapshotTimeout)
		defer cancel()
	}
	if err := m.api.CreateSnapshot(ctx, SnapshotCreate{SnapshotType: "Full", SnapshotPath: statePath, MemFilePath: memPath}); err != nil {
		return info, fmt.Errorf("snapshotting VM %s: %w", m.spec.ID, err)
	}
	m.log.Info("vmm state saved", "path", memPath)
	return info, nil
}

// Restore starts a Firecracker for spec from the snapshot whose memory is memPath.
func (d *Driver) Restore(ctx context.Context, spec vmm.Spec, info vmm.RestoreInfo, memPath string) (vmm.Machine, error) {
	if info.Driver != "firecracker" {
		who := info.Driver
		if who == "" {
			who = "an unknown VMM"
		}
		return nil, errdefs.New(errdefs.ErrConflict, "the snapshot was taken by %s; firecracker cannot restore it", who)
	}
	if err := validateSpec(spec); err != nil {
		return nil, err
	}
	statePath := filepath.Join(filepath.Dir(memPath), StateFileName)
	for _, p := range []string{memPath, statePath} {
		if _, err := os.Stat(p); err != nil {
			return nil, errdefs.InvalidArgument("snapshot", p, "file not accessible: "+reason(err))
		}
	}
	bin, err := exec.LookPath(d.cfg.Binary)
	if err != nil {
		return nil, errdefs.WithHint(errdefs.New(errdefs.ErrUnavailable, "finding firecracker binary %q: %w", d.cfg.Binary, err), installHint)
	}
	apiSock := filepath.Join(spec.Dir, APISocketName)
	for _, s := range []string{apiSock, spec.ChannelPath} {
		if err := os.Remove(s); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("removing stale socket %s: %w", s, err)
		}
	}
	return d.launch(spec, bin, apiSock, "restoring", "vmm restored", func(m *Machine) error {
		return m.load(ctx, spec, statePath, memPath)
	})
}

// load loads the snapshot paused, re-points the drives, and resumes.
func (m *Machine) load(ctx context.Context, spec vmm.Spec, statePath, memPath string) error {
	ctx, cancel := context.WithTimeout(ctx, snapshotTimeout)
	defer cancel()
	if err := m.waitAPI(ctx); err != nil {
		return err
	}
	req := SnapshotLoad{SnapshotPath: statePath, MemBackend: &MemoryBackend{BackendType: "File", BackendPath: memPath},
		VsockOverride: &VsockOverride{UDSPath: spec.ChannelPath}}
	if spec.Net != nil {
		req.NetworkOverrides = []NetworkOverride{{IfaceID: "eth0", HostDevName: spec.Net.Tap}}
	}
	steps := []func() error{func() error { return m.api.LoadSnapshot(ctx, req) }}
	for _, d := range spec.Drives {
		if d.ReadOnly {
			continue // the shared base is at the same path for every VM of the image
		}
		steps = append(steps, func() error { return m.api.PatchDrive(ctx, PartialDrive{DriveID: d.ID, PathOnHost: d.Path}) })
	}
	steps = append(steps, func() error { return m.api.PatchVM(ctx, VMStateResumed) })
	for _, step := range steps {
		if err := step(); err != nil {
			if m.proc.Exited() {
				return fmt.Errorf("firecracker exited while loading the snapshot: %w", err)
			}
			return err
		}
	}
	return nil
}
