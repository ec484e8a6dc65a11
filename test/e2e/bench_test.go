package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"banger/internal/guest"
	"banger/internal/imagebuild"
	"banger/internal/vmm"
	"banger/internal/vmm/qemu"
)

// BenchmarkVMRunTrue is the whole user-visible cycle: `banger vm run --rm -- true`
// (create disks, tap, boot, agent ready, exec, stop, delete).
func BenchmarkVMRunTrue(b *testing.B) {
	x := needB(b)
	x.warmImage(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if out, errOut, code := x.cli(nil, "vm", "run", "--rm", "-q", "--", "true"); code != 0 {
			b.Fatalf("vm run: %d %s %s", code, out, errOut)
		}
	}
}

// BenchmarkCreateToReady is `banger vm create` until the guest agent answers.
func BenchmarkCreateToReady(b *testing.B) {
	x := needB(b)
	x.warmImage(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		name := fmt.Sprintf("bench-%d", i)
		start := time.Now()
		if out, errOut, code := x.cli(nil, "vm", "create", "-q", "--name", name); code != 0 {
			b.Fatalf("vm create: %d %s %s", code, out, errOut)
		}
		el := time.Since(start)
		b.StopTimer()
		x.cli(nil, "vm", "rm", "-f", name)
		b.ReportMetric(float64(el.Milliseconds()), "ms-ready")
		b.StartTimer()
	}
}

// BenchmarkBareQemuBoot boots the same kernel, initrd and base image with the qemu driver
// directly (no daemon, no RPC, no tap) and stops the clock when the agent answers: the
// floor banger's own overhead is measured against.
func BenchmarkBareQemuBoot(b *testing.B) {
	x := needB(b)
	x.warmImage(b)
	var im struct {
		Dir   string                        `json:"dir"`
		Files []struct{ Role, Name string } `json:"files"`
	}
	if err := json.Unmarshal([]byte(x.mustCLIB(b, "image", "show", "--json", "tiny")), &im); err != nil {
		b.Fatal(err)
	}
	files := map[string]string{}
	for _, f := range im.Files {
		files[f.Role] = filepath.Join(im.Dir, f.Name)
	}
	drv := qemu.New(qemu.Config{})
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		dir := b.TempDir()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		for _, d := range []string{"system.cow", "root.ext4"} {
			if err := imagebuild.MakeEmptyExt4(ctx, filepath.Join(dir, d), 1<<30, d); err != nil {
				b.Fatal(err)
			}
		}
		spec := vmm.Spec{
			ID: fmt.Sprintf("bare%d", i), Name: "bare", Dir: dir,
			Kernel: files["kernel"], Initrd: files["initrd"],
			BootArgs: guest.ParamName + "=bare " + guest.ParamRoot + "=/dev/vda " + guest.ParamSystem + "=/dev/vdb " + guest.ParamWork + "=/dev/vdc",
			Drives: []vmm.Drive{
				{ID: "rootfs", Path: files["rootfs"], ReadOnly: true, Root: true},
				{ID: "system", Path: filepath.Join(dir, "system.cow")},
				{ID: "work", Path: filepath.Join(dir, "root.ext4")},
			},
			VCPU: 1, MemoryMiB: 256,
			LogPath: filepath.Join(dir, "console.log"), MetricsPath: filepath.Join(dir, "metrics"),
			CID: 3, ChannelPath: filepath.Join(dir, "agent.sock"),
		}
		b.StartTimer()
		m, err := drv.Start(ctx, spec)
		if err != nil {
			b.Fatal(err)
		}
		if err := pingAgent(ctx, m); err != nil {
			b.Fatalf("bare boot: %v\n%s", err, readFile(spec.LogPath))
		}
		b.StopTimer()
		m.Kill()
		vmm.Wait(ctx, m)
		cancel()
		os.RemoveAll(dir)
		b.StartTimer()
	}
}

func pingAgent(ctx context.Context, m vmm.Machine) error {
	conn, err := m.DialAgent(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	sess, err := guest.NewClientSession(conn)
	if err != nil {
		return err
	}
	defer sess.Close()
	st, err := sess.OpenStream()
	if err != nil {
		return err
	}
	_, err = guest.Ping(ctx, st, "op-benchbareboot")
	return err
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
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, errOut, code := x.cli(nil, "vm", "exec", "bench-exec", "--", "true"); code != 0 {
			b.Fatalf("exec: %d %s", code, errOut)
		}
	}
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
