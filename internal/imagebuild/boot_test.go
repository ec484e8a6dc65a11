package imagebuild

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"banger/internal/agentproto"
	"banger/internal/imagestore"
)

var cpuMHzRe = regexp.MustCompile(`(?m)^cpu MHz\s*:\s*([0-9]+)\.([0-9]{3})`)

// hostTSCkHz reads the host TSC rate that -M microvm guests need as tsc_early_khz.
func hostTSCkHz(t *testing.T) string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Fatal(err)
	}
	m := cpuMHzRe.FindSubmatch(b)
	if m == nil {
		t.Fatal("no cpu MHz in /proc/cpuinfo")
	}
	return strings.TrimLeft(string(m[1])+string(m[2]), "0")
}

// TestTinyBundleBoots boots the tiny bundle's vmlinux and initrd under QEMU (microvm, TCG,
// PVH) with a stand-in /init that loads the packed modules and mounts the rootfs: the
// pieces this package produces work together in a real guest.
func TestTinyBundleBoots(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM")
	}
	qemu := requireTool(t, "qemu-system-x86_64")
	requireTool(t, "mkfs.ext4")
	testKernel(t) // fetches into the shared cache, or skips without a kernel
	work := t.TempDir()
	initBin := filepath.Join(work, "smokeinit")
	build := exec.Command("go", "build", "-o", initBin, "./testdata/smokeinit")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building smoke init: %v\n%s", err, out)
	}
	dir, err := BuildTiny(context.Background(), TinyOptions{CacheDir: testCacheDir(), AgentPath: initBin, WorkDir: work, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	checkInitrdModules(t, filepath.Join(dir, imagestore.InitrdName))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu,
		"-M", "microvm", "-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
		"-kernel", filepath.Join(dir, imagestore.KernelName),
		"-initrd", filepath.Join(dir, imagestore.InitrdName),
		"-append", "console=ttyS0 tsc_early_khz="+hostTSCkHz(t)+" panic=-1 loglevel=4",
		"-drive", "id=root,file="+filepath.Join(dir, imagestore.RootfsName)+",format=raw,if=none,readonly=on",
		"-device", "virtio-blk-device,drive=root",
	)
	var console bytes.Buffer
	pr, pw, _ := os.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	result := ""
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		line := sc.Text()
		console.WriteString(line + "\n")
		if strings.Contains(line, "SMOKE-OK") || strings.Contains(line, "SMOKE-FAIL") {
			result = line
			break
		}
	}
	took := time.Since(start)
	// Only the QEMU this test started is stopped, through its own handle.
	cmd.Process.Kill()
	cmd.Wait()
	if !strings.Contains(result, "SMOKE-OK") {
		t.Fatalf("guest did not report success (%q) after %v; console:\n%s", result, took, console.String())
	}
	if !strings.Contains(result, "unsigned=1") {
		t.Errorf("the guest kernel loaded no unsigned module: %s", result)
	}
	t.Logf("guest reached /init, loaded modules and mounted the tiny rootfs in %v: %s", took, strings.TrimSpace(result))
}

// checkInitrdModules: the bundle's initrd carries its modules without signatures and an
// order file that lists each module's dependencies.
func checkInitrdModules(t *testing.T, initrd string) {
	t.Helper()
	entries := readNewcFile(t, initrd)
	mods := 0
	for _, e := range entries {
		switch {
		case e.Name == InitrdModuleList:
			for _, line := range strings.Split(strings.TrimSpace(string(e.Data)), "\n") {
				if _, _, listed := agentproto.ParseModuleOrderLine(line); !listed {
					t.Errorf("order line %q lists no dependencies", line)
				}
			}
		case strings.HasSuffix(e.Name, ".ko"):
			mods++
			if bytes.HasSuffix(e.Data, []byte(moduleSigMagic)) {
				t.Errorf("%s is still signed", e.Name)
			}
		}
	}
	if mods == 0 {
		t.Error("the initrd holds no modules")
	}
}
