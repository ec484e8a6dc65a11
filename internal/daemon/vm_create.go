package daemon

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"banger/internal/agentproto"
	"banger/internal/api"
	"banger/internal/errdefs"
	"banger/internal/model"
	"banger/internal/oplog"
)

// createPlan is a validated vm.create request: everything checked before any lock is taken.
type createPlan struct {
	name    string // empty: generate
	image   *model.Image
	vcpu    int
	memMiB  int
	overlay int64
	work    int64
	nat     bool
	noStart bool
	rm      bool
	snap    *model.Snapshot // restore from it instead of booting
	// wsToken and wsPath are the workspace upload and its guest mount point; "" none.
	wsToken string
	wsPath  string
	mounts  []model.Mount // shared folders, host paths resolved
	// pool is the warm pool the VM is made for (pool.go); such a create is never itself
	// served from a pool.
	pool string
}

// validateCreate checks params without holding any lock. Resolving the image may pull it.
func (d *Daemon) validateCreate(ctx context.Context, p api.VMCreateParams, prog progress) (*createPlan, error) {
	plan := &createPlan{name: p.Name, nat: p.NAT, noStart: p.NoStart, rm: p.AutoRemove}
	if p.Name != "" {
		if err := model.ValidateName("name", p.Name); err != nil {
			return nil, err
		}
	}
	plan.vcpu = p.VCPU
	if plan.vcpu == 0 {
		plan.vcpu = d.cfg.Defaults.VCPU
	}
	if err := model.ValidateVCPU(plan.vcpu); err != nil {
		return nil, err
	}
	var err error
	if plan.memMiB, err = model.MemoryMiB("memory", orDefault(p.Memory, d.cfg.Defaults.Memory)); err != nil {
		return nil, err
	}
	if plan.overlay, err = model.DiskBytes("system_overlay_size", orDefault(p.SystemOverlaySize, d.cfg.Defaults.SystemOverlaySize)); err != nil {
		return nil, err
	}
	if plan.work, err = model.DiskBytes("work_disk_size", orDefault(p.WorkDiskSize, d.cfg.Defaults.WorkDiskSize)); err != nil {
		return nil, err
	}
	if p.NAT && !d.cfg.Network.Enabled {
		return nil, errdefs.WithHint(errdefs.InvalidArgument("nat", true, "needs networking, which is off in this daemon's config"),
			"set network.enabled: true in the bangerd config and run the root helper")
	}
	if p.Workspace != nil {
		if !workspaceTokenRe.MatchString(p.Workspace.Token) {
			return nil, errdefs.InvalidArgument("workspace.token", p.Workspace.Token, "must be a token from workspace.upload (32 hex digits)")
		}
		plan.wsToken, plan.wsPath = p.Workspace.Token, orDefault(p.Workspace.Path, agentproto.DefaultWorkspacePath)
		if err := model.ValidateWorkspacePath("workspace.path", plan.wsPath); err != nil {
			return nil, err
		}
	}
	if len(p.Mounts) > 0 {
		if plan.mounts, err = d.resolveMounts(ctx, p.Mounts); err != nil {
			return nil, err
		}
	}
	if err := checkMountsAgainstWorkspace(plan.mounts, plan.wsPath); err != nil {
		return nil, err
	}
	if p.FromSnapshot != "" {
		return d.validateRestore(ctx, p, plan, prog)
	}
	ref := orDefault(p.Image, d.cfg.Defaults.Image)
	if plan.image, err = d.findOrAutoPullImage(ctx, ref, prog); err != nil {
		return nil, err
	}
	prog.stage(ctx, "image_resolved", plan.image.Name+" "+shortID(plan.image.ID), "image", plan.image.Name, "image_id", plan.image.ID)
	return plan, nil
}

// validateRestore finishes a plan for --from-snapshot: the machine is the snapshot's, so
// asking for another one is refused rather than ignored.
func (d *Daemon) validateRestore(ctx context.Context, p api.VMCreateParams, plan *createPlan, prog progress) (*createPlan, error) {
	for _, f := range []struct {
		field string
		set   bool
		value any
	}{
		{"image", p.Image != "", p.Image}, {"vcpu", p.VCPU != 0, p.VCPU}, {"memory", p.Memory != "", p.Memory},
		{"system_overlay_size", p.SystemOverlaySize != "", p.SystemOverlaySize}, {"work_disk_size", p.WorkDiskSize != "", p.WorkDiskSize},
		// A workspace disk would be a device the snapshot's machine did not have.
		{"workspace", p.Workspace != nil, "(set)"},
		// Shared folders need shared guest memory, which a snapshot's machine lacks.
		{"mounts", len(p.Mounts) > 0, "(set)"},
	} {
		if f.set {
			return nil, errdefs.InvalidArgument(f.field, f.value, "cannot be given with from_snapshot: the snapshot's is used")
		}
	}
	sn, err := d.store.ResolveSnapshot(ctx, p.FromSnapshot)
	if err != nil {
		return nil, err
	}
	im, err := d.store.GetImage(ctx, sn.ImageID)
	if err != nil {
		return nil, fmt.Errorf("loading the image of snapshot %s: %w", sn.Name, err)
	}
	plan.snap, plan.image = sn, im
	plan.vcpu, plan.memMiB, plan.overlay, plan.work = sn.VCPU, sn.MemoryMiB, sn.SystemOverlayBytes, sn.WorkDiskBytes
	prog.stage(ctx, "snapshot_resolved", fmt.Sprintf("%s (%s) of %s", sn.Name, shortID(sn.ID), sn.VMName))
	return plan, nil
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// reserve takes the narrow create lock to pick the name, id and guest IP and persist the
// row that holds them. Everything slow happens outside it. On success the VM's lifecycle
// lock is held; the caller unlocks it.
func (d *Daemon) reserve(ctx context.Context, plan *createPlan) (*model.VM, error) {
	d.reserveMu.Lock()
	defer d.reserveMu.Unlock()
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	names := make(map[string]bool, len(vms))
	used := make([]netip.Addr, 0, len(vms))
	for _, vm := range vms {
		names[vm.Name] = true
		if a, err := netip.ParseAddr(vm.GuestIP); err == nil {
			used = append(used, a)
		}
	}
	name, err := pickName(names, plan.name)
	if err != nil {
		return nil, err
	}
	ip, err := lowestFreeIP(d.prefix, used)
	if err != nil {
		return nil, err
	}
	id := model.NewID()
	now := time.Now().UTC()
	vm := &model.VM{
		ID: id, Name: name, ImageID: plan.image.ID, ImageName: plan.image.Name,
		State: model.VMCreated, VCPU: plan.vcpu, MemoryMiB: plan.memMiB,
		SystemOverlayBytes: plan.overlay, WorkDiskBytes: plan.work, NAT: plan.nat,
		GuestIP: ip.String(), MAC: model.MACForIP(ip), CID: model.CIDForIP(ip),
		Tap: model.TapForID(id), Dir: filepath.Join(d.cfg.VMsDir(), id),
		CreatedAt: now, UpdatedAt: now, Creating: true, AutoRemove: plan.rm, Workspace: plan.wsPath,
		Mounts: plan.mounts,
		Pool:   plan.pool,
	}
	if plan.snap != nil {
		vm.SnapshotID = plan.snap.ID
	}
	// The VM's lifecycle lock is taken before its row becomes visible, so no start or
	// delete can slip in between the reservation and the rest of the create.
	rt := d.runtime(vm.ID)
	rt.mu.Lock()
	if err := d.store.InsertVM(ctx, vm); err != nil {
		rt.mu.Unlock()
		d.dropRuntime(vm.ID)
		return nil, err
	}
	return vm, nil
}

// pickName is want when it is free, or a generated name no VM has when want is empty. The
// caller holds reserveMu; names are the taken ones.
func pickName(names map[string]bool, want string) (string, error) {
	if want != "" {
		if names[want] {
			return "", errdefs.New(errdefs.ErrAlreadyExists, "vm name %q already exists", want)
		}
		return want, nil
	}
	for i := 0; ; i++ {
		name := model.RandomName()
		if i > 20 {
			name = fmt.Sprintf("%s-%d", name, i)
		}
		if !names[name] {
			return name, nil
		}
	}
}

// Paths inside a VM's directory.
const (
	systemDiskName = "system.cow"
	workDiskName   = "root.ext4"
	// workspaceDiskName is the copy of a host tree a workspace VM gets (workspace.go).
	workspaceDiskName = "workspace.ext4"
	consoleLogName    = "console.log"
	metricsName       = "metrics.json"
	channelName       = "agent.sock"
)

// createVM runs the whole create. On any failure nothing is left behind: no row (so no IP
// or name), no directory, no tap.
func (d *Daemon) createVM(ctx context.Context, p api.VMCreateParams, prog progress) (*model.VM, error) {
	return d.create(ctx, p, "", prog)
}

// create is createVM for a user (pool "") or for the warm pool named pool.
func (d *Daemon) create(ctx context.Context, p api.VMCreateParams, pool string, prog progress) (*model.VM, error) {
	if pool == "" {
		// Pool fills wait while users create (pool.go: waitForUsers).
		d.userCreates.Add(1)
		defer d.userCreates.Add(-1)
	}
	plan, err := d.validateCreate(ctx, p, prog)
	if err != nil {
		return nil, err
	}
	plan.pool = pool
	prog.stage(ctx, "validated", "")
	if pool == "" {
		if vm, ok := d.serveFromPool(ctx, plan, prog); ok {
			return vm, nil
		}
	}
	vm, err := d.reserve(ctx, plan)
	if err != nil {
		return nil, err
	}
	prog.stage(ctx, "persisted", fmt.Sprintf("%s (%s) %s", vm.Name, shortID(vm.ID), vm.GuestIP), "vm", vm.Name, "vm_id", vm.ID, "guest_ip", vm.GuestIP)
	d.publishDNS(vm)

	rt := d.runtime(vm.ID)
	defer rt.mu.Unlock()
	fail := func(cause error) (*model.VM, error) {
		// startLocked undid its own steps; what is left is the reservation, removed by the
		// same recorded delete a crash would be resumed with. A cancelled request still
		// cleans up, so the undo gets a context of its own.
		undo := context.WithoutCancel(ctx)
		if err := d.destroy(undo, rt, vm, "create failed: "+cause.Error()); err != nil {
			oplog.G(ctx).Error("undo create failed", "vm_id", vm.ID, "error", err.Error())
			return nil, fmt.Errorf("%w (undoing the create: %w)", cause, err)
		}
		return nil, cause
	}
	if plan.snap != nil {
		if err := d.copySnapshotDisks(ctx, vm, plan.snap); err != nil {
			return fail(err)
		}
		prog.stage(ctx, "disks_ready", "copied from snapshot "+plan.snap.Name)
	} else {
		if err := d.prepareDisks(ctx, vm); err != nil {
			return fail(err)
		}
		prog.stage(ctx, "disks_ready", fmt.Sprintf("system %s, work %s", model.FormatSize(vm.SystemOverlayBytes), model.FormatSize(vm.WorkDiskBytes)))
	}
	if plan.wsToken != "" {
		if err := d.claimWorkspace(plan.wsToken, filepath.Join(vm.Dir, workspaceDiskName)); err != nil {
			return fail(err)
		}
		prog.stage(ctx, "workspace_ready", "at "+plan.wsPath)
	}
	if plan.noStart {
		if err := d.move(ctx, vm, model.VMStopped, func(v *model.VM) { v.Creating = false }); err != nil {
			return fail(err)
		}
		prog.stage(ctx, "created", "not started (--no-start)")
		return vm, nil
	}
	if err := d.startLocked(ctx, rt, vm, prog); err != nil {
		return fail(err)
	}
	if vm.AutoRemove {
		d.armAutoRemove(vm.ID)
	}
	return vm, nil
}

// prepareDisks creates the VM directory, the sparse system overlay and the work disk, each
// a copy of an empty ext4 template (made once per label and size, see disktmpl).
func (d *Daemon) prepareDisks(ctx context.Context, vm *model.VM) error {
	if err := os.MkdirAll(vm.Dir, 0o750); err != nil {
		return fmt.Errorf("creating vm directory: %w", err)
	}
	if err := d.disks.Make(ctx, filepath.Join(vm.Dir, systemDiskName), vm.SystemOverlayBytes, "system"); err != nil {
		return fmt.Errorf("creating system overlay disk: %w", err)
	}
	if err := d.disks.Make(ctx, filepath.Join(vm.Dir, workDiskName), vm.WorkDiskBytes, "work"); err != nil {
		return fmt.Errorf("creating work disk: %w", err)
	}
	return nil
}

// copySnapshotDisks gives vm its own copies of the snapshot's writable disks.
func (d *Daemon) copySnapshotDisks(ctx context.Context, vm *model.VM, sn *model.Snapshot) error {
	if err := os.MkdirAll(vm.Dir, 0o750); err != nil {
		return fmt.Errorf("creating vm directory: %w", err)
	}
	for _, disk := range []string{systemDiskName, workDiskName} {
		if err := cloneFile(ctx, filepath.Join(sn.Dir, disk), filepath.Join(vm.Dir, disk)); err != nil {
			return fmt.Errorf("copying the disks of snapshot %s: %w", sn.Name, err)
		}
	}
	return nil
}

// beginCreate is vm.create.begin: the work continues after the call returns, under the
// call's op id, detached from the call's connection.
func (d *Daemon) beginCreate(ctx context.Context, p api.VMCreateParams) (api.BeginResult, error) {
	return d.beginOp(ctx, "vm.create", func(bctx context.Context, op *operation) {
		start := time.Now()
		log := oplog.G(bctx).With("async", true)
		vm, err := d.createVM(bctx, p, progress{op})
		if err != nil {
			log.Error("async operation failed", "duration_ms", time.Since(start).Milliseconds(), "error", err.Error())
		} else {
			log.Info("async operation done", "duration_ms", time.Since(start).Milliseconds(), "vm", vm.Name)
		}
		op.finish(vm, nil, err)
	})
}
