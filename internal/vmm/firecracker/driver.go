// Package firecracker runs banger VMs with Firecracker. It starts the firecracker process,
// configures the microVM through Firecracker's REST API on a unix socket (a small typed
// client, checked against firecracker.yaml by the contract tests) and reaches the guest
// agent over hybrid vsock. Firecracker needs usable KVM and a vmlinux ELF kernel.
package firecracker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"time"

	"banger/internal/errdefs"
	"banger/internal/vmm"
)

// Config configures the driver. Zero values take the defaults.
type Config struct {
	Binary string // default firecracker, looked up in PATH
	Logger *slog.Logger
}

// Driver starts VMs with Firecracker.
type Driver struct {
	cfg Config
	log *slog.Logger
}

// Files Firecracker uses in a VM's directory.
const (
	APISocketName = "firecracker.sock"
	// LogName is Firecracker's own log. It is not Spec.LogPath: that file gets the serial
	// console through stdout, and Firecracker does not open its log in append mode.
	LogName     = "firecracker.log"
	MetricsName = "metrics.json"
)

const (
	// bootArgsBase: reboot=k makes a guest reboot exit Firecracker; pci=off skips probing
	// a PCI bus Firecracker does not have.
	bootArgsBase = "console=ttyS0 reboot=k panic=1 pci=off"
	startTimeout = 10 * time.Second
	installHint  = "install Firecracker: download a release from https://github.com/firecracker-microvm/firecracker/releases and put the firecracker binary in PATH"
	maxVCPU      = 32
)

// Firecracker accepts ids of letters, digits, '-' and '_' (instance ids) and of letters,
// digits and '_' (drive ids), at most 64 characters.
var (
	instanceID = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)
	deviceID   = regexp.MustCompile(`^[A-Za-z0-9_]{1,64}$`)
)

// New returns a driver for cfg.
func New(cfg Config) *Driver {
	if cfg.Binary == "" {
		cfg.Binary = "firecracker"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Driver{cfg: cfg, log: cfg.Logger.With("driver", "firecracker")}
}

var _ vmm.Driver = (*Driver)(nil)

// Name returns "firecracker".
func (d *Driver) Name() string { return "firecracker" }

// Probe reports whether Firecracker can run VMs here: it needs its binary and usable KVM.
func (d *Driver) Probe(ctx context.Context) vmm.Info {
	info := vmm.Info{Name: d.Name(), Accel: "kvm"}
	path, err := exec.LookPath(d.cfg.Binary)
	if err != nil {
		info.Detail = fmt.Sprintf("%s not found: %v", d.cfg.Binary, err)
		info.Fix = installHint
		return info
	}
	kvm := vmm.ProbeKVM()
	if !kvm.Usable {
		info.Detail = fmt.Sprintf("%s found, but Firecracker needs KVM: %s", path, kvm.Detail)
		info.Fix = kvm.Fix
		return info
	}
	info.Available = true
	info.Detail = fmt.Sprintf("%s (%s)", path, kvm.Detail)
	return info
}

func validateSpec(spec vmm.Spec) error {
	if err := spec.Validate(); err != nil {
		return err
	}
	if !instanceID.MatchString(spec.ID) {
		return errdefs.InvalidArgument("spec.id", spec.ID, "firecracker needs letters, digits and '-', at most 64")
	}
	if spec.VCPU > maxVCPU {
		return errdefs.InvalidArgument("spec.vcpu", spec.VCPU, fmt.Sprintf("firecracker supports at most %d", maxVCPU))
	}
	if spec.CID < 3 {
		return errdefs.InvalidArgument("spec.cid", spec.CID, "vsock guest CIDs start at 3")
	}
	if p := filepath.Join(spec.Dir, APISocketName); len(p) > vmm.MaxSocketPath {
		return errdefs.InvalidArgument("spec.dir", spec.Dir, "too long for the API unix socket inside it")
	}
	roots := 0
	for _, dr := range spec.Drives {
		if !deviceID.MatchString(dr.ID) {
			return errdefs.InvalidArgument("spec.drives.id", dr.ID, "firecracker needs letters, digits and '_', at most 64")
		}
		if dr.Root {
			roots++
		}
	}
	if roots > 1 {
		return errdefs.InvalidArgument("spec.drives", roots, "at most one drive can be the root device")
	}
	if err := checkELF(spec.Kernel); err != nil {
		return err
	}
	files := []struct{ field, path string }{}
	if spec.Initrd != "" {
		files = append(files, struct{ field, path string }{"spec.initrd", spec.Initrd})
	}
	for _, dr := range spec.Drives {
		files = append(files, struct{ field, path string }{"spec.drives." + dr.ID + ".path", dr.Path})
	}
	for _, f := range files {
		if _, err := os.Stat(f.path); err != nil {
			return errdefs.InvalidArgument(f.field, f.path, "file not accessible: "+reason(err))
		}
	}
	return nil
}

// checkELF rejects a bzImage up front: Firecracker on x86 boots only a vmlinux ELF, and
// its own error for anything else is obscure.
func checkELF(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return errdefs.InvalidArgument("spec.kernel", path, "file not accessible: "+reason(err))
	}
	defer f.Close()
	magic := make([]byte, 4)
	if _, err := f.Read(magic); err != nil || !bytes.Equal(magic, []byte("\x7fELF")) {
		return errdefs.InvalidArgument("spec.kernel", path, "firecracker needs an uncompressed vmlinux ELF kernel")
	}
	return nil
}

func reason(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// createFile makes path exist without truncating it: Firecracker opens its log and
// metrics files but will not create them.
func createFile(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("creating %s: %w", path, err)
	}
	return f.Close()
}

// Start launches Firecracker for spec, configures the microVM and starts the guest.
func (d *Driver) Start(ctx context.Context, spec vmm.Spec) (vmm.Machine, error) {
	if err := validateSpec(spec); err != nil {
		return nil, err
	}
	if len(spec.Shares) > 0 {
		return nil, errdefs.New(errdefs.ErrConflict, "firecracker "+vmm.ErrNoSharesMessage)
	}
	bin, err := exec.LookPath(d.cfg.Binary)
	if err != nil {
		return nil, errdefs.WithHint(errdefs.New(errdefs.ErrUnavailable, "finding firecracker binary %q: %w", d.cfg.Binary, err), installHint)
	}
	apiSock := filepath.Join(spec.Dir, APISocketName)
	// Firecracker refuses to bind a socket path that exists.
	for _, s := range []string{apiSock, spec.ChannelPath} {
		if err := os.Remove(s); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("removing stale socket %s: %w", s, err)
		}
	}
	logPath := filepath.Join(spec.Dir, LogName)
	metricsPath := spec.MetricsPath
	if metricsPath == "" {
		metricsPath = filepath.Join(spec.Dir, MetricsName)
	}
	for _, p := range []string{logPath, metricsPath} {
		if err := createFile(p); err != nil {
			return nil, fmt.Errorf("preparing VM %s: %w", spec.ID, err)
		}
	}

	return d.launch(spec, bin, apiSock, "starting firecracker for", "vmm started", func(m *Machine) error {
		return m.configure(ctx, spec, logPath, metricsPath)
	})
}

// launch starts Firecracker for spec, records it (spec.Launched) and runs setup over its
// API (a fresh boot's configuration or a snapshot load); if setup fails the process is
// killed and the error carries the end of its output. what names the work in errors,
// done is the log record of success.
func (d *Driver) launch(spec vmm.Spec, bin, apiSock, what, done string, setup func(*Machine) error) (*Machine, error) {
	log := d.log.With("vm", spec.ID)
	logOffset := vmm.FileSize(spec.LogPath)
	began := time.Now()
	// Not CommandContext: the VMM must outlive the request (and the daemon) that started it.
	cmd := exec.Command(bin, "--api-sock", apiSock, "--id", spec.ID)
	proc, err := vmm.Launch(cmd, spec.LogPath, spec.LogMax, spec.Dir)
	if err != nil {
		return nil, fmt.Errorf("%s VM %s: %w", what, spec.ID, err)
	}
	if err := spec.Launched(proc); err != nil {
		return nil, fmt.Errorf("%s VM %s: %w", what, spec.ID, err)
	}
	m := &Machine{proc: proc, spec: spec, api: NewClient(apiSock), log: log}
	if err := setup(m); err != nil {
		_ = proc.Kill()
		<-proc.Done()
		if tail := vmm.LogTail(spec.LogPath, logOffset, 15); tail != "" {
			err = fmt.Errorf("%w; firecracker output: %s", err, tail)
		}
		return nil, fmt.Errorf("%s VM %s: %w", what, spec.ID, err)
	}
	log.Info(done, "pid", proc.PID(), "accel", "kvm", "duration_ms", time.Since(began).Milliseconds())
	return m, nil
}

// Recover re-adopts the Firecracker of spec running as pid.
func (d *Driver) Recover(ctx context.Context, spec vmm.Spec, pid int) (vmm.Machine, error) {
	apiSock := filepath.Join(spec.Dir, APISocketName)
	proc, err := vmm.Adopt(pid, spec.PIDStart, vmm.MatchCmdline(d.cfg.Binary, apiSock))
	if err != nil {
		return nil, fmt.Errorf("recovering firecracker of VM %s: %w", spec.ID, err)
	}
	if err := proc.AttachConsole(spec.LogPath, spec.LogMax, spec.Dir); err != nil {
		d.log.Warn("console output of a recovered VM is not logged", "vm", spec.ID, "error", err.Error())
	}
	d.log.Info("vmm recovered", "vm", spec.ID, "pid", pid)
	return &Machine{proc: proc, spec: spec, api: NewClient(apiSock), log: d.log.With("vm", spec.ID)}, nil
}
