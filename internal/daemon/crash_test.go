package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/agentproto"
	"banger/internal/api"
	"banger/internal/errdefs"
	"banger/internal/model"
	"banger/internal/rpc"
	"banger/internal/store"
	"banger/internal/testkit"
	"banger/internal/vmm"
)

// These tests put the store and the host in the states a bangerd killed at some moment
// leaves behind (rows mid-transition, VMM processes nobody holds, taps and NAT rules of
// gone VMs) and check what the next daemon makes of them.

// craftVM inserts a row as a crashed daemon would have left it, with its directory.
func craftVM(t *testing.T, st *store.Store, stateDir, name, ip string, state model.VMState, creating bool) *model.VM {
	t.Helper()
	id := model.NewID()
	addr := netip.MustParseAddr(ip)
	vm := &model.VM{ID: id, Name: name, ImageID: fakeImageID("img"), ImageName: "img", State: state,
		VCPU: 1, MemoryMiB: 128, GuestIP: ip, MAC: model.MACForIP(addr), CID: model.CIDForIP(addr),
		Tap: model.TapForID(id), Dir: filepath.Join(stateDir, "vms", id), VMM: "fake", Creating: creating, NAT: true}
	if err := os.MkdirAll(vm.Dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := st.InsertVM(context.Background(), vm); err != nil {
		t.Fatal(err)
	}
	return vm
}

// withVMM launches a fake VMM on vm's directory and, if record, stores its pid and start
// time on the row as the daemon does at launch.
func withVMM(t *testing.T, st *store.Store, drv *fakeDriver, vm *model.VM, record bool) *vmm.Process {
	t.Helper()
	p, err := launchFakeVMM(drv.binary, vm.Dir, filepath.Join(vm.Dir, consoleLogName))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Kill() })
	if record {
		vm.PID, vm.PIDStart = p.PID(), p.StartTime()
		if err := st.UpdateVM(context.Background(), vm); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func alive(p *vmm.Process) bool { return !p.Exited() }

func showVM(td *testDaemon, name string) (model.VM, error) {
	var res api.VMResult
	err := rpc.Call(context.Background(), td.cfg.Socket, api.MethodVMShow, api.VMRef{VM: name}, &res)
	return res.VM, err
}

func TestRestartSettlesEveryInterruptedOperation(t *testing.T) {
	stateDir := t.TempDir()
	h, drv := newFakeHelper(), &fakeDriver{binary: fakeVMMBinary(t)}
	td := startFakeDaemonAt(t, stateDir, h, drv, nil)
	td.addImage(t, "img")
	keep, err := td.createRunning("keep")
	if err != nil {
		t.Fatal(err)
	}
	td.stop() // VMMs run on, as after a crash

	st, err := store.Open(context.Background(), filepath.Join(stateDir, "banger.db"))
	if err != nil {
		t.Fatal(err)
	}
	// A start killed after the VMM appeared, before it answered (the 4 of 120).
	boot := craftVM(t, st, stateDir, "boot", "172.30.0.20", model.VMStarting, false)
	bootP := withVMM(t, st, drv, boot, true)
	// The same, with the pid never recorded: only the VM directory names it.
	nopid := craftVM(t, st, stateDir, "nopid", "172.30.0.21", model.VMStarting, false)
	nopidP := withVMM(t, st, drv, nopid, false)
	// What the old daemon left: the row says stopped, the VMM runs on its disks.
	leak := craftVM(t, st, stateDir, "leak", "172.30.0.22", model.VMStopped, false)
	leakP := withVMM(t, st, drv, leak, true)
	// A create killed mid-boot: the caller never got it, so it is undone.
	half := craftVM(t, st, stateDir, "half", "172.30.0.23", model.VMStarting, true)
	halfP := withVMM(t, st, drv, half, true)
	// A delete killed half-way.
	del := craftVM(t, st, stateDir, "del", "172.30.0.24", model.VMDeleting, false)
	delP := withVMM(t, st, drv, del, true)
	// A vm run --rm whose CLI connection died with the old daemon.
	rm := craftVM(t, st, stateDir, "rm", "172.30.0.25", model.VMRunning, false)
	rm.AutoRemove = true
	rmP := withVMM(t, st, drv, rm, true)
	st.Close()
	for _, vm := range []*model.VM{boot, leak, half, del, rm} {
		h.taps[vm.Tap] = true
		h.nat[netip.MustParseAddr(vm.GuestIP)] = true
	}
	// A VMM on a directory no row owns, a stray NAT element, and two processes that are
	// not this daemon's VMMs: another program naming a VM directory, and the same VMM
	// binary on another state directory.
	orphanDir := filepath.Join(stateDir, "vms", model.NewID())
	os.MkdirAll(orphanDir, 0o750)
	orphanP, err := launchFakeVMM(drv.binary, orphanDir, filepath.Join(orphanDir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { orphanP.Kill() })
	h.nat[netip.MustParseAddr("172.30.0.99")] = true
	foreign := exec.Command("sleep", "60", filepath.Join(stateDir, "vms", boot.ID, "x"))
	if err := foreign.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { foreign.Process.Kill(); foreign.Wait() })
	otherDir := filepath.Join(t.TempDir(), "vms", model.NewID())
	os.MkdirAll(otherDir, 0o750)
	otherP, err := launchFakeVMM(drv.binary, otherDir, filepath.Join(otherDir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { otherP.Kill() })

	td2 := startFakeDaemonAt(t, stateDir, h, drv, nil)
	waitDead := func(name string, p *vmm.Process) {
		t.Helper()
		select {
		case <-p.Done():
		case <-time.After(5 * time.Second):
			t.Errorf("%s: VMM pid %d still running after reconcile", name, p.PID())
		}
	}
	for name, p := range map[string]*vmm.Process{"boot": bootP, "nopid": nopidP, "leak": leakP, "half": halfP,
		"del": delP, "rm": rmP, "orphan": orphanP} {
		waitDead(name, p)
	}
	if !alive(otherP) {
		t.Error("reconcile killed another state directory's VMM")
	}
	if err := foreign.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("reconcile killed a process that is not a VMM: %v", err)
	}

	got, err := showVM(td2, "keep")
	if err != nil || got.State != model.VMRunning || got.PID != keep.VM.PID {
		t.Errorf("keep: %+v %v; want running, re-adopted", got, err)
	}
	for _, name := range []string{"boot", "nopid", "leak"} {
		got, err := showVM(td2, name)
		if err != nil || got.State != model.VMStopped || got.PID != 0 {
			t.Errorf("%s: %s pid %d (%v); want stopped", name, got.State, got.PID, err)
		}
		if name != "leak" && !strings.Contains(got.LastError, "interrupted by a bangerd restart") {
			t.Errorf("%s: last error %q does not say what happened", name, got.LastError)
		}
	}
	for _, vm := range []*model.VM{half, del, rm} {
		if _, err := showVM(td2, vm.Name); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("%s: %v; want the row removed", vm.Name, err)
		}
		if _, err := os.Stat(vm.Dir); !os.IsNotExist(err) {
			t.Errorf("%s: directory left behind", vm.Name)
		}
	}
	if _, err := os.Stat(orphanDir); !os.IsNotExist(err) {
		t.Error("orphan VM directory left behind")
	}
	h.mu.Lock()
	taps, nat := len(h.taps), len(h.nat)
	_, keepTap := h.taps[keep.VM.Tap]
	h.mu.Unlock()
	if taps != 1 || !keepTap || nat != 0 {
		t.Errorf("after reconcile: taps %v, NAT %v; want only keep's tap", h.taps, h.nat)
	}
}

// A delete whose network teardown cannot reach the helper must not claim success, must
// keep the guest IP (its NAT rule still exists), and must finish once the helper is back.
func TestDeleteWithHelperDownKeepsIPUntilNATIsGone(t *testing.T) {
	td, h, _ := startFakeDaemon(t)
	var res api.VMResult
	ctx := context.Background()
	if err := rpc.Call(ctx, td.cfg.Socket, api.MethodVMCreate, api.VMCreateParams{Name: "natty", Image: "img", NAT: true}, &res); err != nil {
		t.Fatal(err)
	}
	natIP := netip.MustParseAddr(res.VM.GuestIP)
	h.setDown(true)
	err := rpc.Call(ctx, td.cfg.Socket, api.MethodVMDelete, api.VMDeleteParams{VM: "natty", Force: true}, nil)
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("delete with the helper down: %v; want unavailable", err)
	}
	vm, err := showVM(td, "natty")
	if err != nil || vm.State != model.VMDeleting || !strings.Contains(vm.LastError, "delete unfinished") {
		t.Fatalf("after the failed delete: %s %q (%v); want deleting saying why", vm.State, vm.LastError, err)
	}
	// The next VM must not get the address whose NAT rule is still in place.
	other, err := td.createRunning("plain")
	if err == nil {
		t.Fatalf("create with the helper down succeeded: %+v", other)
	}
	h.setDown(false)
	plain, err := td.create(api.VMCreateParams{Name: "plain2"})
	if err != nil {
		t.Fatal(err)
	}
	if plain.GuestIP == natIP.String() && func() bool { h.mu.Lock(); defer h.mu.Unlock(); return h.nat[natIP] }() {
		t.Fatalf("new VM got %s while its NAT rule still exists", natIP)
	}
	// The periodic reconcile finishes the delete now the helper answers.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := showVM(td, "natty")
		if errors.Is(err, errdefs.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("delete not finished after the helper came back: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.nat[natIP] || len(h.taps) != 0 {
		t.Fatalf("after reconcile: taps %v NAT %v", h.taps, h.nat)
	}
}

// The helper killed inside create_tap: the tap exists though the call failed. The create
// fails, and its tap is removed once the helper is back.
func TestHelperKilledMidCreateTap(t *testing.T) {
	td, h, _ := startFakeDaemon(t)
	h.mu.Lock()
	h.dieInCreateTap = true
	h.mu.Unlock()
	if _, err := td.createRunning("midtap"); err == nil {
		t.Fatal("create succeeded though create_tap failed")
	}
	if vm, err := showVM(td, "midtap"); err != nil || vm.State != model.VMDeleting {
		t.Fatalf("after the failed create: %+v %v; want deleting until the tap is gone", vm, err)
	}
	h.setDown(false)
	deadline := time.Now().Add(5 * time.Second)
	for {
		taps, _ := h.snapshot()
		_, err := showVM(td, "midtap")
		if taps == 0 && errors.Is(err, errdefs.ErrNotFound) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("tap or row left: %d taps, %v", taps, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// vm run --rm's VM is the daemon's to remove: when no run attaches, and when the run's
// stream ends, whatever the CLI does.
func TestAutoRemoveIsOwnedByTheDaemon(t *testing.T) {
	h, drv := newFakeHelper(), &fakeDriver{binary: fakeVMMBinary(t)}
	td := startFakeDaemonAt(t, t.TempDir(), h, drv, func(o *Options) { o.AutoRemoveGrace = 200 * time.Millisecond })
	td.addImage(t, "img")
	ctx := context.Background()
	var res api.VMResult
	if err := rpc.Call(ctx, td.cfg.Socket, api.MethodVMCreate, api.VMCreateParams{Name: "lonely", Image: "img", AutoRemove: true}, &res); err != nil {
		t.Fatal(err)
	}
	waitGone(t, td, "lonely")

	if err := rpc.Call(ctx, td.cfg.Socket, api.MethodVMCreate, api.VMCreateParams{Name: "ran", Image: "img", AutoRemove: true}, &res); err != nil {
		t.Fatal(err)
	}
	c, err := rpc.Dial(ctx, td.cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Stream(ctx, api.MethodVMAgent, api.VMRef{VM: "ran"}, nil); err != nil {
		t.Fatal(err)
	}
	// Attached: the grace period no longer applies.
	time.Sleep(400 * time.Millisecond)
	if _, err := showVM(td, "ran"); err != nil {
		t.Fatalf("VM removed while its run was attached: %v", err)
	}
	c.Close() // the CLI dies
	waitGone(t, td, "ran")
	if taps, _ := h.snapshot(); taps != 0 {
		t.Fatalf("auto-removed VMs left %d taps", taps)
	}
	if n := len(fakeVMMs(t, td.cfg.VMsDir(), drv.binary)); n != 0 {
		t.Fatalf("auto-removed VMs left %d VMM processes", n)
	}
}

func waitGone(t *testing.T, td *testDaemon, name string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := showVM(td, name)
		if errors.Is(err, errdefs.ErrNotFound) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("vm %s still exists (%v)", name, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Lifecycle requests the state machine forbids are conflicts and change nothing.
func TestIllegalLifecycleRequestsAreConflicts(t *testing.T) {
	td, _, _ := startFakeDaemon(t)
	if _, err := td.createRunning("sm"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := rpc.Call(ctx, td.cfg.Socket, api.MethodVMStart, api.VMRef{VM: "sm"}, nil); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("starting a running VM: %v", err)
	}
	if err := rpc.Call(ctx, td.cfg.Socket, api.MethodVMStop, api.VMStopParams{VM: "sm", TimeoutSeconds: 5}, nil); err != nil {
		t.Fatal(err)
	}
	if err := rpc.Call(ctx, td.cfg.Socket, api.MethodVMStop, api.VMStopParams{VM: "sm"}, nil); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("stopping a stopped VM: %v", err)
	}
	if vm, _ := showVM(td, "sm"); vm.State != model.VMStopped {
		t.Fatalf("state %s after refused requests", vm.State)
	}
}

// A boot failing on a full filesystem says so.
func TestBootFailureOnFullDiskSaysSo(t *testing.T) {
	td, _, drv := startFakeDaemon(t)
	drv.mu.Lock()
	drv.failStart = true
	drv.mu.Unlock()
	old := lowDiskBytes
	lowDiskBytes = 1 << 62 // every filesystem counts as full
	defer func() { lowDiskBytes = old }()
	_, err := td.createRunning("full")
	if err == nil || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("create on a full disk: %v; want it to say no space left", err)
	}
	if !strings.Contains(err.Error(), "cannot load kernel") {
		t.Fatalf("the VMM's own error was lost: %v", err)
	}
}

// fakeImageID is the id addImage gives the image called name.
func fakeImageID(name string) string {
	return strings.Repeat("a", 63) + fmt.Sprint(len(name)%10)
}

// TestAgentOfAnotherProtocolIsRefusedAtOnce: a guest agent that speaks another protocol
// version fails the start with a conflict naming both versions, without waiting out the
// boot timeout, and the create leaves nothing behind.
func TestAgentOfAnotherProtocolIsRefusedAtOnce(t *testing.T) {
	h, drv := newFakeHelper(), &fakeDriver{binary: fakeVMMBinary(t), oldAgent: true}
	td := startFakeDaemonAt(t, t.TempDir(), h, drv, nil)
	td.addImage(t, "img")
	err := testkit.Within(t, "create with an old agent", func() error {
		return rpc.Call(context.Background(), td.cfg.Socket, api.MethodVMCreate, api.VMCreateParams{Name: "old", Image: "img"}, nil)
	})
	var er *rpc.ErrorResponse
	if !errors.As(err, &er) || er.Code != rpc.CodeConflict || !strings.Contains(er.Message, "protocol 0") ||
		!strings.Contains(er.Message, fmt.Sprintf("speaks %d", agentproto.ProtocolVersion)) {
		t.Fatalf("create with an old agent: %v, want a conflict naming protocol 0 and %d", err, agentproto.ProtocolVersion)
	}
	if _, err := showVM(td, "old"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("vm of the failed create still there: %v", err)
	}
	if taps, nat := h.snapshot(); taps != 0 || nat != 0 {
		t.Errorf("failed create left %d taps and %d NAT rules", taps, nat)
	}
}

// TestRestartKillsLeftoverForkTemplates: a fork template's VMM that a crashed daemon left
// (its directory in the runtime directory) is killed when the daemon starts again; a VMM
// on any other directory there is not touched.
func TestRestartKillsLeftoverForkTemplates(t *testing.T) {
	stateDir := t.TempDir()
	drv := &fakeDriver{binary: fakeVMMBinary(t)}
	launch := func(name string) *vmm.Process {
		dir := filepath.Join(stateDir, "run", name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		p, err := launchFakeVMM(drv.binary, dir, filepath.Join(dir, consoleLogName))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Kill() })
		return p
	}
	tmpl, other := launch(templateDirPrefix+"123"), launch("other")
	startFakeDaemonAt(t, stateDir, newFakeHelper(), drv, nil)
	select {
	case <-tmpl.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the leftover template VMM still runs after the daemon started")
	}
	if !alive(other) {
		t.Error("a VMM on a non-template directory of the runtime directory was killed")
	}
	if _, err := os.Stat(filepath.Join(stateDir, "run", templateDirPrefix+"123")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the leftover template directory is still there: %v", err)
	}
}
