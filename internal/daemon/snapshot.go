package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"banger/internal/api"
	"banger/internal/errdefs"
	"banger/internal/model"
	"banger/internal/oplog"
	"banger/internal/vmm"
)

// A snapshot directory (snapshots/<id>) holds the VMM's memory and device state (memory),
// copies of the VM's writable disks taken while it was paused (system.cow, root.ext4) and
// snapshot.json, the record. It is assembled in snapshots/.tmp-<id>, renamed into place
// complete, and only then is the row inserted; rm deletes the row first. So a row always
// has its files, and a crash leaves at most a directory without a row, which the next
// start removes.

const (
	snapshotMemName    = "memory"
	snapshotRecordName = "snapshot.json"
	snapshotTmpPrefix  = ".tmp-"
	// snapshotTransientMark in a snapshot's directory: see snapshotOwner.transient.
	snapshotTransientMark = "transient"
	// snapshotPauseMark in a VM's directory says a snapshot paused the VM and will resume
	// it: a daemon that dies meanwhile leaves it, and the next one resumes the VM.
	snapshotPauseMark = "snapshot-paused"
)

func (d *Daemon) snapshotsDir() string { return filepath.Join(d.cfg.StateDir, "snapshots") }

// snapshotVM is snapshot.create: the VM is paused, its state saved and its writable disks
// copied, and then it runs on (or stays paused with leave_paused, or if it was paused).
func (d *Daemon) snapshotVM(ctx context.Context, p api.SnapshotCreateParams, prog progress) (*model.Snapshot, error) {
	return d.snapshotFor(ctx, p, snapshotOwner{}, prog)
}

// snapshotOwner says who a snapshot is for besides a user's snapshot create.
type snapshotOwner struct {
	// pool is the warm pool whose snapshot it is (pool.go).
	pool string
	// transient marks a snapshot its maker deletes when done (vm fork's): its directory
	// holds snapshotTransientMark, and a start-up finding one removes it and the VMs
	// restored from it, the remains of an operation a crash cut short.
	transient bool
}

// snapshotFor is snapshotVM on behalf of owner.
func (d *Daemon) snapshotFor(ctx context.Context, p api.SnapshotCreateParams, owner snapshotOwner, prog progress) (*model.Snapshot, error) {
	if p.VM == "" {
		return nil, errdefs.InvalidArgument("vm", "", "is required")
	}
	if p.Name != "" {
		if err := model.ValidateName("name", p.Name); err != nil {
			return nil, err
		}
		if _, err := d.store.ResolveSnapshot(ctx, p.Name); err == nil {
			return nil, errdefs.New(errdefs.ErrAlreadyExists, "snapshot name %q already exists", p.Name)
		}
	}
	vm, rt, err := d.lockVM(ctx, p.VM)
	if err != nil {
		return nil, err
	}
	defer rt.mu.Unlock()
	if !vm.State.Settled() {
		return nil, errdefs.New(errdefs.ErrConflict, "vm %s is %s; only a running or paused vm can be snapshotted", vm.Name, vm.State)
	}
	if vm.Workspace != "" {
		// Its workspace disk is not among the copies a snapshot makes yet.
		return nil, errdefs.New(errdefs.ErrConflict, "vm %s has a workspace; snapshots of vms with a workspace are not supported", vm.Name)
	}
	if len(vm.Mounts) > 0 {
		// Its guest memory is shared with virtiofsd and its state includes live FUSE
		// sessions no copy could restore.
		return nil, errdefs.New(errdefs.ErrConflict, "vm %s has shared folders (--mount); snapshots and forks of vms with shared folders are not supported", vm.Name)
	}
	m := rt.getMachine()
	if m == nil {
		return nil, errdefs.New(errdefs.ErrConflict, "vm %s has no VMM this daemon holds", vm.Name)
	}
	snapper, err := vmm.AsSnapshotter(m, vm.VMM)
	if err != nil {
		return nil, err
	}
	name := p.Name
	if name == "" {
		name = snapshotName(vm.Name)
	}
	sn := &model.Snapshot{ID: model.NewID(), Name: name, VMID: vm.ID, VMName: vm.Name,
		ImageID: vm.ImageID, ImageName: vm.ImageName, VCPU: vm.VCPU, MemoryMiB: vm.MemoryMiB,
		SystemOverlayBytes: vm.SystemOverlayBytes, WorkDiskBytes: vm.WorkDiskBytes, NAT: vm.NAT,
		GuestIP: vm.GuestIP, MAC: vm.MAC, VMM: vm.VMM, Pool: owner.pool, CreatedAt: time.Now().UTC()}
	log := oplog.G(ctx).With("vm", vm.Name, "snapshot", name)
	began := time.Now()

	wasPaused := vm.State == model.VMPaused
	mark := filepath.Join(vm.Dir, snapshotPauseMark)
	if !wasPaused {
		if err := os.WriteFile(mark, nil, 0o600); err != nil {
			return nil, fmt.Errorf("marking vm %s for its snapshot: %w", vm.Name, err)
		}
		if err := d.pauseLocked(ctx, rt, vm); err != nil {
			os.Remove(mark)
			return nil, err
		}
		prog.stage(ctx, "paused", vm.Name)
	}
	// However the snapshot ends, a VM it paused runs again unless asked otherwise.
	resume := func() error {
		if wasPaused || p.LeavePaused {
			os.Remove(mark)
			return nil
		}
		err := d.resumeLocked(context.WithoutCancel(ctx), rt, vm)
		if err == nil {
			os.Remove(mark)
		}
		return err
	}

	if err := os.MkdirAll(d.snapshotsDir(), 0o750); err != nil {
		return nil, errors.Join(fmt.Errorf("creating the snapshots directory: %w", err), resume())
	}
	tmp := filepath.Join(d.snapshotsDir(), snapshotTmpPrefix+sn.ID)
	final := filepath.Join(d.snapshotsDir(), sn.ID)
	sn.Dir = final
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return nil, errors.Join(fmt.Errorf("creating the snapshot's staging directory: %w", err), resume())
	}
	published := false
	defer func() {
		if !published {
			os.RemoveAll(tmp)
		}
	}()
	fail := func(err error) (*model.Snapshot, error) {
		if rerr := resume(); rerr != nil {
			err = fmt.Errorf("%w (and resuming the vm: %w)", err, rerr)
		}
		return nil, err
	}

	info, err := snapper.Snapshot(ctx, filepath.Join(tmp, snapshotMemName))
	if err != nil {
		return fail(fmt.Errorf("saving the state of vm %s: %w", vm.Name, err))
	}
	sn.Accel, sn.Machine, sn.BootArgs = info.Accel, info.Machine, info.BootArgs
	prog.stage(ctx, "memory_saved", model.FormatSize(allocatedBytes(tmp)), "ms", time.Since(began).Milliseconds())
	// The VMM has flushed and quiesced the disks for the migration; the guest is stopped,
	// so these copies match the memory just saved.
	for _, disk := range []string{systemDiskName, workDiskName} {
		if err := cloneFile(ctx, filepath.Join(vm.Dir, disk), filepath.Join(tmp, disk)); err != nil {
			return fail(fmt.Errorf("copying the disks of vm %s: %w", vm.Name, err))
		}
	}
	prog.stage(ctx, "disks_copied", "")
	if err := resume(); err != nil {
		return nil, fmt.Errorf("snapshot of vm %s not kept: %w", vm.Name, err)
	}
	sn.SizeBytes = allocatedBytes(tmp)
	if owner.transient {
		if err := writeSynced(filepath.Join(tmp, snapshotTransientMark), nil); err != nil {
			return nil, err
		}
	}
	rec, _ := json.MarshalIndent(sn, "", "  ")
	if err := writeSynced(filepath.Join(tmp, snapshotRecordName), rec); err != nil {
		return nil, err
	}
	if err := syncDir(tmp); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, final); err != nil {
		return nil, fmt.Errorf("publishing snapshot %s: %w", name, err)
	}
	published = true
	if err := syncDir(d.snapshotsDir()); err != nil {
		os.RemoveAll(final)
		return nil, err
	}
	if err := d.store.InsertSnapshot(context.WithoutCancel(ctx), sn); err != nil {
		os.RemoveAll(final)
		return nil, err
	}
	prog.stage(ctx, "snapshot_ready", fmt.Sprintf("%s (%s) %s in %.2fs", sn.Name, shortID(sn.ID), model.FormatSize(sn.SizeBytes), time.Since(began).Seconds()))
	log.Info("snapshot created", "snapshot_id", sn.ID, "size", sn.SizeBytes, "duration_ms", time.Since(began).Milliseconds())
	return sn, nil
}

func snapshotName(vmName string) string {
	var b [3]byte
	rand.Read(b[:])
	suffix := "-" + hex.EncodeToString(b[:])
	if len(vmName)+len(suffix) > 63 {
		vmName = strings.TrimRight(vmName[:63-len(suffix)], "-")
	}
	return vmName + suffix
}

func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("syncing %s: %w", path, err)
	}
	return f.Close()
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}

// deleteSnapshot is snapshot.delete: the row goes first, then the files, so a crash in
// between leaves only a directory without a row (removed at the next start).
func (d *Daemon) deleteSnapshot(ctx context.Context, ref string, force bool) (*model.Snapshot, error) {
	sn, err := d.store.ResolveSnapshot(ctx, ref)
	if err != nil {
		return nil, err
	}
	if err := d.store.DeleteSnapshot(ctx, sn.ID, force); err != nil {
		return nil, err
	}
	if err := os.RemoveAll(sn.Dir); err != nil {
		oplog.G(ctx).Warn("removing snapshot files failed; the next start retries", "snapshot", sn.Name, "error", err.Error())
	}
	return sn, nil
}

// sweepSnapshots removes what interrupted snapshot creates and deletes left: staging
// directories, and published directories with no row. It runs at start-up only, before
// anything is served, because a create in progress publishes its directory just before
// inserting the row.
func (d *Daemon) sweepSnapshots(ctx context.Context) {
	log := oplog.G(ctx)
	ents, err := os.ReadDir(d.snapshotsDir())
	if err != nil {
		return
	}
	for _, e := range ents {
		name := e.Name()
		path := filepath.Join(d.snapshotsDir(), name)
		switch {
		case strings.HasPrefix(name, snapshotTmpPrefix):
			log.Info("reconcile: removing an unfinished snapshot", "dir", name)
			os.RemoveAll(path)
		case vmDirName.MatchString(name):
			if _, err := d.store.GetSnapshot(ctx, name); errors.Is(err, errdefs.ErrNotFound) {
				log.Info("reconcile: removing snapshot files without a row", "snapshot_id", name)
				os.RemoveAll(path)
			} else if _, err := os.Stat(filepath.Join(path, snapshotTransientMark)); err == nil {
				d.undoTransient(ctx, name)
			}
		}
	}
}

// resumeAfterSnapshot resumes a re-adopted VM that a snapshot paused when the daemon
// died. The caller holds rt.mu.
func (d *Daemon) resumeAfterSnapshot(ctx context.Context, rt *vmRuntime, vm *model.VM) {
	mark := filepath.Join(vm.Dir, snapshotPauseMark)
	if _, err := os.Stat(mark); err != nil {
		return
	}
	log := oplog.G(ctx).With("vm", vm.Name)
	if vm.State == model.VMPaused {
		// The VMM may still be saving the state for the daemon that died: once done, it
		// would stop the guest again behind the resume.
		if a, ok := rt.getMachine().(vmm.SnapshotAborter); ok {
			if err := a.AbortSnapshot(ctx); err != nil {
				log.Warn("reconcile: aborting an interrupted snapshot failed; the vm stays paused", "error", err.Error())
				return
			}
		}
		if err := d.resumeLocked(ctx, rt, vm); err != nil {
			log.Warn("reconcile: resuming a vm an interrupted snapshot paused failed", "error", err.Error())
			return
		}
		log.Info("reconcile: resumed a vm an interrupted snapshot paused")
	}
	os.Remove(mark)
}

// undoTransient removes a transient snapshot that outlived its maker (a vm fork cut short
// by a crash: the caller got an error) and the VMs restored from it, so the fork is all or
// nothing across crashes too. It runs at start-up, after the VMs were re-adopted.
func (d *Daemon) undoTransient(ctx context.Context, id string) {
	log := oplog.G(ctx).With("snapshot_id", id)
	vms, err := d.store.VMsFromSnapshot(ctx, id)
	if err != nil {
		log.Warn("reconcile: listing the vms of an interrupted fork failed", "error", err.Error())
		return
	}
	for _, v := range vms {
		vm, rt, err := d.lockVM(ctx, v.ID)
		if err != nil {
			continue
		}
		log.Info("reconcile: removing a vm of an interrupted fork", "vm", vm.Name)
		if err := d.destroy(ctx, rt, vm, "its fork was interrupted by a bangerd restart"); err != nil {
			log.Warn("reconcile: removing a vm of an interrupted fork failed", "vm", vm.Name, "error", err.Error())
			rt.mu.Unlock()
			return // the snapshot stays, so the next start tries again
		}
		rt.mu.Unlock()
		d.dropRuntime(vm.ID)
	}
	log.Info("reconcile: removing the snapshot of an interrupted fork")
	if _, err := d.deleteSnapshot(ctx, id, true); err != nil {
		log.Warn("reconcile: removing the snapshot of an interrupted fork failed", "error", err.Error())
	}
}
