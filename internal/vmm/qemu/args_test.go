package qemu

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"banger/internal/errdefs"
	"banger/internal/vmm"
)

func testSpec(dir string) vmm.Spec {
	return vmm.Spec{
		ID:        "0123456789abcdef",
		Name:      "web",
		Dir:       dir,
		Kernel:    filepath.Join(dir, "vmlinux"),
		Initrd:    filepath.Join(dir, "initrd"),
		BootArgs:  "banger.ip=172.30.0.2/24",
		VCPU:      2,
		MemoryMiB: 512,
		Drives: []vmm.Drive{
			{ID: "rootfs", Path: "/images/base.ext4", ReadOnly: true, Root: true},
			{ID: "work", Path: filepath.Join(dir, "work.ext4")},
		},
		Net:         &vmm.NetIface{Tap: "bgr0123456789ab", MAC: "02:b4:ac:1e:00:02"},
		LogPath:     filepath.Join(dir, "vm.log"),
		ChannelPath: filepath.Join(dir, "agent.sock"),
	}
}

// pairs returns the values following each occurrence of flag.
func pairs(args []string, flag string) []string {
	var out []string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			out = append(out, args[i+1])
		}
	}
	return out
}

func TestBuildArgsMicrovmTCG(t *testing.T) {
	spec := testSpec("/vms/web")
	args := buildArgs(spec, plan{Accel: "tcg", Machine: "microvm", TSCkHz: 2596098, QMPPath: "/vms/web/qmp.sock"})
	joined := strings.Join(args, " ")

	for _, flag := range []string{"-nodefaults", "-no-user-config", "-nographic", "-no-reboot"} {
		if !slices.Contains(args, flag) {
			t.Errorf("missing %s in %q", flag, joined)
		}
	}
	want := map[string][]string{
		"-machine": {"microvm,acpi=on,isa-serial=on,rtc=on"},
		"-accel":   {"tcg"},
		"-cpu":     {"max"},
		"-m":       {"512M"},
		"-smp":     {"2"},
		"-kernel":  {spec.Kernel},
		"-initrd":  {spec.Initrd},
		"-append":  {"console=ttyS0 reboot=t panic=-1 loglevel=4 tsc_early_khz=2596098 banger.ip=172.30.0.2/24"},
		"-drive": {
			"if=none,id=disk0,file=/images/base.ext4,format=raw,cache=writeback,aio=threads,readonly=on,file.locking=off",
			"if=none,id=disk1,file=/vms/web/work.ext4,format=raw,cache=writeback,aio=threads,discard=unmap,detect-zeroes=unmap",
		},
		"-netdev": {"tap,id=n0,ifname=bgr0123456789ab,script=no,downscript=no"},
		"-device": {
			"virtio-blk-device,drive=disk0,serial=rootfs",
			"virtio-blk-device,drive=disk1,serial=work",
			"virtio-net-device,id=nic0,netdev=n0,mac=02:b4:ac:1e:00:02",
			"virtio-serial-device",
			"virtserialport,chardev=agent,id=agentport,name=banger.agent",
		},
		"-chardev": {
			"stdio,id=console,signal=off",
			"socket,id=agent,path=/vms/web/agent.sock,server=on,wait=off",
		},
		"-serial": {"chardev:console"},
		"-qmp":    {"unix:/vms/web/qmp.sock,server=on,wait=off"},
	}
	for flag, vals := range want {
		if got := pairs(args, flag); !slices.Equal(got, vals) {
			t.Errorf("%s: got %q, want %q", flag, got, vals)
		}
	}
	for _, n := range pairs(args, "-netdev") {
		if !strings.HasPrefix(n, "tap,") {
			t.Errorf("non-tap netdev %q", n)
		}
	}
}

func TestBuildArgsQ35KVMWithoutNet(t *testing.T) {
	spec := testSpec("/vms/db")
	spec.Net = nil
	spec.Drives = spec.Drives[:1]
	args := buildArgs(spec, plan{Accel: "kvm", Machine: "q35", TSCkHz: 2596098, QMPPath: "/vms/db/qmp.sock"})

	if got := pairs(args, "-accel"); !slices.Equal(got, []string{"kvm"}) {
		t.Errorf("-accel %q", got)
	}
	if got := pairs(args, "-cpu"); !slices.Equal(got, []string{"host"}) {
		t.Errorf("-cpu %q", got)
	}
	if got := pairs(args, "-machine"); !slices.Equal(got, []string{"q35"}) {
		t.Errorf("-machine %q", got)
	}
	// tsc_early_khz is only for TCG.
	if got := pairs(args, "-append")[0]; strings.Contains(got, "tsc_early_khz") {
		t.Errorf("-append %q has tsc_early_khz under kvm", got)
	}
	if slices.Contains(args, "-netdev") {
		t.Errorf("NIC without spec.Net: %q", args)
	}
	devs := pairs(args, "-device")
	for _, want := range []string{"virtio-blk-pci,drive=disk0,serial=rootfs", "virtio-serial-pci"} {
		if !slices.Contains(devs, want) {
			t.Errorf("missing -device %s in %q", want, devs)
		}
	}

	spec.Net = &vmm.NetIface{Tap: "bgrx", MAC: "02:00:00:00:00:01"}
	devs = pairs(buildArgs(spec, plan{Accel: "kvm", Machine: "q35", QMPPath: "/q"}), "-device")
	if !slices.Contains(devs, "virtio-net-pci,id=nic0,netdev=n0,mac=02:00:00:00:00:01,romfile=") {
		t.Errorf("q35 NIC without romfile=: %q", devs)
	}
}

func TestValidateSpec(t *testing.T) {
	dir := t.TempDir()
	spec := testSpec(dir)
	spec.Drives = []vmm.Drive{{ID: "work", Path: filepath.Join(dir, "work.ext4")}}
	for _, f := range []string{spec.Kernel, spec.Initrd, spec.Drives[0].Path} {
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := validateSpec(spec); err != nil {
		t.Fatalf("valid spec rejected: %v", err)
	}
	cases := map[string]func(s *vmm.Spec){
		"comma in path":   func(s *vmm.Spec) { s.LogPath = filepath.Join(dir, "a,b.log") },
		"missing kernel":  func(s *vmm.Spec) { s.Kernel = filepath.Join(dir, "nope") },
		"zero vcpu":       func(s *vmm.Spec) { s.VCPU = 0 },
		"bad mac":         func(s *vmm.Spec) { s.Net.MAC = "zz" },
		"relative drive":  func(s *vmm.Spec) { s.Drives[0].Path = "work.ext4" },
		"duplicate drive": func(s *vmm.Spec) { s.Drives = append(s.Drives, s.Drives[0]) },
	}
	for name, mutate := range cases {
		s := spec
		s.Net = &vmm.NetIface{Tap: spec.Net.Tap, MAC: spec.Net.MAC}
		s.Drives = slices.Clone(spec.Drives)
		mutate(&s)
		if err := validateSpec(s); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: got %v, want invalid argument", name, err)
		}
	}
}

func TestConfigValidation(t *testing.T) {
	d := New(Config{Accel: "hvf"})
	_, err := d.Start(t.Context(), testSpec(t.TempDir()))
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "qemu.accel") {
		t.Fatalf("bad accel: %v", err)
	}
	if info := d.Probe(t.Context()); info.Available {
		t.Fatalf("probe with bad accel says available: %+v", info)
	}
	info := New(Config{Binary: "/nonexistent/qemu"}).Probe(t.Context())
	if info.Available || !strings.Contains(info.Fix, "apt-get install qemu-system-x86") {
		t.Fatalf("probe without binary: %+v", info)
	}
}

func TestTSCParsing(t *testing.T) {
	log := []byte("[    0.000057] tsc: Detected 2596.098 MHz processor\n[    1.2] tsc: Refined TSC clocksource calibration: 2596.101 MHz\n")
	if got := tscFromKernelLog(log); got != 2596101 {
		t.Errorf("refined: got %d", got)
	}
	if got := tscFromKernelLog(log[:60]); got != 2596098 {
		t.Errorf("detected: got %d", got)
	}
	if got := tscFromCPUInfo([]byte("processor\t: 0\ncpu MHz\t\t: 2445.4\n")); got != 2445400 {
		t.Errorf("cpuinfo: got %d", got)
	}
	if got := tscFromCPUInfo([]byte("processor\t: 0\n")); got != 0 {
		t.Errorf("no cpu MHz: got %d", got)
	}
	if DetectTSCkHz() <= 0 {
		t.Errorf("no TSC rate detected on this host")
	}
}

// TestBareCommandSharesMachineArgs: the floor benchmark's QEMU must run the machine,
// accelerator, CPU model and base kernel arguments a VM gets, or its ratio means nothing.
func TestBareCommandSharesMachineArgs(t *testing.T) {
	dir := t.TempDir()
	sh := filepath.Join(dir, "qemu-system-x86_64")
	if err := os.WriteFile(sh, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	d := New(Config{Binary: sh, Accel: "tcg", TSCkHz: 2596098})
	bin, args, err := d.BareCommand("/k/vmlinux", "/k/init.cpio", 256, 1)
	if err != nil {
		t.Fatal(err)
	}
	if bin != sh {
		t.Errorf("binary %q, want %q", bin, sh)
	}
	vm := buildArgs(testSpec("/vms/web"), plan{Accel: "tcg", Machine: "microvm", TSCkHz: 2596098, QMPPath: "/q"})
	ma := MachineArgs("microvm", "tcg")
	if !slices.Equal(args[:len(ma)], ma) {
		t.Errorf("bare args %q do not start with the machine args %q", args, ma)
	}
	if i := slices.Index(vm, ma[0]); i < 0 || !slices.Equal(vm[i:i+len(ma)], ma) {
		t.Errorf("VM args %q do not hold the machine args %q", vm, ma)
	}
	for _, flag := range []string{"-machine", "-accel", "-cpu"} {
		if got, want := pairs(args, flag), pairs(vm, flag); !slices.Equal(got, want) {
			t.Errorf("%s: bare %q, VM %q", flag, got, want)
		}
	}
	bare, full := pairs(args, "-append"), pairs(vm, "-append")
	if len(bare) != 1 || len(full) != 1 || !strings.HasPrefix(full[0], bare[0]) {
		t.Errorf("bare kernel args %q are not the prefix of a VM's %q", bare, full)
	}
	for _, absent := range []string{"-drive", "-netdev", "-qmp"} {
		if slices.Contains(args, absent) {
			t.Errorf("bare args hold %s: %q", absent, args)
		}
	}
}
