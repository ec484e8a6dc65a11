package daemon

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/rpc"
)

// DetachAgent of the fake machine hangs up as the daemon asks and waits, like QEMU's
// VSERPORT_CHANGE, until the guest's end of the channel has ended its session.
func (m *fakeMachine) DetachAgent(ctx context.Context, hangUp func()) error {
	m.record("detach")
	m.callsMu.Lock()
	sess := m.guestSess
	m.callsMu.Unlock()
	hangUp()
	if sess == nil {
		return nil
	}
	select {
	case <-sess.CloseChan():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestPauseDetachesTheAgentFirst: before the vCPUs stop, the guest's agent session is ended
// (so a snapshot of the paused guest holds none a restore's new session could collide
// with), no session is dialed while the VM is paused, and after the resume a fresh one
// serves. Without detachAgent the pause does not detach and the guest keeps its session.
func TestPauseDetachesTheAgentFirst(t *testing.T) {
	td, _, _ := startFakeDaemon(t)
	res, err := td.createRunning("p")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rt := td.d.runtime(res.VM.ID)
	m := rt.getMachine().(*fakeMachine)
	m.callsMu.Lock()
	before := m.guestSess
	m.callsMu.Unlock()
	if before == nil {
		t.Fatal("no agent session before the pause")
	}
	if err := rpc.Call(ctx, td.cfg.Socket, api.MethodVMPause, api.VMRef{VM: "p"}, nil); err != nil {
		t.Fatal(err)
	}
	m.callsMu.Lock()
	calls := slices.Clone(m.calls)
	m.callsMu.Unlock()
	if !slices.Equal(calls, []string{"detach", "pause"}) {
		t.Fatalf("calls %v, want the agent detached before the pause", calls)
	}
	select {
	case <-before.CloseChan():
	case <-time.After(5 * time.Second):
		t.Fatal("the guest's agent session survived the pause")
	}
	if _, err := rt.openStream(ctx); err == nil {
		t.Fatal("an agent stream was opened on a detached, paused VM")
	}
	if err := rpc.Call(ctx, td.cfg.Socket, api.MethodVMResume, api.VMRef{VM: "p"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := execVia(t, td, "p"); err != nil {
		t.Fatalf("exec after resume: %v", err)
	}
	m.callsMu.Lock()
	after := m.guestSess
	m.callsMu.Unlock()
	if after == before {
		t.Fatal("exec after resume reused the old session")
	}
}

// A session with a stream in use is kept: ending it would end the user's exec or copy.
func TestPauseKeepsABusyAgentSession(t *testing.T) {
	td, _, _ := startFakeDaemon(t)
	res, err := td.createRunning("busy")
	if err != nil {
		t.Fatal(err)
	}
	rt := td.d.runtime(res.VM.ID)
	st, err := rt.openStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := rpc.Call(context.Background(), td.cfg.Socket, api.MethodVMPause, api.VMRef{VM: "busy"}, nil); err != nil {
		t.Fatal(err)
	}
	m := rt.getMachine().(*fakeMachine)
	m.callsMu.Lock()
	defer m.callsMu.Unlock()
	if slices.Contains(m.calls, "detach") {
		t.Fatalf("calls %v: a session with an open stream was detached", m.calls)
	}
}

// A paused VM whose agent was detached still stops through its agent: the stop's resume
// lets a session be dialed again (without it the shutdown was refused and the stop fell
// back to the VMM, e2e TestPauseResumeKeepsProcessState).
func TestStopOfADetachedPausedVMUsesTheAgent(t *testing.T) {
	td, _, _ := startFakeDaemon(t)
	res, err := td.createRunning("ps")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := rpc.Call(ctx, td.cfg.Socket, api.MethodVMPause, api.VMRef{VM: "ps"}, nil); err != nil {
		t.Fatal(err)
	}
	m := td.d.runtime(res.VM.ID).getMachine().(*fakeMachine)
	var r api.VMResult
	if err := rpc.Call(ctx, td.cfg.Socket, api.MethodVMStop, api.VMStopParams{VM: "ps", TimeoutSeconds: 5}, &r); err != nil {
		t.Fatal(err)
	}
	td.log.mu.Lock()
	logs := td.log.buf.String()
	td.log.mu.Unlock()
	if !strings.Contains(logs, `"how":"guest shutdown"`) {
		m.callsMu.Lock()
		defer m.callsMu.Unlock()
		t.Fatalf("the stop did not go through the agent (calls %v):\n%s", m.calls, logs)
	}
}
