package imagebuild

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"banger/internal/errdefs"
	"banger/internal/imagestore"
	"banger/internal/model"
)

// BootFiles says where KernelAndInitrd finds its inputs and where it writes the boot files.
type BootFiles struct {
	CacheDir  string // kernel packages and unpacked kernels; shared by all builders
	AgentPath string // static guest agent binary, becomes /init of the initrd
	OutDir    string // the bundle directory; must exist
	Log       *slog.Logger
}

// CheckAgent reports whether path is an existing regular file that can serve as the guest
// agent: not a dynamically linked ELF, which the initramfs (no loader) could never execute.
// Builders call it before any slow step so a missing or unusable agent fails fast.
func CheckAgent(path string) error {
	if fi, err := os.Stat(path); err != nil || !fi.Mode().IsRegular() {
		return errdefs.WithHint(errdefs.InvalidArgument("agent", path, "is not an existing file"),
			"build the guest agent (go build ./cmd/banger-agent) or set agent_path in the config")
	}
	return imagestore.CheckStaticAgent("agent", path)
}

// KernelAndInitrd gives a bundle the part every banger image shares: the current Debian
// cloud kernel as opts.OutDir/vmlinux and the banger initrd (agent as /init plus the guest
// modules of that kernel) as opts.OutDir/initrd.img. It returns the kernel release, which
// builders use in image versions and rootfs metadata. The caller still writes the manifest
// (WriteBundleManifest) once the rootfs is in place.
func KernelAndInitrd(ctx context.Context, opts BootFiles) (kernelVersion string, err error) {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.CacheDir == "" {
		return "", errdefs.InvalidArgument("cache_dir", opts.CacheDir, "is required")
	}
	if opts.OutDir == "" {
		return "", errdefs.InvalidArgument("out_dir", opts.OutDir, "is required")
	}
	if err := CheckAgent(opts.AgentPath); err != nil {
		return "", err
	}
	start := time.Now()
	k, err := DebianKernel(ctx, opts.CacheDir, log)
	if err != nil {
		return "", fmt.Errorf("fetching kernel: %w", err)
	}
	vmlinux, err := KernelVmlinux(ctx, k)
	if err != nil {
		return "", err
	}
	if err := linkOrCopy(ctx, vmlinux, filepath.Join(opts.OutDir, imagestore.KernelName)); err != nil {
		return "", fmt.Errorf("placing vmlinux: %w", err)
	}
	mods, err := GuestModules(k.ModulesDir)
	if err != nil {
		return "", err
	}
	forced, err := moduleSigForced(k.ConfigPath())
	if err != nil {
		log.Warn("keeping the kernel modules' signatures", "err", err)
	}
	for i := range mods {
		mods[i].DropSignature = !forced
	}
	if err := BuildInitrd(ctx, filepath.Join(opts.OutDir, imagestore.InitrdName), opts.AgentPath, mods); err != nil {
		return "", err
	}
	log.Debug("kernel and initrd ready", "kernel", k.Version, "modules", len(mods), "duration_ms", time.Since(start).Milliseconds())
	return k.Version, nil
}

// MicrovmKernelAndInitrd is KernelAndInitrd with the microVM kernel (BuildMicrovmKernel,
// compiled on first use): every driver is built in, so the initrd carries the agent and no
// modules.
func MicrovmKernelAndInitrd(ctx context.Context, opts BootFiles, progress func(step string, lines int64)) (kernelVersion string, err error) {
	if opts.CacheDir == "" {
		return "", errdefs.InvalidArgument("cache_dir", opts.CacheDir, "is required")
	}
	if opts.OutDir == "" {
		return "", errdefs.InvalidArgument("out_dir", opts.OutDir, "is required")
	}
	if err := CheckAgent(opts.AgentPath); err != nil {
		return "", err
	}
	k, err := BuildMicrovmKernel(ctx, MicrovmOptions{CacheDir: opts.CacheDir, Log: opts.Log, Progress: progress})
	if err != nil {
		return "", fmt.Errorf("building the microvm kernel: %w", err)
	}
	if err := linkOrCopy(ctx, k.Vmlinux, filepath.Join(opts.OutDir, imagestore.KernelName)); err != nil {
		return "", fmt.Errorf("placing vmlinux: %w", err)
	}
	if err := BuildInitrd(ctx, filepath.Join(opts.OutDir, imagestore.InitrdName), opts.AgentPath, nil); err != nil {
		return "", err
	}
	return k.Version, nil
}

// WriteBundleManifest hashes the conventional bundle files present in dir (vmlinux,
// initrd.img, rootfs.ext4), adds them to m and writes dir/manifest.json, turning dir into a
// bundle imagestore.ImportBundle accepts.
func WriteBundleManifest(dir string, m imagestore.Manifest) error {
	m.Files = nil
	for _, f := range []struct{ role, name string }{
		{model.RoleKernel, imagestore.KernelName},
		{model.RoleInitrd, imagestore.InitrdName},
		{model.RoleRootfs, imagestore.RootfsName},
	} {
		p := filepath.Join(dir, f.name)
		if _, err := os.Stat(p); os.IsNotExist(err) && f.role == model.RoleInitrd {
			continue
		}
		n, sum, err := imagestore.HashFile(p)
		if err != nil {
			return fmt.Errorf("hashing bundle file: %w", err)
		}
		m.Files = append(m.Files, model.File{Role: f.role, Name: f.name, Size: n, SHA256: sum})
	}
	if err := m.Validate(true); err != nil {
		return err
	}
	b, err := m.Encode()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, imagestore.ManifestName), b, 0o644); err != nil {
		return fmt.Errorf("writing bundle manifest: %w", err)
	}
	return nil
}

// linkOrCopy hard-links the cached kernel into the bundle (the work dir normally lives in
// the cache's file system) and copies it sparsely otherwise.
func linkOrCopy(ctx context.Context, src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	_, _, err = imagestore.WriteSparse(ctx, out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}
