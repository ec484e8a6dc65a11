package daemon

import (
	"banger/internal/oplog"
	"context"
	"time"
)

// autoRemoveGrace is how long a vm run --rm VM may go without its run attaching (the CLI
// opens vm.agent right after the create): longer means the CLI is gone.
const autoRemoveGrace = 30 * time.Second

// The daemon owns vm run --rm: the CLI may die at any moment, so the VM's removal cannot
// depend on it. A VM created with auto_remove is deleted when its first run (vm.agent
// stream) ends, or when none attaches within rmGrace of the create, or by reconcile after a
// daemon restart.

// armAutoRemove starts the grace period of a just-created auto-remove VM.
func (d *Daemon) armAutoRemove(id string) {
	rt := d.runtime(id)
	rt.rmMu.Lock()
	defer rt.rmMu.Unlock()
	if rt.attached > 0 || rt.lease != nil {
		return
	}
	rt.lease = time.AfterFunc(d.rmGrace, func() {
		rt.rmMu.Lock()
		attached := rt.attached
		rt.rmMu.Unlock()
		if attached == 0 {
			d.autoRemove(id, "no vm run attached within "+d.rmGrace.String()+" of its create")
		}
	})
}

// attachRun records a vm.agent stream to an auto-remove VM; the returned release, called
// when the stream ends, deletes the VM once no stream is attached any more.
func (d *Daemon) attachRun(id string) (release func()) {
	rt := d.runtime(id)
	rt.rmMu.Lock()
	rt.attached++
	if rt.lease != nil {
		rt.lease.Stop()
		rt.lease = nil
	}
	rt.rmMu.Unlock()
	return func() {
		rt.rmMu.Lock()
		rt.attached--
		left := rt.attached
		rt.rmMu.Unlock()
		if left == 0 {
			d.autoRemove(id, "its vm run ended")
		}
	}
}

// autoRemove deletes an auto-remove VM in the background (the caller may hold its lock).
func (d *Daemon) autoRemove(id, why string) {
	go func() {
		ctx := d.newOp(context.Background())
		rt := d.runtime(id)
		rt.mu.Lock()
		defer rt.mu.Unlock()
		vm, err := d.store.GetVM(ctx, id)
		if err != nil || !vm.AutoRemove {
			return
		}
		log := oplog.G(ctx).With("vm", vm.Name, "vm_id", id)
		if err := d.destroy(ctx, rt, vm, "auto-removed: "+why); err != nil {
			log.Warn("vm run --rm: removing vm failed; reconcile retries", "error", err.Error())
			return
		}
		log.Info("vm run --rm: vm removed", "why", why)
	}()
}
