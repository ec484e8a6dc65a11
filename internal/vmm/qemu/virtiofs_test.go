package qemu

import (
	"slices"
	"strings"
	"testing"

	"banger/internal/vmm"
)

// A VM with shares gets shared memfd RAM, modern virtio-mmio (vhost-user refuses legacy
// devices) and one vhost-user-fs device per share; a VM without shares gets none of it.
func TestBuildArgsShares(t *testing.T) {
	spec := testSpec("/vms/web")
	plain := strings.Join(buildArgs(spec, plan{Accel: "tcg", Machine: "microvm", QMPPath: "/vms/web/qmp.sock"}), " ")
	for _, s := range []string{"memfd", "vhost-user-fs", "force-legacy"} {
		if strings.Contains(plain, s) {
			t.Errorf("a VM without shares has %s: %s", s, plain)
		}
	}
	spec.Shares = []vmm.Share{{Tag: "bgr0", Source: "/nonexistent/banger-test/src", ReadOnly: true}, {Tag: "bgr1", Source: "/nonexistent/banger-test/data"}}
	args := buildArgs(spec, plan{Accel: "tcg", Machine: "microvm", QMPPath: "/vms/web/qmp.sock"})
	if got := pairs(args, "-object"); !slices.Contains(got, "memory-backend-memfd,id=microvm.ram,size=512M,share=on") {
		t.Errorf("-object %q", got)
	}
	if got := pairs(args, "-machine"); len(got) != 1 || !strings.HasSuffix(got[0], ",memory-backend=microvm.ram") {
		t.Errorf("-machine %q", got)
	}
	if got := pairs(args, "-global"); !slices.Equal(got, []string{"virtio-mmio.force-legacy=false"}) {
		t.Errorf("-global %q", got)
	}
	devs := pairs(args, "-device")
	for _, want := range []string{"vhost-user-fs-device,queue-size=1024,chardev=vfs-bgr0,tag=bgr0", "vhost-user-fs-device,queue-size=1024,chardev=vfs-bgr1,tag=bgr1"} {
		if !slices.Contains(devs, want) {
			t.Errorf("no %s in %q", want, devs)
		}
	}
	if got := pairs(args, "-chardev"); !slices.Contains(got, "socket,id=vfs-bgr0,path=/vms/web/vfs-bgr0.sock") {
		t.Errorf("-chardev %q", got)
	}
	// The host directory itself never reaches QEMU's command line (virtiofsd serves it).
	if strings.Contains(strings.Join(args, " "), "/nonexistent/banger-test/src") {
		t.Errorf("the shared directory is on QEMU's command line: %q", args)
	}
	q35 := buildArgs(spec, plan{Accel: "tcg", Machine: "q35", QMPPath: "/vms/web/qmp.sock"})
	if !slices.Contains(pairs(q35, "-device"), "vhost-user-fs-pci,queue-size=1024,chardev=vfs-bgr0,tag=bgr0") || len(pairs(q35, "-global")) != 0 {
		t.Errorf("q35: %q", q35)
	}
}

func TestValidateShares(t *testing.T) {
	for _, s := range [][]vmm.Share{
		{{Tag: "x", Source: "/a"}},
		{{Tag: "bgr0", Source: "rel"}},
		{{Tag: "bgr0", Source: "/a/../b"}},
		{{Tag: "bgr0", Source: "/a"}, {Tag: "bgr0", Source: "/b"}},
	} {
		spec := testSpec("/vms/web")
		spec.Shares = s
		if err := validateShares(spec); err == nil {
			t.Errorf("%+v accepted", s)
		}
	}
	spec := testSpec("/vms/" + strings.Repeat("d", 100))
	spec.Shares = []vmm.Share{{Tag: "bgr0", Source: "/a"}}
	if err := validateShares(spec); err == nil {
		t.Error("a socket path over the unix limit was accepted")
	}
}
