package daemon

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"time"

	"banger/internal/api"
	"banger/internal/errdefs"
	"banger/internal/rpc"
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
	f, err := os.Open(filepath.Join(vm.Dir, consoleLogName))
	if err != nil {
		if os.IsNotExist(err) {
			return errdefs.New(errdefs.ErrNotFound, "vm %s has no console log yet (never started)", vm.Name)
		}
		return err
	}
	defer f.Close()
	if err := s.Accept(api.VMResult{VM: *vm}); err != nil {
		return err
	}
	defer s.Close()
	// The client closing its side ends a follow.
	gone := make(chan struct{})
	go func() {
		io.Copy(io.Discard, s)
		close(gone)
	}()
	for {
		if _, err := io.Copy(s, f); err != nil {
			return nil
		}
		if !p.Follow {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-gone:
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}
