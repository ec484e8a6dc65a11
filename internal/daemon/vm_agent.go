package daemon

import (
	"context"
	"encoding/json"
	"io"
	"sync"

	"banger/internal/api"
	"banger/internal/errdefs"
	"banger/internal/model"
	"banger/internal/rpc"
)

// agentStream is vm.agent: once accepted, the connection is spliced to a fresh stream of the
// VM's guest agent session, and the client speaks the agent protocol (internal/guest)
// end to end. The daemon stays a byte pipe, so exec, shell and copy need no daemon code.
func (d *Daemon) agentStream(ctx context.Context, params json.RawMessage, s *rpc.Stream) error {
	var p api.VMRef
	if err := rpc.DecodeParams(params, &p); err != nil {
		return err
	}
	vm, err := d.store.ResolveVM(ctx, p.VM)
	if err != nil {
		return err
	}
	if vm.State == model.VMPaused {
		return errdefs.WithHint(errdefs.New(errdefs.ErrConflict, "vm %s is paused", vm.Name),
			"resume it with `banger vm resume "+vm.Name+"`")
	}
	if vm.State != model.VMRunning {
		return errdefs.WithHint(errdefs.New(errdefs.ErrConflict, "vm %s is not running (state %s)", vm.Name, vm.State),
			"start it with `banger vm start "+vm.Name+"`")
	}
	rt := d.runtime(vm.ID)
	st, err := rt.openStream(ctx)
	if err != nil {
		return errdefs.New(errdefs.ErrUnavailable, "connecting to the guest agent of %s: %w", vm.Name, err)
	}
	defer st.Close()
	if vm.AutoRemove {
		defer d.attachRun(vm.ID)()
	}
	if err := s.Accept(api.VMResult{VM: *vm}); err != nil {
		return err
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		io.Copy(st, s)
		// yamux's Close is a half-close: the agent sees EOF and can still answer.
		st.Close()
	}()
	go func() {
		defer wg.Done()
		io.Copy(s, st)
		s.CloseWrite()
	}()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	s.Close()
	st.Close()
	return nil
}
