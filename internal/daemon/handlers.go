package daemon

import (
	"context"
	"encoding/json"
	"os"
	"time"

	"banger/internal/api"
	"banger/internal/errdefs"
	"banger/internal/model"
	"banger/internal/opid"
	"banger/internal/rpc"
)

// register wires every method to its handler. Handlers decode params, call one daemon
// operation, and shape the result; the logic lives in the vm_*.go and images.go files.
func (d *Daemon) register(s *rpc.Server) {
	s.Handle(api.MethodPing, noParams(func(ctx context.Context) (any, error) {
		return api.PingResult{Version: Version, Protocol: rpc.Version,
			UptimeSeconds: time.Since(d.started).Seconds(), PID: os.Getpid()}, nil
	}))
	s.Handle(api.MethodVMCreate, withParams(func(ctx context.Context, p api.VMCreateParams) (any, error) {
		vm, err := d.createVM(ctx, p, progress{})
		if err != nil {
			return nil, err
		}
		return api.VMResult{VM: *vm}, nil
	}))
	s.Handle(api.MethodVMCreateBegin, withParams(func(ctx context.Context, p api.VMCreateParams) (any, error) {
		return d.beginCreate(ctx, p)
	}))
	status := withParams(func(ctx context.Context, p api.OpStatusParams) (any, error) {
		if p.OpID == "" {
			return nil, errdefs.InvalidArgument("op_id", "", "is required")
		}
		op, err := d.ops.get(p.OpID)
		if err != nil {
			return nil, err
		}
		wait := time.Duration(p.WaitSeconds * float64(time.Second))
		if wait > 30*time.Second {
			wait = 30 * time.Second
		}
		return op.status(ctx, p.After, wait), nil
	})
	s.Handle(api.MethodVMCreateStatus, status)
	s.Handle(api.MethodOpStatus, status)
	s.Handle(api.MethodVMList, noParams(func(ctx context.Context) (any, error) {
		vms, err := d.store.ListVMs(ctx)
		if err != nil {
			return nil, err
		}
		// A warm pool's VMs are the daemon's until a create claims one (pool.list shows them).
		out := []model.VM{}
		for _, vm := range vms {
			if vm.Pool == "" {
				out = append(out, vm)
			}
		}
		return api.VMListResult{VMs: out}, nil
	}))
	s.Handle(api.MethodPoolList, noParams(func(ctx context.Context) (any, error) {
		return d.listPools(ctx)
	}))
	s.Handle(api.MethodVMShow, withParams(func(ctx context.Context, p api.VMRef) (any, error) {
		vm, err := d.store.ResolveVM(ctx, p.VM)
		if err != nil {
			return nil, err
		}
		return api.VMResult{VM: *vm}, nil
	}))
	s.Handle(api.MethodVMStart, withParams(func(ctx context.Context, p api.VMRef) (any, error) {
		return vmResult(d.startVM(ctx, p.VM))
	}))
	s.Handle(api.MethodVMStop, withParams(func(ctx context.Context, p api.VMStopParams) (any, error) {
		return vmResult(d.stopVM(ctx, p.VM, seconds(p.TimeoutSeconds)))
	}))
	s.Handle(api.MethodVMRestart, withParams(func(ctx context.Context, p api.VMStopParams) (any, error) {
		return vmResult(d.restartVM(ctx, p.VM, seconds(p.TimeoutSeconds)))
	}))
	s.Handle(api.MethodVMPause, withParams(func(ctx context.Context, p api.VMRef) (any, error) {
		return vmResult(d.pauseVM(ctx, p.VM))
	}))
	s.Handle(api.MethodVMResume, withParams(func(ctx context.Context, p api.VMRef) (any, error) {
		return vmResult(d.resumeVM(ctx, p.VM))
	}))
	s.Handle(api.MethodVMDelete, withParams(func(ctx context.Context, p api.VMDeleteParams) (any, error) {
		return vmResult(d.deleteVM(ctx, p.VM, p.Force))
	}))
	s.Handle(api.MethodVMRename, withParams(func(ctx context.Context, p api.VMRenameParams) (any, error) {
		return vmResult(d.renameVM(ctx, p.VM, p.Name))
	}))
	s.Handle(api.MethodVMWaitReady, withParams(func(ctx context.Context, p api.VMWaitReadyParams) (any, error) {
		return d.waitReadyByRef(ctx, p)
	}))
	s.Handle(api.MethodSnapshotCreate, withParams(func(ctx context.Context, p api.SnapshotCreateParams) (any, error) {
		return snapshotResult(d.snapshotVM(ctx, p, progress{}))
	}))
	s.Handle(api.MethodSnapshotCreateBegin, withParams(func(ctx context.Context, p api.SnapshotCreateParams) (any, error) {
		if p.VM == "" {
			return nil, errdefs.InvalidArgument("vm", "", "is required")
		}
		return d.beginOp(ctx, "snapshot.create", func(ctx context.Context, op *operation) {
			sn, err := d.snapshotVM(ctx, p, progress{op})
			op.finishWith(sn, nil, err)
		})
	}))
	s.Handle(api.MethodVMFork, withParams(func(ctx context.Context, p api.VMForkParams) (any, error) {
		vms, err := d.forkVM(ctx, p, progress{})
		if err != nil {
			return nil, err
		}
		return api.VMForkResult{VMs: vms}, nil
	}))
	s.Handle(api.MethodVMForkBegin, withParams(func(ctx context.Context, p api.VMForkParams) (any, error) {
		if p.VM == "" {
			return nil, errdefs.InvalidArgument("vm", "", "is required")
		}
		return d.beginOp(ctx, "vm.fork", func(ctx context.Context, op *operation) {
			vms, err := d.forkVM(ctx, p, progress{op})
			op.finishWith(nil, vms, err)
		})
	}))
	s.Handle(api.MethodSnapshotList, noParams(func(ctx context.Context) (any, error) {
		list, err := d.store.ListSnapshots(ctx)
		if err != nil {
			return nil, err
		}
		return api.SnapshotListResult{Snapshots: list}, nil
	}))
	s.Handle(api.MethodSnapshotShow, withParams(func(ctx context.Context, p api.SnapshotRef) (any, error) {
		return snapshotResult(d.store.ResolveSnapshot(ctx, p.Snapshot))
	}))
	s.Handle(api.MethodSnapshotDelete, withParams(func(ctx context.Context, p api.SnapshotDeleteParams) (any, error) {
		return snapshotResult(d.deleteSnapshot(ctx, p.Snapshot, p.Force))
	}))
	s.HandleStream(api.MethodVMAgent, d.agentStream)
	s.HandleStream(api.MethodVMLogs, d.logsStream)
	s.HandleStream(api.MethodWorkspaceUpload, d.workspaceUpload)

	s.Handle(api.MethodImageImport, withParams(func(ctx context.Context, p api.ImageImportParams) (any, error) {
		return imageResult(d.importImage(ctx, p))
	}))
	s.Handle(api.MethodImageList, noParams(func(ctx context.Context) (any, error) {
		ims, err := d.store.ListImages(ctx)
		if err != nil {
			return nil, err
		}
		if ims == nil {
			ims = []model.Image{}
		}
		return api.ImageListResult{Images: ims}, nil
	}))
	s.Handle(api.MethodImageShow, withParams(func(ctx context.Context, p api.ImageRef) (any, error) {
		return imageResult(d.store.ResolveImage(ctx, p.Image))
	}))
	s.Handle(api.MethodImageDelete, withParams(func(ctx context.Context, p api.ImageRef) (any, error) {
		return imageResult(d.deleteImage(ctx, p.Image))
	}))
	s.Handle(api.MethodImagePull, withParams(func(ctx context.Context, p api.ImagePullParams) (any, error) {
		return imageResult(d.pullImage(ctx, p.Ref, progress{}))
	}))
	s.Handle(api.MethodImagePullBegin, withParams(func(ctx context.Context, p api.ImagePullParams) (any, error) {
		if p.Ref == "" {
			return nil, errdefs.InvalidArgument("ref", "", "is required")
		}
		return d.beginImageOp(ctx, "image.pull", func(ctx context.Context, prog progress) (*model.Image, error) {
			return d.pullImage(ctx, p.Ref, prog)
		})
	}))
	s.Handle(api.MethodImageBuild, withParams(func(ctx context.Context, p api.ImageBuildParams) (any, error) {
		return d.beginImageOp(ctx, "image.build", func(ctx context.Context, prog progress) (*model.Image, error) {
			return d.buildImage(ctx, p, prog)
		})
	}))
	s.Handle(api.MethodImageCatalog, noParams(func(ctx context.Context) (any, error) {
		return d.catalogEntries(ctx)
	}))
	s.Handle(api.MethodDoctor, noParams(func(ctx context.Context) (any, error) {
		return d.doctor(ctx), nil
	}))
}

// withParams decodes params into P with rpc.DecodeParams (unknown, case-variant and
// duplicate keys are refused, so typos are caught).
func withParams[P any](fn func(ctx context.Context, p P) (any, error)) rpc.HandlerFunc {
	return func(ctx context.Context, raw json.RawMessage) (any, error) {
		var p P
		if err := rpc.DecodeParams(raw, &p); err != nil {
			return nil, err
		}
		return fn(ctx, p)
	}
}

// noParams serves a method that takes no params: any params but {} or null are refused.
func noParams(fn func(ctx context.Context) (any, error)) rpc.HandlerFunc {
	return func(ctx context.Context, raw json.RawMessage) (any, error) {
		if err := rpc.NoParams(raw); err != nil {
			return nil, err
		}
		return fn(ctx)
	}
}

func vmResult(vm *model.VM, err error) (any, error) {
	if err != nil {
		return nil, err
	}
	return api.VMResult{VM: *vm}, nil
}

func snapshotResult(sn *model.Snapshot, err error) (any, error) {
	if err != nil {
		return nil, err
	}
	return api.SnapshotResult{Snapshot: *sn}, nil
}

// beginOp runs fn as an async operation under the call's op id; fn finishes op.
func (d *Daemon) beginOp(ctx context.Context, kind string, fn func(ctx context.Context, op *operation)) (api.BeginResult, error) {
	id := opid.From(ctx)
	op := newOperation(id, kind)
	if err := d.ops.add(op); err != nil {
		return api.BeginResult{}, err
	}
	bctx, cancel := d.detach(ctx)
	d.bg.Add(1)
	go func() {
		defer d.bg.Done()
		defer cancel()
		fn(bctx, op)
	}()
	return api.BeginResult{OpID: id}, nil
}

func imageResult(im *model.Image, err error) (any, error) {
	if err != nil {
		return nil, err
	}
	return api.ImageResult{Image: *im}, nil
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

func (d *Daemon) waitReadyByRef(ctx context.Context, p api.VMWaitReadyParams) (any, error) {
	vm, err := d.store.ResolveVM(ctx, p.VM)
	if err != nil {
		return nil, err
	}
	if vm.State != model.VMRunning && vm.State != model.VMStarting {
		return nil, errdefs.New(errdefs.ErrConflict, "vm %s is not running (state %s)", vm.Name, vm.State)
	}
	timeout := seconds(p.TimeoutSeconds)
	if timeout <= 0 {
		timeout = bootTimeout
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if _, err := d.waitReady(wctx, d.runtime(vm.ID), opid.From(ctx)); err != nil {
		return nil, errdefs.New(errdefs.ErrUnavailable, "vm %s agent not ready: %w", vm.Name, err)
	}
	return api.VMResult{VM: *vm}, nil
}
