package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"banger/internal/agentclient"
	"banger/internal/agentproto"
	"banger/internal/errdefs"
	"banger/internal/model"
	"banger/internal/opid"
	"banger/internal/oplog"
	"banger/internal/vmm"
)

// snapshotDriver is the driver that took sn, if it can run here: a snapshot only resumes
// on the VMM (and acceleration) it was taken with.
func (d *Daemon) snapshotDriver(ctx context.Context, sn *model.Snapshot) (vmm.Driver, vmm.Info, error) {
	drv, err := d.driver(sn.VMM)
	if err != nil {
		return nil, vmm.Info{}, errdefs.New(errdefs.ErrConflict, "snapshot %s was taken by %q, which this daemon does not have", sn.Name, sn.VMM)
	}
	if _, err := vmm.AsRestorer(drv); err != nil {
		return nil, vmm.Info{}, err
	}
	info := drv.Probe(ctx)
	if !info.Available {
		return nil, info, errdefs.WithHint(errdefs.New(errdefs.ErrUnavailable, "snapshot %s needs %s, which cannot run here: %s", sn.Name, sn.VMM, info.Detail), info.Fix)
	}
	return drv, info, nil
}

func (d *Daemon) restoreMachine(ctx context.Context, drv vmm.Driver, spec vmm.Spec, sn *model.Snapshot) (vmm.Machine, error) {
	r, err := vmm.AsRestorer(drv)
	if err != nil {
		return nil, err
	}
	info := vmm.RestoreInfo{Driver: sn.VMM, Accel: sn.Accel, Machine: sn.Machine, BootArgs: sn.BootArgs}
	return r.Restore(ctx, spec, info, filepath.Join(sn.Dir, snapshotMemName))
}

// identityTimeout bounds the identity request; the agent answered a ping already.
const identityTimeout = 30 * time.Second

// applyIdentity tells a restored guest who it is now (name, address, MAC, machine id,
// clock, entropy) and then connects its NIC: until the guest has given up the snapshot's
// address and MAC, it must not talk on the bridge, where the source VM may still use them.
func (d *Daemon) applyIdentity(ctx context.Context, rt *vmRuntime, vm *model.VM, m vmm.Machine) error {
	var mid, seed [32]byte
	rand.Read(mid[:16])
	rand.Read(seed[:])
	id := agentproto.Identity{Name: vm.Name, MachineID: hex.EncodeToString(mid[:16]), Seed: hex.EncodeToString(seed[:]),
		UnixNanos: time.Now().UnixNano()}
	if d.cfg.Network.Enabled {
		id.Addr = fmt.Sprintf("%s/%d", vm.GuestIP, d.prefix.Bits())
		id.Gateway = d.prefix.Addr().String()
		id.DNS = []string{d.prefix.Addr().String()}
		id.MAC = vm.MAC
	}
	ictx, cancel := context.WithTimeout(ctx, identityTimeout)
	defer cancel()
	if err := d.sendIdentity(oplog.With(ictx, oplog.G(ictx).With("vm", vm.Name)), rt, m, opid.From(ctx), id); err != nil {
		return errdefs.New(errdefs.ErrUnavailable, "telling restored vm %s its identity: %w", vm.Name, err)
	}
	if l, ok := m.(vmm.Linker); ok && d.cfg.Network.Enabled {
		if err := l.SetLink(ictx, true); err != nil {
			return fmt.Errorf("connecting restored vm %s's NIC: %w", vm.Name, err)
		}
	}
	return nil
}

// sendIdentity sends id to the restored guest's agent. A restored guest still holds the
// agent session of the moment it was snapshotted, and the host's new session can collide
// with it: its agent logs "yamux: duplicate stream declared", ends that session and reopens
// its port, while the host's stream waits for a reply that never comes. So each attempt is
// bounded, and a broken or silent attempt is retried on a fresh session (applying an
// identity twice gives the same guest); an answer from the agent, success or refusal, is
// final.
func (d *Daemon) sendIdentity(ctx context.Context, rt *vmRuntime, m vmm.Machine, opID string, id agentproto.Identity) error {
	for {
		actx, cancel := context.WithTimeout(ctx, identityAttempt)
		if w, ok := m.(vmm.AgentWatcher); ok {
			// The guest dropping the session ends the attempt at once.
			dropped := w.WatchAgent(actx)
			go func() {
				select {
				case <-dropped:
					cancel()
				case <-actx.Done():
				}
			}()
		}
		st, err := rt.openStream(actx)
		if err == nil {
			err = agentclient.SetIdentity(actx, st, opID, id)
		}
		cancel()
		if _, remote := errors.AsType[*agentproto.RemoteError](err); err == nil || remote {
			return err
		}
		// The fallback: a snapshot taken without detaching the agent (detach.go).
		oplog.G(ctx).Warn("identity attempt failed; retrying on a fresh agent session", "error", err.Error())
		rt.resetSession()
		select {
		case <-time.After(200 * time.Millisecond):
		case <-m.Done():
			return errVMMExited
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		}
	}
}

// identityAttempt bounds one identity attempt: the agent answers in milliseconds once it
// holds a session that matches the host's.
const identityAttempt = 5 * time.Second

// prepareShared gives sn its shared form when its driver has one (vmm.SharedPreparer), so
// the VMs restored from it share the guest memory none of them changed. A failure is only
// logged: restores then load the full stream, slower and with private memory.
func (d *Daemon) prepareShared(ctx context.Context, sn *model.Snapshot, prog progress) {
	drv, err := d.driver(sn.VMM)
	if err != nil {
		return
	}
	sp, ok := drv.(vmm.SharedPreparer)
	if !ok {
		return
	}
	log := oplog.G(ctx).With("snapshot", sn.Name)
	began := time.Now()
	err = func() error {
		im, err := d.store.GetImage(ctx, sn.ImageID)
		if err != nil {
			return err
		}
		// The template's sockets live in the runtime directory: under the snapshot's own
		// directory their paths can pass the 107-byte limit of a unix socket address.
		tdir, err := os.MkdirTemp(d.cfg.RuntimeDir, templateDirPrefix)
		if err != nil {
			return fmt.Errorf("making the template's directory: %w", err)
		}
		defer os.RemoveAll(tdir)
		tmpl := &model.VM{ID: sn.ID, Name: sn.Name, VCPU: sn.VCPU, MemoryMiB: sn.MemoryMiB, Dir: tdir,
			GuestIP: sn.GuestIP, MAC: sn.MAC, Tap: model.TapForID(sn.ID)}
		spec, err := d.spec(tmpl, im)
		if err != nil {
			return err
		}
		if d.helper != nil {
			// The template's NIC needs a real tap backend; its guest never runs, so no
			// packet uses it. Snapshot ids are not VM ids, so the name is no VM's.
			if err := d.helper.CreateTap(ctx, tmpl.Tap); err != nil {
				return fmt.Errorf("creating the template's tap: %w", err)
			}
			defer func() {
				if err := d.helper.DeleteTap(context.WithoutCancel(ctx), tmpl.Tap); err != nil {
					d.netPending.Store(true) // reconcile removes a tap no VM owns
				}
			}()
		}
		for i := range spec.Drives {
			if !spec.Drives[i].ReadOnly {
				spec.Drives[i].Path = filepath.Join(sn.Dir, filepath.Base(spec.Drives[i].Path))
			}
		}
		info := vmm.RestoreInfo{Driver: sn.VMM, Accel: sn.Accel, Machine: sn.Machine, BootArgs: sn.BootArgs}
		return sp.PrepareShared(ctx, spec, info, filepath.Join(sn.Dir, snapshotMemName))
	}()
	if err != nil {
		log.Warn("preparing the shared form of a snapshot failed; restores load the full stream", "error", err.Error())
		prog.stage(ctx, "snapshot_not_shared", "restores load the full stream: "+err.Error())
		return
	}
	prog.stage(ctx, "snapshot_shared", fmt.Sprintf("RAM file ready in %.2fs", time.Since(began).Seconds()), "ms", time.Since(began).Milliseconds())
}

// templateDirPrefix names the runtime directory's temporary directories of fork templates;
// New removes any a crash left.
const templateDirPrefix = "tmpl-"

// killTemplateVMMs ends the fork-template VMMs a crash left running. A template is never a
// VM, so no row accounts for it and reconcile would never look at it. Only processes that
// run a VMM binary on a template directory of this daemon's runtime directory are touched,
// and only at start-up, when no fork can be preparing one.
func (d *Daemon) killTemplateVMMs(ctx context.Context) {
	owned, err := vmm.FindOwned(d.cfg.RuntimeDir, d.vmmBinaries())
	if err != nil {
		oplog.G(ctx).Warn("looking for leftover fork-template VMMs failed", "error", err.Error())
		return
	}
	for _, o := range owned {
		if !strings.HasPrefix(o.VMID, templateDirPrefix) {
			continue
		}
		oplog.G(ctx).Warn("killing a fork-template VMM a crash left", "pid", o.PID, "dir", o.VMID)
		if err := vmm.KillOwned(o, d.cfg.RuntimeDir, d.vmmBinaries(), 10*time.Second); err != nil {
			oplog.G(ctx).Warn("killing a leftover fork-template VMM failed", "pid", o.PID, "error", err.Error())
		}
	}
}

// sweepTemplateDirs removes fork-template directories left in runtimeDir by a crash.
func sweepTemplateDirs(runtimeDir string) error {
	dirs, err := filepath.Glob(filepath.Join(runtimeDir, templateDirPrefix+"*"))
	if err != nil {
		return err
	}
	for _, dir := range dirs {
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
	}
	return nil
}
