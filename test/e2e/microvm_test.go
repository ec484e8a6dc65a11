package e2e

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"banger/internal/model"
)

// microvmImage is the image `banger image build tiny --kernel microvm` names.
const microvmImage = "tiny-microvm"

// TestMicrovmKernelImage builds the tiny image on banger's microVM kernel through the
// product path (`banger image build tiny --kernel microvm`: the daemon compiles the kernel
// from Debian's linux-source into its cache_dir, the shared test cache, under the hash of
// the config fragment, so a rerun does not compile again), boots a VM from it, and checks
// that it answers exec, that its kernel has no module support, and that its boot timeline
// says no modules were loaded.
func TestMicrovmKernelImage(t *testing.T) {
	x := need(t)
	x.ensureMicrovmImage(t)

	var im model.Image
	if err := json.Unmarshal([]byte(x.mustCLI(t, "image", "show", "--json", microvmImage)), &im); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(im.Source, "kernel:microvm") {
		t.Errorf("image source %q does not name the microvm kernel", im.Source)
	}

	x.mustCLI(t, "vm", "create", "-q", "--image", microvmImage, "--name", "e2e-microvm")
	defer x.cli(nil, "vm", "rm", "-f", "e2e-microvm")

	// /proc/modules exists only in a kernel with CONFIG_MODULES; the disks and the network
	// work, so every driver is built in.
	out := x.mustCLI(t, "vm", "exec", "e2e-microvm", "--", "sh", "-c",
		"test -e /proc/modules && echo has-modules; uname -r; cat /proc/mounts; ip -4 addr show eth0; cat /proc/filesystems")
	if strings.Contains(out, "has-modules") {
		t.Errorf("the microvm kernel has module support:\n%s", out)
	}
	// The file systems other features mount: virtiofs for --mount, built in too.
	for _, want := range []string{"microvm", "overlay / overlay", "/dev/vdc /root ext4", "inet ", "\tvirtiofs", "\tfuse"} {
		if !strings.Contains(out, want) {
			t.Errorf("guest output lacks %q:\n%s", want, out)
		}
	}

	var vm model.VM
	if err := json.Unmarshal([]byte(x.mustCLI(t, "vm", "show", "--json", "e2e-microvm")), &vm); err != nil {
		t.Fatal(err)
	}
	if vm.Boot == nil {
		t.Fatal("vm show --json has no boot timeline")
	}
	var names []string
	for _, s := range vm.Boot.Guest {
		names = append(names, s.Name)
	}
	if !slices.Contains(names, model.GuestStageNoModules) || slices.Contains(names, model.GuestStageModules) {
		t.Errorf("guest stages %v: want %s and no %s", names, model.GuestStageNoModules, model.GuestStageModules)
	}
	for _, want := range []string{model.GuestStageInit, model.GuestStageRoot, model.GuestStageNetwork, model.GuestStageAgentServing} {
		if !slices.Contains(names, want) {
			t.Errorf("guest stages %v lack %s", names, want)
		}
	}
	if human := x.mustCLI(t, "vm", "show", "e2e-microvm"); !strings.Contains(human, model.GuestStageNoModules) {
		t.Errorf("vm show does not say no modules were loaded:\n%s", human)
	}
}

// ensureMicrovmImage builds the tiny-microvm image once per suite through the CLI.
func (x *env) ensureMicrovmImage(t testing.TB) {
	t.Helper()
	if _, _, code := x.cli(nil, "image", "show", microvmImage); code == 0 {
		return
	}
	out, errOut, code := x.cli(nil, "image", "build", "tiny", "--kernel", "microvm")
	if code != 0 {
		t.Fatalf("image build tiny --kernel microvm: exit %d\n%s\n%s", code, out, errOut)
	}
}

// TestMicrovmKernelRefusedElsewhere: --kernel is the tiny builder's, and only debian or
// microvm; a bad value names the flag and the value, and builds nothing.
func TestMicrovmKernelRefusedElsewhere(t *testing.T) {
	x := need(t)
	for _, args := range [][]string{
		{"image", "build", "tiny", "--kernel", "vanilla", "--name", "e2e-badkernel"},
		{"image", "build", "--debian", "bookworm", "--kernel", "microvm", "--name", "e2e-badkernel"},
	} {
		_, errOut, code := x.cli(nil, args...)
		if code == 0 || !strings.Contains(errOut, "kernel") {
			t.Errorf("banger %v: exit %d, want an error naming kernel:\n%s", args, code, errOut)
		}
	}
	if out, _, code := x.cli(nil, "image", "show", "e2e-badkernel"); code == 0 {
		t.Errorf("a refused build left an image:\n%s", out)
	}
}
