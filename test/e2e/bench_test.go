package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/imagebuild"
	"banger/internal/model"
	"banger/internal/rpc"
	"banger/internal/testkit/testkernel"
	"banger/internal/vmm/qemu"
)

// The boot benchmarks are measured against a floor taken in the same `go test -bench`
// invocation. BenchmarkFloorBoot, the floor on its own, boots the vmlinux banger boots,
// with the machine, accelerator, CPU model and base kernel arguments banger uses
// (qemu.MachineArgs via Driver.BareCommand), into an initramfs holding only a static PID 1
// that writes a line and reboots; the clock runs from QEMU's start to its exit. Each banger
// boot benchmark boots that floor once more after each of its iterations (untimed) and
// reports its median over the median of those interleaved floor boots as the metric
// "x-floor", and logs a line scripts can read:
//
//	ratio bench=CreateToReady baseline=FloorBoot value=1.43
//
// Interleaving keeps the ratio honest on a shared machine whose load drifts within one
// invocation.

// floorSamples are the floor boot times measured so far in this process.
var (
	floorMu      sync.Mutex
	floorSamples []time.Duration
)

func BenchmarkFloorBoot(b *testing.B) {
	x := needB(b)
	bin, args := x.floorCommand(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		el := floorBoot(b, bin, args)
		floorMu.Lock()
		floorSamples = append(floorSamples, el)
		floorMu.Unlock()
	}
	b.StopTimer()
	b.ReportMetric(float64(floorMedian(b, x).Microseconds())/1000, "ms-median")
	b.ReportMetric(float64(floorInitMedian(args).Milliseconds()), "ms-init-uptime")
}

// floorCommand builds the floor's PID 1 and initramfs once and returns the QEMU command
// that boots them.
func (x *env) floorCommand(b *testing.B) (string, []string) {
	b.Helper()
	_, vmlinux := testkernel.Get(b)
	return x.floorCommandFor(b, vmlinux)
}

// floorCommandFor is floorCommand booting the kernel vmlinux.
func (x *env) floorCommandFor(b *testing.B, vmlinux string) (string, []string) {
	b.Helper()
	floorOnce.Do(func() {
		dir := filepath.Join(x.dir, "floor")
		if floorErr = os.MkdirAll(dir, 0o755); floorErr != nil {
			return
		}
		init := filepath.Join(dir, "init")
		cmd := exec.Command("go", "build", "-o", init, "./floorinit")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			floorErr = fmt.Errorf("building floorinit: %v: %s", err, out)
			return
		}
		floorInitrd = filepath.Join(dir, "init.cpio")
		floorErr = imagebuild.BuildInitOnlyInitrd(floorInitrd, init)
	})
	if floorErr != nil {
		b.Fatal(floorErr)
	}
	// The e2e daemon's VMs: 256M (the harness config) and the default vcpu count.
	bin, args, err := qemu.New(qemu.Config{}).BareCommand(vmlinux, floorInitrd, 256, benchVCPU())
	if err != nil {
		b.Fatal(err)
	}
	return bin, args
}

var (
	floorOnce   sync.Once
	floorInitrd string
	floorErr    error
)

// floorBoot runs QEMU once and returns the time from its start to its exit.
func floorBoot(b *testing.B, bin string, args []string) time.Duration {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	el := time.Since(start)
	if err != nil || !strings.Contains(out.String(), floorLine) {
		b.Fatalf("floor boot: %v; console:\n%s", err, tail(out.String(), 30))
	}
	if m := floorUptime.FindStringSubmatch(out.String()); m != nil {
		if ms, err := strconv.Atoi(m[1]); err == nil {
			k := kernelArg(args)
			floorMu.Lock()
			floorInitUptime[k] = append(floorInitUptime[k], time.Duration(ms)*time.Millisecond)
			floorMu.Unlock()
		}
	}
	return el
}

// kernelArg is the -kernel argument of a QEMU command line: the floor's init uptimes are
// kept per kernel.
func kernelArg(args []string) string {
	for i, a := range args {
		if a == "-kernel" && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// floorInitMedian is the median uptime at which the floor's PID 1 started with the kernel
// of the QEMU command args.
func floorInitMedian(args []string) time.Duration {
	floorMu.Lock()
	defer floorMu.Unlock()
	return median(floorInitUptime[kernelArg(args)])
}

// floorLine is what test/e2e/floorinit prints (it is a main package, so not importable),
// followed by the guest uptime at its start.
const floorLine = "floorinit: reached"

var (
	floorUptime = regexp.MustCompile(`floorinit: reached uptime_ms=([0-9]+)`)
	// floorInitUptime is the floor guests' uptime when PID 1 started, per kernel: compare
	// with the "init" stage of a banger VM's boot timeline.
	floorInitUptime = map[string][]time.Duration{}
)

// floorMedian is the median floor boot of this process, measuring three when none ran yet.
func floorMedian(b *testing.B, x *env) time.Duration {
	b.Helper()
	floorMu.Lock()
	n := len(floorSamples)
	floorMu.Unlock()
	if n == 0 {
		bin, args := x.floorCommand(b)
		for i := 0; i < 3; i++ {
			el := floorBoot(b, bin, args)
			floorMu.Lock()
			floorSamples = append(floorSamples, el)
			floorMu.Unlock()
		}
	}
	floorMu.Lock()
	defer floorMu.Unlock()
	return median(floorSamples)
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// interleavedFloor boots the floor once, outside the timer: each boot benchmark takes one
// floor boot per iteration, so its ratio compares boots made under the same load (on a
// shared machine the load drifts within one invocation).
func (x *env) interleavedFloor(b *testing.B, floors *[]time.Duration) {
	b.Helper()
	bin, args := x.floorCommand(b)
	*floors = append(*floors, floorBoot(b, bin, args))
}

// reportRatio reports samples' median over the median of the floor boots interleaved with
// them (or, without those, of this process's floor boots) as "x-floor" and logs the
// ratio line.
func reportRatio(b *testing.B, x *env, name string, samples, floors []time.Duration) {
	b.Helper()
	floor := median(floors)
	if floor <= 0 {
		floor = floorMedian(b, x)
	}
	m := median(samples)
	if floor <= 0 || m <= 0 {
		return
	}
	b.ReportMetric(float64(m.Microseconds())/1000, "ms-median")
	logRatio(b, name, "FloorBoot", "x-floor", m, floor, len(samples))
}

// logRatio reports m/floor as metric unit and logs the ratio line scripts read.
func logRatio(b *testing.B, name, baseline, unit string, m, floor time.Duration, n int) {
	b.Helper()
	ratio := float64(m) / float64(floor)
	b.ReportMetric(ratio, unit)
	b.Logf("ratio bench=%s baseline=%s value=%.3f median_ms=%.1f floor_ms=%.1f n=%d",
		name, baseline, ratio, float64(m.Microseconds())/1000, float64(floor.Microseconds())/1000, n)
}

// BenchmarkCreateToReady is `banger vm create` until the guest agent answers.
func BenchmarkCreateToReady(b *testing.B) {
	x := needB(b)
	x.warmImage(b)
	var samples, floors []time.Duration
	var tl timelines
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		name := fmt.Sprintf("bench-%d", i)
		start := time.Now()
		if out, errOut, code := x.cli(nil, "vm", "create", "-q", "--name", name); code != 0 {
			b.Fatalf("vm create: %d %s %s", code, out, errOut)
		}
		samples = append(samples, time.Since(start))
		b.StopTimer()
		tl.add(x, name)
		x.cli(nil, "vm", "rm", "-f", name)
		x.interleavedFloor(b, &floors)
		b.StartTimer()
	}
	b.StopTimer()
	reportRatio(b, x, "CreateToReady", samples, floors)
	tl.report(b, "CreateToReady")
}

// timelines gathers the guest's boot stages of each benchmark boot (untimed): where the
// time above the floor goes. A daemon that records no timeline (older builds) adds none.
type timelines struct {
	stages map[string][]time.Duration // stage name -> guest uptime at it
	order  []string
	// initToServing is, per boot, agent_serving minus init: the guest init's own work.
	initToServing []time.Duration
}

func (t *timelines) add(x *env, name string) {
	out, _, code := x.cli(nil, "vm", "show", "--json", name)
	var vm model.VM
	if code != 0 || json.Unmarshal([]byte(out), &vm) != nil || vm.Boot == nil {
		return
	}
	if t.stages == nil {
		t.stages = map[string][]time.Duration{}
	}
	at := map[string]int64{}
	for _, st := range vm.Boot.Guest {
		at[st.Name] = st.MS
		if _, ok := t.stages[st.Name]; !ok {
			t.order = append(t.order, st.Name)
		}
		t.stages[st.Name] = append(t.stages[st.Name], time.Duration(st.MS)*time.Millisecond)
	}
	if i, ok := at[model.GuestStageInit]; ok {
		if s, ok := at[model.GuestStageAgentServing]; ok {
			t.initToServing = append(t.initToServing, time.Duration(s-i)*time.Millisecond)
		}
	}
}

// report logs the median guest uptime at each stage, and reports init (the kernel's hand
// over, comparable to FloorBoot's ms-init-uptime) and init to agent serving.
func (t *timelines) report(b *testing.B, bench string) {
	if len(t.stages) == 0 {
		return
	}
	var parts []string
	for _, n := range t.order {
		parts = append(parts, fmt.Sprintf("%s=%d", n, median(t.stages[n]).Milliseconds()))
	}
	b.Logf("timeline bench=%s guest_uptime_ms %s", bench, strings.Join(parts, " "))
	if init := median(t.stages[model.GuestStageInit]); init > 0 {
		b.ReportMetric(float64(init.Milliseconds()), "ms-guest-init")
	}
	if len(t.initToServing) > 0 {
		b.ReportMetric(float64(median(t.initToServing).Milliseconds()), "ms-init-to-serving")
	}
}

// BenchmarkVMRunTrue is the whole user-visible cycle: `banger vm run --rm -- true`
// (create disks, tap, boot, agent ready, exec, stop, delete).
func BenchmarkVMRunTrue(b *testing.B) {
	x := needB(b)
	x.warmImage(b)
	var samples, floors []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if out, errOut, code := x.cli(nil, "vm", "run", "--rm", "-q", "--", "true"); code != 0 {
			b.Fatalf("vm run: %d %s %s", code, out, errOut)
		}
		samples = append(samples, time.Since(start))
		b.StopTimer()
		x.interleavedFloor(b, &floors)
		b.StartTimer()
	}
	b.StopTimer()
	reportRatio(b, x, "VMRunTrue", samples, floors)
}

func needB(b *testing.B) *env {
	b.Helper()
	if miss := missingPrereqs(); len(miss) > 0 {
		b.Skipf("benchmarks need: %v", miss)
	}
	if setupErr != nil {
		b.Fatal(setupErr)
	}
	return e
}

// warmImage makes sure the default image is installed so no benchmark times a build.
func (x *env) warmImage(b *testing.B) {
	b.Helper()
	if _, _, code := x.cli(nil, "image", "show", "tiny"); code == 0 {
		return
	}
	x.mustCLIB(b, "image", "build", "tiny")
}

func (x *env) mustCLIB(b *testing.B, args ...string) string {
	b.Helper()
	out, errOut, code := x.cli(nil, args...)
	if code != 0 {
		b.Fatalf("banger %v: exit %d %s %s", args, code, out, errOut)
	}
	return out
}

// BenchmarkExecTrue is one `banger vm exec VM -- true` round trip on a running VM: CLI
// start, RPC, stream splice, agent fork/exec/wait, exit code back.
func BenchmarkExecTrue(b *testing.B) {
	x := needB(b)
	x.warmImage(b)
	x.mustCLIB(b, "vm", "create", "-q", "--name", "bench-exec")
	defer x.cli(nil, "vm", "rm", "-f", "bench-exec")
	execBench(b, x, "ExecTrue", "bench-exec")
}

// execBench times `banger vm exec VM -- true` b.N times and reports the median.
func execBench(b *testing.B, x *env, name, vm string) {
	b.Helper()
	var samples []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if _, errOut, code := x.cli(nil, "vm", "exec", vm, "--", "true"); code != 0 {
			b.Fatalf("exec: %d %s", code, errOut)
		}
		samples = append(samples, time.Since(start))
	}
	b.StopTimer()
	m := median(samples)
	b.ReportMetric(float64(m.Microseconds())/1000, "ms-median")
	b.Logf("exec bench=%s median_ms=%.1f n=%d", name, float64(m.Microseconds())/1000, len(samples))
}

// BenchmarkCopyIn64MiB copies a 64 MiB file into a running VM's work disk.
func BenchmarkCopyIn64MiB(b *testing.B) {
	x := needB(b)
	x.warmImage(b)
	x.mustCLIB(b, "vm", "create", "-q", "--name", "bench-cp")
	defer x.cli(nil, "vm", "rm", "-f", "bench-cp")
	src := filepath.Join(b.TempDir(), "blob")
	f, err := os.Create(src)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	for i := 0; i < 64; i++ {
		f.Write(buf)
	}
	f.Close()
	b.SetBytes(64 << 20)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, errOut, code := x.cli(nil, "vm", "cp", src, "bench-cp:/root/blob"); code != 0 {
			b.Fatalf("cp: %d %s", code, errOut)
		}
	}
}

// createNoStart is one vm.create --no-start over the daemon's socket (no CLI process): the
// control plane alone — validate, reserve, disks, row.
func (x *env) createNoStart(ctx context.Context, name string) (model.VM, error) {
	c, err := rpc.Dial(ctx, x.socket)
	if err != nil {
		return model.VM{}, err
	}
	defer c.Close()
	var res api.VMResult
	err = c.Call(ctx, api.MethodVMCreate, api.VMCreateParams{Name: name, NoStart: true}, &res)
	return res.VM, err
}

func (x *env) deleteVM(ctx context.Context, b *testing.B, name string) {
	c, err := rpc.Dial(ctx, x.socket)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if err := c.Call(ctx, api.MethodVMDelete, api.VMDeleteParams{VM: name, Force: true}, nil); err != nil {
		b.Fatalf("deleting %s: %v", name, err)
	}
}

// BenchmarkCreateSequential is one `vm create --no-start` after another over the socket;
// it reports the median (p50) create.
func BenchmarkCreateSequential(b *testing.B) {
	x := needB(b)
	x.warmImage(b)
	ctx := context.Background()
	var samples []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		name := fmt.Sprintf("seq-%d", i)
		start := time.Now()
		if _, err := x.createNoStart(ctx, name); err != nil {
			b.Fatalf("create %s: %v", name, err)
		}
		samples = append(samples, time.Since(start))
		b.StopTimer()
		x.deleteVM(ctx, b, name)
		b.StartTimer()
	}
	b.StopTimer()
	p50 := median(samples)
	b.ReportMetric(float64(p50.Microseconds())/1000, "ms-p50")
	b.Logf("create bench=CreateSequential p50_ms=%.2f n=%d", float64(p50.Microseconds())/1000, len(samples))
}

// BenchmarkCreateParallel is 100 `vm create --no-start` at once, each on its own
// connection; one op is the whole batch (wall time). Every name and guest IP must be
// distinct.
func BenchmarkCreateParallel(b *testing.B) {
	const n = 100
	x := needB(b)
	x.warmImage(b)
	ctx := context.Background()
	var walls []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		vms := make([]model.VM, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		start := time.Now()
		for j := 0; j < n; j++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				vms[j], errs[j] = x.createNoStart(ctx, fmt.Sprintf("par-%d-%d", i, j))
			}()
		}
		wg.Wait()
		walls = append(walls, time.Since(start))
		b.StopTimer()
		names, ips := map[string]bool{}, map[string]bool{}
		for j, err := range errs {
			if err != nil {
				b.Fatalf("create %d: %v", j, err)
			}
			if names[vms[j].Name] || ips[vms[j].GuestIP] {
				b.Fatalf("create %d: name %s or IP %s handed out twice", j, vms[j].Name, vms[j].GuestIP)
			}
			names[vms[j].Name], ips[vms[j].GuestIP] = true, true
		}
		for j := 0; j < n; j++ {
			x.deleteVM(ctx, b, vms[j].Name)
		}
		b.StartTimer()
	}
	b.StopTimer()
	m := median(walls)
	b.ReportMetric(float64(m.Microseconds())/1e6, "s-wall-100")
	b.ReportMetric(n/m.Seconds(), "creates/s")
	b.Logf("create bench=CreateParallel n=%d wall_s=%.3f creates_per_s=%.0f", n, m.Seconds(), n/m.Seconds())
}

// benchVCPU is the vcpu count of the e2e daemon's VMs and of the floor: 1 (banger's default)
// unless BANGER_E2E_VCPU says otherwise, so the boot benchmarks can compare vCPU counts
// with the floor always booting the same count as banger.
func benchVCPU() int {
	if n, err := strconv.Atoi(os.Getenv("BANGER_E2E_VCPU")); err == nil && n > 0 {
		return n
	}
	return 1
}
