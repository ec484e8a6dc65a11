package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/errdefs"
	"banger/internal/rpc"
	"banger/internal/testkit"
)

// importCall is image.import through the daemon's socket.
func (td *testDaemon) importCall(ctx context.Context, p api.ImageImportParams) error {
	return rpc.Call(ctx, td.cfg.Socket, api.MethodImageImport, p, nil)
}

// returnsWithin runs fn, failing the test if it is still blocked after a bound far beyond
// what the call takes when it works.

// stagingDirs lists the import staging directories in the image store.
func (td *testDaemon) stagingDirs() []string {
	m, _ := filepath.Glob(filepath.Join(td.cfg.ImagesDir(), ".tmp-*"))
	return m
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A directory or /proc/self/mem where a file is expected is an invalid argument naming the
// field, on the wire too (it was internal).
func TestImageImportNonFilesAreInvalidArguments(t *testing.T) {
	td := startDaemon(t, t.TempDir(), "172.30.9.1/24")
	src := t.TempDir()
	fakeBundle(t, src)
	kernel, rootfs := filepath.Join(src, "vmlinux"), filepath.Join(src, "rootfs.ext4")
	ctx := context.Background()
	for _, bad := range []string{t.TempDir(), "/proc/self/mem"} {
		err := td.importCall(ctx, api.ImageImportParams{Name: "x", Kernel: bad, Rootfs: rootfs})
		testkit.WantInvalidArgument(t, "kernel "+bad, err, "kernel", bad)
		err = td.importCall(ctx, api.ImageImportParams{Name: "x", Kernel: kernel, Rootfs: bad})
		testkit.WantInvalidArgument(t, "rootfs "+bad, err, "rootfs", bad)
		err = td.importCall(ctx, api.ImageImportParams{Name: "x", Kernel: kernel, Initrd: bad, Rootfs: rootfs})
		testkit.WantInvalidArgument(t, "initrd "+bad, err, "initrd", bad)
	}
	err := td.importCall(ctx, api.ImageImportParams{Bundle: "/proc/self/mem"})
	testkit.WantInvalidArgument(t, "bundle /proc/self/mem", err, "bundle", "/proc/self/mem")
}

// Importing a FIFO used to block forever in open(2) holding the image lock, and then the
// daemon's shutdown. It is refused at once, and other image work goes on.
func TestImageImportFIFOIsRefusedPromptly(t *testing.T) {
	td := startDaemon(t, t.TempDir(), "172.30.10.1/24")
	src := t.TempDir()
	fakeBundle(t, src)
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	// Release a blocked open(2) at the end (read-write opens of a FIFO never block), so a
	// regression fails instead of hanging the daemon's shutdown.
	t.Cleanup(func() {
		if f, err := os.OpenFile(fifo, os.O_RDWR, 0); err == nil {
			f.Close()
		}
	})
	ctx := context.Background()
	err := testkit.Within(t, "FIFO kernel", func() error {
		return td.importCall(ctx, api.ImageImportParams{Name: "fifo", Kernel: fifo, Rootfs: filepath.Join(src, "rootfs.ext4")})
	})
	testkit.WantInvalidArgument(t, "FIFO kernel", err, "kernel", fifo, "FIFO")
	err = testkit.Within(t, "FIFO bundle", func() error {
		return td.importCall(ctx, api.ImageImportParams{Bundle: fifo})
	})
	testkit.WantInvalidArgument(t, "FIFO bundle", err, "bundle", fifo)
	err = testkit.Within(t, "import after the FIFOs", func() error {
		return td.importCall(ctx, api.ImageImportParams{Name: "ok", Kernel: filepath.Join(src, "vmlinux"), Rootfs: filepath.Join(src, "rootfs.ext4")})
	})
	if err != nil {
		t.Fatalf("import after the FIFOs: %v", err)
	}
}

// hugeRootfs is a real ext4 image followed by 100 GiB of holes: within MaxRootfsBytes, so an
// import reads and hashes it, which takes minutes and costs no disk.
func hugeRootfs(t *testing.T, src string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "huge.ext4")
	b, err := os.ReadFile(filepath.Join(src, "rootfs.ext4"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, 100<<30); err != nil {
		t.Fatal(err)
	}
	return p
}

// While one import is busy reading and hashing its input, other image work is not held up
// (the lock is taken only to publish), and when that import's client hangs up the import
// stops and leaves no staging directory and no image behind.
func TestImageImportHoldsNoLockAndStopsOnHangup(t *testing.T) {
	td := startDaemon(t, t.TempDir(), "172.30.11.1/24")
	src := t.TempDir()
	fakeBundle(t, src)
	kernel := filepath.Join(src, "vmlinux")
	huge := hugeRootfs(t, src)

	ctx, hangUp := context.WithCancel(context.Background())
	defer hangUp()
	slow := make(chan error, 1)
	go func() { slow <- td.importCall(ctx, api.ImageImportParams{Name: "huge", Kernel: kernel, Rootfs: huge}) }()
	waitUntil(t, "the huge import to start copying", func() bool {
		for _, d := range td.stagingDirs() {
			if _, err := os.Stat(filepath.Join(d, "rootfs.ext4")); err == nil {
				return true
			}
		}
		return false
	})

	bg := context.Background()
	err := testkit.Within(t, "a second import during the huge one", func() error {
		return td.importCall(bg, api.ImageImportParams{Name: "small", Kernel: kernel, Rootfs: filepath.Join(src, "rootfs.ext4")})
	})
	if err != nil {
		t.Fatalf("second import: %v", err)
	}
	err = testkit.Within(t, "image rm during the huge import", func() error {
		return rpc.Call(bg, td.cfg.Socket, api.MethodImageDelete, api.ImageRef{Image: "small"}, nil)
	})
	if err != nil {
		t.Fatalf("image rm: %v", err)
	}

	hangUp()
	if err := <-slow; !errors.Is(err, context.Canceled) {
		t.Fatalf("client side of the huge import: %v", err)
	}
	waitUntil(t, "the abandoned import to remove its staging dir", func() bool { return len(td.stagingDirs()) == 0 })
	if _, err := td.d.store.ResolveImage(bg, "huge"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("abandoned import left an image row: %v", err)
	}
	ents, _ := os.ReadDir(td.cfg.ImagesDir())
	for _, e := range ents {
		t.Errorf("image store holds %s after the abandoned import", e.Name())
	}
}
