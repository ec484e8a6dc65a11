// Package testkernel hands tests the guest kernel the product itself would boot: Debian's
// current cloud kernel, fetched through apt by imagebuild.DebianKernel into the shared test
// cache, never a path or ABI version of one machine. Only tests import it.
package testkernel

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"banger/internal/imagebuild"
	"banger/internal/testkit"
)

var (
	once    sync.Once
	kernel  imagebuild.KernelPkg
	vmlinux string
	err     error
)

// Get returns the unpacked kernel package and its vmlinux (the PVH ELF both VMMs boot),
// fetched once per test binary. Without apt or a reachable mirror the test skips (fails under
// CI=true) with the reason.
func Get(t testing.TB) (imagebuild.KernelPkg, string) {
	t.Helper()
	once.Do(func() {
		ctx := context.Background()
		kernel, err = imagebuild.DebianKernel(ctx, testkit.CacheDir(), slog.New(slog.DiscardHandler))
		if err == nil {
			vmlinux, err = imagebuild.KernelVmlinux(ctx, kernel)
		}
	})
	if err != nil {
		testkit.Missing(t, "fetching the Debian guest kernel (%s) into %s: %v", imagebuild.DebianKernelMeta, testkit.CacheDir(), err)
	}
	return kernel, vmlinux
}

var (
	microOnce sync.Once
	micro     imagebuild.MicrovmKernel
	microErr  error
)

// Microvm returns banger's microVM kernel (imagebuild.BuildMicrovmKernel), compiled once
// per machine into the shared test cache under the hash of its config fragment, source
// package version and compiler — the same place the product's `image build tiny --kernel
// microvm` looks when its cache_dir is the test cache, so either finds the other's build.
// Without the kernel source or build tools the test skips (fails under CI=true).
func Microvm(t testing.TB) imagebuild.MicrovmKernel {
	t.Helper()
	microOnce.Do(func() {
		log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
		micro, microErr = imagebuild.BuildMicrovmKernel(context.Background(), imagebuild.MicrovmOptions{
			CacheDir: testkit.CacheDir(), Log: log})
	})
	if microErr != nil {
		testkit.Missing(t, "building the microvm kernel into %s: %v", testkit.CacheDir(), microErr)
	}
	return micro
}

// testWriter logs the build's few lines through the first test that asked for it.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
