package imagebuild

import (
	"slices"
	"testing"
)

func TestGuestModulesOrder(t *testing.T) {
	k := testKernel(t)
	mods, err := GuestModules(k.ModulesDir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range mods {
		names = append(names, m.Name)
	}
	t.Logf("load order: %v", names)
	builtin, err := readBuiltin(k.ModulesDir + "/modules.builtin")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"virtio_ring", "virtio", "virtio_pci", "virtio_mmio", "virtio_blk", "virtio_net", "virtio_console", "overlay"} {
		if !slices.Contains(names, want) && !builtin[want] {
			t.Errorf("%s neither loaded nor built in", want)
		}
	}
	for i, m := range mods {
		deps, err := moduleDepends(m.Path)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range deps {
			if builtin[d] {
				continue
			}
			j := slices.Index(names, d)
			if j < 0 || j > i {
				t.Errorf("%s depends on %s, which is at %d (module at %d)", m.Name, d, j, i)
			}
		}
	}
	if slices.Contains(names, "ext4") {
		t.Error("ext4 is built in and must not be in the list")
	}
}
