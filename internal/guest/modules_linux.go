package guest

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/agentproto"
)

// Module loading is a third of the guest's own boot time under TCG, so init loads the
// initrd's modules concurrently, each once its dependencies (the depends= field of its
// .modinfo) are in and, for virtio drivers, once the transports are (so devices probe in
// the order they were registered and the disks keep their names vda, vdb, vdc), and leaves out those for hardware the VM does not have: the virtio-pci
// transport on a machine with no virtio PCI device (microvm), the vsock transport
// without a virtio vsock device (QEMU), the network driver without a virtio NIC. While
// one module's init waits for its device (a disk's partition table, the console's control
// queue), another's runs.

// virtio device IDs (virtio spec 5) of the drivers loaded only for present devices.
const (
	virtioIDNet   = "0x0001"
	virtioIDVsock = "0x0013"
	virtioIDFS    = "0x001a" // virtiofs: shared folders (mounts_linux.go)
)

// modCondition says when a module is needed. Modules not listed always load.
type modCondition int

const (
	modAlways     modCondition = iota
	modPCI                     // a virtio device on the PCI bus
	modVirtioNet               // a virtio network device
	modVirtioSock              // a virtio vsock device
	modVirtioFS                // a virtiofs device (a VM with shared folders)
)

var moduleConditions = map[string]modCondition{
	"virtio_pci": modPCI, "virtio_pci_legacy_dev": modPCI, "virtio_pci_modern_dev": modPCI,
	"virtio_net": modVirtioNet, "net_failover": modVirtioNet, "failover": modVirtioNet,
	"vsock": modVirtioSock, "vmw_vsock_virtio_transport_common": modVirtioSock, "vmw_vsock_virtio_transport": modVirtioSock,
	"fuse": modVirtioFS, "virtiofs": modVirtioFS,
}

// transportModules make virtio devices appear on the virtio bus; device conditions are
// decided once they are loaded.
var transportModules = map[string]bool{"virtio_mmio": true, "virtio_pci": true}

// transports lists transportModules' names.
func transports() []string { return []string{"virtio_mmio", "virtio_pci"} }

// hostSysfs is where the loader looks for devices; a variable for tests.
var hostSysfs = "/sys"

type modJob struct {
	name string // normalised: '-' as '_'
	file string
	path string
	deps []string
	cond modCondition
	// driver: a virtio device driver (depends on virtio, not a transport); it loads only
	// once every transport has registered its devices.
	driver bool

	done    chan struct{}
	loaded  bool
	skipped bool
	took    time.Duration
	err     error
}

// modLoader loads modules with load (unix.FinitModule outside tests).
type modLoader struct {
	log  *slog.Logger
	load func(path string, compressed bool) error
	// devices reports the virtio device IDs present, after the transports loaded.
	devices   func() (map[string]bool, error)
	pciVirtio func() (bool, error)
}

func newModLoader(log *slog.Logger) *modLoader {
	return &modLoader{log: log, load: finitModule, devices: virtioDevices, pciVirtio: hasPCIVirtio}
}

func finitModule(path string, compressed bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	flags := 0
	if compressed {
		flags = unix.MODULE_INIT_COMPRESSED_FILE
	}
	return unix.FinitModule(int(f.Fd()), "", flags)
}

// loadModules loads the .ko files named in dir/order, one per line, each after its
// dependencies, concurrently where they allow. Missing files are skipped with a log line:
// the image builder decides what is needed.
func loadModules(dir string, log *slog.Logger) {
	newModLoader(log).start(dir).finish()
}

// modSet is a load in progress.
type modSet struct {
	l     *modLoader
	jobs  map[string]*modJob
	order []*modJob
	wg    sync.WaitGroup
}

// wait returns once each named module is loaded, skipped or failed; a name the initrd
// does not hold (built in, or not shipped) does not wait.
func (m *modSet) wait(names ...string) {
	for _, n := range names {
		if j := m.jobs[n]; j != nil {
			<-j.done
		}
	}
}

// start begins loading the modules of dir in the background.
func (l *modLoader) start(dir string) *modSet {
	m := &modSet{l: l, jobs: map[string]*modJob{}}
	b, err := os.ReadFile(filepath.Join(dir, moduleOrderRel))
	if err != nil {
		l.log.Info("no kernel modules to load", "dir", dir, "err", err)
		return m
	}
	jobs := m.jobs
	for _, line := range strings.Split(string(b), "\n") {
		file, deps, listed := agentproto.ParseModuleOrderLine(line)
		if file == "" {
			continue
		}
		p := filepath.Join(dir, filepath.Clean("/"+file))
		name := moduleFileName(filepath.Base(p))
		if jobs[name] != nil {
			continue
		}
		j := &modJob{name: name, file: file, path: p, cond: moduleConditions[name], done: make(chan struct{})}
		if !listed {
			// An initrd built before the order file listed dependencies: read them from
			// the module's .modinfo.
			data, err := os.ReadFile(p)
			if err == nil {
				deps = agentproto.ModuleDepends(data)
			}
		}
		if _, err := os.Stat(p); err != nil {
			l.log.Warn("kernel module missing, skipped", "module", file, "err", err)
			j.skipped = true
			close(j.done)
		} else {
			// Only modules listed earlier count as dependencies (the image builder lists
			// dependencies first): a dependency cycle cannot stall the boot.
			for _, d := range deps {
				if jobs[d] != nil {
					j.deps = append(j.deps, d)
				}
			}
		}
		jobs[name] = j
		m.order = append(m.order, j)
	}
	order := m.order

	// Transports first make devices visible; device conditions and drivers wait for them.
	var transports []*modJob
	for _, j := range order {
		if transportModules[j.name] {
			transports = append(transports, j)
		}
	}
	for _, j := range order {
		j.driver = !transportModules[j.name] && slices.Contains(j.deps, "virtio")
	}
	var devOnce sync.Once
	var devs map[string]bool
	present := func(id string) bool {
		devOnce.Do(func() {
			for _, t := range transports {
				<-t.done
			}
			var err error
			if devs, err = l.devices(); err != nil {
				l.log.Warn("cannot list virtio devices; loading every module", "err", err)
				devs = nil
			}
		})
		return devs == nil || devs[id]
	}
	pci, err := l.pciVirtio()
	if err != nil {
		l.log.Warn("cannot list PCI devices; loading the virtio-pci transport", "err", err)
		pci = true
	}

	for _, j := range order {
		if j.skipped {
			continue
		}
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			defer close(j.done)
			for _, d := range j.deps {
				<-jobs[d].done
			}
			if j.driver {
				// A virtio driver binds to the devices the transports registered in the
				// order they were registered only when they are all there first: a disk
				// probed while the transport still adds devices could be named vda
				// instead of vdb, and the guest finds its disks by those names.
				for _, t := range transports {
					<-t.done
				}
			}
			switch j.cond {
			case modPCI:
				j.skipped = !pci
			case modVirtioNet:
				j.skipped = !present(virtioIDNet)
			case modVirtioSock:
				j.skipped = !present(virtioIDVsock)
			case modVirtioFS:
				j.skipped = !present(virtioIDFS)
			}
			if j.skipped {
				return
			}
			compressed := strings.HasSuffix(j.file, ".xz") || strings.HasSuffix(j.file, ".zst") || strings.HasSuffix(j.file, ".gz")
			t0 := time.Now()
			err := l.load(j.path, compressed)
			j.took = time.Since(t0)
			switch {
			case err == nil:
				j.loaded = true
			case errors.Is(err, unix.EEXIST):
				// Built in or loaded already.
			default:
				j.err = err
			}
		}()
	}
	return m
}

// finish waits for every module and logs what was loaded, left out and slowest.
func (m *modSet) finish() {
	m.wg.Wait()
	l := m.l
	if len(m.order) == 0 {
		return
	}
	var loaded, skipped []string
	var slowest *modJob
	for _, j := range m.order {
		switch {
		case j.err != nil:
			l.log.Warn("loading kernel module failed", "module", j.file, "err", j.err)
		case j.loaded:
			loaded = append(loaded, j.name)
			if slowest == nil || j.took > slowest.took {
				slowest = j
			}
		case j.skipped:
			skipped = append(skipped, j.name)
		}
	}
	sort.Strings(skipped)
	attrs := []any{"count", len(loaded), "not_needed", strings.Join(skipped, ",")}
	if slowest != nil {
		attrs = append(attrs, "slowest", slowest.name, "slowest_ms", slowest.took.Milliseconds())
	}
	l.log.Info("kernel modules loaded", attrs...)
}

// moduleFileName is a module file's module name: no extension, '-' as '_'.
func moduleFileName(file string) string {
	for _, ext := range []string{".ko.xz", ".ko.zst", ".ko.gz", ".ko"} {
		if base, ok := strings.CutSuffix(file, ext); ok {
			file = base
			break
		}
	}
	return strings.ReplaceAll(file, "-", "_")
}

// virtioDevices returns the device IDs on the virtio bus ("0x0002" for a disk).
func virtioDevices() (map[string]bool, error) {
	dir := filepath.Join(hostSysfs, "bus", "virtio", "devices")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "device"))
		if err == nil {
			out[strings.TrimSpace(string(b))] = true
		}
	}
	return out, nil
}

// hasPCIVirtio reports whether a virtio device (vendor 0x1af4) sits on the PCI bus. A
// kernel without a PCI bus has no such directory: no virtio PCI device either.
func hasPCIVirtio() (bool, error) {
	dir := filepath.Join(hostSysfs, "bus", "pci", "devices")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "vendor"))
		if err == nil && strings.TrimSpace(string(b)) == "0x1af4" {
			return true, nil
		}
	}
	return false, nil
}
