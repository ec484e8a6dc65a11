package imagebuild

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"banger/internal/errdefs"
)

// ModuleFile is a kernel module to put into an initrd.
type ModuleFile struct {
	Name string // module name with '_' (virtio_net)
	Path string // .ko, .ko.xz, .ko.zst or .ko.gz on the host
	// DropSignature puts the module into the initrd without its signature, so the guest
	// kernel does not spend boot time verifying it (modsig.go). Only for a kernel that
	// does not require signed modules.
	DropSignature bool
}

// guestModule is a module the guest init loads, in load order. Required ones must exist as
// a module or be built in; optional ones (vsock for Firecracker, split virtio-pci helpers that
// only newer kernels have, net failover) are skipped when the kernel lacks them.
type guestModule struct {
	name     string
	required bool
}

var guestModuleList = []guestModule{
	{"virtio_ring", true},
	{"virtio", true},
	{"virtio_pci_legacy_dev", false},
	{"virtio_pci_modern_dev", false},
	{"virtio_pci", true},
	{"virtio_mmio", true},
	{"virtio_blk", true},
	{"failover", false},
	{"net_failover", false},
	{"virtio_net", true},
	{"virtio_console", true},
	{"overlay", true},
	{"vsock", false},
	{"vmw_vsock_virtio_transport_common", false},
	{"vmw_vsock_virtio_transport", false},
	// Shared folders (--mount); the guest init loads them only for a virtiofs device.
	{"fuse", false},
	{"virtiofs", false},
}

// GuestModuleNames lists the modules GuestModules looks for, in load order.
func GuestModuleNames() []string {
	out := make([]string, len(guestModuleList))
	for i, m := range guestModuleList {
		out[i] = m.name
	}
	return out
}

// GuestModules resolves the modules a banger guest needs (virtio transports, disk, net and
// console, overlayfs, vsock) in modulesDir (lib/modules/<release>), in an order that loads:
// each module's dependencies, read from its .modinfo, come before it, so this works on an
// unpacked package without depmod's modules.dep. Modules built into the kernel (listed in
// modules.builtin) are skipped.
func GuestModules(modulesDir string) ([]ModuleFile, error) {
	builtin, err := readBuiltin(filepath.Join(modulesDir, "modules.builtin"))
	if err != nil {
		return nil, err
	}
	files := map[string]string{}
	err = filepath.WalkDir(filepath.Join(modulesDir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if name, ok := moduleName(d.Name()); ok && d.Type().IsRegular() {
			files[name] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing modules in %s: %w", modulesDir, err)
	}
	var out []ModuleFile
	added := map[string]bool{}
	visiting := map[string]bool{}
	var add func(name string, required bool, chain []string) error
	add = func(name string, required bool, chain []string) error {
		if added[name] || builtin[name] {
			return nil
		}
		path, ok := files[name]
		if !ok {
			if required {
				return errdefs.New(errdefs.ErrNotFound, "kernel module %s (needed by %s) is neither built in nor present in %s", name, strings.Join(chain, " <- "), modulesDir)
			}
			return nil
		}
		if visiting[name] {
			return fmt.Errorf("kernel module dependency cycle at %s", name)
		}
		visiting[name] = true
		deps, err := moduleDepends(path)
		if err != nil {
			return err
		}
		for _, d := range deps {
			// A dependency is needed regardless of whether its dependent was optional.
			if err := add(d, true, append(chain, d)); err != nil {
				return err
			}
		}
		visiting[name] = false
		added[name] = true
		out = append(out, ModuleFile{Name: name, Path: path})
		return nil
	}
	for _, m := range guestModuleList {
		if err := add(m.name, m.required, []string{"banger guest"}); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// moduleName returns the normalised module name of a module file name.
func moduleName(file string) (string, bool) {
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if base, ok := strings.CutSuffix(file, ext); ok {
			return strings.ReplaceAll(base, "-", "_"), true
		}
	}
	return "", false
}

func readBuiltin(path string) (map[string]bool, error) {
	out := map[string]bool{}
	f, err := os.Open(path)
	if err != nil {
		if os.IsNotExist(err) {
			return out, nil
		}
		return nil, fmt.Errorf("reading builtin module list: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if name, ok := moduleName(filepath.Base(strings.TrimSpace(sc.Text()))); ok {
			out[name] = true
		}
	}
	return out, sc.Err()
}

// moduleDepends reads the depends= field of a module's .modinfo section.
func moduleDepends(path string) ([]string, error) {
	data, err := ReadModule(path)
	if err != nil {
		return nil, err
	}
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", path, err)
	}
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("module %s has no .modinfo section", path)
	}
	info, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("module %s: reading .modinfo: %w", path, err)
	}
	for _, field := range bytes.Split(info, []byte{0}) {
		if v, ok := bytes.CutPrefix(field, []byte("depends=")); ok {
			var deps []string
			for _, d := range strings.Split(string(v), ",") {
				if d = strings.TrimSpace(d); d != "" {
					deps = append(deps, strings.ReplaceAll(d, "-", "_"))
				}
			}
			return deps, nil
		}
	}
	return nil, nil
}

// ReadModule returns a module's uncompressed ELF bytes. Uncompressed modules in the initrd
// let the guest insmod them without in-kernel or userspace decompression support.
func ReadModule(path string) ([]byte, error) {
	switch {
	case strings.HasSuffix(path, ".ko"):
		return os.ReadFile(path)
	case strings.HasSuffix(path, ".ko.gz"):
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		zr, err := gzip.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("module %s: %w", path, err)
		}
		return io.ReadAll(zr)
	case strings.HasSuffix(path, ".ko.xz"):
		return runDecompress(path, "xz", "xz-utils")
	case strings.HasSuffix(path, ".ko.zst"):
		return runDecompress(path, "zstd", "zstd")
	}
	return nil, fmt.Errorf("module %s: unknown file type", path)
}

func runDecompress(path, tool, pkg string) ([]byte, error) {
	bin, err := exec.LookPath(tool)
	if err != nil {
		return nil, errdefs.WithHint(fmt.Errorf("module %s needs %s to decompress: %w", path, tool, err), "apt-get install "+pkg)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "-dc", path)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("decompressing module %s: %w: %s", path, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}
