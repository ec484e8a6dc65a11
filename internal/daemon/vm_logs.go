package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"path/filepath"

	"banger/internal/api"
	"banger/internal/errdefs"
	"banger/internal/rpc"
	"banger/internal/vmm"
)

// logsStream is vm.logs: the console log, then (with follow) what is appended to it until
// the client hangs up.
func (d *Daemon) logsStream(ctx context.Context, params json.RawMessage, s *rpc.Stream) error {
	var p api.VMLogsParams
	if err := rpc.DecodeParams(params, &p); err != nil {
		return err
	}
	vm, err := d.store.ResolveVM(ctx, p.VM)
	if err != nil {
		return err
	}
	lr, err := vmm.OpenLog(filepath.Join(vm.Dir, consoleLogName))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return errdefs.New(errdefs.ErrNotFound, "vm %s has no console log yet (never started)", vm.Name)
		}
		return err
	}
	defer lr.Close()
	if err := s.Accept(api.VMResult{VM: *vm}); err != nil {
		return err
	}
	defer s.Close()
	// The client closing its side ends a follow.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		io.Copy(io.Discard, s)
		cancel()
	}()
	// A failed write means the client is gone: nothing left to report to.
	_ = lr.CopyTo(ctx, s, p.Follow)
	return nil
}
