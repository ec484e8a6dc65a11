package e2e

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"banger/internal/agentclient"
	"banger/internal/api"
	"banger/internal/rpc"
)

// BenchmarkContainerRootfs compares, on the same trees in one invocation, the two ways a
// container's rootfs can reach its VM: the tar stream through the guest agent into the
// VM's work disk (what the shim does), and an ext4 image built with `mkfs.ext4 -d` (the
// host-side cost of the disk alternative alone; attaching an extra disk at create is not
// something bangerd offers yet, so that part is not measured).
func BenchmarkContainerRootfs(b *testing.B) {
	x := needB(b)
	x.warmImage(b)
	const vm = "bench-rootfs"
	x.mustCLIB(b, "vm", "create", "-q", "--name", vm)
	defer x.cli(nil, "vm", "rm", "-f", vm)

	dir := b.TempDir()
	trees := map[string]int64{}
	bb := filepath.Join(dir, "busybox")
	os.MkdirAll(filepath.Join(bb, "bin"), 0o755)
	if out, err := exec.Command("cp", "/bin/busybox", filepath.Join(bb, "bin", "busybox")).CombinedOutput(); err != nil {
		b.Fatalf("cp busybox: %v %s", err, out)
	}
	for _, a := range []string{"sh", "ls", "cat", "mount"} {
		os.Symlink("/bin/busybox", filepath.Join(bb, "bin", a))
	}
	trees["busybox"] = 8 << 20
	big := filepath.Join(dir, "files64m")
	os.MkdirAll(big, 0o755)
	buf := make([]byte, 1<<20)
	for i := 0; i < 64; i++ {
		rand.Read(buf)
		os.WriteFile(filepath.Join(big, fmt.Sprintf("f%02d", i)), buf, 0o644)
	}
	trees["files64m"] = 160 << 20

	for _, name := range []string{"busybox", "files64m"} {
		src := filepath.Join(dir, name)
		b.Run(name+"/agent-put", func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				ctx := context.Background()
				c, err := rpc.Dial(ctx, x.socket)
				if err != nil {
					b.Fatal(err)
				}
				st, err := c.Stream(ctx, api.MethodVMAgent, api.VMRef{VM: vm}, nil)
				if err != nil {
					b.Fatal(err)
				}
				if err := agentclient.Put(ctx, st, "", src, fmt.Sprintf("/root/%s-%d-%d", name, b.N, i), agentclient.CopyOptions{}); err != nil {
					b.Fatal(err)
				}
			}
		})
		// What the shim does since pods: a tar stream (owners, devices, FIFOs, hard links)
		// into an agent exec of the guest's own tar -x -p. The host's tar stands in for the
		// shim's writer here; the transport and the guest's work are the same.
		b.Run(name+"/guest-tar", func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				ctx := context.Background()
				c, err := rpc.Dial(ctx, x.socket)
				if err != nil {
					b.Fatal(err)
				}
				st, err := c.Stream(ctx, api.MethodVMAgent, api.VMRef{VM: vm}, nil)
				if err != nil {
					b.Fatal(err)
				}
				tar := exec.Command("tar", "--numeric-owner", "-C", dir, "-cf", "-", name)
				out, err := tar.StdoutPipe()
				if err != nil {
					b.Fatal(err)
				}
				if err := tar.Start(); err != nil {
					b.Fatal(err)
				}
				dst := fmt.Sprintf("/root/gt-%s-%d-%d", name, b.N, i)
				code, err := agentclient.Exec(ctx, st, agentclient.ExecRequest{Argv: []string{"/bin/sh", "-c", "mkdir " + dst + " && exec tar -x -p -f - -C " + dst}},
					agentclient.ExecIO{Stdin: out})
				if werr := tar.Wait(); err != nil || code != 0 || werr != nil {
					b.Fatalf("guest tar: exit %d, %v, host tar: %v", code, err, werr)
				}
			}
		})
		b.Run(name+"/mkfs-ext4", func(b *testing.B) {
			img := filepath.Join(dir, name+".ext4")
			for i := 0; i < b.N; i++ {
				os.Remove(img)
				out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", src, img, fmt.Sprintf("%dK", trees[name]>>10)).CombinedOutput()
				if err != nil {
					b.Fatalf("mkfs.ext4: %v %s", err, out)
				}
			}
		})
	}
}

// BenchmarkCtrRunTrue is `ctr run --rm` of `true` through the shim: containerd, the shim,
// a VM, the rootfs copy, the process; compare with BenchmarkVMRunTrue in the same run.
func BenchmarkCtrRunTrue(b *testing.B) {
	x := needB(b)
	x.warmImage(b)
	c := startContainerd(b, x)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		out, errOut, code := c.ctr(b, nil, "run", "--runtime", "io.containerd.banger.v2", "--rm", "--fifo-dir", filepath.Join(c.dir, "fifo"),
			ctrImage, fmt.Sprintf("bench-%d", i), "true")
		if code != 0 {
			b.Fatalf("ctr run: %d %s %s", code, out, errOut)
		}
	}
}
