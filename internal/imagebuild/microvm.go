package imagebuild

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	_ "embed"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"banger/internal/errdefs"
)

// Kernels the tiny builder can put into an image.
const (
	KernelDebian  = "debian"  // Debian's cloud kernel with the virtio/overlay modules in the initrd (the default)
	KernelMicrovm = "microvm" // compiled here from linux-source with kernelconfig/microvm.config: no modules
)

// ValidKernel checks a --kernel value: empty (the default, Debian's), debian or microvm.
func ValidKernel(field, v string) error {
	switch v {
	case "", KernelDebian, KernelMicrovm:
		return nil
	}
	return errdefs.InvalidArgument(field, v, "must be "+KernelDebian+" or "+KernelMicrovm)
}

// MicrovmConfig is the config fragment of the microVM kernel, applied on top of
// `make allnoconfig`.
//
//go:embed kernelconfig/microvm.config
var MicrovmConfig []byte

// DebianSourceMeta is the unversioned Debian package that depends on the current kernel
// source package (linux-source-6.1 on bookworm), which installs /usr/src/linux-source-X.Y.tar.xz.
const DebianSourceMeta = "linux-source"

// microvmRevision is bumped when the build steps change in a way the cache key's inputs
// (fragment, source version, compiler) do not show.
const microvmRevision = 1

// RequiredMicrovmOptions must be =y in every microVM kernel: what banger's guests cannot boot
// or serve without under QEMU (microvm and q35) and Firecracker. The build checks them in
// the final .config, whatever the fragment says.
var RequiredMicrovmOptions = []string{
	"64BIT", "SMP", "PVH", "ACPI", "PRINTK", "BLK_DEV_INITRD", "BINFMT_ELF", "BINFMT_SCRIPT", "FUTEX", "EPOLL",
	"PROC_FS", "SYSFS", "DEVTMPFS", "TMPFS", "EXT4_FS", "OVERLAY_FS", "FUSE_FS", "VIRTIO_FS", "FANOTIFY",
	"TTY", "UNIX98_PTYS", "SERIAL_8250", "SERIAL_8250_CONSOLE",
	"VIRTIO_MMIO", "VIRTIO_MMIO_CMDLINE_DEVICES", "PCI", "VIRTIO_PCI",
	"VIRTIO_BLK", "VIRTIO_NET", "VIRTIO_CONSOLE",
	"NET", "UNIX", "INET", "VSOCKETS", "VIRTIO_VSOCKETS",
}

// ForbiddenMicrovmOptions must not be set: a kernel with module support would make the
// guest init look for modules the image does not carry.
var ForbiddenMicrovmOptions = []string{"MODULES"}

// MicrovmKernel is a compiled microVM kernel in the cache.
type MicrovmKernel struct {
	Vmlinux string // the PVH-bootable ELF
	Config  string // the final .config it was built with
	Version string // e.g. 6.1.192-3-microvm-0123abcd (source package version + cache key)
	Key     string // hex sha256 of the fragment, source version, compiler and revision
}

// MicrovmOptions configures BuildMicrovmKernel.
type MicrovmOptions struct {
	CacheDir string // the kernel lands in CacheDir/microvm-kernel/KEY/
	Log      *slog.Logger
	// Progress, when set, is told each step ("extract", "configure", "compile", "done")
	// and, while compiling, how many lines make has printed so far.
	Progress func(step string, lines int64)
	// Jobs is make's -j; 0 means the number of CPUs.
	Jobs int
}

// microvmInfo is the record next to a cached kernel.
type microvmInfo struct {
	Version       string    `json:"version"`
	SourcePackage string    `json:"source_package"`
	SourceVersion string    `json:"source_version"`
	Compiler      string    `json:"compiler"`
	Built         time.Time `json:"built"`
	CompileMS     int64     `json:"compile_ms"`
}

// BuildMicrovmKernel returns the microVM kernel, compiling it the first time: Debian's
// kernel source (the linux-source package, installed with apt when missing and running as
// root) configured with allnoconfig + MicrovmConfig + olddefconfig, checked against
// RequiredMicrovmOptions, compiled with nice and -j(CPUs). The result is cached under a
// key hashing the fragment, the source package version and the compiler version, so a
// changed fragment, a kernel security update or a new gcc compile again and nothing
// else does. Work happens in a temporary directory renamed into place at the end.
func BuildMicrovmKernel(ctx context.Context, opts MicrovmOptions) (MicrovmKernel, error) {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	progress := opts.Progress
	if progress == nil {
		progress = func(string, int64) {}
	}
	if opts.CacheDir == "" {
		return MicrovmKernel{}, errdefs.InvalidArgument("cache_dir", opts.CacheDir, "is required")
	}
	if err := checkKernelTools(); err != nil {
		return MicrovmKernel{}, err
	}
	src, err := debianKernelSource(ctx, log)
	if err != nil {
		return MicrovmKernel{}, err
	}
	cc, err := compilerVersion(ctx)
	if err != nil {
		return MicrovmKernel{}, err
	}
	key := MicrovmKey(MicrovmConfig, src.Version, cc)
	base := filepath.Join(opts.CacheDir, "microvm-kernel")
	final := filepath.Join(base, key[:16])
	if k, err := cachedMicrovm(final, key); err == nil {
		log.Debug("microvm kernel from cache", "dir", final, "version", k.Version)
		progress("done", 0)
		return k, nil
	}
	if err := os.MkdirAll(base, 0o755); err != nil {
		return MicrovmKernel{}, fmt.Errorf("creating kernel cache dir: %w", err)
	}
	sweepStaleBuilds(base, log)
	tmp, err := os.MkdirTemp(base, ".build-")
	if err != nil {
		return MicrovmKernel{}, fmt.Errorf("creating kernel build dir: %w", err)
	}
	defer os.RemoveAll(tmp)

	start := time.Now()
	progress("extract", 0)
	tree, err := extractKernelSource(ctx, src.Tarball, tmp)
	if err != nil {
		return MicrovmKernel{}, err
	}
	log.Info("kernel source extracted", "tarball", src.Tarball, "duration_ms", time.Since(start).Milliseconds())

	progress("configure", 0)
	if err := configureMicrovm(ctx, tree); err != nil {
		return MicrovmKernel{}, err
	}
	jobs := opts.Jobs
	if jobs <= 0 {
		jobs = runtime.NumCPU()
	}
	t := time.Now()
	progress("compile", 0)
	if err := compileKernel(ctx, tree, jobs, func(n int64) { progress("compile", n) }); err != nil {
		return MicrovmKernel{}, err
	}
	compileMS := time.Since(t).Milliseconds()
	vmlinux := filepath.Join(tree, "vmlinux")
	if err := CheckPVHEntry(vmlinux); err != nil {
		return MicrovmKernel{}, err
	}

	out := filepath.Join(tmp, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		return MicrovmKernel{}, fmt.Errorf("staging kernel: %w", err)
	}
	if err := os.Rename(vmlinux, filepath.Join(out, "vmlinux")); err != nil {
		return MicrovmKernel{}, fmt.Errorf("staging kernel: %w", err)
	}
	if err := os.Rename(filepath.Join(tree, ".config"), filepath.Join(out, "config")); err != nil {
		return MicrovmKernel{}, fmt.Errorf("staging kernel config: %w", err)
	}
	info := microvmInfo{Version: src.Version + "-microvm-" + key[:8], SourcePackage: src.Package,
		SourceVersion: src.Version, Compiler: cc, Built: time.Now().UTC(), CompileMS: compileMS}
	b, _ := json.MarshalIndent(info, "", "  ")
	if err := os.WriteFile(filepath.Join(out, "info.json"), b, 0o644); err != nil {
		return MicrovmKernel{}, fmt.Errorf("staging kernel: %w", err)
	}
	if err := os.WriteFile(filepath.Join(out, "key"), []byte(key+"\n"), 0o644); err != nil {
		return MicrovmKernel{}, fmt.Errorf("staging kernel: %w", err)
	}
	if err := os.Rename(out, final); err != nil {
		if _, serr := os.Stat(final); serr != nil { // a concurrent build finishing first is fine
			return MicrovmKernel{}, fmt.Errorf("caching kernel: %w", err)
		}
	}
	k, err := cachedMicrovm(final, key)
	if err != nil {
		return MicrovmKernel{}, fmt.Errorf("cached microvm kernel: %w", err)
	}
	log.Info("microvm kernel built", "version", k.Version, "compile_ms", compileMS,
		"duration_ms", time.Since(start).Milliseconds(), "jobs", jobs)
	progress("done", 0)
	return k, nil
}

// staleBuild is how old a build directory must be before another build removes it: a
// build killed with its process leaves ~1.5 GB behind, and no compile runs this long.
const staleBuild = 12 * time.Hour

// sweepStaleBuilds removes build directories that crashed builds left in base.
func sweepStaleBuilds(base string, log *slog.Logger) {
	dirs, _ := filepath.Glob(filepath.Join(base, ".build-*"))
	for _, d := range dirs {
		fi, err := os.Lstat(d)
		if err != nil || !fi.IsDir() || time.Since(fi.ModTime()) < staleBuild {
			continue
		}
		if err := os.RemoveAll(d); err != nil {
			log.Warn("removing a stale kernel build directory", "dir", d, "err", err)
		}
	}
}

// MicrovmKey is the cache key of a microVM kernel: what decides the bytes of the result.
func MicrovmKey(fragment []byte, sourceVersion, compiler string) string {
	h := sha256.New()
	fmt.Fprintf(h, "banger-microvm-kernel %d\x00", microvmRevision)
	h.Write(fragment)
	fmt.Fprintf(h, "\x00%s\x00%s\x00", sourceVersion, compiler)
	return hex.EncodeToString(h.Sum(nil))
}

func cachedMicrovm(dir, key string) (MicrovmKernel, error) {
	b, err := os.ReadFile(filepath.Join(dir, "key"))
	if err != nil {
		return MicrovmKernel{}, err
	}
	if strings.TrimSpace(string(b)) != key {
		return MicrovmKernel{}, fmt.Errorf("%s holds another kernel", dir)
	}
	var info microvmInfo
	b, err = os.ReadFile(filepath.Join(dir, "info.json"))
	if err != nil {
		return MicrovmKernel{}, err
	}
	if err := json.Unmarshal(b, &info); err != nil || info.Version == "" {
		return MicrovmKernel{}, fmt.Errorf("reading %s/info.json: %v", dir, err)
	}
	k := MicrovmKernel{Vmlinux: filepath.Join(dir, "vmlinux"), Config: filepath.Join(dir, "config"), Version: info.Version, Key: key}
	if err := CheckPVHEntry(k.Vmlinux); err != nil {
		return MicrovmKernel{}, err
	}
	return k, nil
}

// kernelTools are the host programs a kernel compile needs, with their Debian packages.
var kernelTools = []Missing{
	{"make", "make", "runs the kernel build"},
	{"gcc", "gcc", "compiles the kernel"},
	{"ld", "binutils", "links the kernel"},
	{"bc", "bc", "computes kernel constants at build time"},
	{"bison", "bison", "builds the kernel's configuration tools"},
	{"flex", "flex", "builds the kernel's configuration tools"},
	{"xz", "xz-utils", "unpacks the kernel source"},
	{"nice", "coreutils", "keeps the compile from starving the host"},
}

// CheckMicrovmPrereqs lists what compiling the microVM kernel needs and the host lacks.
func CheckMicrovmPrereqs() []Missing {
	var out []Missing
	for _, t := range kernelTools {
		if _, err := exec.LookPath(t.What); err != nil {
			out = append(out, t)
		}
	}
	if _, err := os.Stat("/usr/include/gelf.h"); err != nil {
		out = append(out, Missing{"libelf headers", "libelf-dev", "objtool (part of the kernel build) links libelf"})
	}
	return out
}

func checkKernelTools() error {
	miss := CheckMicrovmPrereqs()
	if len(miss) == 0 {
		return nil
	}
	var pkgs, what []string
	for _, m := range miss {
		pkgs = append(pkgs, m.Package)
		what = append(what, m.What)
	}
	return errdefs.WithHint(errdefs.New(errdefs.ErrUnavailable, "compiling the microvm kernel needs %s, not found on this host", strings.Join(what, ", ")),
		"apt-get install "+strings.Join(pkgs, " ")+" (scripts/install-deps.sh installs them)")
}

// kernelSource is Debian's kernel source tarball.
type kernelSource struct {
	Package string // linux-source-6.1
	Version string // 6.1.192-3
	Tarball string // /usr/src/linux-source-6.1.tar.xz
}

var sourcePkgRe = regexp.MustCompile(`^linux-source-[0-9]+\.[0-9]+$`)

// debianKernelSource finds the kernel source package linux-source depends on, installing
// it with apt-get when it is missing and we run as root.
func debianKernelSource(ctx context.Context, log *slog.Logger) (kernelSource, error) {
	src, err := installedKernelSource(ctx)
	if err == nil {
		return src, nil
	}
	hint := "apt-get install " + DebianSourceMeta
	if os.Geteuid() != 0 {
		return kernelSource{}, errdefs.WithHint(errdefs.New(errdefs.ErrUnavailable, "the microvm kernel is compiled from Debian's %s package: %v", DebianSourceMeta, err), hint)
	}
	log.Info("installing the kernel source with apt-get", "package", DebianSourceMeta)
	cmd := exec.CommandContext(ctx, "apt-get", "install", "-y", "-q", "--no-install-recommends", DebianSourceMeta)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, ierr := cmd.CombinedOutput(); ierr != nil {
		return kernelSource{}, errdefs.WithHint(fmt.Errorf("apt-get install %s: %w: %s", DebianSourceMeta, ierr, lastLines(out, 5)), hint)
	}
	return installedKernelSource(ctx)
}

func installedKernelSource(ctx context.Context) (kernelSource, error) {
	out, err := exec.CommandContext(ctx, "dpkg-query", "-W", "-f=${Status}\t${Depends}", DebianSourceMeta).Output()
	if err != nil {
		return kernelSource{}, fmt.Errorf("%s is not installed", DebianSourceMeta)
	}
	status, deps, _ := strings.Cut(string(out), "\t")
	if !strings.HasSuffix(status, " installed") {
		return kernelSource{}, fmt.Errorf("%s is not installed (%s)", DebianSourceMeta, status)
	}
	var pkg string
	for _, d := range strings.Split(deps, ",") {
		name, _, _ := strings.Cut(strings.TrimSpace(d), " ")
		if sourcePkgRe.MatchString(name) {
			pkg = name
		}
	}
	if pkg == "" {
		return kernelSource{}, fmt.Errorf("%s depends on no linux-source-X.Y package (%q)", DebianSourceMeta, deps)
	}
	out, err = exec.CommandContext(ctx, "dpkg-query", "-W", "-f=${Status}\t${Version}", pkg).Output()
	if err != nil {
		return kernelSource{}, fmt.Errorf("%s is not installed", pkg)
	}
	status, version, _ := strings.Cut(string(out), "\t")
	if !strings.HasSuffix(status, " installed") || version == "" {
		return kernelSource{}, fmt.Errorf("%s is not installed (%s)", pkg, status)
	}
	tarball := filepath.Join("/usr/src", pkg+".tar.xz")
	if fi, err := os.Stat(tarball); err != nil || !fi.Mode().IsRegular() {
		return kernelSource{}, fmt.Errorf("%s is installed but %s is not a file", pkg, tarball)
	}
	return kernelSource{Package: pkg, Version: version, Tarball: tarball}, nil
}

// compilerVersion is the first line of `gcc --version`: a new compiler means new bytes.
func compilerVersion(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "gcc", "--version").Output()
	if err != nil {
		return "", fmt.Errorf("gcc --version: %w", err)
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line), nil
}

// niced runs a command at the lowest CPU priority: a kernel compile must not slow the VMs
// and daemons sharing the host.
func niced(ctx context.Context, dir string, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "nice", append([]string{"-n", "19", name}, args...)...)
	cmd.Dir = dir
	// Fixed build identity: the same inputs give the same vmlinux on every host.
	cmd.Env = append(os.Environ(), "KBUILD_BUILD_USER=banger", "KBUILD_BUILD_HOST=banger",
		"KBUILD_BUILD_TIMESTAMP=1970-01-01", "ARCH=x86_64", "LC_ALL=C")
	// Its own process group, killed whole when ctx ends: make's compilers must not outlive
	// a cancelled build.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

func extractKernelSource(ctx context.Context, tarball, dir string) (string, error) {
	if out, err := niced(ctx, dir, "tar", "-xf", tarball, "--no-same-owner").CombinedOutput(); err != nil {
		return "", fmt.Errorf("unpacking %s: %w: %s", tarball, err, lastLines(out, 5))
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("reading kernel build dir: %w", err)
	}
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), "linux-source-") {
			return filepath.Join(dir, e.Name()), nil
		}
	}
	return "", fmt.Errorf("%s holds no linux-source-* directory", tarball)
}

// configureMicrovm makes tree/.config: allnoconfig, the fragment merged in, olddefconfig,
// then the check that the fragment and RequiredMicrovmOptions took.
func configureMicrovm(ctx context.Context, tree string) error {
	frag := filepath.Join(tree, "banger-microvm.config")
	if err := os.WriteFile(frag, MicrovmConfig, 0o644); err != nil {
		return fmt.Errorf("writing config fragment: %w", err)
	}
	for _, step := range [][]string{
		{"make", "allnoconfig"},
		{"scripts/kconfig/merge_config.sh", "-m", ".config", frag},
		{"make", "olddefconfig"},
	} {
		if out, err := niced(ctx, tree, step[0], step[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("configuring the kernel (%s): %w: %s", strings.Join(step, " "), err, lastLines(out, 8))
		}
	}
	b, err := os.ReadFile(filepath.Join(tree, ".config"))
	if err != nil {
		return fmt.Errorf("reading kernel .config: %w", err)
	}
	return CheckMicrovmConfig(b, MicrovmConfig)
}

// CheckMicrovmConfig checks a final .config: every option the fragment sets to y is y, every
// one it unsets is unset, and RequiredMicrovmOptions / ForbiddenMicrovmOptions hold. Kconfig
// silently drops an option whose dependencies are off, so without this a kernel missing
// its disk driver would build fine and fail only at boot.
func CheckMicrovmConfig(config, fragment []byte) error {
	got := parseKconfig(config)
	want := parseKconfig(fragment)
	for _, o := range RequiredMicrovmOptions {
		want["CONFIG_"+o] = "y"
	}
	for _, o := range ForbiddenMicrovmOptions {
		want["CONFIG_"+o] = "n"
	}
	var bad []string
	for opt, v := range want {
		g := got[opt]
		if g == "" {
			g = "n"
		}
		if g != v {
			bad = append(bad, fmt.Sprintf("%s=%s (want %s)", opt, g, v))
		}
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		return fmt.Errorf("the microvm kernel config lacks what the guest needs (kconfig drops an option whose dependencies are off): %s", strings.Join(bad, ", "))
	}
	return nil
}

// parseKconfig reads CONFIG_X=v and "# CONFIG_X is not set" (as "n") lines.
func parseKconfig(b []byte) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if name, ok := strings.CutPrefix(line, "# "); ok {
			if opt, ok := strings.CutSuffix(name, " is not set"); ok && strings.HasPrefix(opt, "CONFIG_") {
				out[opt] = "n"
			}
			continue
		}
		if opt, v, ok := strings.Cut(line, "="); ok && strings.HasPrefix(opt, "CONFIG_") {
			out[opt] = strings.Trim(v, `"`)
		}
	}
	return out
}

// compileKernel runs make vmlinux, telling lines how many lines of output it has printed.
func compileKernel(ctx context.Context, tree string, jobs int, lines func(int64)) error {
	cmd := niced(ctx, tree, "make", "-j"+strconv.Itoa(jobs), "vmlinux")
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the kernel compile: %w", err)
	}
	var tail []string
	scanDone := make(chan struct{})
	go func() {
		defer close(scanDone)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		var n int64
		for sc.Scan() {
			n++
			if n%50 == 0 {
				lines(n)
			}
			tail = append(tail, sc.Text())
			if len(tail) > 20 {
				tail = tail[1:]
			}
		}
		lines(n)
		_, _ = io.Copy(io.Discard, pr)
	}()
	err := cmd.Wait()
	pw.Close()
	<-scanDone
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("compiling the kernel: %w", ctx.Err())
		}
		return fmt.Errorf("compiling the kernel: %w: %s", err, strings.Join(tail, "; "))
	}
	return nil
}

// CheckPVHEntry checks that path is an x86_64 ELF with the PVH entry note
// (XEN_ELFNOTE_PHYS32_ENTRY): what QEMU's microvm and Firecracker jump to when they boot a
// vmlinux directly. Without CONFIG_PVH the kernel builds but these VMMs cannot start it.
func CheckPVHEntry(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("reading kernel %s: %w", path, err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("kernel %s is not an x86_64 ELF", path)
	}
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		b, err := io.ReadAll(io.LimitReader(p.Open(), 1<<20))
		if err != nil {
			return fmt.Errorf("reading notes of %s: %w", path, err)
		}
		if hasPVHNote(b) {
			return nil
		}
	}
	return errors.New("kernel " + path + " has no PVH entry note (CONFIG_PVH): QEMU microvm and Firecracker cannot boot it")
}

// xenElfnotePhys32Entry is XEN_ELFNOTE_PHYS32_ENTRY, the PVH entry point.
const xenElfnotePhys32Entry = 18

func hasPVHNote(b []byte) bool {
	for len(b) >= 12 {
		namesz := binary.LittleEndian.Uint32(b[0:])
		descsz := binary.LittleEndian.Uint32(b[4:])
		typ := binary.LittleEndian.Uint32(b[8:])
		b = b[12:]
		nlen, dlen := int((namesz+3)&^3), int((descsz+3)&^3)
		if nlen < 0 || dlen < 0 || nlen+dlen > len(b) {
			return false
		}
		name := strings.TrimRight(string(b[:namesz]), "\x00")
		if name == "Xen" && typ == xenElfnotePhys32Entry {
			return true
		}
		b = b[nlen+dlen:]
	}
	return false
}
