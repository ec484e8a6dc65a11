package qemu

import (
	"bufio"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"banger/internal/vmm"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewJSONHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// bootSpec is a VM with no disks and no NIC: the test initrd only needs the agent channel.
func bootSpec(t *testing.T) vmm.Spec {
	// A short directory: unix socket paths are limited to 107 bytes.
	dir, err := os.MkdirTemp("", "bq")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return vmm.Spec{
		ID:          "test" + filepath.Base(dir)[2:],
		Name:        "boot-test",
		Dir:         dir,
		Kernel:      testKernel(t),
		Initrd:      buildInitrd(t, dir),
		VCPU:        1,
		MemoryMiB:   256,
		LogPath:     filepath.Join(dir, "vm.log"),
		ChannelPath: filepath.Join(dir, "agent.sock"),
	}
}

func startVM(t *testing.T, d *Driver, spec vmm.Spec) vmm.Machine {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	m, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		_ = m.Kill()
		<-m.Done()
	})
	return m
}

func dumpLog(t *testing.T, spec vmm.Spec) {
	b, _ := os.ReadFile(spec.LogPath)
	t.Logf("VM log:\n%s", b)
}

func TestBootAgentLineAndPowerOff(t *testing.T) {
	requireBoot(t)
	for _, machine := range []string{"microvm", "q35"} {
		t.Run(machine, func(t *testing.T) { testBoot(t, machine) })
	}
}

func testBoot(t *testing.T, machine string) {
	spec := bootSpec(t)
	d := New(Config{Machine: machine, Logger: testLogger(t)})
	if info := d.Probe(t.Context()); !info.Available {
		t.Fatalf("probe: %+v", info)
	} else {
		t.Logf("probe: %+v", info)
	}

	began := time.Now()
	m := startVM(t, d, spec)
	started := time.Since(began)
	if pid, err := vmm.ReadPIDFile(spec.Dir); err != nil || pid != m.PID() {
		t.Fatalf("pidfile: %d, %v; want %d", pid, err, m.PID())
	}

	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	conn, err := m.DialAgent(ctx)
	if err != nil {
		t.Fatalf("DialAgent: %v", err)
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		dumpLog(t, spec)
		t.Fatalf("reading agent line: %v", err)
	}
	arrived := time.Since(began)
	if !strings.HasPrefix(line, "banger-test-ready ") {
		t.Fatalf("agent line %q", line)
	}
	t.Logf("BOOT MEASUREMENT: machine=%s accel=%s Start returned after %v, guest line after %v (guest uptime %s)",
		machine, m.Accel(), started.Round(time.Millisecond), arrived.Round(time.Millisecond),
		strings.TrimSpace(strings.TrimPrefix(line, "banger-test-ready ")))

	// The guest reboots; -no-reboot turns that into QEMU exiting by itself.
	if err := vmm.Wait(ctx, m); err != nil {
		dumpLog(t, spec)
		t.Fatalf("VMM did not exit after the guest rebooted: %v", err)
	}
	t.Logf("QEMU exited after %v", time.Since(began).Round(time.Millisecond))
	if arrived > 4*time.Second {
		dumpLog(t, spec) // slow boots: show where the time went
	}
	if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(m.PID()))); err == nil {
		t.Errorf("process %d still exists after Done", m.PID())
	}
}

func TestRecoverAndKill(t *testing.T) {
	requireBoot(t)
	spec := bootSpec(t)
	first := startVM(t, New(Config{Logger: testLogger(t)}), spec)

	// A new driver, as after a daemon restart. The guest blocks writing its line because
	// nobody connects, so the VM stays up.
	d := New(Config{Logger: testLogger(t)})
	m, err := d.Recover(t.Context(), spec, first.PID())
	if err != nil {
		t.Fatalf("Recover: %v", err)
	}
	if m.PID() != first.PID() || m.Accel() != first.Accel() {
		t.Fatalf("recovered pid %d accel %s, want %d %s", m.PID(), m.Accel(), first.PID(), first.Accel())
	}
	st, err := m.(*Machine).Status(t.Context())
	if err != nil || st != "running" {
		t.Fatalf("Status: %q, %v", st, err)
	}
	if err := m.Shutdown(t.Context()); err != nil {
		t.Fatalf("Shutdown (system_powerdown): %v", err)
	}

	// Another VM's spec must not adopt this process.
	other := spec
	other.Dir = t.TempDir()
	if _, err := d.Recover(t.Context(), other, first.PID()); !errors.Is(err, vmm.ErrNotRunning) {
		t.Fatalf("Recover with another VM's spec: %v, want ErrNotRunning", err)
	}

	if err := m.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	for name, mm := range map[string]vmm.Machine{"recovered": m, "original": first} {
		select {
		case <-mm.Done():
		case <-time.After(10 * time.Second):
			t.Fatalf("%s machine: Done not closed after Kill", name)
		}
	}
	if err := m.Kill(); err != nil {
		t.Errorf("Kill after exit: %v", err)
	}
	if _, err := d.Recover(t.Context(), spec, first.PID()); !errors.Is(err, vmm.ErrNotRunning) {
		t.Fatalf("Recover of a dead pid: %v, want ErrNotRunning", err)
	}

	// A foreign process: not qemu at all.
	sleep := exec.Command("sleep", "30")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sleep.Process.Kill(); _ = sleep.Wait() }()
	if _, err := d.Recover(t.Context(), spec, sleep.Process.Pid); !errors.Is(err, vmm.ErrNotRunning) {
		t.Fatalf("Recover of a foreign pid: %v, want ErrNotRunning", err)
	}
}

func TestStartFailureReportsQemuOutput(t *testing.T) {
	requireBoot(t)
	dir := t.TempDir()
	spec := vmm.Spec{
		ID: "badkernel", Dir: dir, Kernel: filepath.Join(dir, "notakernel"),
		VCPU: 1, MemoryMiB: 128, LogPath: filepath.Join(dir, "vm.log"), ChannelPath: filepath.Join(dir, "a.sock"),
	}
	if err := os.WriteFile(spec.Kernel, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := New(Config{Logger: testLogger(t)}).Start(t.Context(), spec)
	if err == nil || !strings.Contains(err.Error(), "qemu output") {
		t.Fatalf("Start with a bad kernel: %v, want an error quoting qemu's output", err)
	}
	t.Logf("error: %v", err)
}
