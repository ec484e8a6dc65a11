package daemon

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"banger/internal/api"
	"banger/internal/errdefs"
	"banger/internal/model"
	"banger/internal/oplog"
)

// forkVM is vm.fork: a snapshot of the VM is taken (it runs on afterwards) and count new
// VMs are restored from it in parallel, each with its own id, name, address, MAC, tap, DNS
// name and disk copies. Either all forks exist at the end or none do. The snapshot is
// deleted once the forks run: they hold their own memory and disks, and vm.fork is not
// the way to keep snapshots (snapshot create is).
func (d *Daemon) forkVM(ctx context.Context, p api.VMForkParams, prog progress) ([]model.VM, error) {
	if p.VM == "" {
		return nil, errdefs.InvalidArgument("vm", "", "is required")
	}
	count := p.Count
	if count == 0 {
		count = 1
	}
	if count < 1 || count > api.MaxForkCount {
		return nil, errdefs.InvalidArgument("count", p.Count, fmt.Sprintf("must be between 1 and %d", api.MaxForkCount))
	}
	src, err := d.store.ResolveVM(ctx, p.VM)
	if err != nil {
		return nil, err
	}
	prefix := p.NamePrefix
	if prefix == "" {
		prefix = src.Name + "-fork"
	}
	names := make([]string, count)
	for i := range names {
		names[i] = prefix + "-" + strconv.Itoa(i+1)
		if err := model.ValidateName("name_prefix", names[i]); err != nil {
			return nil, errdefs.InvalidArgument("name_prefix", prefix, "must make names that are DNS labels ("+names[i]+" is not)")
		}
		if _, err := d.store.ResolveVM(ctx, names[i]); err == nil {
			return nil, errdefs.New(errdefs.ErrAlreadyExists, "vm name %q already exists", names[i])
		}
	}
	began := time.Now()
	// Transient: a crash before the end removes the snapshot and every fork made from it.
	sn, err := d.snapshotFor(ctx, api.SnapshotCreateParams{VM: src.ID, Name: snapshotName(src.Name + "-fork")}, snapshotOwner{transient: true}, prog)
	if err != nil {
		return nil, err
	}
	defer func() {
		if _, err := d.deleteSnapshot(context.WithoutCancel(ctx), sn.ID, true); err != nil {
			oplog.G(ctx).Warn("deleting a fork's snapshot failed", "snapshot", sn.Name, "error", err.Error())
		}
	}()

	d.prepareShared(ctx, sn, prog)

	vms := make([]*model.VM, count)
	errs := make([]error, count)
	var wg sync.WaitGroup
	for i := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each fork's own stages go to the log only; pollers see one line per fork.
			vms[i], errs[i] = d.createVM(ctx, api.VMCreateParams{Name: names[i], FromSnapshot: sn.ID, NAT: src.NAT}, progress{})
			if errs[i] == nil {
				prog.stage(ctx, "fork_ready", fmt.Sprintf("%s %s %s", vms[i].Name, vms[i].GuestIP, vms[i].MAC))
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		// All or nothing: the forks that did start are deleted again.
		for _, vm := range vms {
			if vm == nil {
				continue
			}
			if _, derr := d.deleteVM(context.WithoutCancel(ctx), vm.ID, true); derr != nil {
				err = fmt.Errorf("%w (removing fork %s: %w)", err, vm.Name, derr)
			}
		}
		return nil, fmt.Errorf("forking vm %s: %w", src.Name, err)
	}
	out := make([]model.VM, count)
	for i, vm := range vms {
		out[i] = *vm
	}
	prog.stage(ctx, "forks_ready", fmt.Sprintf("%d forks of %s in %.2fs", count, src.Name, time.Since(began).Seconds()))
	return out, nil
}
