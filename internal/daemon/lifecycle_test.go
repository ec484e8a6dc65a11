package daemon

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"banger/internal/agentclient"
	"banger/internal/agentproto"
	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/errdefs"
	"banger/internal/guest"
	"banger/internal/helper"
	"banger/internal/model"
	"banger/internal/opid"
	"banger/internal/rpc"
	"banger/internal/vmm"
)

// These tests drive the whole VM lifecycle through the daemon without a hypervisor or
// root: a fake VMM whose "guest" is the real agent serving in-process, and a fake root
// helper that records what the daemon asked for. They pin down orchestration — which
// network calls happen when, and that failures undo everything.

type fakeHelper struct {
	mu    sync.Mutex
	calls []string
	taps  map[string]bool
	nat   map[netip.Addr]bool
	// failEnableNAT makes NAT fail after the tap exists (a half-done network setup).
	failEnableNAT bool
	// down makes every call fail as when the helper is not running.
	down bool
	// dieInCreateTap makes create_tap create the tap and then fail, as a helper killed
	// mid-call, and the helper go down.
	dieInCreateTap bool
}

var errHelperDown = errors.New("dial unix /run/banger-helper.sock: connect: connection refused")

func (h *fakeHelper) setDown(down bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.down = down
}

func newFakeHelper() *fakeHelper {
	return &fakeHelper{taps: map[string]bool{}, nat: map[netip.Addr]bool{}}
}

func (h *fakeHelper) record(ctx context.Context, call string) {
	h.calls = append(h.calls, call+" "+opid.From(ctx))
}

func (h *fakeHelper) Ping(context.Context) error { return nil }
func (h *fakeHelper) EnsureBridge(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.record(ctx, "ensure_bridge")
	return nil
}
func (h *fakeHelper) CreateTap(ctx context.Context, tap string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.record(ctx, "create_tap "+tap)
	if h.down {
		return errHelperDown
	}
	h.taps[tap] = true
	if h.dieInCreateTap {
		h.down, h.dieInCreateTap = true, false
		return errors.New("create_tap: server closed the connection")
	}
	return nil
}
func (h *fakeHelper) DeleteTap(ctx context.Context, tap string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.record(ctx, "delete_tap "+tap)
	if h.down {
		return errHelperDown
	}
	delete(h.taps, tap)
	return nil
}
func (h *fakeHelper) EnableNAT(ctx context.Context, ip netip.Addr) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.record(ctx, "enable_nat "+ip.String())
	if h.down {
		return errHelperDown
	}
	if h.failEnableNAT {
		return errors.New("nft says no")
	}
	h.nat[ip] = true
	return nil
}
func (h *fakeHelper) DisableNAT(ctx context.Context, ip netip.Addr) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.record(ctx, "disable_nat "+ip.String())
	if h.down {
		return errHelperDown
	}
	delete(h.nat, ip)
	return nil
}
func (h *fakeHelper) Cleanup(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.record(ctx, "cleanup")
	h.taps, h.nat = map[string]bool{}, map[netip.Addr]bool{}
	return nil
}
func (h *fakeHelper) State(ctx context.Context) (helper.StateResult, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.down {
		return helper.StateResult{}, errHelperDown
	}
	var st helper.StateResult
	for t := range h.taps {
		st.Taps = append(st.Taps, t)
	}
	for ip := range h.nat {
		st.NATIPs = append(st.NATIPs, ip)
	}
	return st, nil
}

func (h *fakeHelper) snapshot() (taps int, nat int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.taps), len(h.nat)
}

// fakeDriver starts fakeMachines; failStart makes Start fail like a VMM that cannot load
// the kernel. Each machine is a real process (a shell loop run as the configured qemu
// binary on the VM's directory), launched and recorded as a real driver does it, so
// reconcile's process checks see ground truth.
type fakeDriver struct {
	mu        sync.Mutex
	failStart bool
	// hang makes Start block after the process exists, as a VMM that never answers QMP.
	hang    bool
	started []vmm.Spec
	binary  string
	// console, if set, writes the "guest's" console log, and the machine then exits
	// before its agent answers, like a guest that panics at boot.
	console func(logPath string)
	// oldAgent makes the machines' agents answer pings as an agent of protocol 0 would.
	oldAgent bool
}

func (f *fakeDriver) Name() string { return "fake" }
func (f *fakeDriver) Probe(context.Context) vmm.Info {
	return vmm.Info{Name: "fake", Available: true, Accel: "none"}
}
func (f *fakeDriver) Start(ctx context.Context, spec vmm.Spec) (vmm.Machine, error) {
	f.mu.Lock()
	if f.failStart {
		f.mu.Unlock()
		return nil, errors.New("cannot load kernel")
	}
	f.started = append(f.started, spec)
	hang, console, oldAgent := f.hang, f.console, f.oldAgent
	f.mu.Unlock()
	proc, err := launchFakeVMM(f.binary, spec.Dir, spec.LogPath)
	if err != nil {
		return nil, err
	}
	if err := spec.Launched(proc); err != nil {
		return nil, err
	}
	if hang {
		<-ctx.Done()
		proc.Kill()
		<-proc.Done()
		return nil, ctx.Err()
	}
	m := newFakeMachine(proc)
	m.oldAgent = oldAgent
	if console != nil {
		m.stop()
		<-proc.Done()
		console(spec.LogPath)
	}
	return m, nil
}
func (f *fakeDriver) Recover(_ context.Context, spec vmm.Spec, pid int) (vmm.Machine, error) {
	proc, err := vmm.Adopt(pid, spec.PIDStart, vmm.MatchCmdline(f.binary, spec.Dir))
	if err != nil {
		return nil, err
	}
	return newFakeMachine(proc), nil
}

// fakeVMMBinary writes the fake VMM: a shell script named like the configured qemu binary,
// so the daemon's ownership checks (binary + VM directory in the command line) apply.
func fakeVMMBinary(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qemu-system-x86_64")
	if err := os.WriteFile(path, []byte("while :; do sleep 0.2; done\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// fakeVMMs lists the fake VMM processes running on VM directories under vmsDir.
func fakeVMMs(t *testing.T, vmsDir, binary string) []vmm.Owned {
	t.Helper()
	owned, err := vmm.FindOwned(vmsDir, []string{binary})
	if err != nil {
		t.Fatal(err)
	}
	return owned
}

func killFakeVMMs(t *testing.T, vmsDir, binary string) {
	for _, o := range fakeVMMs(t, vmsDir, binary) {
		vmm.KillOwned(o, vmsDir, []string{binary}, 5*time.Second)
	}
}

func launchFakeVMM(binary, dir, logPath string) (*vmm.Process, error) {
	return vmm.Launch(exec.Command("sh", binary, "-qmp", "unix:"+filepath.Join(dir, "qmp.sock")+",server"), logPath, 0, dir)
}

// fakeMachine's guest is guest.Agent serving on the other end of an in-memory pipe;
// a shutdown request "powers off" by ending the machine's process.
type fakeMachine struct {
	proc     *vmm.Process
	agentLog *slog.Logger
	oldAgent bool
	// calls records Pause, Resume and DetachAgent in order (detach_test.go).
	callsMu sync.Mutex
	calls   []string
	// guestSess is the guest end of the latest agent channel.
	guestSess *yamux.Session
}

func (m *fakeMachine) record(call string) {
	m.callsMu.Lock()
	defer m.callsMu.Unlock()
	m.calls = append(m.calls, call)
}

func newFakeMachine(proc *vmm.Process) *fakeMachine {
	return &fakeMachine{proc: proc, agentLog: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

func (m *fakeMachine) PID() int      { return m.proc.PID() }
func (m *fakeMachine) Accel() string { return "none" }
func (m *fakeMachine) stop()         { m.proc.Kill() }
func (m *fakeMachine) DialAgent(ctx context.Context) (net.Conn, error) {
	host, guestEnd := net.Pipe()
	sess, err := yamux.Server(guestEnd, nil)
	if err != nil {
		return nil, err
	}
	if m.oldAgent {
		go serveOldAgent(sess)
		return host, nil
	}
	m.callsMu.Lock()
	m.guestSess = sess
	m.callsMu.Unlock()
	agent := guest.NewAgent(m.agentLog, func(*slog.Logger) { m.stop() })
	go agent.Serve(context.Background(), sess)
	go func() { <-m.proc.Done(); sess.Close() }()
	return host, nil
}

// serveOldAgent answers every request on every stream as an agent from before protocol
// versions were reported.
func serveOldAgent(sess *yamux.Session) {
	for {
		st, err := sess.Accept()
		if err != nil {
			return
		}
		go func() {
			defer st.Close()
			if _, err := bufio.NewReader(st).ReadString('\n'); err == nil {
				io.WriteString(st, `{"ok":true,"hostname":"old","kernel":"6.1","agent_version":"0.1"}`+"\n")
			}
		}()
	}
}

func (m *fakeMachine) Shutdown(context.Context) error { m.stop(); return nil }
func (m *fakeMachine) Kill() error                    { return m.proc.Kill() }
func (m *fakeMachine) Done() <-chan struct{}          { return m.proc.Done() }

func startFakeDaemon(t *testing.T) (*testDaemon, *fakeHelper, *fakeDriver) {
	t.Helper()
	h, drv := newFakeHelper(), &fakeDriver{binary: fakeVMMBinary(t)}
	td := startFakeDaemonAt(t, t.TempDir(), h, drv, nil)
	td.addImage(t, "img")
	return td, h, drv
}

// startFakeDaemonAt runs a daemon on stateDir with the fake helper and driver; tune
// adjusts the other options.
func startFakeDaemonAt(t *testing.T, stateDir string, h *fakeHelper, drv *fakeDriver, tune func(*Options)) *testDaemon {
	t.Helper()
	// VMMs outlive their daemon by design; the test's must not outlive the test.
	t.Cleanup(func() { killFakeVMMs(t, filepath.Join(stateDir, "vms"), drv.binary) })
	return startDaemonWith(t, stateDir, func(c *config.Config) {
		c.Network.Enabled = true
		c.VMM = "qemu"
		c.Qemu.Binary = drv.binary
	}, func() Options {
		// The fake stands in for the configured VMM and answers to its own name, which
		// is what records and reconcile use.
		o := Options{Helper: h, Drivers: map[string]vmm.Driver{"qemu": drv, "fake": drv},
			ReconcileInterval: 20 * time.Millisecond}
		if tune != nil {
			tune(&o)
		}
		return o
	}())
}

func TestLifecycleWithFakeVMM(t *testing.T) {
	td, h, drv := startFakeDaemon(t)
	ctx := opid.With(context.Background(), "op-lifecycle01")
	var res api.VMResult
	if err := rpc.Call(ctx, td.cfg.Socket, api.MethodVMCreate, api.VMCreateParams{Name: "life", Image: "img", NAT: true}, &res); err != nil {
		t.Fatal(err)
	}
	vm := res.VM
	if vm.State != "running" || vm.VMM != "fake" {
		t.Fatalf("after create: %+v", vm)
	}
	if taps, nat := h.snapshot(); taps != 1 || nat != 1 {
		t.Fatalf("after create: %d taps, %d NAT guests", taps, nat)
	}
	// The helper saw the create's op id.
	if !slices.Contains(h.calls, "create_tap "+vm.Tap+" op-lifecycle01") {
		t.Fatalf("helper calls %q lack the create's op id", h.calls)
	}
	spec := drv.started[0]
	if spec.Net == nil || spec.Net.Tap != vm.Tap || spec.Net.MAC != vm.MAC ||
		!strings.Contains(spec.BootArgs, agentproto.ParamIP+"="+vm.GuestIP+"/24") ||
		!strings.Contains(spec.BootArgs, agentproto.ParamName+"=life") || len(spec.Drives) != 3 || !spec.Drives[0].ReadOnly {
		t.Fatalf("spec given to the VMM: %+v", spec)
	}

	// exec through vm.agent: the daemon splices the stream to the agent.
	c, err := rpc.Dial(ctx, td.cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := c.Stream(ctx, api.MethodVMAgent, api.VMRef{VM: "life"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	code, err := agentclient.Exec(ctx, stream, agentclient.ExecRequest{Argv: []string{"sh", "-c", "cat; exit 7"}, OpID: "op-lifecycle01"},
		agentclient.ExecIO{Stdin: strings.NewReader("through the daemon\n"), Stdout: &out})
	c.Close()
	if err != nil || code != 7 || out.String() != "through the daemon\n" {
		t.Fatalf("exec via vm.agent: code %d err %v out %q", code, err, out.String())
	}

	// stop: the agent's shutdown ends the machine; network is torn down.
	if err := rpc.Call(ctx, td.cfg.Socket, api.MethodVMStop, api.VMStopParams{VM: "life", TimeoutSeconds: 5}, &res); err != nil {
		t.Fatal(err)
	}
	if res.VM.State != "stopped" {
		t.Fatalf("after stop: %s", res.VM.State)
	}
	if taps, nat := h.snapshot(); taps != 0 || nat != 0 {
		t.Fatalf("after stop: %d taps, %d NAT guests", taps, nat)
	}
	if err := rpc.Call(ctx, td.cfg.Socket, api.MethodVMStart, api.VMRef{VM: "life"}, &res); err != nil || res.VM.State != "running" {
		t.Fatalf("start: %v %s", err, res.VM.State)
	}
	if err := rpc.Call(ctx, td.cfg.Socket, api.MethodVMDelete, api.VMDeleteParams{VM: "life"}, nil); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("deleting a running VM without force: %v", err)
	}
	if err := rpc.Call(ctx, td.cfg.Socket, api.MethodVMDelete, api.VMDeleteParams{VM: "life", Force: true}, nil); err != nil {
		t.Fatal(err)
	}
	if taps, nat := h.snapshot(); taps != 0 || nat != 0 {
		t.Fatalf("after delete: %d taps, %d NAT guests", taps, nat)
	}
}

func TestFailedStartsUndoEverything(t *testing.T) {
	td, h, drv := startFakeDaemon(t)
	for _, tc := range []struct {
		name  string
		setup func()
	}{
		{"vmm-fails", func() { drv.failStart = true; h.failEnableNAT = false }},
		{"nat-fails", func() { drv.failStart = false; h.failEnableNAT = true }},
	} {
		tc.setup()
		var res api.VMResult
		err := rpc.Call(context.Background(), td.cfg.Socket, api.MethodVMCreate, api.VMCreateParams{Name: tc.name, Image: "img", NAT: true}, &res)
		if err == nil {
			t.Fatalf("%s: create succeeded", tc.name)
		}
		if taps, nat := h.snapshot(); taps != 0 || nat != 0 {
			t.Fatalf("%s: failed create left %d taps, %d NAT guests (calls %q)", tc.name, taps, nat, h.calls)
		}
		var list api.VMListResult
		rpc.Call(context.Background(), td.cfg.Socket, api.MethodVMList, nil, &list)
		for _, vm := range list.VMs {
			if vm.Name == tc.name {
				t.Fatalf("%s: failed create left its row", tc.name)
			}
		}
	}
	// The DNS record of a failed create is gone too.
	if _, ok := td.d.dns.Lookup("nat-fails"); ok {
		t.Fatal("failed create left a DNS record")
	}
}

func TestGuestPowerOffIsNoticed(t *testing.T) {
	td, h, _ := startFakeDaemon(t)
	if _, err := td.createRunning("pow"); err != nil {
		t.Fatal(err)
	}
	// The guest powers itself off (here: the machine ends as a guest reboot ends qemu).
	rt := td.d.runtime(mustVM(t, td, "pow").VM.ID)
	rt.getMachine().(*fakeMachine).stop()
	deadline := time.Now().Add(5 * time.Second)
	for mustVM(t, td, "pow").VM.State != "stopped" {
		if time.Now().After(deadline) {
			t.Fatal("the daemon did not notice the VM powering off")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if taps, _ := h.snapshot(); taps != 0 {
		t.Fatal("tap left after the guest powered off")
	}
}

func (td *testDaemon) createRunning(name string) (api.VMResult, error) {
	var res api.VMResult
	err := rpc.Call(context.Background(), td.cfg.Socket, api.MethodVMCreate, api.VMCreateParams{Name: name, Image: "img"}, &res)
	return res, err
}

func mustVM(t *testing.T, td *testDaemon, name string) api.VMResult {
	t.Helper()
	var res api.VMResult
	if err := rpc.Call(context.Background(), td.cfg.Socket, api.MethodVMShow, api.VMRef{VM: name}, &res); err != nil {
		t.Fatal(err)
	}
	return res
}

// TestHugeConsoleLogBoundsTheStartError: a guest that filled its console log (100 MiB in one
// line, escape sequences, the last line that matters) and died makes a start error, and a
// recorded last_error, of a few KiB that quote the end of the log and no escape sequence.
// The daemon used to read the whole log and send it back, and store it with the VM.
func TestHugeConsoleLogBoundsTheStartError(t *testing.T) {
	td, _, drv := startFakeDaemon(t)
	if _, err := td.create(api.VMCreateParams{Name: "spam"}); err != nil {
		t.Fatal(err)
	}
	drv.console = func(logPath string) {
		f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		f.WriteString("booting\n")
		f.Write(bytes.Repeat([]byte("y"), 100<<20))
		f.WriteString("\n\x1b]0;pwned\x07\x1b[2J\nKernel panic - not syncing: the last line\n")
	}
	err := rpc.Call(context.Background(), td.cfg.Socket, api.MethodVMStart, api.VMRef{VM: "spam"}, nil)
	if err == nil {
		t.Fatal("start of a VM whose VMM exited at once succeeded")
	}
	msg := err.Error()
	if len(msg) > 8<<10 || !strings.Contains(msg, "Kernel panic - not syncing: the last line") || strings.ContainsAny(msg, "\x1b\x07") {
		t.Errorf("start error is %d bytes (escape sequences: %v), want a few KiB quoting the last line: %.300q…",
			len(msg), strings.ContainsAny(msg, "\x1b\x07"), msg)
	}
	vm := mustVM(t, td, "spam").VM
	if len(vm.LastError) > model.MaxLastError || !strings.Contains(vm.LastError, "the last line") || strings.ContainsAny(vm.LastError, "\x1b\x07") {
		t.Errorf("last_error is %d bytes, want at most %d quoting the last line: %.300q…", len(vm.LastError), model.MaxLastError, vm.LastError)
	}
	var list api.VMListResult
	if err := rpc.Call(context.Background(), td.cfg.Socket, api.MethodVMList, nil, &list); err != nil {
		t.Fatal(err)
	}
	for _, v := range list.VMs {
		if len(v.LastError) > model.MaxLastError {
			t.Errorf("vm ls carries a %d-byte last_error", len(v.LastError))
		}
	}
}
