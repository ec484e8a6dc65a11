package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/errdefs"
	"banger/internal/model"
	"banger/internal/oplog"
	"banger/internal/store"
)

// Warm pools (config pools). A pool owns, all in rows of the store:
//
//   - one snapshot (snapshots.pool = NAME) of a VM of its spec booted cold to agent-ready,
//     made by a builder VM (vms.pool = NAME, no snapshot_id) that is deleted right after;
//   - in mode "vms", Size VMs restored from that snapshot and paused (vms.pool = NAME,
//     state paused), their agents detached (detach.go) so a resume meets a fresh session.
//
// A create whose spec the pool serves (same image, vcpu, memory, the default disk sizes,
// no workspace, mounts, snapshot or --no-start) claims a ready VM: under reserveMu its row
// loses the pool mark and gets the create's name and NAT (store.ClaimPoolVM, a
// compare-and-set), and outside it the NAT rule is added, the VM resumed and told its
// identity, and its name published in DNS (a waiting pool VM has none). With none ready it is restored
// from the pool's snapshot. Either way the stage "pool" says so, and the pool refills in
// the background. Each fill takes reserveMu once per VM, like any create, and waits while
// users' creates run, so it never holds users up on the lock or the CPUs. A fill that
// fails (image missing, VMM unusable) is retried with a growing delay and shown by
// `banger pool ls`. Start-up deletes rows of pools no longer configured; the pool itself
// deletes members and snapshots that do not match its spec, so a crash anywhere leaves
// only rows that the next start re-adopts or removes.

// Pool states, as `pool ls` shows them.
const (
	poolStarting = "starting"
	poolFilling  = "filling"
	poolReady    = "ready"
	poolFailing  = "failing"
)

// Fill pacing: a failing fill is retried after poolBackoffMin, doubling up to
// poolBackoffMax; a full pool is checked again every poolRecheck (members whose VMM died).
const (
	poolBackoffMin = 2 * time.Second
	poolBackoffMax = 2 * time.Minute
	poolRecheck    = 30 * time.Second
	// poolUserWait bounds how long a fill step waits for users' creates to finish.
	poolUserWait = 2 * time.Minute
)

// warmPool is one configured pool's state in memory; its VMs and snapshot are in the store.
type warmPool struct {
	cfg  config.Pool
	kick chan struct{}

	mu        sync.Mutex
	state     string
	lastErr   string
	lastErrAt time.Time
	nextTry   time.Time
	imageID   string
	snap      *model.Snapshot
	served    int64
}

func newWarmPool(cfg config.Pool) *warmPool {
	return &warmPool{cfg: cfg, kick: make(chan struct{}, 1), state: poolStarting}
}

// wake asks the pool's filler to look again now.
func (p *warmPool) wake() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

func (p *warmPool) set(f func(p *warmPool)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f(p)
}

// spec is what the pool serves: the image it resolved, its snapshot.
func (p *warmPool) spec() (imageID string, snap *model.Snapshot) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.imageID, p.snap
}

// startPools starts one filler per pool; they end with the daemon.
func (d *Daemon) startPools() {
	for _, p := range d.pools {
		d.bg.Add(1)
		go func() {
			defer d.bg.Done()
			d.runPool(d.bgCtx, p)
		}()
	}
}

// runPool keeps p filled until ctx ends.
func (d *Daemon) runPool(ctx context.Context, p *warmPool) {
	backoff := poolBackoffMin
	for {
		octx := d.newOp(ctx)
		err := d.fillPool(octx, p)
		if ctx.Err() != nil {
			return
		}
		wait := poolRecheck
		if err != nil {
			wait = backoff
			backoff = min(2*backoff, poolBackoffMax)
			oplog.G(octx).Warn("filling a warm pool failed; retrying", "pool", p.cfg.Name, "retry_in", wait.String(), "error", err.Error())
			p.set(func(p *warmPool) {
				p.state, p.lastErr, p.lastErrAt, p.nextTry = poolFailing, model.CapLastError(err.Error()), time.Now().UTC(), time.Now().Add(wait).UTC()
			})
		} else {
			backoff = poolBackoffMin
			p.set(func(p *warmPool) { p.state, p.nextTry = poolReady, time.Time{} })
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		case <-p.kick:
			timer.Stop()
			if err != nil {
				// A failing pool keeps its backoff: a claim does not make the image appear.
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Until(p.nextRetry())):
				}
			}
		}
	}
}

func (p *warmPool) nextRetry() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.nextTry
}

// fillPool makes sure p has its snapshot and, in mode vms, Size ready VMs.
func (d *Daemon) fillPool(ctx context.Context, p *warmPool) error {
	ctx = oplog.WithAttrs(ctx, "pool", p.cfg.Name)
	if err := d.waitForUsers(ctx); err != nil {
		return err
	}
	im, err := d.findOrAutoPullImage(ctx, p.cfg.Image, progress{})
	if err != nil {
		return fmt.Errorf("resolving the pool's image %q: %w", p.cfg.Image, err)
	}
	p.set(func(p *warmPool) { p.imageID = im.ID })
	sn, err := d.poolSnapshot(ctx, p, im)
	if err != nil {
		return err
	}
	p.set(func(p *warmPool) { p.snap = sn })
	want := p.cfg.Size
	if p.cfg.Mode == config.PoolModeSnapshot {
		want = 0
	}
	ready, err := d.prunePoolVMs(ctx, p, sn, want)
	if err != nil {
		return err
	}
	for ; ready < want; ready++ {
		p.set(func(p *warmPool) { p.state = poolFilling })
		if err := d.waitForUsers(ctx); err != nil {
			return err
		}
		if err := d.makePoolVM(ctx, p, sn); err != nil {
			return err
		}
	}
	p.set(func(p *warmPool) { p.lastErr, p.lastErrAt = "", time.Time{} })
	return nil
}

// waitForUsers holds a fill step back while users' creates run: on a host with few cores
// a restore in the background would slow the boot a user waits for. Bounded, so a steady
// stream of creates cannot keep a pool empty for ever.
func (d *Daemon) waitForUsers(ctx context.Context) error {
	deadline := time.Now().Add(poolUserWait)
	for d.userCreates.Load() > 0 && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return ctx.Err()
}

// poolName is a VM or snapshot name of pool p: pool-NAME-xxxxxx (config keeps it a label).
func poolName(pool string) string {
	var b [3]byte
	rand.Read(b[:])
	return "pool-" + pool + "-" + hex.EncodeToString(b[:])
}

// poolSnapshot returns p's snapshot if it still matches the pool's spec and can be
// restored here, deleting any other snapshot of p; otherwise it makes a new one.
func (d *Daemon) poolSnapshot(ctx context.Context, p *warmPool, im *model.Image) (*model.Snapshot, error) {
	overlay, work, err := d.defaultDisks()
	if err != nil {
		return nil, err
	}
	all, err := d.store.ListSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	var keep *model.Snapshot
	for i := range all {
		sn := &all[i]
		if sn.Pool != p.cfg.Name {
			continue
		}
		fits := sn.ImageID == im.ID && sn.VCPU == p.cfg.VCPU && sn.MemoryMiB == p.cfg.MemoryMiB &&
			sn.SystemOverlayBytes == overlay && sn.WorkDiskBytes == work
		if fits && keep == nil {
			if _, _, err := d.snapshotDriver(ctx, sn); err == nil {
				keep = sn
				continue
			}
		}
		oplog.G(ctx).Info("removing a pool snapshot that no longer fits the pool", "snapshot", sn.Name)
		if _, err := d.deleteSnapshot(ctx, sn.ID, true); err != nil {
			return nil, fmt.Errorf("removing stale pool snapshot %s: %w", sn.Name, err)
		}
	}
	if keep != nil {
		return keep, nil
	}
	return d.buildPoolSnapshot(ctx, p, im)
}

// defaultDisks are the disk sizes a create without sizes gets, which pools serve.
func (d *Daemon) defaultDisks() (overlay, work int64, err error) {
	if overlay, err = model.DiskBytes("defaults.system_overlay_size", d.cfg.Defaults.SystemOverlaySize); err != nil {
		return 0, 0, err
	}
	work, err = model.DiskBytes("defaults.work_disk_size", d.cfg.Defaults.WorkDiskSize)
	return overlay, work, err
}

// buildPoolSnapshot boots a builder VM of p's spec cold, snapshots it once its agent
// answered (snapshotVM detaches the agent before the pause) and deletes the builder.
func (d *Daemon) buildPoolSnapshot(ctx context.Context, p *warmPool, im *model.Image) (*model.Snapshot, error) {
	p.set(func(p *warmPool) { p.state = poolFilling })
	began := time.Now()
	vm, err := d.create(ctx, api.VMCreateParams{Name: poolName(p.cfg.Name), Image: im.ID, VCPU: p.cfg.VCPU,
		Memory: fmt.Sprintf("%dM", p.cfg.MemoryMiB)}, p.cfg.Name, progress{})
	if err != nil {
		return nil, fmt.Errorf("booting the pool's builder vm: %w", err)
	}
	defer func() {
		if _, err := d.deleteVM(context.WithoutCancel(ctx), vm.ID, true); err != nil {
			oplog.G(ctx).Warn("deleting a pool's builder vm failed; the pool removes it on its next pass", "vm", vm.Name, "error", err.Error())
		}
	}()
	sn, err := d.snapshotFor(ctx, api.SnapshotCreateParams{VM: vm.ID, Name: poolName(p.cfg.Name), LeavePaused: true}, snapshotOwner{pool: p.cfg.Name}, progress{})
	if err != nil {
		return nil, fmt.Errorf("snapshotting the pool's builder vm: %w", err)
	}
	oplog.G(ctx).Info("pool snapshot made", "snapshot", sn.Name, "duration_ms", time.Since(began).Milliseconds())
	return sn, nil
}

// prunePoolVMs deletes p's VMs that are not ready from sn (builders a crash left, VMs of an
// older snapshot, VMs whose VMM died) and those beyond want; it returns how many remain.
func (d *Daemon) prunePoolVMs(ctx context.Context, p *warmPool, sn *model.Snapshot, want int) (int, error) {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return 0, err
	}
	ready := 0
	var errs []error
	for _, vm := range vms {
		if vm.Pool != p.cfg.Name {
			continue
		}
		if vm.State == model.VMPaused && !vm.Creating && vm.SnapshotID == sn.ID && ready < want {
			ready++
			continue
		}
		if err := d.dropPoolVM(ctx, vm.ID, p.cfg.Name, "not a ready vm of its pool"); err != nil {
			errs = append(errs, err)
		}
	}
	return ready, errors.Join(errs...)
}

// dropPoolVM deletes the VM id if pool still owns it (a create may have claimed it since it
// was listed).
func (d *Daemon) dropPoolVM(ctx context.Context, id, pool, why string) error {
	vm, rt, err := d.lockVM(ctx, id)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	defer rt.mu.Unlock()
	if vm.Pool != pool {
		return nil
	}
	oplog.G(ctx).Info("removing a pool vm", "vm", vm.Name, "state", vm.State, "why", why)
	if err := d.destroy(ctx, rt, vm, "pool: "+why); err != nil {
		return fmt.Errorf("removing pool vm %s: %w", vm.Name, err)
	}
	d.dropRuntime(id)
	return nil
}

// makePoolVM restores one VM of p from sn and pauses it, its agent detached.
func (d *Daemon) makePoolVM(ctx context.Context, p *warmPool, sn *model.Snapshot) error {
	vm, err := d.create(ctx, api.VMCreateParams{Name: poolName(p.cfg.Name), FromSnapshot: sn.ID}, p.cfg.Name, progress{})
	if err != nil {
		return fmt.Errorf("restoring a pool vm: %w", err)
	}
	vm, rt, err := d.lockVM(ctx, vm.ID)
	if err != nil {
		return err
	}
	defer rt.mu.Unlock()
	if vm.State == model.VMRunning {
		err = d.pauseLocked(ctx, rt, vm)
	} else {
		err = errdefs.New(errdefs.ErrConflict, "pool vm %s is %s after its restore", vm.Name, vm.State)
	}
	if err != nil {
		if derr := d.destroy(context.WithoutCancel(ctx), rt, vm, "pool: "+err.Error()); derr != nil {
			err = fmt.Errorf("%w (removing it: %w)", err, derr)
		}
		return fmt.Errorf("pausing a pool vm: %w", err)
	}
	oplog.G(ctx).Info("pool vm ready", "vm", vm.Name)
	return nil
}

// matchPool is the pool that serves plan, if any.
func (d *Daemon) matchPool(plan *createPlan) *warmPool {
	if plan.snap != nil || plan.wsToken != "" || len(plan.mounts) > 0 || plan.noStart || plan.pool != "" {
		return nil
	}
	overlay, work, err := d.defaultDisks()
	if err != nil || plan.overlay != overlay || plan.work != work {
		return nil
	}
	for _, p := range d.pools {
		imageID, _ := p.spec()
		if imageID == plan.image.ID && p.cfg.VCPU == plan.vcpu && p.cfg.MemoryMiB == plan.memMiB {
			return p
		}
	}
	return nil
}

// errPoolEmpty: no VM of the pool is ready.
var errPoolEmpty = errors.New("no ready vm in the pool")

// serveFromPool serves plan from a matching pool: a ready VM claimed (ok true), or else
// plan turned into a restore from the pool's snapshot (ok false: the caller goes on).
func (d *Daemon) serveFromPool(ctx context.Context, plan *createPlan, prog progress) (*model.VM, bool) {
	p := d.matchPool(plan)
	if p == nil {
		return nil, false
	}
	if p.cfg.Mode == config.PoolModeVMs {
		vm, err := d.claimPoolVM(ctx, p, plan, prog)
		if err == nil {
			return vm, true
		}
		if !errors.Is(err, errPoolEmpty) {
			oplog.G(ctx).Warn("serving a create from its warm pool failed; booting instead", "pool", p.cfg.Name, "error", err.Error())
		}
	}
	_, sn := p.spec()
	if sn == nil {
		return nil, false
	}
	// The snapshot's row may be gone (a refill replacing it): then boot as usual.
	cur, err := d.store.GetSnapshot(ctx, sn.ID)
	if err != nil {
		return nil, false
	}
	plan.snap = cur
	p.set(func(p *warmPool) { p.served++ })
	p.wake()
	prog.stage(ctx, "pool", fmt.Sprintf("restoring from warm pool %s's snapshot %s (no vm ready)", p.cfg.Name, cur.Name), "pool", p.cfg.Name)
	return nil, false
}

// claimPoolVM hands a ready VM of p to the create: the row is claimed under reserveMu
// (name, auto-remove, creating), then the VM is resumed and given its identity. A failure
// after the claim deletes the VM, as any failed create.
func (d *Daemon) claimPoolVM(ctx context.Context, p *warmPool, plan *createPlan, prog progress) (*model.VM, error) {
	id, oldName, err := d.claimRow(ctx, p, plan)
	if err != nil {
		return nil, err
	}
	p.set(func(p *warmPool) { p.served++ })
	p.wake()
	vm, rt, err := d.lockVM(ctx, id)
	if err != nil {
		return nil, err
	}
	defer rt.mu.Unlock()
	prog.stage(ctx, "pool", fmt.Sprintf("served from warm pool %s", p.cfg.Name), "pool", p.cfg.Name)
	prog.stage(ctx, "persisted", fmt.Sprintf("%s (%s) %s", vm.Name, shortID(vm.ID), vm.GuestIP), "vm", vm.Name, "vm_id", vm.ID, "guest_ip", vm.GuestIP)
	d.dns.Remove(oldName) // none while it waited; a row from before publishDNS had one
	d.publishDNS(vm)
	if err := d.handOver(ctx, rt, vm, prog); err != nil {
		if derr := d.destroy(context.WithoutCancel(ctx), rt, vm, "create failed: "+err.Error()); derr != nil {
			err = fmt.Errorf("%w (undoing the create: %w)", err, derr)
		}
		return nil, err
	}
	if vm.AutoRemove {
		d.armAutoRemove(vm.ID)
	}
	return vm, nil
}

// claimRow picks the oldest ready VM of p and claims its row for plan, under reserveMu so
// the name check and the claim are one step for every create.
func (d *Daemon) claimRow(ctx context.Context, p *warmPool, plan *createPlan) (id, oldName string, err error) {
	d.reserveMu.Lock()
	defer d.reserveMu.Unlock()
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return "", "", err
	}
	names := make(map[string]bool, len(vms))
	var pick *model.VM
	for i := range vms {
		names[vms[i].Name] = true
		if pick == nil && vms[i].Pool == p.cfg.Name && vms[i].State == model.VMPaused && !vms[i].Creating {
			pick = &vms[i]
		}
	}
	if pick == nil {
		return "", "", errPoolEmpty
	}
	name, err := pickName(names, plan.name)
	if err != nil {
		return "", "", err
	}
	if err := d.store.ClaimPoolVM(ctx, pick.ID, p.cfg.Name, store.PoolClaim{Name: name, AutoRemove: plan.rm, NAT: plan.nat}); err != nil {
		return "", "", err
	}
	return pick.ID, pick.Name, nil
}

// handOver resumes a claimed VM and tells it who it is now; the create ends with it
// running. The caller holds rt.mu.
func (d *Daemon) handOver(ctx context.Context, rt *vmRuntime, vm *model.VM, prog progress) error {
	m := rt.getMachine()
	if m == nil {
		return errdefs.New(errdefs.ErrUnavailable, "pool vm %s has no VMM this daemon holds", vm.Name)
	}
	began := time.Now()
	if vm.NAT {
		// Before the guest runs again, so its command finds the way out already open.
		ip, err := netip.ParseAddr(vm.GuestIP)
		if err != nil {
			return fmt.Errorf("pool vm %s: guest ip %q: %w", vm.Name, vm.GuestIP, err)
		}
		if err := d.helper.EnableNAT(ctx, ip); err != nil {
			return fmt.Errorf("enabling NAT for %s: %w", vm.GuestIP, err)
		}
	}
	if err := d.resumeLocked(ctx, rt, vm); err != nil {
		return err
	}
	if err := d.applyIdentity(ctx, rt, vm, m); err != nil {
		return err
	}
	prog.stage(ctx, "identity_applied", fmt.Sprintf("%s %s %s", vm.Name, vm.GuestIP, vm.MAC))
	if err := d.move(ctx, vm, model.VMRunning, func(v *model.VM) { v.Creating = false }); err != nil {
		return err
	}
	prog.stage(ctx, "agent_ready", fmt.Sprintf("%s answered after %.2fs (resumed from the pool)", vm.Name, time.Since(began).Seconds()),
		"boot_ms", time.Since(began).Milliseconds())
	return nil
}

// sweepPools removes, at start-up, the VMs and snapshots of pools no longer configured.
func (d *Daemon) sweepPools(ctx context.Context) {
	known := map[string]bool{}
	for _, p := range d.pools {
		known[p.cfg.Name] = true
	}
	log := oplog.G(ctx)
	if vms, err := d.store.ListVMs(ctx); err == nil {
		for _, vm := range vms {
			if vm.Pool != "" && !known[vm.Pool] {
				if err := d.dropPoolVM(ctx, vm.ID, vm.Pool, "its pool is no longer configured"); err != nil {
					log.Warn("removing a vm of a removed pool failed", "vm", vm.Name, "error", err.Error())
				}
			}
		}
	}
	if sns, err := d.store.ListSnapshots(ctx); err == nil {
		for _, sn := range sns {
			if sn.Pool != "" && !known[sn.Pool] {
				log.Info("removing the snapshot of a removed pool", "snapshot", sn.Name, "pool", sn.Pool)
				if _, err := d.deleteSnapshot(ctx, sn.ID, true); err != nil {
					log.Warn("removing the snapshot of a removed pool failed", "snapshot", sn.Name, "error", err.Error())
				}
			}
		}
	}
}

// listPools is pool.list.
func (d *Daemon) listPools(ctx context.Context) (api.PoolListResult, error) {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return api.PoolListResult{}, err
	}
	out := api.PoolListResult{Pools: []api.PoolInfo{}}
	for _, p := range d.pools {
		p.mu.Lock()
		info := api.PoolInfo{Name: p.cfg.Name, Image: p.cfg.Image, VCPU: p.cfg.VCPU, MemoryMiB: p.cfg.MemoryMiB,
			Size: p.cfg.Size, Mode: p.cfg.Mode, State: p.state, LastError: p.lastErr, LastErrorAt: p.lastErrAt,
			NextRetry: p.nextTry, Served: p.served}
		snapID := ""
		if p.snap != nil {
			info.Snapshot, snapID = p.snap.Name, p.snap.ID
		}
		p.mu.Unlock()
		for _, vm := range vms {
			if vm.Pool == p.cfg.Name && vm.State == model.VMPaused && !vm.Creating && vm.SnapshotID == snapID && snapID != "" {
				info.Ready++
			}
		}
		out.Pools = append(out.Pools, info)
	}
	return out, nil
}
