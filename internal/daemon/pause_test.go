package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/agentclient"
	"banger/internal/api"
	"banger/internal/errdefs"
	"banger/internal/model"
	"banger/internal/rpc"
	"banger/internal/store"
)

// The fake machine pauses for real: its process is stopped with SIGSTOP, and its run
// state is read from /proc like the VMM's own query.

func (m *fakeMachine) Pause(context.Context) error {
	m.record("pause")
	return syscall.Kill(m.proc.PID(), syscall.SIGSTOP)
}

func (m *fakeMachine) Resume(context.Context) error {
	m.record("resume")
	return syscall.Kill(m.proc.PID(), syscall.SIGCONT)
}

func (m *fakeMachine) Status(context.Context) (string, error) {
	// SIGSTOP takes effect when the process is next scheduled; give it a moment to show.
	for range 50 {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", m.proc.PID()))
		if err != nil {
			return "", err
		}
		s := string(b)
		if strings.Fields(s[strings.LastIndexByte(s, ')')+1:])[0] == "T" {
			return "paused", nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return "running", nil
}

func execVia(t *testing.T, td *testDaemon, name string) error {
	t.Helper()
	ctx := context.Background()
	c, err := rpc.Dial(ctx, td.cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	stream, err := c.Stream(ctx, api.MethodVMAgent, api.VMRef{VM: name}, nil)
	if err != nil {
		return err
	}
	code, err := agentclient.Exec(ctx, stream, agentclient.ExecRequest{Argv: []string{"true"}}, agentclient.ExecIO{})
	if err == nil && code != 0 {
		err = fmt.Errorf("exit %d", code)
	}
	return err
}

func TestPauseResume(t *testing.T) {
	td, h, _ := startFakeDaemon(t)
	res, err := td.createRunning("p")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	call := func(method string) (model.VM, error) {
		var r api.VMResult
		err := rpc.Call(ctx, td.cfg.Socket, method, api.VMRef{VM: "p"}, &r)
		return r.VM, err
	}
	if _, err := call(api.MethodVMResume); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("resuming a running VM: %v", err)
	}
	vm, err := call(api.MethodVMPause)
	if err != nil || vm.State != model.VMPaused {
		t.Fatalf("pause: %v, state %s", err, vm.State)
	}
	if st, _ := td.d.runtime(res.VM.ID).getMachine().(*fakeMachine).Status(ctx); st != "paused" {
		t.Fatalf("VMM process not stopped after pause: %s", st)
	}
	if _, err := call(api.MethodVMPause); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("pausing a paused VM: %v", err)
	}
	if err := execVia(t, td, "p"); !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), "paused") {
		t.Fatalf("exec on a paused VM: %v", err)
	}
	if err := rpc.Call(ctx, td.cfg.Socket, api.MethodVMStart, api.VMRef{VM: "p"}, nil); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("starting a paused VM: %v", err)
	}
	// A paused VM keeps its network.
	if taps, _ := h.snapshot(); taps != 1 {
		t.Fatalf("paused VM has %d taps", taps)
	}
	if vm, err := call(api.MethodVMResume); err != nil || vm.State != model.VMRunning {
		t.Fatalf("resume: %v, state %s", err, vm.State)
	}
	if err := execVia(t, td, "p"); err != nil {
		t.Fatalf("exec after resume: %v", err)
	}
	// Stopping a paused VM resumes it so its agent shuts it down cleanly.
	if _, err := call(api.MethodVMPause); err != nil {
		t.Fatal(err)
	}
	var r api.VMResult
	if err := rpc.Call(ctx, td.cfg.Socket, api.MethodVMStop, api.VMStopParams{VM: "p", TimeoutSeconds: 5}, &r); err != nil || r.VM.State != model.VMStopped {
		t.Fatalf("stopping a paused VM: %v, %s", err, r.VM.State)
	}
	if _, err := call(api.MethodVMPause); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("pausing a stopped VM: %v", err)
	}
}

// A daemon restart re-adopts a paused VM and records what its VMM says: a pause whose
// record a crash cut off is paused, and a paused VM stays paused.
func TestRestartKeepsPausedVMsAndCorrectsTheRecord(t *testing.T) {
	stateDir := t.TempDir()
	h, drv := newFakeHelper(), &fakeDriver{binary: fakeVMMBinary(t)}
	td := startFakeDaemonAt(t, stateDir, h, drv, nil)
	td.addImage(t, "img")
	a, err := td.createRunning("a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := td.createRunning("b"); err != nil {
		t.Fatal(err)
	}
	if err := rpc.Call(context.Background(), td.cfg.Socket, api.MethodVMPause, api.VMRef{VM: "b"}, nil); err != nil {
		t.Fatal(err)
	}
	td.stop()
	// "a" was paused by a daemon that died before recording it.
	if err := syscall.Kill(a.VM.PID, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(context.Background(), filepath.Join(stateDir, "banger.db"))
	if err != nil {
		t.Fatal(err)
	}
	if vm, _ := st.GetVM(context.Background(), a.VM.ID); vm.State != model.VMRunning {
		t.Fatalf("crafted state %s", vm.State)
	}
	st.Close()
	td2 := startFakeDaemonAt(t, stateDir, h, drv, nil)
	for _, name := range []string{"a", "b"} {
		vm, err := showVM(td2, name)
		if err != nil || vm.State != model.VMPaused {
			t.Fatalf("%s after restart: %v, state %s", name, err, vm.State)
		}
		if err := syscall.Kill(vm.PID, 0); err != nil {
			t.Fatalf("%s's VMM killed by reconcile: %v", name, err)
		}
		if err := rpc.Call(context.Background(), td2.cfg.Socket, api.MethodVMResume, api.VMRef{VM: name}, nil); err != nil {
			t.Fatalf("resuming %s after restart: %v", name, err)
		}
		if err := execVia(t, td2, name); err != nil {
			t.Fatalf("exec on %s after restart and resume: %v", name, err)
		}
	}
	if taps, _ := h.snapshot(); taps != 2 {
		t.Fatalf("after restart %d taps, want 2", taps)
	}
}
