// Package imagebuild makes the pieces of banger images from Debian packages and host tools:
// the guest kernel (fetched with apt, unpacked to a vmlinux), the initramfs carrying the
// guest agent and the virtio/overlay/vsock modules, ext4 root file systems built without
// loop mounts, and the `tiny` busybox image. Builders for other images (internal/imagecat)
// reuse these functions and publish the result with internal/imagestore.
package imagebuild

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"banger/internal/errdefs"
)

// DebianKernelMeta is the Debian meta package that depends on the current cloud kernel.
const DebianKernelMeta = "linux-image-cloud-amd64"

// KernelPkg is an unpacked Debian kernel package in the cache.
type KernelPkg struct {
	Package     string // concrete package, e.g. linux-image-6.1.0-56-cloud-amd64
	Version     string // kernel release, e.g. 6.1.0-56-cloud-amd64
	Root        string // where the package was unpacked
	VmlinuzPath string // the bzImage
	ModulesDir  string // lib/modules/<release>
}

// resolveTTL is how long a meta-package resolution is trusted before apt-cache is asked
// again; it makes repeated builds instant while still picking up kernel updates daily.
const resolveTTL = 24 * time.Hour

var kernelPkgRe = regexp.MustCompile(`^linux-image-([0-9][A-Za-z0-9.+~-]*-cloud-amd64)$`)

type resolution struct {
	Package  string    `json:"package"`
	Resolved time.Time `json:"resolved"`
}

// DebianKernel returns the newest Debian cloud kernel (the package linux-image-cloud-amd64
// currently depends on), downloading it with `apt-get download` and unpacking it with
// `dpkg-deb -x` into cacheDir/kernel-<release>/ the first time. Later calls within a day
// only read the cache. If apt cannot answer (offline) the newest cached kernel is used.
func DebianKernel(ctx context.Context, cacheDir string, log *slog.Logger) (KernelPkg, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cacheDir, err := filepath.Abs(cacheDir)
	if err != nil {
		return KernelPkg{}, fmt.Errorf("resolving cache dir: %w", err)
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return KernelPkg{}, fmt.Errorf("creating cache dir: %w", err)
	}
	recordPath := filepath.Join(cacheDir, "kernel-resolved.json")
	if pkg, ok := recentResolution(recordPath); ok {
		if k, err := cachedKernel(cacheDir, pkg); err == nil {
			log.Debug("kernel from cache", "package", pkg, "dir", k.Root)
			return k, nil
		}
	}
	pkg, rerr := resolveKernelPackage(ctx, log)
	if rerr != nil {
		if k, ok := newestCachedKernel(cacheDir); ok {
			log.Warn("cannot resolve the current Debian kernel; using the cached one", "package", k.Package, "err", rerr)
			return k, nil
		}
		return KernelPkg{}, rerr
	}
	k, err := cachedKernel(cacheDir, pkg)
	if err != nil {
		if k, err = fetchKernel(ctx, cacheDir, pkg, log); err != nil {
			return KernelPkg{}, err
		}
	}
	if b, err := json.Marshal(resolution{Package: pkg, Resolved: time.Now().UTC()}); err == nil {
		if err := writeFileAtomic(recordPath, b, 0o644); err != nil {
			log.Warn("cannot record kernel resolution", "err", err)
		}
	}
	return k, nil
}

func recentResolution(path string) (string, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", false
	}
	var r resolution
	if json.Unmarshal(b, &r) != nil || !kernelPkgRe.MatchString(r.Package) {
		return "", false
	}
	if age := time.Since(r.Resolved); age < 0 || age > resolveTTL {
		return "", false
	}
	return r.Package, true
}

// resolveKernelPackage asks apt which concrete kernel the meta package depends on, updating
// the package lists first only when apt knows nothing about the meta package.
func resolveKernelPackage(ctx context.Context, log *slog.Logger) (string, error) {
	aptCache, err := exec.LookPath("apt-cache")
	if err != nil {
		return "", errdefs.WithHint(errdefs.New(errdefs.ErrUnavailable, "fetching the guest kernel needs apt (apt-cache not found)"),
			"on a Debian host install "+DebianKernelMeta+"'s dependency with apt, or import a kernel with `banger image import --kernel`")
	}
	pkg, err := aptDepends(ctx, aptCache)
	if err == nil {
		return pkg, nil
	}
	if os.Geteuid() != 0 {
		return "", errdefs.WithHint(fmt.Errorf("resolving %s: %w", DebianKernelMeta, err), "run `apt-get update` as root")
	}
	log.Info("apt knows no kernel package; running apt-get update", "package", DebianKernelMeta)
	if out, uerr := exec.CommandContext(ctx, "apt-get", "update", "-q").CombinedOutput(); uerr != nil {
		return "", fmt.Errorf("apt-get update: %w: %s", uerr, lastLines(out, 5))
	}
	pkg, err = aptDepends(ctx, aptCache)
	if err != nil {
		return "", fmt.Errorf("resolving %s: %w", DebianKernelMeta, err)
	}
	return pkg, nil
}

func aptDepends(ctx context.Context, aptCache string) (string, error) {
	out, err := exec.CommandContext(ctx, aptCache, "depends", "--no-recommends", "--no-suggests", "--no-conflicts",
		"--no-breaks", "--no-replaces", "--no-enhances", DebianKernelMeta).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("apt-cache depends: %w: %s", err, lastLines(out, 3))
	}
	var found []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		dep, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "Depends:")
		if !ok {
			continue
		}
		dep = strings.Trim(strings.TrimSpace(dep), "<>")
		if kernelPkgRe.MatchString(dep) {
			found = append(found, dep)
		}
	}
	if len(found) == 0 {
		return "", fmt.Errorf("%s depends on no linux-image-*-cloud-amd64 package", DebianKernelMeta)
	}
	sort.Slice(found, func(i, j int) bool { return versionLess(found[i], found[j]) })
	return found[len(found)-1], nil
}

// versionLess orders package names by their embedded version numbers (6.1.0-9 < 6.1.0-56).
func versionLess(a, b string) bool {
	na, nb := numbers(a), numbers(b)
	for i := 0; i < len(na) && i < len(nb); i++ {
		if na[i] != nb[i] {
			return na[i] < nb[i]
		}
	}
	return len(na) < len(nb)
}

func numbers(s string) []int {
	var out []int
	n, in := 0, false
	for _, c := range s {
		if c >= '0' && c <= '9' {
			n, in = n*10+int(c-'0'), true
			continue
		}
		if in {
			out = append(out, n)
		}
		n, in = 0, false
	}
	if in {
		out = append(out, n)
	}
	return out
}

// ConfigPath is the kernel's build configuration in the unpacked package.
func (k KernelPkg) ConfigPath() string {
	return filepath.Join(k.Root, "boot", "config-"+k.Version)
}

func kernelDir(cacheDir, release string) string { return filepath.Join(cacheDir, "kernel-"+release) }

// cachedKernel returns the unpacked package pkg if it is complete in the cache.
func cachedKernel(cacheDir, pkg string) (KernelPkg, error) {
	m := kernelPkgRe.FindStringSubmatch(pkg)
	if m == nil {
		return KernelPkg{}, fmt.Errorf("not a kernel package name: %q", pkg)
	}
	release := m[1]
	root := kernelDir(cacheDir, release)
	k := KernelPkg{Package: pkg, Version: release, Root: root, VmlinuzPath: filepath.Join(root, "boot", "vmlinuz-"+release)}
	if _, err := os.Stat(k.VmlinuzPath); err != nil {
		return KernelPkg{}, err
	}
	// Bookworm ships modules under /lib, later releases under /usr/lib.
	for _, d := range []string{filepath.Join(root, "lib", "modules", release), filepath.Join(root, "usr", "lib", "modules", release)} {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			k.ModulesDir = d
			return k, nil
		}
	}
	return KernelPkg{}, fmt.Errorf("kernel package %s in %s has no modules directory", pkg, root)
}

func newestCachedKernel(cacheDir string) (KernelPkg, bool) {
	dirs, _ := filepath.Glob(filepath.Join(cacheDir, "kernel-*-cloud-amd64"))
	sort.Slice(dirs, func(i, j int) bool { return versionLess(dirs[i], dirs[j]) })
	for i := len(dirs) - 1; i >= 0; i-- {
		release := strings.TrimPrefix(filepath.Base(dirs[i]), "kernel-")
		if k, err := cachedKernel(cacheDir, "linux-image-"+release); err == nil {
			return k, true
		}
	}
	return KernelPkg{}, false
}

// fetchKernel downloads and unpacks pkg into the cache. Work happens in a temporary
// directory renamed into place at the end, so an interrupted fetch is never mistaken for a
// cached kernel.
func fetchKernel(ctx context.Context, cacheDir, pkg string, log *slog.Logger) (KernelPkg, error) {
	for _, tool := range []string{"apt-get", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			return KernelPkg{}, errdefs.WithHint(errdefs.New(errdefs.ErrUnavailable, "fetching kernel package %s needs %s, which is not installed", pkg, tool),
				"on a Debian host: apt-get install apt dpkg; or import a kernel with `banger image import --kernel`")
		}
	}
	tmp, err := os.MkdirTemp(cacheDir, ".fetch-")
	if err != nil {
		return KernelPkg{}, fmt.Errorf("creating download dir: %w", err)
	}
	defer os.RemoveAll(tmp)

	start := time.Now()
	log.Info("downloading kernel package", "package", pkg)
	args := []string{"download", "-q"}
	if os.Geteuid() == 0 {
		// As root apt drops to _apt for downloads, which cannot write our cache dir.
		args = append(args, "-o", "APT::Sandbox::User=root")
	}
	cmd := exec.CommandContext(ctx, "apt-get", append(args, pkg)...)
	cmd.Dir = tmp
	if out, err := cmd.CombinedOutput(); err != nil {
		return KernelPkg{}, errdefs.WithHint(fmt.Errorf("apt-get download %s: %w: %s", pkg, err, lastLines(out, 5)),
			"check the host's apt sources and network, or run `apt-get update`")
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return KernelPkg{}, fmt.Errorf("apt-get download %s produced %d .deb files", pkg, len(debs))
	}
	unpack := filepath.Join(tmp, "root")
	log.Info("unpacking kernel package", "package", pkg, "deb", filepath.Base(debs[0]))
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", debs[0], unpack).CombinedOutput(); err != nil {
		return KernelPkg{}, fmt.Errorf("dpkg-deb -x %s: %w: %s", filepath.Base(debs[0]), err, lastLines(out, 5))
	}
	release := kernelPkgRe.FindStringSubmatch(pkg)[1]
	final := kernelDir(cacheDir, release)
	if err := os.Rename(unpack, final); err != nil {
		if _, serr := os.Stat(final); serr != nil { // a concurrent fetch finishing first is fine
			return KernelPkg{}, fmt.Errorf("caching kernel: %w", err)
		}
	}
	k, err := cachedKernel(cacheDir, pkg)
	if err != nil {
		return KernelPkg{}, fmt.Errorf("kernel package %s: %w", pkg, err)
	}
	log.Info("kernel cached", "package", pkg, "dir", final, "duration_ms", time.Since(start).Milliseconds())
	return k, nil
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "; ")
}

func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
