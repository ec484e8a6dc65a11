package qemu

import (
	"bufio"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"banger/internal/errdefs"
	"banger/internal/vmm"
)

// A guest snapshotted before the host ever connected continues in a new QEMU: the line
// its init was blocked writing arrives on the restored VMM's channel, and the source can
// be gone by then.
func TestSnapshotRestoreContinuesTheGuest(t *testing.T) {
	requireBoot(t)
	d := New(Config{Logger: testLogger(t)})
	src := bootSpec(t)
	m := startVM(t, d, src)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	if _, err := vmm.AsSnapshotter(m, "qemu"); err != nil {
		t.Fatal(err)
	}
	mem := filepath.Join(t.TempDir(), "memory")
	if _, err := m.(*Machine).Snapshot(ctx, mem); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("snapshot of a running guest: %v, want conflict", err)
	}
	os.Remove(mem)
	if err := m.(vmm.Pauser).Pause(ctx); err != nil {
		t.Fatal(err)
	}
	info, err := m.(*Machine).Snapshot(ctx, mem)
	if err != nil {
		dumpLog(t, src)
		t.Fatalf("Snapshot: %v", err)
	}
	if info.Driver != "qemu" || info.Accel != m.Accel() || !strings.HasPrefix(info.Machine, "microvm") || !strings.Contains(info.BootArgs, "console=ttyS0") {
		t.Fatalf("restore info %+v", info)
	}
	if _, err := m.(*Machine).Snapshot(ctx, mem); err == nil {
		t.Fatal("a second snapshot overwrote the memory file")
	}
	// The source is gone before the restore.
	_ = m.Kill()
	<-m.Done()

	dst := bootSpec(t)
	dst.Kernel, dst.Initrd = src.Kernel, src.Initrd
	r, err := vmm.AsRestorer(d)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := r.Restore(ctx, dst, info, mem)
	if err != nil {
		dumpLog(t, dst)
		t.Fatalf("Restore: %v", err)
	}
	t.Cleanup(func() { _ = m2.Kill(); <-m2.Done() })
	conn, err := m2.DialAgent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "banger-test-ready ") {
		dumpLog(t, dst)
		t.Fatalf("restored guest's line: %q, %v", line, err)
	}
}

// A snapshot of another VMM or acceleration is a conflict, and a corrupt memory file fails
// the restore without leaving a QEMU behind.
func TestRestoreRefusals(t *testing.T) {
	requireBoot(t)
	d := New(Config{Logger: testLogger(t)})
	spec := bootSpec(t)
	accel, _, err := d.accel()
	if err != nil {
		t.Fatal(err)
	}
	good := vmm.RestoreInfo{Driver: "qemu", Accel: accel, Machine: machineArg("microvm"), BootArgs: "console=ttyS0"}
	mem := filepath.Join(t.TempDir(), "memory")
	if err := os.WriteFile(mem, []byte("not a migration stream"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		edit func(*vmm.RestoreInfo)
	}{
		{"firecracker", func(i *vmm.RestoreInfo) { i.Driver = "firecracker" }},
		{"accel", func(i *vmm.RestoreInfo) { i.Accel = map[string]string{"kvm": "tcg", "tcg": "kvm"}[accel] }},
		{"machine", func(i *vmm.RestoreInfo) { i.Machine = "q35" }},
	} {
		info := good
		tc.edit(&info)
		if _, err := d.Restore(t.Context(), spec, info, mem); !errors.Is(err, errdefs.ErrConflict) {
			t.Errorf("%s: %v, want conflict", tc.name, err)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if _, err := d.Restore(ctx, spec, good, mem); err == nil {
		t.Fatal("restore from a corrupt memory file succeeded")
	} else {
		t.Logf("corrupt restore: %v", err)
	}
	if pid, err := vmm.ReadPIDFile(spec.Dir); err == nil {
		if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid))); err == nil {
			t.Fatalf("failed restore left qemu pid %d", pid)
		}
	}
}

// The shared form: a template QEMU turns the stream into a RAM file plus device state, and
// two VMs restored from it (RAM mapped copy-on-write) both continue the guest.
func TestSharedRestoreContinuesTheGuestTwice(t *testing.T) {
	requireBoot(t)
	d := New(Config{Logger: testLogger(t)})
	src := bootSpec(t)
	m := startVM(t, d, src)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if err := m.(vmm.Pauser).Pause(ctx); err != nil {
		t.Fatal(err)
	}
	mem := filepath.Join(t.TempDir(), "memory")
	info, err := m.(*Machine).Snapshot(ctx, mem)
	if err != nil {
		t.Fatal(err)
	}
	_ = m.Kill()
	<-m.Done()
	tmpl := bootSpec(t)
	tmpl.Kernel, tmpl.Initrd = src.Kernel, src.Initrd
	if err := d.PrepareShared(ctx, tmpl, info, mem); err != nil {
		dumpLog(t, tmpl)
		t.Fatalf("PrepareShared: %v", err)
	}
	ram, dev := SharedFiles(mem)
	if fi, err := os.Stat(ram); err != nil || fi.Size() != int64(src.MemoryMiB)<<20 {
		t.Fatalf("RAM file: %v %v", fi, err)
	}
	if fi, err := os.Stat(dev); err != nil || fi.Size() >= 1<<20 {
		t.Fatalf("device state stream should hold no RAM: %v %v", fi, err)
	}
	for i := range 2 {
		dst := bootSpec(t)
		dst.Kernel, dst.Initrd = src.Kernel, src.Initrd
		m2, err := d.Restore(ctx, dst, info, mem)
		if err != nil {
			dumpLog(t, dst)
			t.Fatalf("Restore %d: %v", i, err)
		}
		t.Cleanup(func() { _ = m2.Kill(); <-m2.Done() })
		if !strings.Contains(strings.Join(m2.(*Machine).proc.Cmdline(), " "), "mem-path="+ram+",share=off") {
			t.Fatalf("restore %d does not map the RAM file privately: %q", i, m2.(*Machine).proc.Cmdline())
		}
		conn, err := m2.DialAgent(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(60 * time.Second))
		line, err := bufio.NewReader(conn).ReadString('\n')
		conn.Close()
		if err != nil || !strings.HasPrefix(line, "banger-test-ready ") {
			dumpLog(t, dst)
			t.Fatalf("restore %d: guest line %q, %v", i, line, err)
		}
	}
}
