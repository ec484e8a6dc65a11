package qemu

import (
	"banger/internal/testkit"
	"banger/internal/testkit/testkernel"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// requireBoot skips (or fails, under CI=true) when this host cannot boot a test guest. The
// kernel is Debian's current cloud kernel, fetched through apt into the shared test cache.
func requireBoot(t *testing.T) {
	t.Helper()
	testkit.Tool(t, "qemu-system-x86_64")
	testkit.Tool(t, "busybox")
	testkernel.Get(t)
}

// cpioWriter writes a "newc" cpio archive, the format the kernel unpacks as an initramfs.
type cpioWriter struct {
	buf bytes.Buffer
	ino int
}

func (w *cpioWriter) entry(name string, mode uint32, data []byte) {
	w.ino++
	fmt.Fprintf(&w.buf, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		w.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	w.buf.WriteString(name)
	w.buf.WriteByte(0)
	w.pad()
	w.buf.Write(data)
	w.pad()
}

func (w *cpioWriter) pad() {
	for w.buf.Len()%4 != 0 {
		w.buf.WriteByte(0)
	}
}

func (w *cpioWriter) dir(name string)               { w.entry(name, 0o040755, nil) }
func (w *cpioWriter) file(name string, data []byte) { w.entry(name, 0o100755, data) }
func (w *cpioWriter) symlink(name, target string)   { w.entry(name, 0o120777, []byte(target)) }
func (w *cpioWriter) finish() []byte                { w.entry("TRAILER!!!", 0, nil); return w.buf.Bytes() }

// testModules is the load order from the boot notes, for the virtio-serial channel.
var testModules = []struct{ name, path string }{
	{"virtio_ring", "kernel/drivers/virtio/virtio_ring.ko"},
	{"virtio", "kernel/drivers/virtio/virtio.ko"},
	{"virtio_pci_legacy_dev", "kernel/drivers/virtio/virtio_pci_legacy_dev.ko"},
	{"virtio_pci_modern_dev", "kernel/drivers/virtio/virtio_pci_modern_dev.ko"},
	{"virtio_pci", "kernel/drivers/virtio/virtio_pci.ko"},
	{"virtio_mmio", "kernel/drivers/virtio/virtio_mmio.ko"},
	{"virtio_console", "kernel/drivers/char/virtio_console.ko"},
}

// testInit waits for the agent port and finds it by name, writes one line to it (the write blocks until the
// host connects) and reboots, which makes QEMU exit under -no-reboot.
const testInit = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in %s; do insmod /modules/$m.ko || echo "insmod $m failed"; done
# Ports appear asynchronously, after the host announces them on the control queue.
port=
i=0
while [ -z "$port" ] && [ $i -lt 500 ]; do
  for f in /sys/class/virtio-ports/*/name; do
    [ -e "$f" ] && [ "$(cat $f)" = "%s" ] && port=/dev/$(basename $(dirname $f))
  done
  [ -z "$port" ] && usleep 10000
  i=$((i+1))
done
echo "agent port: $port"
echo "banger-test-ready $(cut -d' ' -f1 /proc/uptime)" > "$port"
echo "line written"
reboot -f
`

// buildInitrd writes the test initramfs into dir and returns its path.
func buildInitrd(t *testing.T, dir string) string {
	t.Helper()
	bb, err := os.ReadFile(testkit.Tool(t, "busybox"))
	if err != nil {
		t.Fatal(err)
	}
	var w cpioWriter
	w.dir("bin")
	w.dir("modules")
	w.file("bin/busybox", bb)
	w.symlink("bin/sh", "busybox")
	k, _ := testkernel.Get(t)
	var names string
	for _, m := range testModules {
		b, err := os.ReadFile(filepath.Join(k.ModulesDir, m.path))
		if err != nil {
			t.Fatal(err)
		}
		w.file("modules/"+m.name+".ko", b)
		names += m.name + " "
	}
	w.file("init", fmt.Appendf(nil, testInit, names, "banger.agent"))
	path := filepath.Join(dir, "initrd.cpio")
	if err := os.WriteFile(path, w.finish(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// testKernel returns the guest kernel as a vmlinux ELF (PVH boot), as images carry it.
func testKernel(t *testing.T) string {
	t.Helper()
	_, vmlinux := testkernel.Get(t)
	return vmlinux
}
