// Package qemu runs banger VMs with qemu-system-x86_64: a microvm (or q35) machine booted
// straight from a kernel and initrd, virtio disks, an optional tap NIC, a virtio-serial port
// for the guest agent and a QMP socket for power control. Without usable KVM it falls back
// to TCG, which is slower but needs nothing from the host.
package qemu

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"banger/internal/errdefs"
	"banger/internal/vmm"
)

// Config configures the driver. Zero values take the defaults.
type Config struct {
	Binary  string // default qemu-system-x86_64, looked up in PATH
	Accel   string // auto (default: kvm when usable, else tcg), kvm or tcg
	Machine string // microvm (default) or q35
	// TSCkHz is the host TSC rate given to TCG guests as tsc_early_khz=; 0 detects it from
	// the kernel log or /proc/cpuinfo.
	TSCkHz int
	Logger *slog.Logger
}

// Driver starts VMs with QEMU.
type Driver struct {
	cfg Config
	log *slog.Logger

	tscOnce sync.Once
	tsc     int
}

// QMPSocketName is the QMP monitor socket in a VM's directory.
const QMPSocketName = "qmp.sock"

// startTimeout bounds how long Start waits for QEMU to answer on QMP when the caller's
// context has no earlier deadline.
const startTimeout = 20 * time.Second

// installHint is how to get QEMU on the Debian/Ubuntu hosts banger targets.
const installHint = "install QEMU: apt-get install qemu-system-x86"

// New returns a driver for cfg.
func New(cfg Config) *Driver {
	if cfg.Binary == "" {
		cfg.Binary = "qemu-system-x86_64"
	}
	if cfg.Accel == "" {
		cfg.Accel = "auto"
	}
	if cfg.Machine == "" {
		cfg.Machine = "microvm"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Driver{cfg: cfg, log: cfg.Logger.With("driver", "qemu")}
}

var _ vmm.Driver = (*Driver)(nil)

// Name returns "qemu".
func (d *Driver) Name() string { return "qemu" }

func (d *Driver) validateConfig() error {
	switch d.cfg.Accel {
	case "auto", "kvm", "tcg":
	default:
		return errdefs.InvalidArgument("qemu.accel", d.cfg.Accel, "must be auto, kvm or tcg")
	}
	switch d.cfg.Machine {
	case "microvm", "q35":
	default:
		return errdefs.InvalidArgument("qemu.machine", d.cfg.Machine, "must be microvm or q35")
	}
	if d.cfg.TSCkHz < 0 {
		return errdefs.InvalidArgument("qemu.tsc_khz", d.cfg.TSCkHz, "must not be negative")
	}
	return nil
}

// accel decides between kvm and tcg from the configuration and the host.
func (d *Driver) accel() (string, vmm.KVMStatus, error) {
	kvm := vmm.ProbeKVM()
	switch d.cfg.Accel {
	case "tcg":
		return "tcg", kvm, nil
	case "kvm":
		if !kvm.Usable {
			return "", kvm, errdefs.WithHint(
				errdefs.New(errdefs.ErrUnavailable, "qemu.accel is kvm but KVM cannot run guests here: %s", kvm.Detail),
				kvm.Fix+", or set qemu.accel to auto or tcg")
		}
		return "kvm", kvm, nil
	}
	if kvm.Usable {
		return "kvm", kvm, nil
	}
	return "tcg", kvm, nil
}

func (d *Driver) tscKHz() int {
	if d.cfg.TSCkHz > 0 {
		return d.cfg.TSCkHz
	}
	d.tscOnce.Do(func() { d.tsc = DetectTSCkHz() })
	return d.tsc
}

// Probe reports whether QEMU can run VMs here and with which acceleration.
func (d *Driver) Probe(ctx context.Context) vmm.Info {
	info := vmm.Info{Name: d.Name()}
	if err := d.validateConfig(); err != nil {
		info.Detail = err.Error()
		info.Fix = "fix the qemu section of the configuration"
		return info
	}
	path, err := exec.LookPath(d.cfg.Binary)
	if err != nil {
		info.Detail = fmt.Sprintf("%s not found: %v", d.cfg.Binary, err)
		info.Fix = installHint
		return info
	}
	accel, kvm, err := d.accel()
	if err != nil {
		info.Detail = fmt.Sprintf("%s found, but %v", path, err)
		info.Fix = errdefs.HintOf(err)
		return info
	}
	info.Accel = accel
	if accel == "tcg" && d.cfg.Machine == "microvm" && d.tscKHz() == 0 {
		info.Detail = fmt.Sprintf("%s found, but the host TSC rate is unknown and a microvm guest under TCG needs it", path)
		info.Fix = "set qemu TSC kHz in the configuration, or use machine q35"
		return info
	}
	info.Available = true
	info.Detail = fmt.Sprintf("%s, machine %s, accel %s (%s)", path, d.cfg.Machine, accel, kvm.Detail)
	if accel == "tcg" && d.cfg.Accel == "auto" {
		// Usable, but slow: tell the user how to get KVM.
		info.Fix = kvm.Fix
	}
	return info
}

// validateSpec adds QEMU's limits to the common checks. Paths go into QEMU option lists,
// where a comma separates options; rejecting them beats escaping them in three syntaxes.
func validateSpec(spec vmm.Spec) error {
	if err := spec.Validate(); err != nil {
		return err
	}
	check := []struct{ field, path string }{
		{"spec.dir", spec.Dir}, {"spec.log_path", spec.LogPath}, {"spec.channel_path", spec.ChannelPath},
	}
	for _, d := range spec.Drives {
		check = append(check, struct{ field, path string }{"spec.drives." + d.ID + ".path", d.Path})
	}
	for _, c := range check {
		if strings.Contains(c.path, ",") {
			return errdefs.InvalidArgument(c.field, c.path, "must not contain a comma")
		}
	}
	if q := filepath.Join(spec.Dir, QMPSocketName); len(q) > vmm.MaxSocketPath {
		return errdefs.InvalidArgument("spec.dir", spec.Dir, "too long for the QMP unix socket inside it")
	}
	if spec.Net != nil && strings.Contains(spec.Net.Tap, ",") {
		return errdefs.InvalidArgument("spec.net.tap", spec.Net.Tap, "must not contain a comma")
	}
	files := []struct{ field, path string }{{"spec.kernel", spec.Kernel}}
	if spec.Initrd != "" {
		files = append(files, struct{ field, path string }{"spec.initrd", spec.Initrd})
	}
	for _, d := range spec.Drives {
		files = append(files, struct{ field, path string }{"spec.drives." + d.ID + ".path", d.Path})
	}
	for _, f := range files {
		if _, err := os.Stat(f.path); err != nil {
			reason := err.Error()
			var pe *fs.PathError
			if errors.As(err, &pe) {
				reason = pe.Err.Error()
			}
			return errdefs.InvalidArgument(f.field, f.path, "file not accessible: "+reason)
		}
	}
	return nil
}

// Start launches QEMU for spec and returns once QEMU reports the guest running.
func (d *Driver) Start(ctx context.Context, spec vmm.Spec) (vmm.Machine, error) {
	if err := d.validateConfig(); err != nil {
		return nil, err
	}
	if err := validateSpec(spec); err != nil {
		return nil, err
	}
	if err := validateShares(spec); err != nil {
		return nil, err
	}
	bin, err := exec.LookPath(d.cfg.Binary)
	if err != nil {
		return nil, errdefs.WithHint(errdefs.New(errdefs.ErrUnavailable, "finding qemu binary %q: %w", d.cfg.Binary, err), installHint)
	}
	accel, _, err := d.accel()
	if err != nil {
		return nil, err
	}
	p := plan{Accel: accel, Machine: d.cfg.Machine, QMPPath: filepath.Join(spec.Dir, QMPSocketName)}
	if accel == "tcg" {
		p.TSCkHz = d.tscKHz()
		if p.TSCkHz == 0 && p.Machine == "microvm" {
			return nil, errdefs.WithHint(
				errdefs.New(errdefs.ErrUnavailable, "starting VM %s: host TSC rate unknown; a microvm guest under TCG hangs without it", spec.ID),
				"set the TSC rate in the qemu configuration, or use machine q35")
		}
	}
	// Stale sockets from an earlier run would make QEMU's bind fail.
	for _, s := range []string{p.QMPPath, spec.ChannelPath} {
		if err := os.Remove(s); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("removing stale socket %s: %w", s, err)
		}
	}

	args := buildArgs(spec, p)
	log := d.log.With("vm", spec.ID)
	logOffset := vmm.FileSize(spec.LogPath)
	began := time.Now()
	// Shared folders' virtiofsd listen before QEMU connects to them.
	shares, err := startShares(spec)
	if err != nil {
		return nil, fmt.Errorf("starting qemu for VM %s: %w", spec.ID, err)
	}
	// Not CommandContext: the VMM must outlive the request (and the daemon) that started it.
	cmd := exec.Command(bin, args...)
	proc, err := vmm.Launch(cmd, spec.LogPath, spec.LogMax, spec.Dir)
	if err != nil {
		shares.kill()
		return nil, fmt.Errorf("starting qemu for VM %s: %w", spec.ID, err)
	}
	if len(shares) > 0 {
		// virtiofsd exits when QEMU's connection closes; this makes sure of it.
		go func() { <-proc.Done(); shares.kill() }()
	}
	if err := spec.Launched(proc); err != nil {
		return nil, fmt.Errorf("starting qemu for VM %s: %w", spec.ID, err)
	}
	m := &Machine{proc: proc, spec: spec, accel: accel, qmpPath: p.QMPPath, log: log}
	if err := m.waitRunning(ctx); err != nil {
		_ = proc.Kill()
		<-proc.Done()
		if len(shares) > 0 {
			shares.kill()
			if tail := vmm.LogTail(shareLog(spec.Dir, spec.Shares[0].Tag), 0, 5); tail != "" {
				err = fmt.Errorf("%w; virtiofsd: %s", err, tail)
			}
		}
		if tail := vmm.LogTail(spec.LogPath, logOffset, 15); tail != "" {
			err = fmt.Errorf("%w; qemu output: %s", err, tail)
		}
		// An unprivileged daemon's qemu says only "could not open /dev/net/tun"; name the
		// cause and carry the fix.
		if spec.Net != nil {
			if terr := vmm.CheckTunAccess(); terr != nil {
				err = fmt.Errorf("%w; %w", err, terr)
			}
		}
		return nil, fmt.Errorf("starting qemu for VM %s: %w", spec.ID, err)
	}
	log.Info("vmm started", "pid", proc.PID(), "accel", accel, "machine", p.Machine,
		"duration_ms", time.Since(began).Milliseconds())
	log.Debug("qemu command line", "args", args)
	return m, nil
}

// Recover re-adopts the QEMU of spec running as pid.
func (d *Driver) Recover(ctx context.Context, spec vmm.Spec, pid int) (vmm.Machine, error) {
	qmpPath := filepath.Join(spec.Dir, QMPSocketName)
	proc, err := vmm.Adopt(pid, spec.PIDStart, vmm.MatchCmdline(d.cfg.Binary, "unix:"+qmpPath+","))
	if err != nil {
		return nil, fmt.Errorf("recovering qemu of VM %s: %w", spec.ID, err)
	}
	accel := "tcg"
	argv := proc.Cmdline()
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] == "-accel" {
			accel = argv[i+1]
		}
	}
	if err := proc.AttachConsole(spec.LogPath, spec.LogMax, spec.Dir); err != nil {
		d.log.Warn("console output of a recovered VM is not logged", "vm", spec.ID, "error", err.Error())
	}
	d.log.Info("vmm recovered", "vm", spec.ID, "pid", pid, "accel", accel)
	return &Machine{proc: proc, spec: spec, accel: accel, qmpPath: qmpPath, log: d.log.With("vm", spec.ID)}, nil
}
