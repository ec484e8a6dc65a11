package qemu

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/pierrec/lz4/v4"
)

const (
	devKernel  = "/var/cache/banger-dev/root/boot/vmlinuz-6.1.0-56-cloud-amd64"
	devModules = "/var/cache/banger-dev/root/lib/modules/6.1.0-56-cloud-amd64"
	busybox    = "/bin/busybox"
)

// requireBoot skips (or fails, under CI=true) when this host cannot boot a test guest.
func requireBoot(t *testing.T) {
	t.Helper()
	var missing []string
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		missing = append(missing, "qemu-system-x86_64")
	}
	for _, p := range []string{devKernel, devModules, busybox} {
		if _, err := os.Stat(p); err != nil {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := fmt.Sprintf("booting a guest needs %v", missing)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
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
	bb, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	var w cpioWriter
	w.dir("bin")
	w.dir("modules")
	w.file("bin/busybox", bb)
	w.symlink("bin/sh", "busybox")
	var names string
	for _, m := range testModules {
		b, err := os.ReadFile(filepath.Join(devModules, m.path))
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

var (
	kernelOnce sync.Once
	kernelPath string
	kernelErr  error
)

// testKernel returns the dev kernel as a vmlinux ELF (PVH boot, the faster path), extracted
// once per test run; if extraction fails it falls back to the bzImage.
func testKernel(t *testing.T) string {
	t.Helper()
	kernelOnce.Do(func() {
		var elf []byte
		elf, kernelErr = extractVmlinux(devKernel)
		if kernelErr != nil {
			return
		}
		dir, err := os.MkdirTemp("", "banger-qemu-test-")
		if err != nil {
			kernelErr = err
			return
		}
		kernelPath = filepath.Join(dir, "vmlinux")
		kernelErr = os.WriteFile(kernelPath, elf, 0o644)
	})
	if kernelErr != nil {
		t.Logf("using bzImage: extracting vmlinux: %v", kernelErr)
		return devKernel
	}
	return kernelPath
}

// extractVmlinux unpacks the ELF from a bzImage whose payload is LZ4 in the legacy frame
// format the kernel uses: a magic, then blocks each preceded by a 32-bit compressed size,
// and finally the 32-bit uncompressed size.
func extractVmlinux(bzImage string) ([]byte, error) {
	img, err := os.ReadFile(bzImage)
	if err != nil {
		return nil, err
	}
	if len(img) < 0x250 || string(img[0x202:0x206]) != "HdrS" {
		return nil, errors.New("not a bzImage")
	}
	setupSects := int(img[0x1f1])
	if setupSects == 0 {
		setupSects = 4
	}
	off := (setupSects+1)*512 + int(binary.LittleEndian.Uint32(img[0x248:]))
	n := int(binary.LittleEndian.Uint32(img[0x24c:]))
	if off+n > len(img) {
		return nil, errors.New("payload outside the image")
	}
	p := img[off : off+n]
	const legacyMagic = 0x184C2102
	if len(p) < 4 || binary.LittleEndian.Uint32(p) != legacyMagic {
		return nil, errors.New("payload is not LZ4 legacy")
	}
	p = p[4:]
	var out []byte
	block := make([]byte, 8<<20)
	for len(p) > 4 {
		size := int(binary.LittleEndian.Uint32(p))
		p = p[4:]
		if size == legacyMagic {
			continue
		}
		if size > len(p) {
			break
		}
		k, err := lz4.UncompressBlock(p[:size], block)
		if err != nil {
			return nil, fmt.Errorf("lz4 block: %w", err)
		}
		out = append(out, block[:k]...)
		p = p[size:]
	}
	if !bytes.HasPrefix(out, []byte("\x7fELF")) {
		return nil, errors.New("payload is not an ELF")
	}
	return out, nil
}
