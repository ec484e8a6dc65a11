package client

import (
	"context"
	"fmt"

	"banger/internal/api"
	"banger/internal/model"
	"banger/internal/opid"
	"banger/internal/rpc"
)

// StageFunc sees each stage of an async operation as it happens; update is true when the
// last stage changed in place (download progress) rather than a new one beginning.
type StageFunc func(s api.Stage, update bool)

// VMCreate is vm.create.begin followed until the operation ends: the VM, or the
// operation's typed error. The op id (ctx's, or minted) is the operation's, so a caller
// that loses the connection can look the operation up with it.
func (c *Client) VMCreate(ctx context.Context, p api.VMCreateParams, onStage StageFunc) (*model.VM, error) {
	ctx, _ = opid.Ensure(ctx)
	id, err := c.VMCreateBegin(ctx, p)
	if err != nil {
		return nil, err
	}
	st, err := c.FollowCreate(ctx, id, onStage)
	if err != nil {
		return nil, err
	}
	if st.VM == nil {
		return nil, fmt.Errorf("vm.create finished without a VM (%s)", id)
	}
	return st.VM, nil
}

// VMCreateBegin is vm.create.begin: it returns the operation's id at once.
func (c *Client) VMCreateBegin(ctx context.Context, p api.VMCreateParams) (string, error) {
	var begin api.BeginResult
	if err := c.call(ctx, api.MethodVMCreateBegin, p, &begin); err != nil {
		return "", err
	}
	return begin.OpID, nil
}

// FollowCreate follows the create operation id (vm.create.status) until it ends.
func (c *Client) FollowCreate(ctx context.Context, id string, onStage StageFunc) (*api.OpStatusResult, error) {
	return c.follow(ctx, api.MethodVMCreateStatus, id, onStage)
}

// FollowOp follows any async operation (op.status) until it ends.
func (c *Client) FollowOp(ctx context.Context, id string, onStage StageFunc) (*api.OpStatusResult, error) {
	return c.follow(ctx, api.MethodOpStatus, id, onStage)
}

// follow polls an operation (long-polling: the daemon answers when something changes)
// until it ends, calling onStage for each new or updated stage, and returns the final
// status or the operation's typed error.
func (c *Client) follow(ctx context.Context, method, id string, onStage StageFunc) (*api.OpStatusResult, error) {
	if onStage == nil {
		onStage = func(api.Stage, bool) {}
	}
	seen := 0
	var last api.Stage
	for {
		var st api.OpStatusResult
		if err := c.call(ctx, method, api.OpStatusParams{OpID: id, After: seen, WaitSeconds: 1}, &st); err != nil {
			return nil, err
		}
		for i, s := range st.Stages {
			if i >= seen {
				onStage(s, false)
			} else if i == seen-1 && (s.Done != last.Done || s.Total != last.Total) {
				onStage(s, true)
			}
		}
		if len(st.Stages) > 0 {
			last = st.Stages[len(st.Stages)-1]
		}
		seen = len(st.Stages)
		if st.Done {
			if st.Error != nil {
				return nil, st.Error
			}
			return &st, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
}

// VMList is vm.list.
func (c *Client) VMList(ctx context.Context) ([]model.VM, error) {
	var res api.VMListResult
	if err := c.call(ctx, api.MethodVMList, nil, &res); err != nil {
		return nil, err
	}
	return res.VMs, nil
}

// VMShow is vm.show: ref is a full id, an exact name or a unique id prefix.
func (c *Client) VMShow(ctx context.Context, ref string) (*model.VM, error) {
	return c.vmCall(ctx, api.MethodVMShow, api.VMRef{VM: ref})
}

// VMStart is vm.start; it returns when the guest agent answers.
func (c *Client) VMStart(ctx context.Context, ref string) (*model.VM, error) {
	return c.vmCall(ctx, api.MethodVMStart, api.VMRef{VM: ref})
}

// VMStop is vm.stop.
func (c *Client) VMStop(ctx context.Context, p api.VMStopParams) (*model.VM, error) {
	return c.vmCall(ctx, api.MethodVMStop, p)
}

// VMRestart is vm.restart.
func (c *Client) VMRestart(ctx context.Context, p api.VMStopParams) (*model.VM, error) {
	return c.vmCall(ctx, api.MethodVMRestart, p)
}

// VMDelete is vm.delete; it returns the VM as it was.
func (c *Client) VMDelete(ctx context.Context, p api.VMDeleteParams) (*model.VM, error) {
	return c.vmCall(ctx, api.MethodVMDelete, p)
}

// VMRename is vm.rename.
func (c *Client) VMRename(ctx context.Context, p api.VMRenameParams) (*model.VM, error) {
	return c.vmCall(ctx, api.MethodVMRename, p)
}

// VMWaitReady is vm.wait_ready.
func (c *Client) VMWaitReady(ctx context.Context, p api.VMWaitReadyParams) (*model.VM, error) {
	return c.vmCall(ctx, api.MethodVMWaitReady, p)
}

func (c *Client) vmCall(ctx context.Context, method string, params any) (*model.VM, error) {
	var res api.VMResult
	if err := c.call(ctx, method, params, &res); err != nil {
		return nil, err
	}
	return &res.VM, nil
}

// Stream is an open streaming call: raw bytes both ways until either side closes.
type Stream struct {
	*rpc.ClientStream
	conn *rpc.Client
}

// Close ends the stream and its connection.
func (s *Stream) Close() error {
	s.ClientStream.Close()
	return s.conn.Close()
}

// VMAgent is vm.agent: a new session with ref's guest agent, spoken with internal/guest.
func (c *Client) VMAgent(ctx context.Context, ref string) (*Stream, error) {
	return c.stream(ctx, api.MethodVMAgent, api.VMRef{VM: ref})
}

// VMLogs is vm.logs: the console log, followed with follow until the stream is closed.
func (c *Client) VMLogs(ctx context.Context, p api.VMLogsParams) (*Stream, error) {
	return c.stream(ctx, api.MethodVMLogs, p)
}

// WorkspaceUpload is workspace.upload: the stream takes a workspace image
// (workspace.SendImage) and must stay open until a create has claimed its token.
func (c *Client) WorkspaceUpload(ctx context.Context) (*Stream, *api.WorkspaceUploadResult, error) {
	var res api.WorkspaceUploadResult
	s, err := c.streamOut(ctx, api.MethodWorkspaceUpload, nil, &res)
	if err != nil {
		return nil, nil, err
	}
	return s, &res, nil
}

func (c *Client) stream(ctx context.Context, method string, params any) (*Stream, error) {
	return c.streamOut(ctx, method, params, nil)
}

// streamOut opens a streaming call, decoding its accept result into out (if not nil).
func (c *Client) streamOut(ctx context.Context, method string, params, out any) (*Stream, error) {
	ctx, id := opid.Ensure(ctx)
	rc, err := c.dial(ctx)
	if err != nil {
		return nil, withOpID(err, id)
	}
	s, err := rc.Stream(ctx, method, params, out)
	if err != nil {
		rc.Close()
		return nil, withOpID(err, id)
	}
	return &Stream{ClientStream: s, conn: rc}, nil
}
