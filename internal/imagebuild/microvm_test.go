package imagebuild

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"banger/internal/testkit"
)

func TestMicrovmFragmentSetsEveryRequiredOption(t *testing.T) {
	frag := parseKconfig(MicrovmConfig)
	for _, o := range RequiredMicrovmOptions {
		if frag["CONFIG_"+o] != "y" {
			t.Errorf("kernelconfig/microvm.config does not set CONFIG_%s=y", o)
		}
	}
	for _, o := range ForbiddenMicrovmOptions {
		if frag["CONFIG_"+o] != "n" {
			t.Errorf("kernelconfig/microvm.config does not unset CONFIG_%s", o)
		}
	}
}

// goodConfig is a final .config as olddefconfig would leave it for the fragment.
func goodConfig() []byte {
	var b bytes.Buffer
	for opt, v := range parseKconfig(MicrovmConfig) {
		if v == "n" {
			b.WriteString("# " + opt + " is not set\n")
		} else {
			b.WriteString(opt + "=" + v + "\n")
		}
	}
	b.WriteString("CONFIG_CRC32=y\nCONFIG_CMDLINE=\"\"\n")
	return b.Bytes()
}

func TestCheckMicrovmConfig(t *testing.T) {
	if err := CheckMicrovmConfig(goodConfig(), MicrovmConfig); err != nil {
		t.Fatalf("a config with everything: %v", err)
	}
	// Kconfig drops an option whose dependencies are off (VIRTIO_BLK without BLK_DEV):
	// the check must catch it, naming the option.
	dropped := bytes.Replace(goodConfig(), []byte("CONFIG_VIRTIO_BLK=y\n"), nil, 1)
	if err := CheckMicrovmConfig(dropped, MicrovmConfig); err == nil || !strings.Contains(err.Error(), "CONFIG_VIRTIO_BLK=n (want y)") {
		t.Errorf("a config without virtio-blk: %v", err)
	}
	mods := bytes.Replace(goodConfig(), []byte("# CONFIG_MODULES is not set\n"), []byte("CONFIG_MODULES=y\n"), 1)
	if err := CheckMicrovmConfig(mods, MicrovmConfig); err == nil || !strings.Contains(err.Error(), "CONFIG_MODULES=y (want n)") {
		t.Errorf("a config with modules: %v", err)
	}
	// A required option the fragment forgot is still checked.
	noPVH := []byte(strings.ReplaceAll(string(MicrovmConfig), "CONFIG_PVH=y", ""))
	cfg := bytes.Replace(goodConfig(), []byte("CONFIG_PVH=y\n"), nil, 1)
	if err := CheckMicrovmConfig(cfg, noPVH); err == nil || !strings.Contains(err.Error(), "CONFIG_PVH") {
		t.Errorf("a config without PVH, fragment without PVH: %v", err)
	}
}

func TestMicrovmKeyCoversEveryInput(t *testing.T) {
	base := MicrovmKey(MicrovmConfig, "6.1.192-3", "gcc (Debian 12.2.0-14) 12.2.0")
	for name, k := range map[string]string{
		"fragment": MicrovmKey(append(slices.Clone(MicrovmConfig), "CONFIG_IPV6=y\n"...), "6.1.192-3", "gcc (Debian 12.2.0-14) 12.2.0"),
		"source":   MicrovmKey(MicrovmConfig, "6.1.192-4", "gcc (Debian 12.2.0-14) 12.2.0"),
		"compiler": MicrovmKey(MicrovmConfig, "6.1.192-3", "gcc (Debian 12.2.0-15) 12.2.0"),
	} {
		if k == base {
			t.Errorf("a changed %s keeps the cache key", name)
		}
	}
	if again := MicrovmKey(MicrovmConfig, "6.1.192-3", "gcc (Debian 12.2.0-14) 12.2.0"); again != base {
		t.Error("the key is not deterministic")
	}
}

func note(name string, typ uint32, desc []byte) []byte {
	var b bytes.Buffer
	n := append([]byte(name), 0)
	binary.Write(&b, binary.LittleEndian, uint32(len(n)))
	binary.Write(&b, binary.LittleEndian, uint32(len(desc)))
	binary.Write(&b, binary.LittleEndian, typ)
	b.Write(n)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	b.Write(desc)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	return b.Bytes()
}

func TestHasPVHNote(t *testing.T) {
	pvh := note("Xen", xenElfnotePhys32Entry, []byte{1, 2, 3, 4})
	other := note("GNU", 3, []byte{9, 9, 9, 9, 9, 9, 9, 9})
	if !hasPVHNote(append(other, pvh...)) {
		t.Error("PVH note after another note not found")
	}
	if hasPVHNote(other) || hasPVHNote(note("Xen", 5, []byte{1})) {
		t.Error("a note that is not the PVH entry counted")
	}
	// A truncated or lying note must not be read past its end.
	bad := append(slices.Clone(pvh[:12]), 0xff)
	binary.LittleEndian.PutUint32(bad, 1<<31)
	if hasPVHNote(bad) {
		t.Error("a truncated note counted")
	}
	if err := CheckPVHEntry(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("a missing kernel passed")
	}
}

func TestValidKernel(t *testing.T) {
	for _, ok := range []string{"", KernelDebian, KernelMicrovm} {
		if err := ValidKernel("kernel", ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	testkit.WantInvalidArgument(t, "vanilla", ValidKernel("kernel", "vanilla"), "kernel", "vanilla")
}

// TestBuildMicrovmKernel compiles the microvm kernel for real into the shared test cache
// (minutes on the first run of a machine, then a cache hit): the configuration took, the
// vmlinux has its PVH entry, a second build is served from the cache without a step.
func TestBuildMicrovmKernel(t *testing.T) {
	if miss := CheckMicrovmPrereqs(); len(miss) > 0 {
		testkit.Missing(t, "compiling the microvm kernel needs %v (scripts/install-deps.sh)", miss)
	}
	if _, err := installedKernelSource(context.Background()); err != nil && os.Geteuid() != 0 {
		testkit.Missing(t, "the kernel source: %v (scripts/install-deps.sh installs %s)", err, DebianSourceMeta)
	}
	var mu sync.Mutex
	var steps []string
	var lines int64
	progress := func(step string, n int64) {
		mu.Lock()
		defer mu.Unlock()
		if len(steps) == 0 || steps[len(steps)-1] != step {
			steps = append(steps, step)
		}
		if step == "compile" && n > lines {
			lines = n
		}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	opts := MicrovmOptions{CacheDir: testkit.CacheDir(), Log: log, Progress: progress}
	k, err := BuildMicrovmKernel(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("microvm kernel %s at %s, steps %v, %d compile lines", k.Version, k.Vmlinux, steps, lines)
	if len(steps) > 1 && (!slices.Equal(steps, []string{"extract", "configure", "compile", "done"}) || lines == 0) {
		t.Errorf("a compiling build reported steps %v with %d lines", steps, lines)
	}
	if err := CheckPVHEntry(k.Vmlinux); err != nil {
		t.Error(err)
	}
	cfg, err := os.ReadFile(k.Config)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckMicrovmConfig(cfg, MicrovmConfig); err != nil {
		t.Error(err)
	}
	if !strings.Contains(k.Version, "-microvm-") || !strings.HasPrefix(k.Key, k.Version[strings.LastIndex(k.Version, "-")+1:]) {
		t.Errorf("version %q does not name the key %s", k.Version, k.Key)
	}
	steps = nil
	again, err := BuildMicrovmKernel(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if again != k || !slices.Equal(steps, []string{"done"}) {
		t.Errorf("second build: %+v steps %v, want the cached %+v with no step", again, steps, k)
	}
}

// A build killed with its process leaves its directory; the next build removes it once it
// is old enough that no running build can own it, and leaves young ones alone.
func TestSweepStaleBuilds(t *testing.T) {
	base := t.TempDir()
	old, young := filepath.Join(base, ".build-1"), filepath.Join(base, ".build-2")
	for _, d := range []string{old, young, filepath.Join(base, "0123456789abcdef")} {
		if err := os.MkdirAll(filepath.Join(d, "linux-source-6.1"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	past := time.Now().Add(-2 * staleBuild)
	if err := os.Chtimes(old, past, past); err != nil {
		t.Fatal(err)
	}
	sweepStaleBuilds(base, slog.New(slog.DiscardHandler))
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("stale build dir kept: %v", err)
	}
	for _, d := range []string{young, filepath.Join(base, "0123456789abcdef")} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s removed: %v", d, err)
		}
	}
}

// A cancelled build leaves no process behind: the compilers make started die with it.
func TestNicedKillsTheWholeGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child")
	ctx, cancel := context.WithCancel(context.Background())
	cmd := niced(ctx, t.TempDir(), "sh", "-c", "sleep 300 & echo $! > "+pidFile+"; wait")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var pid int
	for deadline := time.Now().Add(10 * time.Second); pid == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if b, err := os.ReadFile(pidFile); err == nil && len(b) > 1 {
			pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
	}
	if pid == 0 {
		t.Fatal("the child never started")
	}
	cancel()
	_ = cmd.Wait()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if syscall.Kill(pid, 0) != nil {
			return
		}
	}
	syscall.Kill(pid, syscall.SIGKILL)
	t.Fatalf("the build's child %d outlived the cancelled build", pid)
}
