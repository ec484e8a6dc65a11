package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/errdefs"
	"banger/internal/model"
	"banger/internal/rpc"
)

// testDaemon runs a real daemon (real socket, real SQLite file) with networking and VMM
// boots out of the picture: these tests create VMs with --no-start.
type testDaemon struct {
	cfg    config.Config
	d      *Daemon
	cancel context.CancelFunc
	done   chan error
	log    *logSink
}

// logSink collects the daemon's JSON log records for tests that check what was logged.
type logSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logSink) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// stages returns, in order, the stage names logged as "operation stage" under op id id.
func (l *logSink) stages(t *testing.T, id string) []string {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, line := range bytes.Split(l.buf.Bytes(), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var r struct {
			Msg   string `json:"msg"`
			OpID  string `json:"op_id"`
			Stage string `json:"stage"`
		}
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("daemon log line %q: %v", line, err)
		}
		if r.Msg == "operation stage" && r.OpID == id {
			out = append(out, r.Stage)
		}
	}
	return out
}

func requireMkfs(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("mkfs.ext4 missing (apt-get install e2fsprogs)")
		}
		t.Skip("mkfs.ext4 missing (apt-get install e2fsprogs)")
	}
}

func startDaemon(t *testing.T, stateDir, cidr string, tweaks ...func(*config.Config)) *testDaemon {
	t.Helper()
	return startDaemonWith(t, stateDir, func(c *config.Config) {
		c.Network.CIDR = cidr
		for _, tw := range tweaks {
			tw(c)
		}
	}, Options{})
}

// startDaemonWith runs a daemon with tweak applied to its config and opts (fake drivers and
// helper) injected; the test's log sink replaces opts.Logger.
func startDaemonWith(t *testing.T, stateDir string, tweak func(*config.Config), opts Options) *testDaemon {
	t.Helper()
	requireMkfs(t)
	cfg := config.Default()
	cfg.StateDir = stateDir
	cfg.RuntimeDir = filepath.Join(stateDir, "run")
	cfg.DNS.Listen = nil
	cfg.DNS.Upstreams = []string{"127.0.0.1:9"}
	cfg.Defaults.SystemOverlaySize = "16M"
	cfg.Defaults.WorkDiskSize = "16M"
	if tweak != nil {
		tweak(&cfg)
	}
	sink := &logSink{}
	opts.Logger = slog.New(slog.NewJSONHandler(sink, nil))
	ctx, cancel := context.WithCancel(context.Background())
	d, err := New(ctx, cfg, opts)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	td := &testDaemon{cfg: d.cfg, d: d, cancel: cancel, done: make(chan error, 1), log: sink}
	go func() { td.done <- d.Run(ctx, RunOptions{}) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := rpc.Call(context.Background(), td.cfg.Socket, api.MethodPing, nil, nil); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("daemon did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Cleanup(td.stop)
	return td
}

func (td *testDaemon) stop() {
	if td.cancel == nil {
		return
	}
	td.cancel()
	<-td.done
	td.cancel = nil
}

// addImage records a fake image: no-start creates never read its files.
func (td *testDaemon) addImage(t *testing.T, name string) {
	t.Helper()
	im := &model.Image{ID: fmt.Sprintf("%064x", len(name)) + "", Name: name, Version: "1", Arch: "x86_64",
		Dir: t.TempDir(), Files: []model.File{{Role: model.RoleKernel, Name: "vmlinux"}, {Role: model.RoleRootfs, Name: "rootfs.ext4"}}}
	im.ID = strings.Repeat("a", 63) + fmt.Sprint(len(name)%10)
	if err := td.d.store.InsertImage(context.Background(), im); err != nil {
		t.Fatal(err)
	}
}

func (td *testDaemon) create(p api.VMCreateParams) (model.VM, error) {
	p.NoStart = true
	if p.Image == "" {
		p.Image = "img"
	}
	var res api.VMResult
	err := rpc.Call(context.Background(), td.cfg.Socket, api.MethodVMCreate, p, &res)
	return res.VM, err
}

func TestConcurrentCreatesGetDistinctNamesAndIPs(t *testing.T) {
	td := startDaemon(t, t.TempDir(), "172.30.0.1/24")
	td.addImage(t, "img")
	var wg sync.WaitGroup
	vms := make([]model.VM, 50)
	errs := make([]error, 50)
	for i := range vms {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			vms[i], errs[i] = td.create(api.VMCreateParams{})
		}(i)
	}
	wg.Wait()
	names, ips := map[string]bool{}, map[string]bool{}
	for i, vm := range vms {
		if errs[i] != nil {
			t.Fatalf("create %d: %v", i, errs[i])
		}
		if names[vm.Name] || ips[vm.GuestIP] {
			t.Fatalf("duplicate name or ip: %s %s", vm.Name, vm.GuestIP)
		}
		names[vm.Name], ips[vm.GuestIP] = true, true
		if vm.State != model.VMStopped {
			t.Fatalf("no-start vm state = %s", vm.State)
		}
		if _, err := os.Stat(filepath.Join(vm.Dir, workDiskName)); err != nil {
			t.Fatalf("work disk missing: %v", err)
		}
	}
}

func TestConcurrentCreatesOfOneNameExactlyOneWins(t *testing.T) {
	td := startDaemon(t, t.TempDir(), "172.30.0.1/24")
	td.addImage(t, "img")
	var wg sync.WaitGroup
	errs := make([]error, 20)
	for i := range errs {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, errs[i] = td.create(api.VMCreateParams{Name: "same"})
		}(i)
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, errdefs.ErrAlreadyExists):
		default:
			t.Fatalf("unexpected error: %v", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d creates of the same name succeeded, want 1", ok)
	}
}

func TestNamePrefixingAnotherVMIsAccepted(t *testing.T) {
	td := startDaemon(t, t.TempDir(), "172.30.0.1/24")
	td.addImage(t, "img")
	a, err := td.create(api.VMCreateParams{Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := td.create(api.VMCreateParams{Name: "we"}); err != nil {
		t.Fatalf("a name that prefixes another VM's name was refused: %v", err)
	}
	if _, err := td.create(api.VMCreateParams{Name: a.ID[:6]}); err != nil && !strings.Contains(err.Error(), "DNS label") {
		t.Fatalf("a name that prefixes another VM's id was refused: %v", err)
	}
}

func TestCreateValidation(t *testing.T) {
	td := startDaemon(t, t.TempDir(), "172.30.0.1/24")
	td.addImage(t, "img")
	cases := []struct {
		p          api.VMCreateParams
		field, val string
		kind       error
	}{
		{api.VMCreateParams{Name: "Bad_Name"}, "name", "Bad_Name", errdefs.ErrInvalidArgument},
		{api.VMCreateParams{Name: "-lead"}, "name", "-lead", errdefs.ErrInvalidArgument},
		{api.VMCreateParams{Name: strings.Repeat("a", 64)}, "name", strings.Repeat("a", 64), errdefs.ErrInvalidArgument},
		{api.VMCreateParams{VCPU: -1}, "vcpu", "-1", errdefs.ErrInvalidArgument},
		{api.VMCreateParams{VCPU: 1000}, "vcpu", "1000", errdefs.ErrInvalidArgument},
		{api.VMCreateParams{Memory: "lots"}, "memory", "lots", errdefs.ErrInvalidArgument},
		{api.VMCreateParams{Memory: "0"}, "memory", "0", errdefs.ErrInvalidArgument},
		{api.VMCreateParams{Memory: "16M"}, "memory", "16M", errdefs.ErrInvalidArgument},
		{api.VMCreateParams{WorkDiskSize: "-1G"}, "work_disk_size", "-1G", errdefs.ErrInvalidArgument},
		{api.VMCreateParams{SystemOverlaySize: "99999999999T"}, "system_overlay_size", "99999999999T", errdefs.ErrInvalidArgument},
		{api.VMCreateParams{Image: "nope"}, "image", "nope", errdefs.ErrNotFound},
		{api.VMCreateParams{NAT: true}, "nat", "true", errdefs.ErrInvalidArgument},
	}
	for _, c := range cases {
		_, err := td.create(c.p)
		if !errors.Is(err, c.kind) {
			t.Errorf("%+v: got %v, want kind %v", c.p, err, c.kind)
			continue
		}
		msg := err.Error()
		if (c.field != "image" && !strings.Contains(msg, c.field)) || !strings.Contains(msg, c.val) || !strings.Contains(msg, "(op-") {
			t.Errorf("%+v: message %q should name %q and %q and end with the op id", c.p, msg, c.field, c.val)
		}
	}
	var list api.VMListResult
	if err := rpc.Call(context.Background(), td.cfg.Socket, api.MethodVMList, nil, &list); err != nil {
		t.Fatal(err)
	}
	if len(list.VMs) != 0 {
		t.Fatalf("failed creates left %d rows", len(list.VMs))
	}
	if entries, _ := os.ReadDir(td.cfg.VMsDir()); len(entries) != 0 {
		t.Fatalf("failed creates left %d directories", len(entries))
	}
}

func TestIPPoolExhaustionAndReuse(t *testing.T) {
	// A /29 has six host addresses; the bridge takes one.
	td := startDaemon(t, t.TempDir(), "10.99.0.1/29")
	td.addImage(t, "img")
	var got []model.VM
	for i := 0; i < 5; i++ {
		vm, err := td.create(api.VMCreateParams{})
		if err != nil {
			t.Fatalf("create %d: %v", i, err)
		}
		got = append(got, vm)
	}
	want := []string{"10.99.0.2", "10.99.0.3", "10.99.0.4", "10.99.0.5", "10.99.0.6"}
	for i, vm := range got {
		if vm.GuestIP != want[i] {
			t.Fatalf("vm %d ip %s, want %s", i, vm.GuestIP, want[i])
		}
	}
	_, err := td.create(api.VMCreateParams{})
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "no free guest IP") {
		t.Fatalf("exhausted pool: %v", err)
	}
	var hint *rpc.ErrorResponse
	if !errors.As(err, &hint) || hint.Hint == "" {
		t.Fatalf("exhaustion error carries no hint: %#v", err)
	}
	if err := rpc.Call(context.Background(), td.cfg.Socket, api.MethodVMDelete, api.VMDeleteParams{VM: got[1].Name}, nil); err != nil {
		t.Fatal(err)
	}
	vm, err := td.create(api.VMCreateParams{})
	if err != nil || vm.GuestIP != "10.99.0.3" {
		t.Fatalf("after delete: %v %s, want reuse of 10.99.0.3", err, vm.GuestIP)
	}
}

func TestRecordsSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	td := startDaemon(t, dir, "172.30.0.1/24")
	td.addImage(t, "img")
	vm, err := td.create(api.VMCreateParams{Name: "keeper", Memory: "1G", VCPU: 2})
	if err != nil {
		t.Fatal(err)
	}
	td.stop()
	td2 := startDaemon(t, dir, "172.30.0.1/24")
	var res api.VMResult
	if err := rpc.Call(context.Background(), td2.cfg.Socket, api.MethodVMShow, api.VMRef{VM: "keeper"}, &res); err != nil {
		t.Fatal(err)
	}
	if res.VM.ID != vm.ID || res.VM.MemoryMiB != 1024 || res.VM.VCPU != 2 || res.VM.GuestIP != vm.GuestIP {
		t.Fatalf("after restart got %+v, want %+v", res.VM, vm)
	}
}

func TestCreateBeginStatusReportsStages(t *testing.T) {
	td := startDaemon(t, t.TempDir(), "172.30.0.1/24")
	td.addImage(t, "img")
	var begin api.BeginResult
	if err := rpc.Call(context.Background(), td.cfg.Socket, api.MethodVMCreateBegin, api.VMCreateParams{Image: "img", NoStart: true, Name: "async"}, &begin); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(begin.OpID, "op-") {
		t.Fatalf("begin op id %q", begin.OpID)
	}
	var st api.OpStatusResult
	for !st.Done {
		if err := rpc.Call(context.Background(), td.cfg.Socket, api.MethodVMCreateStatus,
			api.OpStatusParams{OpID: begin.OpID, After: len(st.Stages), WaitSeconds: 2}, &st); err != nil {
			t.Fatal(err)
		}
	}
	if st.Error != nil || st.VM == nil || st.VM.Name != "async" {
		t.Fatalf("status: %+v", st)
	}
	var names []string
	for _, s := range st.Stages {
		names = append(names, s.Name)
	}
	want := "image_resolved,validated,persisted,disks_ready,created"
	if strings.Join(names, ",") != want {
		t.Fatalf("stages %v, want %s", names, want)
	}
	// Every stage a poller saw is in the operation log under the same op id, in order.
	if logged := td.log.stages(t, begin.OpID); strings.Join(logged, ",") != want {
		t.Fatalf("logged stages %v, want %s", logged, want)
	}
	// A failing async create reports the typed error under the same op id.
	if err := rpc.Call(context.Background(), td.cfg.Socket, api.MethodVMCreateBegin, api.VMCreateParams{Image: "img", NoStart: true, Name: "async"}, &begin); err != nil {
		t.Fatal(err)
	}
	st = api.OpStatusResult{}
	for !st.Done {
		rpc.Call(context.Background(), td.cfg.Socket, api.MethodVMCreateStatus, api.OpStatusParams{OpID: begin.OpID, WaitSeconds: 2}, &st)
	}
	if st.Error == nil || st.Error.Code != rpc.CodeAlreadyExists || st.Error.OpID != begin.OpID {
		t.Fatalf("failed async create status: %+v", st.Error)
	}
}

func TestLowestFreeIP(t *testing.T) {
	p := netip.MustParsePrefix("192.168.7.1/30") // hosts .1 (bridge) and .2
	ip, err := lowestFreeIP(p, nil)
	if err != nil || ip.String() != "192.168.7.2" {
		t.Fatalf("got %v %v", ip, err)
	}
	if _, err := lowestFreeIP(p, []netip.Addr{ip}); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("full /30: %v", err)
	}
	// The bridge need not be the first address.
	p = netip.MustParsePrefix("10.0.0.9/28")
	ip, _ = lowestFreeIP(p, nil)
	if ip.String() != "10.0.0.1" {
		t.Fatalf("got %s", ip)
	}
	if b := broadcast(p); b.String() != "10.0.0.15" {
		t.Fatalf("broadcast %s", b)
	}
}

func TestRenameKeepsNamesUniqueAndMovesDNS(t *testing.T) {
	td := startDaemon(t, t.TempDir(), "172.30.0.1/24")
	td.addImage(t, "img")
	a, err := td.create(api.VMCreateParams{Name: "alpha"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := td.create(api.VMCreateParams{Name: "beta"}); err != nil {
		t.Fatal(err)
	}
	call := func(vm, name string) error {
		return rpc.Call(context.Background(), td.cfg.Socket, api.MethodVMRename, api.VMRenameParams{VM: vm, Name: name}, nil)
	}
	if err := call("alpha", "beta"); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("rename onto a taken name: %v", err)
	}
	if err := call("alpha", "Not_A_Label"); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "Not_A_Label") {
		t.Fatalf("rename to a bad name: %v", err)
	}
	if err := call("alpha", "gamma"); err != nil {
		t.Fatal(err)
	}
	if ip, ok := td.d.dns.Lookup("gamma"); !ok || ip.String() != a.GuestIP {
		t.Fatalf("DNS for the new name: %v %v", ip, ok)
	}
	if _, ok := td.d.dns.Lookup("alpha"); ok {
		t.Fatal("DNS still answers for the old name")
	}
}
