package imagebuild

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"banger/internal/errdefs"
	"banger/internal/imagestore"
)

// TinyName is the image name the tiny builder gives its bundle.
const TinyName = "tiny"

// tinyRevision is bumped whenever the tiny rootfs layout changes, so bundles built from the
// same kernel by different banger versions get different version strings.
const tinyRevision = 1

// TinyOptions configures BuildTiny.
type TinyOptions struct {
	CacheDir  string // kernel packages and unpacked kernels; reused across builds
	AgentPath string // static guest agent binary, becomes /init of the initrd
	WorkDir   string // the bundle directory is created in here
	// Kernel is KernelDebian (also when empty) or KernelMicrovm.
	Kernel string
	// Progress, when set, hears the microvm kernel's build steps (see MicrovmOptions).
	Progress func(step string, lines int64)
	Log      *slog.Logger
}

// BuildTiny builds the `tiny` image: the current Debian cloud kernel as a vmlinux, an
// initrd with the agent and guest modules, and a busybox root file system of a few MB. It
// returns the path of a bundle directory (manifest with digests) in opts.WorkDir, ready for
// imagestore.ImportBundle; the caller removes it afterwards.
//
// The rootfs deliberately has no /sbin/init (nor linuxrc): the agent from the initrd stays
// PID 1 after switching root, and busybox --list-full would otherwise also make
// /bin/busybox a symlink to itself.
func BuildTiny(ctx context.Context, opts TinyOptions) (bundleDir string, err error) {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.CacheDir == "" {
		return "", errdefs.InvalidArgument("cache_dir", opts.CacheDir, "is required")
	}
	if opts.WorkDir == "" {
		return "", errdefs.InvalidArgument("work_dir", opts.WorkDir, "is required")
	}
	if err := ValidKernel("kernel", opts.Kernel); err != nil {
		return "", err
	}
	if err := CheckAgent(opts.AgentPath); err != nil {
		return "", err
	}
	start := time.Now()
	stage := func(name string, since time.Time, args ...any) {
		log.Info("tiny build stage done", append([]any{"stage", name, "duration_ms", time.Since(since).Milliseconds()}, args...)...)
	}

	t := time.Now()
	busybox, err := StaticBusybox(ctx, log)
	if err != nil {
		return "", err
	}
	stage("busybox", t, "path", busybox)

	if err := os.MkdirAll(opts.WorkDir, 0o755); err != nil {
		return "", fmt.Errorf("creating work dir: %w", err)
	}
	dir, err := os.MkdirTemp(opts.WorkDir, "tiny-bundle-")
	if err != nil {
		return "", fmt.Errorf("creating bundle dir: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()

	t = time.Now()
	boot := BootFiles{CacheDir: opts.CacheDir, AgentPath: opts.AgentPath, OutDir: dir, Log: log}
	var kernelVersion string
	if opts.Kernel == KernelMicrovm {
		kernelVersion, err = MicrovmKernelAndInitrd(ctx, boot, opts.Progress)
	} else {
		kernelVersion, err = KernelAndInitrd(ctx, boot)
	}
	if err != nil {
		return "", err
	}
	stage("kernel and initrd", t, "kernel", kernelVersion)

	t = time.Now()
	root, err := os.MkdirTemp(opts.WorkDir, "tiny-rootfs-")
	if err != nil {
		return "", fmt.Errorf("creating rootfs staging dir: %w", err)
	}
	defer os.RemoveAll(root)
	if err := populateTinyRoot(ctx, root, busybox, kernelVersion); err != nil {
		return "", err
	}
	if err := Ext4FromDir(ctx, root, filepath.Join(dir, imagestore.RootfsName), 0); err != nil {
		return "", err
	}
	stage("rootfs", t)

	m := imagestore.Manifest{
		Schema:  imagestore.SchemaVersion,
		Name:    TinyName,
		Version: fmt.Sprintf("%s-b%d", kernelVersion, tinyRevision),
		Arch:    imagestore.ArchX86_64,
	}
	if err := WriteBundleManifest(dir, m); err != nil {
		return "", err
	}
	log.Info("tiny bundle built", "dir", dir, "version", m.Version, "duration_ms", time.Since(start).Milliseconds())
	return dir, nil
}

// KernelVmlinux returns the vmlinux ELF of k, extracting it from the bzImage on first use
// and caching it next to the unpacked package.
func KernelVmlinux(ctx context.Context, k KernelPkg) (string, error) {
	out := filepath.Join(k.Root, "vmlinux")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	if err := ExtractVmlinuxContext(ctx, k.VmlinuzPath, out); err != nil {
		return "", fmt.Errorf("extracting vmlinux: %w", err)
	}
	return out, nil
}

// populateTinyRoot lays out the busybox root tree in root.
func populateTinyRoot(ctx context.Context, root, busybox, kernelVersion string) error {
	dirs := []struct {
		path string
		perm os.FileMode
	}{
		{"bin", 0o755}, {"sbin", 0o755}, {"usr", 0o755}, {"usr/bin", 0o755}, {"usr/sbin", 0o755},
		{"etc", 0o755}, {"dev", 0o755}, {"proc", 0o555}, {"sys", 0o555}, {"run", 0o755},
		{"mnt", 0o755}, {"root", 0o700}, {"tmp", 0o1777}, {"var", 0o755}, {"var/log", 0o755},
		{"var/tmp", 0o1777},
	}
	for _, d := range dirs {
		p := filepath.Join(root, d.path)
		if err := os.MkdirAll(p, 0o755); err != nil {
			return fmt.Errorf("staging rootfs: %w", err)
		}
		// Chmod after mkdir: the umask would strip the sticky and write bits.
		if err := os.Chmod(p, d.perm|modeSticky(d.perm)); err != nil {
			return fmt.Errorf("staging rootfs: %w", err)
		}
	}
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return fmt.Errorf("reading busybox: %w", err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin/busybox"), bb, 0o755); err != nil {
		return fmt.Errorf("staging rootfs: %w", err)
	}
	applets, err := busyboxApplets(ctx, busybox)
	if err != nil {
		return err
	}
	for _, a := range applets {
		p := filepath.Join(root, a)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("staging rootfs: %w", err)
		}
		if err := os.Symlink("/bin/busybox", p); err != nil && !os.IsExist(err) {
			return fmt.Errorf("staging rootfs: %w", err)
		}
	}
	files := []struct {
		path, content string
		perm          os.FileMode
	}{
		{"etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644},
		{"etc/shadow", "root:*:19000:0:99999:7:::\n", 0o600},
		{"etc/group", "root:x:0:\n", 0o644},
		{"etc/hostname", "tiny\n", 0o644},
		{"etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n", 0o644},
		{"etc/profile", "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nexport PS1='\\u@\\h:\\w\\$ '\n", 0o644},
		{"etc/os-release", fmt.Sprintf("NAME=\"banger tiny\"\nID=banger-tiny\nPRETTY_NAME=\"banger tiny (busybox, kernel %s)\"\nVERSION_ID=%d\n", kernelVersion, tinyRevision), 0o644},
	}
	for _, f := range files {
		p := filepath.Join(root, f.path)
		if err := os.WriteFile(p, []byte(f.content), f.perm); err != nil {
			return fmt.Errorf("staging rootfs: %w", err)
		}
		if err := os.Chmod(p, f.perm); err != nil {
			return fmt.Errorf("staging rootfs: %w", err)
		}
	}
	return nil
}

func modeSticky(perm os.FileMode) os.FileMode {
	if perm&0o1000 != 0 {
		return os.ModeSticky
	}
	return 0
}

// busyboxApplets returns the applet paths (relative, like "usr/bin/wget") to symlink to
// busybox, minus init and linuxrc (the agent must stay PID 1) and busybox itself.
func busyboxApplets(ctx context.Context, busybox string) ([]string, error) {
	out, err := exec.CommandContext(ctx, busybox, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("listing busybox applets: %w", err)
	}
	var applets []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		a := strings.Trim(strings.TrimSpace(sc.Text()), "/")
		base := filepath.Base(a)
		if a == "" || base == "init" || base == "linuxrc" || base == "busybox" ||
			strings.Contains(a, "..") || filepath.IsAbs(a) {
			continue
		}
		applets = append(applets, a)
	}
	if len(applets) == 0 {
		return nil, fmt.Errorf("busybox %s lists no applets", busybox)
	}
	return applets, nil
}

// busyboxCandidates are where Debian's busybox-static puts the binary (usrmerge or not).
var busyboxCandidates = []string{"/bin/busybox", "/usr/bin/busybox"}

// StaticBusybox returns a statically linked busybox on the host. When there is none and we
// run as root it installs Debian's busybox-static; otherwise it says what to install.
func StaticBusybox(ctx context.Context, log *slog.Logger) (string, error) {
	if p, ok := findStaticBusybox(); ok {
		return p, nil
	}
	hint := "apt-get install busybox-static"
	if os.Geteuid() != 0 {
		return "", errdefs.WithHint(errdefs.New(errdefs.ErrUnavailable, "the tiny image needs a statically linked busybox, none found at %s", strings.Join(busyboxCandidates, " or ")), hint)
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return "", errdefs.WithHint(errdefs.New(errdefs.ErrUnavailable, "the tiny image needs a statically linked busybox and apt-get is not available to install one"), "install a static busybox at /bin/busybox")
	}
	if log != nil {
		log.Info("installing busybox-static with apt-get")
	}
	cmd := exec.CommandContext(ctx, "apt-get", "install", "-y", "-q", "--no-install-recommends", "busybox-static")
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", errdefs.WithHint(fmt.Errorf("apt-get install busybox-static: %w: %s", err, lastLines(out, 5)), hint)
	}
	if p, ok := findStaticBusybox(); ok {
		return p, nil
	}
	return "", fmt.Errorf("busybox-static installed but no static busybox found at %s", strings.Join(busyboxCandidates, " or "))
}

func findStaticBusybox() (string, bool) {
	cands := append([]string(nil), busyboxCandidates...)
	if p, err := exec.LookPath("busybox"); err == nil {
		cands = append(cands, p)
	}
	for _, p := range cands {
		if isStaticELF(p) {
			return p, true
		}
	}
	return "", false
}

// isStaticELF reports whether path is an x86_64 ELF without a program interpreter.
func isStaticELF(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return false
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}

// Missing is a prerequisite of image building the host lacks.
type Missing struct {
	What    string `json:"what"`    // tool or file
	Package string `json:"package"` // Debian package providing it
	Why     string `json:"why"`
}

// CheckTinyPrereqs lists what the tiny builder needs and the host lacks (for `banger
// doctor`). An empty result means BuildTiny can run.
func CheckTinyPrereqs() []Missing {
	var out []Missing
	for _, t := range []Missing{
		{"apt-get", "apt", "downloads the Debian cloud kernel package"},
		{"apt-cache", "apt", "finds the current Debian cloud kernel package"},
		{"dpkg-deb", "dpkg", "unpacks the kernel package"},
		{"mkfs.ext4", "e2fsprogs", "builds the root file system"},
		{"debugfs", "e2fsprogs", "sets root ownership in images built without root"},
	} {
		if _, err := exec.LookPath(t.What); err != nil {
			out = append(out, t)
		}
	}
	if _, ok := findStaticBusybox(); !ok {
		out = append(out, Missing{"static busybox", "busybox-static", "is the tiny image's userland"})
	}
	return out
}
