package guest

import (
	"banger/internal/agentproto"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeModules writes an initrd module directory as an image builder before the order
// file's deps= field did: each module's file holds a .modinfo-like "depends=" string, as
// the kernel's .ko files do, and the order file names only the files.
func fakeModules(t *testing.T, mods [][2]string) string {
	return fakeModulesAs(t, mods, false)
}

// fakeModulesAs is fakeModules; with listDeps the dependencies are only in the order
// file's deps= fields (the module files hold no .modinfo), as the image builder writes it
// now.
func fakeModulesAs(t *testing.T, mods [][2]string, listDeps bool) string {
	t.Helper()
	dir := t.TempDir()
	var order strings.Builder
	for _, m := range mods {
		data := "\x7fELF junk\x00license=GPL\x00depends=" + m[1] + "\x00vermagic=6.1\x00"
		line := m[0] + ".ko"
		if listDeps {
			data = "\x7fELF junk without modinfo"
			line = agentproto.ModuleOrderLine(line, strings.Split(m[1], ","))
		}
		if err := os.WriteFile(filepath.Join(dir, m[0]+".ko"), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		order.WriteString(line + "\n")
	}
	if err := os.WriteFile(filepath.Join(dir, moduleOrderRel), []byte(order.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

type loadRecord struct {
	mu     sync.Mutex
	starts map[string]time.Time
	ends   map[string]time.Time
}

func testLoader(t *testing.T, rec *loadRecord, devices map[string]bool, pci bool) *modLoader {
	rec.starts, rec.ends = map[string]time.Time{}, map[string]time.Time{}
	return &modLoader{
		log: testLogger(),
		load: func(path string, compressed bool) error {
			name := moduleFileName(filepath.Base(path))
			rec.mu.Lock()
			rec.starts[name] = time.Now()
			rec.mu.Unlock()
			time.Sleep(5 * time.Millisecond)
			rec.mu.Lock()
			rec.ends[name] = time.Now()
			rec.mu.Unlock()
			return nil
		},
		devices:   func() (map[string]bool, error) { return devices, nil },
		pciVirtio: func() (bool, error) { return pci, nil },
	}
}

var guestLikeModules = [][2]string{
	{"virtio_ring", ""}, {"virtio", "virtio_ring"},
	{"virtio_pci_modern_dev", ""}, {"virtio_pci", "virtio,virtio_ring,virtio_pci_modern_dev"},
	{"virtio_mmio", "virtio,virtio_ring"}, {"virtio_blk", "virtio,virtio_ring"},
	{"failover", ""}, {"net_failover", "failover"}, {"virtio_net", "virtio,net_failover,virtio_ring"},
	{"virtio_console", "virtio,virtio_ring"}, {"overlay", ""},
	{"vsock", ""}, {"vmw_vsock_virtio_transport_common", "vsock,virtio,virtio_ring"},
	{"vmw_vsock_virtio_transport", "vsock,virtio,vmw_vsock_virtio_transport_common,virtio_ring"},
}

func TestModulesLoadAfterDepsAndOnlyWhenNeeded(t *testing.T) {
	t.Run("deps in the order file", func(t *testing.T) { testModulesLoadAfterDeps(t, true) })
	t.Run("deps in the modules (older initrd)", func(t *testing.T) { testModulesLoadAfterDeps(t, false) })
}

func testModulesLoadAfterDeps(t *testing.T, listDeps bool) {
	dir := fakeModulesAs(t, guestLikeModules, listDeps)
	var rec loadRecord
	// QEMU microvm: virtio-mmio only, a disk, a NIC and a console, no vsock.
	l := testLoader(t, &rec, map[string]bool{"0x0001": true, "0x0002": true, "0x0003": true}, false)
	l.start(dir).finish()

	var loaded []string
	for n := range rec.starts {
		loaded = append(loaded, n)
	}
	slices.Sort(loaded)
	want := []string{"failover", "net_failover", "overlay", "virtio", "virtio_blk", "virtio_console", "virtio_mmio", "virtio_net", "virtio_ring"}
	if !slices.Equal(loaded, want) {
		t.Errorf("loaded %v, want %v", loaded, want)
	}
	for _, m := range guestLikeModules {
		start, ok := rec.starts[m[0]]
		if !ok {
			continue
		}
		for _, d := range strings.Split(m[1], ",") {
			if end, ok := rec.ends[d]; d != "" && ok && start.Before(end) {
				t.Errorf("%s started before its dependency %s finished", m[0], d)
			}
		}
	}
	// Drivers bind only once every transport registered its devices: a disk probed while
	// virtio_mmio still adds devices would take another disk's name.
	for _, drv := range []string{"virtio_blk", "virtio_net", "virtio_console"} {
		if rec.starts[drv].Before(rec.ends["virtio_mmio"]) {
			t.Errorf("%s started before the virtio_mmio transport finished", drv)
		}
	}
	// Independent modules overlap: overlay need not wait for the virtio chain.
	if !rec.starts["overlay"].Before(rec.ends["virtio_ring"]) && !rec.starts["virtio_ring"].Before(rec.ends["overlay"]) {
		t.Error("independent modules were loaded one after the other")
	}
}

func TestModulesForFirecrackerAndQ35(t *testing.T) {
	dir := fakeModules(t, guestLikeModules)
	var rec loadRecord
	// Firecracker: vsock present, no NIC asked for; q35-like PCI bus with virtio.
	testLoader(t, &rec, map[string]bool{"0x0002": true, "0x0003": true, "0x0013": true}, true).start(dir).finish()
	for _, n := range []string{"vsock", "vmw_vsock_virtio_transport", "virtio_pci", "virtio_pci_modern_dev"} {
		if _, ok := rec.starts[n]; !ok {
			t.Errorf("%s not loaded", n)
		}
	}
	for _, n := range []string{"virtio_net", "net_failover"} {
		if _, ok := rec.starts[n]; ok {
			t.Errorf("%s loaded without a NIC", n)
		}
	}
}

// TestModulesCannotDeadlock: a dependency listed after its dependent, a cycle and a
// module naming itself do not stall the boot.
func TestModulesCannotDeadlock(t *testing.T) {
	for _, listDeps := range []bool{false, true} {
		testModulesCannotDeadlock(t, fakeModulesAs(t, [][2]string{{"a", "b"}, {"b", "a"}, {"c", "c,missing"}}, listDeps))
	}
}

func testModulesCannotDeadlock(t *testing.T, dir string) {
	var rec loadRecord
	done := make(chan struct{})
	go func() {
		testLoader(t, &rec, nil, false).start(dir).finish()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("module loading stalled")
	}
	if len(rec.starts) != 3 {
		t.Errorf("loaded %v, want a, b and c", rec.starts)
	}
}
