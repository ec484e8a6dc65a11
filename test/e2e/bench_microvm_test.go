package e2e

import (
	"fmt"
	"testing"
	"time"

	"banger/internal/testkit/testkernel"
)

// The microvm kernel side by side with Debian's (issue 13). BenchmarkFloorBootMicrovm is
// the floor (bare QEMU, the same machine flags, the static PID 1 initramfs) booting banger's
// microvm kernel; the banger benchmarks on the tiny-microvm image interleave, after each
// iteration, one floor boot of each kernel, and report their median over both:
//
//	ratio bench=CreateToReadyMicrovm baseline=FloorBootMicrovm value=…   (x-floor: its own kernel's floor)
//	ratio bench=CreateToReadyMicrovm baseline=FloorBoot value=…          (x-debian-floor)
//
// Run them in the same invocation as the Debian ones:
//
//	-bench 'FloorBoot|CreateToReady|VMRunTrue'

// BenchmarkFloorBootMicrovm is BenchmarkFloorBoot with the microvm kernel; a Debian floor
// boot after each iteration (untimed) gives its ratio to the Debian floor.
func BenchmarkFloorBootMicrovm(b *testing.B) {
	x := needB(b)
	bin, args := x.microvmFloorCommand(b)
	dbin, dargs := x.floorCommand(b)
	var samples, dfloors []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		samples = append(samples, floorBoot(b, bin, args))
		b.StopTimer()
		dfloors = append(dfloors, floorBoot(b, dbin, dargs))
		b.StartTimer()
	}
	b.StopTimer()
	m := median(samples)
	b.ReportMetric(float64(m.Microseconds())/1000, "ms-median")
	b.ReportMetric(float64(floorInitMedian(args).Milliseconds()), "ms-init-uptime")
	logRatio(b, "FloorBootMicrovm", "FloorBoot", "x-debian-floor", m, median(dfloors), len(samples))
}

// microvmFloorCommand is the floor's QEMU command with the microvm kernel (compiled into
// the shared test cache if it is not there yet: do that before taking the e2e lock, e.g.
// with `go test -run TestBuildMicrovmKernel ./internal/imagebuild`).
func (x *env) microvmFloorCommand(b *testing.B) (string, []string) {
	b.Helper()
	return x.floorCommandFor(b, testkernel.Microvm(b).Vmlinux)
}

// microvmBench times one command per iteration on the tiny-microvm image and reports it
// against both floors booted after each iteration.
func microvmBench(b *testing.B, name string, run func(i int) error, after func(i int)) {
	x := needB(b)
	x.ensureMicrovmImage(b)
	mbin, margs := x.microvmFloorCommand(b)
	dbin, dargs := x.floorCommand(b)
	var samples, mfloors, dfloors []time.Duration
	var tl timelines
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if err := run(i); err != nil {
			b.Fatal(err)
		}
		samples = append(samples, time.Since(start))
		b.StopTimer()
		if after != nil {
			tl.add(x, fmt.Sprintf("benchm-%d", i))
			after(i)
		}
		mfloors = append(mfloors, floorBoot(b, mbin, margs))
		dfloors = append(dfloors, floorBoot(b, dbin, dargs))
		b.StartTimer()
	}
	b.StopTimer()
	m := median(samples)
	b.ReportMetric(float64(m.Microseconds())/1000, "ms-median")
	logRatio(b, name, "FloorBootMicrovm", "x-floor", m, median(mfloors), len(samples))
	logRatio(b, name, "FloorBoot", "x-debian-floor", m, median(dfloors), len(samples))
	tl.report(b, name)
}

// BenchmarkCreateToReadyMicrovm is BenchmarkCreateToReady on the tiny-microvm image.
func BenchmarkCreateToReadyMicrovm(b *testing.B) {
	x := needB(b)
	microvmBench(b, "CreateToReadyMicrovm", func(i int) error {
		if out, errOut, code := x.cli(nil, "vm", "create", "-q", "--image", microvmImage, "--name", fmt.Sprintf("benchm-%d", i)); code != 0 {
			return fmt.Errorf("vm create: %d %s %s", code, out, errOut)
		}
		return nil
	}, func(i int) { x.cli(nil, "vm", "rm", "-f", fmt.Sprintf("benchm-%d", i)) })
}

// BenchmarkVMRunTrueMicrovm is BenchmarkVMRunTrue on the tiny-microvm image.
func BenchmarkVMRunTrueMicrovm(b *testing.B) {
	x := needB(b)
	microvmBench(b, "VMRunTrueMicrovm", func(int) error {
		if out, errOut, code := x.cli(nil, "vm", "run", "--rm", "-q", "--image", microvmImage, "--", "true"); code != 0 {
			return fmt.Errorf("vm run: %d %s %s", code, out, errOut)
		}
		return nil
	}, nil)
}

// BenchmarkExecTrueMicrovm is BenchmarkExecTrue on a tiny-microvm VM.
func BenchmarkExecTrueMicrovm(b *testing.B) {
	x := needB(b)
	x.ensureMicrovmImage(b)
	x.mustCLIB(b, "vm", "create", "-q", "--image", microvmImage, "--name", "benchm-exec")
	defer x.cli(nil, "vm", "rm", "-f", "benchm-exec")
	execBench(b, x, "ExecTrueMicrovm", "benchm-exec")
}
