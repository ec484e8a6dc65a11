package qemu

import (
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"

	"banger/internal/agentproto"
	"banger/internal/errdefs"
	"banger/internal/vmm"
)

// plan is what Start decided about a launch beyond the Spec itself.
type plan struct {
	Accel   string // kvm or tcg
	Machine string // microvm or q35
	TSCkHz  int    // passed to the guest under TCG; 0 leaves it out
	QMPPath string
	// Append, if set, is the whole kernel command line, as recorded by a snapshot: a
	// restore must give QEMU the source's.
	Append string
	// RAMFile, if set, backs guest RAM with this file (memory-backend-file), mapped
	// shared (RAMShared: writes reach the file) or privately (copy-on-write: VMs mapping
	// one file share its unchanged pages).
	RAMFile   string
	RAMShared bool
}

// memfdBackend is the RAM backend id of a VM with shared folders: vhost-user devices
// (virtiofsd) map guest memory, so it must be shared memory.
func memfdBackend(spec vmm.Spec, machine string) (id string, args []string) {
	id = ramID(machine)
	return id, []string{"-object", fmt.Sprintf("memory-backend-memfd,id=%s,size=%dM,share=on", id, spec.MemoryMiB)}
}

// nicID is the NIC's device id, which set_link names.
const nicID = "nic0"

// baseBootArgs go before the Spec's own arguments. reboot=t makes a guest reboot a triple
// fault, which -no-reboot turns into QEMU exiting: the guest agent powers off that way.
// panic=-1 reboots (so exits) at once on a kernel panic instead of hanging.
const baseBootArgs = "console=ttyS0 reboot=t panic=-1 loglevel=4"

// MachineArgs are the QEMU arguments that decide how fast a guest can boot: no default
// devices, no reboot (a guest reboot ends QEMU), the machine type and the accelerator with
// its CPU model. buildArgs starts every VM's command line with them, and the floor
// benchmark (test/e2e) boots its bare guest with them, so the two cannot drift apart.
// machine is microvm or q35, accel kvm or tcg.
func MachineArgs(machine, accel string) []string { return machineArgs(machine, accel, "") }

// machineArgs is MachineArgs with the machine's RAM in memory backend object backend
// (defined before it on the command line), when backend is not empty.
func machineArgs(machine, accel, backend string) []string {
	m := machineArg(machine)
	if backend != "" {
		m += ",memory-backend=" + backend
	}
	args := []string{"-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-machine", m}
	if accel == "kvm" {
		args = append(args, "-accel", "kvm", "-cpu", "host")
	} else {
		args = append(args, "-accel", "tcg", "-cpu", "max")
	}
	return args
}

// driveSerial is what virtio-blk accepts as a serial (at most 20 bytes) and what needs no
// escaping in an option list; the guest finds drives by it in /sys/block/*/serial.
var driveSerial = regexp.MustCompile(`^[A-Za-z0-9_-]{1,20}$`)

// buildArgs returns QEMU's arguments (without argv[0]) for spec. The Spec must have passed
// validateSpec: paths contain no commas, so they need no option-list escaping.
func buildArgs(spec vmm.Spec, p plan) []string {
	dev := func(kind string) string {
		if p.Machine == "q35" {
			return kind + "-pci"
		}
		return kind + "-device"
	}

	name := spec.Name
	if name == "" {
		name = spec.ID
	}
	args := []string{"-name", name}
	backend := ""
	if p.RAMFile != "" {
		// The backend's id is the machine's default RAM id, so that its RAM block has the
		// name a VM booted with plain -m migrates under.
		share := "off"
		if p.RAMShared {
			share = "on"
		}
		backend = ramID(p.Machine)
		args = append(args, "-object", fmt.Sprintf("memory-backend-file,id=%s,size=%dM,mem-path=%s,share=%s", backend, spec.MemoryMiB, p.RAMFile, share))
	} else if len(spec.Shares) > 0 {
		var obj []string
		backend, obj = memfdBackend(spec, p.Machine)
		args = append(args, obj...)
	}
	args = append(args, machineArgs(p.Machine, p.Accel, backend)...)
	args = append(args,
		"-m", strconv.Itoa(spec.MemoryMiB)+"M",
		"-smp", strconv.Itoa(spec.VCPU),
		"-kernel", spec.Kernel,
	)
	if spec.Initrd != "" {
		args = append(args, "-initrd", spec.Initrd)
	}
	args = append(args, "-append", bootArgs(spec, p))

	// The serial console goes to stdout, which vmm.Launch drains into the capped VM log
	// (see vmm.ConsolePipeName); QEMU writing the log file itself would let the guest
	// fill the disk. signal=off: a ^C from the guest's output is not QEMU's business.
	args = append(args,
		"-chardev", "stdio,id=console,signal=off",
		"-serial", "chardev:console",
	)

	for i, d := range spec.Drives {
		id := fmt.Sprintf("disk%d", i)
		drive := []string{"if=none", "id=" + id, "file=" + d.Path, "format=raw", "cache=writeback", "aio=threads"}
		if d.ReadOnly {
			// A read-only base is shared by every VM of an image; image locking would only
			// get in the way of that, and nothing writes it while VMs use it.
			drive = append(drive, "readonly=on", "file.locking=off")
		} else {
			drive = append(drive, "discard=unmap", "detect-zeroes=unmap")
		}
		device := dev("virtio-blk") + ",drive=" + id
		if driveSerial.MatchString(d.ID) {
			device += ",serial=" + d.ID
		}
		args = append(args, "-drive", strings.Join(drive, ","), "-device", device)
	}

	if spec.Net != nil {
		nic := dev("virtio-net") + ",id=" + nicID + ",netdev=n0,mac=" + spec.Net.MAC
		if p.Machine == "q35" {
			nic += ",romfile=" // no iPXE option ROM: the kernel is loaded directly
		}
		args = append(args,
			"-netdev", "tap,id=n0,ifname="+spec.Net.Tap+",script=no,downscript=no",
			"-device", nic,
		)
	}

	args = append(args, shareArgs(spec, p.Machine)...)
	args = append(args,
		"-device", dev("virtio-serial"),
		// DetachAgent reads whether the guest holds the port open from this chardev
		// (agentChardevID); the port's id marks a VMM whose port it knows.
		"-chardev", "socket,id="+agentChardevID+",path="+spec.ChannelPath+",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,id="+agentPortID+",name="+agentproto.AgentSerialName,
		"-qmp", "unix:"+p.QMPPath+",server=on,wait=off",
	)
	return args
}

// ramID is the id QEMU gives a machine's RAM when it is not given a memory backend.
func ramID(machine string) string {
	if machine == "q35" {
		return "pc.ram"
	}
	return "microvm.ram"
}

// machineArg is the -machine argument of a machine type.
func machineArg(machine string) string {
	if machine == "q35" {
		return "q35"
	}
	// ACPI stays on: the Debian kernel lacks VIRTIO_MMIO_CMDLINE_DEVICES and finds
	// microvm's virtio-mmio devices only through ACPI.
	return "microvm,acpi=on,isa-serial=on,rtc=on"
}

func bootArgs(spec vmm.Spec, p plan) string {
	if p.Append != "" {
		return p.Append
	}
	parts := []string{baseBootArgs}
	if p.Accel == "tcg" && p.TSCkHz > 0 {
		// Without the TSC rate a microvm guest under TCG can hang calibrating it.
		parts = append(parts, "tsc_early_khz="+strconv.Itoa(p.TSCkHz))
	}
	if s := strings.TrimSpace(spec.BootArgs); s != "" {
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}

// BareCommand returns the QEMU binary and arguments that boot kernel with initrd and
// nothing else: no disks, no NIC, no agent channel, no QMP, the serial console on stdout.
// It uses the machine, accelerator, CPU model and base kernel arguments Start would use
// for a VM, so it measures the floor under banger's boots: how fast this QEMU can hand a
// guest's PID 1 the machine and let it power off.
func (d *Driver) BareCommand(kernel, initrd string, memMiB, vcpu int) (string, []string, error) {
	if err := d.validateConfig(); err != nil {
		return "", nil, err
	}
	bin, err := exec.LookPath(d.cfg.Binary)
	if err != nil {
		return "", nil, errdefs.WithHint(errdefs.New(errdefs.ErrUnavailable, "finding qemu binary %q: %w", d.cfg.Binary, err), installHint)
	}
	accel, _, err := d.accel()
	if err != nil {
		return "", nil, err
	}
	p := plan{Accel: accel, Machine: d.cfg.Machine}
	if accel == "tcg" {
		p.TSCkHz = d.tscKHz()
	}
	args := append(MachineArgs(p.Machine, p.Accel),
		"-m", strconv.Itoa(memMiB)+"M",
		"-smp", strconv.Itoa(vcpu),
		"-kernel", kernel,
		"-initrd", initrd,
		"-append", bootArgs(vmm.Spec{}, p),
		"-chardev", "stdio,id=console,signal=off",
		"-serial", "chardev:console",
	)
	return bin, args, nil
}
