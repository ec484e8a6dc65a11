// Package testkernel hands tests the guest kernel the product itself would boot: Debian's
// current cloud kernel, fetched through apt by imagebuild.DebianKernel into the shared test
// cache, never a path or ABI version of one machine. Only tests import it.
package testkernel

import (
	"context"
	"log/slog"
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
