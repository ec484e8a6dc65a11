package firecracker

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"banger/internal/errdefs"
	"banger/internal/vmm"
)

// fakeEnv makes Start run this test binary as firecracker; it returns the driver and the
// path of the request record.
func fakeEnv(t *testing.T) (*Driver, string) {
	t.Helper()
	specPath := findAPISpec(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	record := filepath.Join(t.TempDir(), "requests.jsonl")
	t.Setenv(envFake, "1")
	t.Setenv(envSpec, specPath)
	t.Setenv(envRecord, record)
	return New(Config{Binary: self, Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))}), record
}

func fcSpec(t *testing.T) vmm.Spec {
	t.Helper()
	dir, err := os.MkdirTemp("", "bf")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return vmm.Spec{
		ID:        "0123456789abcdef0123456789abcdef",
		Name:      "web",
		Dir:       dir,
		Kernel:    write("vmlinux", append([]byte("\x7fELF"), make([]byte, 60)...)),
		Initrd:    write("initrd", []byte("070701")),
		BootArgs:  "banger.ip=172.30.0.2/24",
		VCPU:      2,
		MemoryMiB: 512,
		Drives: []vmm.Drive{
			{ID: "rootfs", Path: write("base.ext4", nil), ReadOnly: true, Root: true},
			{ID: "work", Path: write("work.ext4", nil)},
		},
		Net:         &vmm.NetIface{Tap: "bgr0123456789ab", MAC: "02:b4:ac:1e:00:02"},
		LogPath:     filepath.Join(dir, "vm.log"),
		CID:         7,
		ChannelPath: filepath.Join(dir, "vsock.sock"),
	}
}

func start(t *testing.T, d *Driver, spec vmm.Spec) vmm.Machine {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	m, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { _ = m.Kill(); <-m.Done() })
	return m
}

func TestStartFollowsTheAPIContract(t *testing.T) {
	d, record := fakeEnv(t)
	spec := fcSpec(t)
	m := start(t, d, spec)

	reqs := readRecords(t, record)
	var seq []string
	bodies := map[string]map[string]any{}
	for _, r := range reqs {
		if r.Status/100 != 2 {
			t.Errorf("%s %s refused: %d %s", r.Method, r.Path, r.Status, r.Fault)
		}
		seq = append(seq, r.Method+" "+r.Path)
		var b map[string]any
		_ = json.Unmarshal(r.Body, &b)
		bodies[r.Path] = b
	}
	want := []string{
		"PUT /logger", "PUT /metrics", "PUT /machine-config", "PUT /boot-source",
		"PUT /drives/rootfs", "PUT /drives/work", "PUT /network-interfaces/eth0", "PUT /vsock", "PUT /actions",
	}
	if !slices.Equal(seq, want) {
		t.Fatalf("requests:\n got %q\nwant %q", seq, want)
	}
	check := func(path, key string, want any) {
		t.Helper()
		if got := bodies[path][key]; got != want {
			t.Errorf("%s %s = %#v, want %#v", path, key, got, want)
		}
	}
	check("/boot-source", "boot_args", "console=ttyS0 reboot=k panic=1 pci=off banger.ip=172.30.0.2/24")
	check("/boot-source", "kernel_image_path", spec.Kernel)
	check("/boot-source", "initrd_path", spec.Initrd)
	check("/machine-config", "vcpu_count", 2.0)
	check("/machine-config", "mem_size_mib", 512.0)
	check("/drives/rootfs", "is_root_device", true)
	check("/drives/rootfs", "is_read_only", true)
	check("/drives/work", "is_read_only", false)
	check("/drives/work", "path_on_host", spec.Drives[1].Path)
	check("/network-interfaces/eth0", "host_dev_name", "bgr0123456789ab")
	check("/network-interfaces/eth0", "guest_mac", "02:b4:ac:1e:00:02")
	check("/vsock", "guest_cid", 7.0)
	check("/vsock", "uds_path", spec.ChannelPath)
	check("/actions", "action_type", "InstanceStart")
	check("/logger", "log_path", filepath.Join(spec.Dir, LogName))
	check("/metrics", "metrics_path", filepath.Join(spec.Dir, MetricsName))

	if pid, err := vmm.ReadPIDFile(spec.Dir); err != nil || pid != m.PID() {
		t.Errorf("pidfile: %d, %v; want %d", pid, err, m.PID())
	}
	if log, _ := os.ReadFile(spec.LogPath); !strings.Contains(string(log), fakeConsole) {
		t.Errorf("stdout not in %s: %q", spec.LogPath, log)
	}
	if st, err := m.(*Machine).Status(t.Context()); err != nil || st != "Running" {
		t.Errorf("Status: %q, %v", st, err)
	}

	// The agent stream: the greeting sent with the OK line survives the handshake.
	conn, err := m.DialAgent(t.Context())
	if err != nil {
		t.Fatalf("DialAgent: %v", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(conn)
	if line, err := br.ReadString('\n'); err != nil || line != fakeGreeting {
		t.Fatalf("greeting: %q, %v", line, err)
	}
	if _, err := io.WriteString(conn, "ping\n"); err != nil {
		t.Fatal(err)
	}
	if line, err := br.ReadString('\n'); err != nil || line != "ping\n" {
		t.Fatalf("echo: %q, %v", line, err)
	}

	if err := m.Shutdown(t.Context()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	last := readRecords(t, record)
	if r := last[len(last)-1]; r.Path != "/actions" || !strings.Contains(string(r.Body), `"SendCtrlAltDel"`) || r.Status != 204 {
		t.Fatalf("Shutdown sent %+v, want PUT /actions SendCtrlAltDel", r)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := vmm.Wait(ctx, m); err != nil {
		t.Fatalf("firecracker did not exit after Ctrl-Alt-Del: %v", err)
	}
	if err := m.Shutdown(t.Context()); !errors.Is(err, vmm.ErrNotRunning) {
		t.Errorf("Shutdown after exit: %v, want ErrNotRunning", err)
	}
}

func TestStartWithoutNetOrInitrd(t *testing.T) {
	d, record := fakeEnv(t)
	spec := fcSpec(t)
	spec.Net = nil
	spec.Initrd = ""
	spec.Drives = spec.Drives[:1]
	spec.MetricsPath = filepath.Join(spec.Dir, "custom-metrics")
	start(t, d, spec)
	for _, r := range readRecords(t, record) {
		if strings.HasPrefix(r.Path, "/network-interfaces") {
			t.Errorf("NIC configured without spec.Net: %+v", r)
		}
		if r.Path == "/boot-source" && strings.Contains(string(r.Body), "initrd_path") {
			t.Errorf("initrd_path sent without an initrd: %s", r.Body)
		}
		if r.Path == "/metrics" && !strings.Contains(string(r.Body), spec.MetricsPath) {
			t.Errorf("metrics body %s, want %s", r.Body, spec.MetricsPath)
		}
	}
	if _, err := os.Stat(spec.MetricsPath); err != nil {
		t.Errorf("metrics file not created: %v", err)
	}
}

func TestStartSurfacesAPIErrors(t *testing.T) {
	d, _ := fakeEnv(t)
	t.Setenv(envFault, "PUT /machine-config")
	spec := fcSpec(t)
	_, err := d.Start(t.Context(), spec)
	var apiErr *APIError
	if !errors.As(err, &apiErr) {
		t.Fatalf("Start: %v, want an *APIError", err)
	}
	if apiErr.Method != "PUT" || apiErr.Path != "/machine-config" || apiErr.Status != 400 || apiErr.FaultMessage != fakeFaultText {
		t.Fatalf("APIError %+v", apiErr)
	}
	if !strings.Contains(err.Error(), "PUT /machine-config") || !strings.Contains(err.Error(), fakeFaultText) {
		t.Fatalf("error does not name the request and fault: %v", err)
	}
	// The half-configured firecracker was killed.
	pid, perr := vmm.ReadPIDFile(spec.Dir)
	if perr != nil {
		t.Fatal(perr)
	}
	if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid))); err == nil {
		t.Errorf("firecracker %d still running after a failed Start", pid)
	}
}

func TestStartFailsWhenFirecrackerExits(t *testing.T) {
	spec := fcSpec(t)
	// /bin/false exits at once: Start must report that, not wait out its timeout.
	d := New(Config{Binary: "/bin/false"})
	began := time.Now()
	_, err := d.Start(t.Context(), spec)
	if err == nil || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("Start: %v, want an exit error", err)
	}
	if time.Since(began) > 3*time.Second {
		t.Errorf("Start took %v to notice the exit", time.Since(began))
	}
}

func TestRecover(t *testing.T) {
	d, _ := fakeEnv(t)
	spec := fcSpec(t)
	first := start(t, d, spec)

	d2 := New(Config{Binary: d.cfg.Binary})
	m, err := d2.Recover(t.Context(), spec, first.PID())
	if err != nil {
		t.Fatalf("Recover: %v", err)
	}
	if st, err := m.(*Machine).Status(t.Context()); err != nil || st != "Running" {
		t.Fatalf("Status of recovered machine: %q, %v", st, err)
	}
	other := spec
	other.Dir = t.TempDir()
	if _, err := d2.Recover(t.Context(), other, first.PID()); !errors.Is(err, vmm.ErrNotRunning) {
		t.Fatalf("Recover with another VM's spec: %v", err)
	}
	sleep := exec.Command("sleep", "30")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sleep.Process.Kill(); _ = sleep.Wait() }()
	if _, err := d2.Recover(t.Context(), spec, sleep.Process.Pid); !errors.Is(err, vmm.ErrNotRunning) {
		t.Fatalf("Recover of a foreign pid: %v", err)
	}

	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	for _, mm := range []vmm.Machine{m, first} {
		select {
		case <-mm.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("Done not closed after Kill")
		}
	}
	if _, err := d2.Recover(t.Context(), spec, first.PID()); !errors.Is(err, vmm.ErrNotRunning) {
		t.Fatalf("Recover of a dead pid: %v", err)
	}
}

func TestValidateSpec(t *testing.T) {
	base := fcSpec(t)
	if err := validateSpec(base); err != nil {
		t.Fatalf("valid spec: %v", err)
	}
	bz := filepath.Join(base.Dir, "bzImage")
	if err := os.WriteFile(bz, []byte("MZ\x00\x00"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := map[string]func(s *vmm.Spec){
		"bzImage kernel":  func(s *vmm.Spec) { s.Kernel = bz },
		"reserved cid":    func(s *vmm.Spec) { s.CID = 2 },
		"too many vcpus":  func(s *vmm.Spec) { s.VCPU = 33 },
		"bad drive id":    func(s *vmm.Spec) { s.Drives[0].ID = "root-fs" },
		"two roots":       func(s *vmm.Spec) { s.Drives[1].Root = true },
		"bad instance id": func(s *vmm.Spec) { s.ID = "a/b" },
		"missing drive":   func(s *vmm.Spec) { s.Drives[1].Path = filepath.Join(s.Dir, "nope") },
	}
	for name, mutate := range cases {
		s := base
		s.Drives = slices.Clone(base.Drives)
		mutate(&s)
		if err := validateSpec(s); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: %v, want invalid argument", name, err)
		}
	}
}

func TestProbe(t *testing.T) {
	info := New(Config{Binary: "/nonexistent/firecracker"}).Probe(t.Context())
	if info.Available || !strings.Contains(info.Fix, "firecracker") {
		t.Errorf("probe without binary: %+v", info)
	}
	self, _ := os.Executable()
	info = New(Config{Binary: self}).Probe(t.Context())
	if kvm := vmm.ProbeKVM(); info.Available != kvm.Usable || (!kvm.Usable && info.Fix != kvm.Fix) {
		t.Errorf("probe %+v disagrees with KVM %+v", info, kvm)
	}
}

// TestClientErrorBodies checks error decoding against a plain server, without the fake.
func TestClientErrorBodies(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/vsock":
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"fault_message":"Invalid CID"}`)
		case "/actions":
			w.WriteHeader(http.StatusInternalServerError)
			io.WriteString(w, "boom")
		default:
			w.WriteHeader(http.StatusOK)
			io.WriteString(w, `{"app_name":"Firecracker","id":"x","state":"Paused","vmm_version":"1"}`)
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	c := NewClient(sock)
	err = c.PutVsock(t.Context(), Vsock{GuestCID: 3, UDSPath: "/x"})
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.FaultMessage != "Invalid CID" || apiErr.Path != "/vsock" {
		t.Fatalf("PutVsock: %v", err)
	}
	if err.Error() != "firecracker PUT /vsock: 400: Invalid CID" {
		t.Errorf("message %q", err.Error())
	}
	err = c.Action(t.Context(), ActionFlushMetrics)
	if !errors.As(err, &apiErr) || apiErr.Status != 500 || apiErr.FaultMessage != "boom" {
		t.Fatalf("Action: %v", err)
	}
	info, err := c.InstanceInfo(t.Context())
	if err != nil || info.State != "Paused" {
		t.Fatalf("InstanceInfo: %+v, %v", info, err)
	}
}

func TestPauseResumeFollowsTheAPIContract(t *testing.T) {
	d, record := fakeEnv(t)
	m := start(t, d, fcSpec(t)).(*Machine)
	ctx := t.Context()
	p, err := vmm.AsPauser(m, d.Name())
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Pause(ctx); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	if st, err := m.Status(ctx); err != nil || st != "Paused" {
		t.Fatalf("after Pause: state %q, %v", st, err)
	}
	if err := p.Resume(ctx); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	if st, err := m.Status(ctx); err != nil || st != "Running" {
		t.Fatalf("after Resume: state %q, %v", st, err)
	}
	var bodies []string
	for _, r := range readRecords(t, record) {
		if r.Path != "/vm" {
			continue
		}
		if r.Method != "PATCH" || r.Status != 204 {
			t.Errorf("%s /vm: %d %s", r.Method, r.Status, r.Fault)
		}
		bodies = append(bodies, string(r.Body))
	}
	if want := []string{`{"state":"Paused"}`, `{"state":"Resumed"}`}; !slices.Equal(bodies, want) {
		t.Fatalf("PATCH /vm bodies %q, want %q", bodies, want)
	}
}

// TestPatchVMRefusedBody checks that the validator refuses a state the API does not know,
// so the contract test above could fail.
func TestPatchVMRefusedBody(t *testing.T) {
	spec, err := loadAPISpec(findAPISpec(t))
	if err != nil {
		t.Fatal(err)
	}
	body := `{"state":"Frozen"}`
	if _, err := spec.validateRequest(newAPIRequest("PATCH", "/vm", body), []byte(body)); err == nil {
		t.Fatal("PATCH /vm with an unknown state passed validation")
	}
}

// Snapshot and restore follow the API contract: create only while paused, then a fresh
// Firecracker loads it with the new tap and vsock socket, re-points the writable drives
// and resumes; every request is validated against the spec by the fake.
func TestSnapshotRestoreFollowsTheAPIContract(t *testing.T) {
	d, record := fakeEnv(t)
	src := fcSpec(t)
	m := start(t, d, src).(*Machine)
	ctx := t.Context()
	memDir := t.TempDir()
	mem := filepath.Join(memDir, "memory")
	if _, err := m.Snapshot(ctx, mem); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("snapshot of a running VM: %v, want conflict", err)
	}
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	info, err := m.Snapshot(ctx, mem)
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	if info.Driver != "firecracker" || info.Accel != "kvm" {
		t.Fatalf("restore info %+v", info)
	}
	if _, err := m.Snapshot(ctx, mem); err == nil {
		t.Fatal("a second snapshot overwrote the files")
	}

	dst := fcSpec(t)
	dst.ID = "fedcba9876543210fedcba9876543210"
	dst.Net.Tap = "bgrfedcba987654"
	if _, err := d.Restore(ctx, dst, vmm.RestoreInfo{Driver: "qemu"}, mem); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("restoring a qemu snapshot: %v, want conflict", err)
	}
	before := len(readRecords(t, record))
	r, err := d.Restore(ctx, dst, info, mem)
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	t.Cleanup(func() { _ = r.Kill(); <-r.Done() })
	if st, err := r.(*Machine).Status(ctx); err != nil || st != "Running" {
		t.Fatalf("restored state %q, %v", st, err)
	}
	var seq []string
	bodies := map[string]map[string]any{}
	for _, rq := range readRecords(t, record)[before:] {
		if rq.Method == "GET" {
			continue // the state queries of this test
		}
		if rq.Status/100 != 2 {
			t.Errorf("%s %s refused: %d %s", rq.Method, rq.Path, rq.Status, rq.Fault)
		}
		seq = append(seq, rq.Method+" "+rq.Path)
		var b map[string]any
		_ = json.Unmarshal(rq.Body, &b)
		bodies[rq.Method+" "+rq.Path] = b
	}
	if want := []string{"PUT /snapshot/load", "PATCH /drives/work", "PATCH /vm"}; !slices.Equal(seq, want) {
		t.Fatalf("restore requests:\n got %q\nwant %q", seq, want)
	}
	load := bodies["PUT /snapshot/load"]
	if load["snapshot_path"] != filepath.Join(memDir, StateFileName) {
		t.Errorf("snapshot_path %v", load["snapshot_path"])
	}
	if mb, _ := load["mem_backend"].(map[string]any); mb["backend_type"] != "File" || mb["backend_path"] != mem {
		t.Errorf("mem_backend %v", load["mem_backend"])
	}
	if no, _ := load["network_overrides"].([]any); len(no) != 1 || no[0].(map[string]any)["host_dev_name"] != dst.Net.Tap {
		t.Errorf("network_overrides %v", load["network_overrides"])
	}
	if vo, _ := load["vsock_override"].(map[string]any); vo["uds_path"] != dst.ChannelPath {
		t.Errorf("vsock_override %v", load["vsock_override"])
	}
	if dr := bodies["PATCH /drives/work"]; dr["path_on_host"] != dst.Drives[1].Path {
		t.Errorf("drive not re-pointed: %v", dr)
	}
	// The restored guest's agent answers on the new vsock socket.
	conn, err := r.DialAgent(ctx)
	if err != nil {
		t.Fatalf("DialAgent after restore: %v", err)
	}
	conn.Close()
}

// A load that Firecracker refuses (a corrupt memory file) fails the restore and leaves no
// process behind.
func TestRestoreFailsCleanly(t *testing.T) {
	d, record := fakeEnv(t)
	dir := t.TempDir()
	mem := filepath.Join(dir, "memory")
	os.WriteFile(mem, []byte("garbage"), 0o600)
	os.WriteFile(filepath.Join(dir, StateFileName), []byte("fake snapshot_path\n"), 0o600)
	spec := fcSpec(t)
	_, err := d.Restore(t.Context(), spec, vmm.RestoreInfo{Driver: "firecracker", Accel: "kvm"}, mem)
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Path != "/snapshot/load" || apiErr.Status != 400 {
		t.Fatalf("corrupt restore: %v", err)
	}
	if pid, err := vmm.ReadPIDFile(spec.Dir); err == nil {
		if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid))); err == nil {
			t.Fatalf("failed restore left firecracker pid %d", pid)
		}
	}
	recs := readRecords(t, record)
	if len(recs) != 1 || recs[0].Path != "/snapshot/load" {
		t.Fatalf("requests after a failed load: %+v", recs)
	}
	if _, err := d.Restore(t.Context(), spec, vmm.RestoreInfo{Driver: "firecracker"}, filepath.Join(dir, "missing")); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("missing memory file: %v", err)
	}
}

// The request bodies the driver sends for snapshots are ones the spec accepts, and a
// misspelt field is refused, so the checks above can fail.
func TestSnapshotBodiesAgainstSpec(t *testing.T) {
	spec, err := loadAPISpec(findAPISpec(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		method, path string
		body         any
		ok           bool
	}{
		{"PUT", "/snapshot/create", SnapshotCreate{SnapshotType: "Full", SnapshotPath: "/s", MemFilePath: "/m"}, true},
		{"PUT", "/snapshot/load", SnapshotLoad{SnapshotPath: "/s", MemBackend: &MemoryBackend{BackendType: "File", BackendPath: "/m"},
			NetworkOverrides: []NetworkOverride{{IfaceID: "eth0", HostDevName: "tap1"}}, VsockOverride: &VsockOverride{UDSPath: "/v"}}, true},
		{"PATCH", "/drives/work", PartialDrive{DriveID: "work", PathOnHost: "/w"}, true},
		{"PUT", "/snapshot/load", map[string]any{"snapshot_path": "/s", "mem_backend": map[string]any{"backend_type": "Disk", "backend_path": "/m"}}, false},
		{"PUT", "/snapshot/create", map[string]any{"snapshot_path": "/s", "mem_file": "/m"}, false},
	} {
		b, _ := json.Marshal(c.body)
		_, err := spec.validateRequest(newAPIRequest(c.method, c.path, string(b)), b)
		if (err == nil) != c.ok {
			t.Errorf("%s %s %s: %v, want ok=%v", c.method, c.path, b, err, c.ok)
		}
	}
}
