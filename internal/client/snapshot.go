package client

import (
	"context"
	"fmt"

	"banger/internal/api"
	"banger/internal/model"
	"banger/internal/opid"
)

// VMPause is vm.pause.
func (c *Client) VMPause(ctx context.Context, ref string) (*model.VM, error) {
	return c.vmCall(ctx, api.MethodVMPause, api.VMRef{VM: ref})
}

// VMResume is vm.resume.
func (c *Client) VMResume(ctx context.Context, ref string) (*model.VM, error) {
	return c.vmCall(ctx, api.MethodVMResume, api.VMRef{VM: ref})
}

// SnapshotCreate is snapshot.create.begin followed until the operation ends.
func (c *Client) SnapshotCreate(ctx context.Context, p api.SnapshotCreateParams, onStage StageFunc) (*model.Snapshot, error) {
	st, err := c.beginAndFollow(ctx, api.MethodSnapshotCreateBegin, p, onStage)
	if err != nil {
		return nil, err
	}
	if st.Snapshot == nil {
		return nil, fmt.Errorf("snapshot.create finished without a snapshot (%s)", st.OpID)
	}
	return st.Snapshot, nil
}

// VMFork is vm.fork.begin followed until the operation ends: the new VMs.
func (c *Client) VMFork(ctx context.Context, p api.VMForkParams, onStage StageFunc) ([]model.VM, error) {
	st, err := c.beginAndFollow(ctx, api.MethodVMForkBegin, p, onStage)
	if err != nil {
		return nil, err
	}
	return st.VMs, nil
}

func (c *Client) beginAndFollow(ctx context.Context, method string, params any, onStage StageFunc) (*api.OpStatusResult, error) {
	ctx, _ = opid.Ensure(ctx)
	var begin api.BeginResult
	if err := c.call(ctx, method, params, &begin); err != nil {
		return nil, err
	}
	return c.FollowOp(ctx, begin.OpID, onStage)
}

// SnapshotList is snapshot.list.
func (c *Client) SnapshotList(ctx context.Context) ([]model.Snapshot, error) {
	var res api.SnapshotListResult
	if err := c.call(ctx, api.MethodSnapshotList, nil, &res); err != nil {
		return nil, err
	}
	return res.Snapshots, nil
}

// SnapshotShow is snapshot.show.
func (c *Client) SnapshotShow(ctx context.Context, ref string) (*model.Snapshot, error) {
	var res api.SnapshotResult
	if err := c.call(ctx, api.MethodSnapshotShow, api.SnapshotRef{Snapshot: ref}, &res); err != nil {
		return nil, err
	}
	return &res.Snapshot, nil
}

// SnapshotDelete is snapshot.delete; it returns the snapshot as it was.
func (c *Client) SnapshotDelete(ctx context.Context, p api.SnapshotDeleteParams) (*model.Snapshot, error) {
	var res api.SnapshotResult
	if err := c.call(ctx, api.MethodSnapshotDelete, p, &res); err != nil {
		return nil, err
	}
	return &res.Snapshot, nil
}
