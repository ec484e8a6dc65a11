package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"banger/internal/testkit"
)

const pauseImage = "docker.io/library/banger-pause:e2e"

// cniDir holds the private CNI configuration; the plugins are Debian's
// (containernetworking-plugins). The bridge lives in the test's namespace (containerd
// runs there), pods get addresses from a range nothing else here uses, and nothing is
// masqueraded or port-mapped.
const cniBin = "/usr/lib/cni"

// criConfig is the CRI part of the private containerd's configuration: the tested stanza
// docs/kubernetes.md shows.
func criConfig(t testing.TB, dir string) string {
	t.Helper()
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(cniBin, p)); err != nil {
			testkit.Missing(t, "CNI plugin %s not installed (Debian package containernetworking-plugins; scripts/install-deps.sh): %v", p, err)
		}
	}
	conf := filepath.Join(dir, "cni")
	if err := os.MkdirAll(conf, 0o755); err != nil {
		t.Fatal(err)
	}
	conflist := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "banger-e2e",
  "plugins": [{
    "type": "bridge", "bridge": "cnie2e0", "isGateway": true, "ipMasq": false,
    "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/24"}]], "dataDir": %q}
  }]
}
`, filepath.Join(dir, "ipam"))
	if err := os.WriteFile(filepath.Join(conf, "10-banger-e2e.conflist"), []byte(conflist), 0o644); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf(`[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.banger]
    runtime_type = "io.containerd.banger.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
`, pauseImage, cniBin, conf)
}

// criClient is a small CRI client (the calls crictl makes: runp, create, start, exec -s,
// logs, stopp, rmp) over the private containerd's socket.
type criClient struct {
	rt   cri.RuntimeServiceClient
	conn *grpc.ClientConn
}

func dialCRI(t *testing.T, c *ctrd) *criClient {
	t.Helper()
	conn, err := grpc.Dial("unix://"+c.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	cc := &criClient{rt: cri.NewRuntimeServiceClient(conn), conn: conn}
	// The CRI plugin answers once it has loaded the CNI configuration.
	if err := waitFor(func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := cc.rt.Status(ctx, &cri.StatusRequest{})
		if err != nil {
			return false
		}
		for _, cond := range st.GetStatus().GetConditions() {
			if !cond.Status {
				return false
			}
		}
		return true
	}, 60*time.Second); err != nil {
		t.Fatalf("CRI not ready: %v\n%s", err, tail(readFile(c.log), 40))
	}
	return cc
}

func criCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 5*time.Minute)
}

// podVMs are the ctr- VMs bangerd runs now.
func podVMs(t *testing.T, x *env) []string { return x.bangerState(t).vms }

// TestCRIPodSharesOneVM runs a pod through containerd's CRI plugin with the banger
// runtime handler: the sandbox creates the VM, two containers join it (same guest boot
// id, the guest's kernel), exec and logs work, removing one container leaves the pod, and
// stopping and removing the pod leaves no VM, tap or directory.
func TestCRIPodSharesOneVM(t *testing.T) {
	x := need(t)
	c := startContainerdWith(t, x, true)
	cc := dialCRI(t, c)
	before := x.bangerState(t)
	logDir := filepath.Join(c.dir, "pods")
	os.MkdirAll(logDir, 0o755)
	ctx, cancel := criCtx()
	defer cancel()

	podCfg := &cri.PodSandboxConfig{
		Metadata:     &cri.PodSandboxMetadata{Name: "e2e-pod", Uid: "e2e-pod-uid", Namespace: "default"},
		Hostname:     "e2e-pod",
		LogDirectory: logDir,
		Linux:        &cri.LinuxPodSandboxConfig{},
	}
	runp, err := cc.rt.RunPodSandbox(ctx, &cri.RunPodSandboxRequest{Config: podCfg, RuntimeHandler: "banger"})
	if err != nil {
		t.Fatalf("runp: %v\n%s", err, tail(readFile(c.log), 40))
	}
	pod := runp.PodSandboxId
	removed := false
	t.Cleanup(func() {
		if !removed {
			ctx, cancel := criCtx()
			defer cancel()
			cc.rt.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: pod})
			cc.rt.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: pod})
		}
	})
	if vms := podVMs(t, x); len(vms) != 1 {
		t.Fatalf("want the pod's one VM, have %v", vms)
	}
	st, err := cc.rt.PodSandboxStatus(ctx, &cri.PodSandboxStatusRequest{PodSandboxId: pod})
	if err != nil {
		t.Fatal(err)
	}
	if st.Status.State != cri.PodSandboxState_SANDBOX_READY {
		t.Fatalf("pod state %v", st.Status.State)
	}
	// The IP Kubernetes sees is the CNI one in the pod's network namespace, not the VM's.
	t.Logf("pod %s: CNI IP %s", pod, st.Status.GetNetwork().GetIp())

	start := func(name string, cmd ...string) string {
		t.Helper()
		cr, err := cc.rt.CreateContainer(ctx, &cri.CreateContainerRequest{
			PodSandboxId:  pod,
			SandboxConfig: podCfg,
			Config: &cri.ContainerConfig{
				Metadata: &cri.ContainerMetadata{Name: name},
				Image:    &cri.ImageSpec{Image: ctrImage},
				Command:  cmd,
				LogPath:  name + ".log",
				Linux:    &cri.LinuxContainerConfig{},
			},
		})
		if err != nil {
			t.Fatalf("create %s: %v\n%s", name, err, tail(readFile(c.log), 40))
		}
		if _, err := cc.rt.StartContainer(ctx, &cri.StartContainerRequest{ContainerId: cr.ContainerId}); err != nil {
			t.Fatalf("start %s: %v\n%s", name, err, tail(readFile(c.log), 40))
		}
		return cr.ContainerId
	}
	// logs reads the container's CRI log as crictl logs does: "<time> <stream> <tag> <line>".
	logs := func(name string, lines int) []string {
		t.Helper()
		var got []string
		err := waitFor(func() bool {
			got = nil
			for _, l := range strings.Split(readFile(filepath.Join(logDir, name+".log")), "\n") {
				if f := strings.SplitN(l, " ", 4); len(f) == 4 && f[1] == "stdout" {
					got = append(got, f[3])
				}
			}
			return len(got) >= lines
		}, 60*time.Second)
		if err != nil {
			t.Fatalf("log of %s has %d stdout lines, want %d: %q", name, len(got), lines, got)
		}
		return got
	}
	exec := func(id string, cmd ...string) string {
		t.Helper()
		r, err := cc.rt.ExecSync(ctx, &cri.ExecSyncRequest{ContainerId: id, Cmd: cmd, Timeout: 60})
		if err != nil {
			t.Fatalf("exec %v: %v", cmd, err)
		}
		if r.ExitCode != 0 {
			t.Fatalf("exec %v: exit %d, stderr %q", cmd, r.ExitCode, r.Stderr)
		}
		return string(r.Stdout)
	}

	c1 := start("one", "sh", "-c", "uname -r; cat /proc/sys/kernel/random/boot_id; exec sleep 3600")
	out1 := logs("one", 2)
	host, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	if !strings.Contains(out1[0], "cloud-amd64") || out1[0] == strings.TrimSpace(string(host)) {
		t.Fatalf("want the guest's kernel release, not the host's %q: %q", strings.TrimSpace(string(host)), out1)
	}
	if got := exec(c1, "cat", "/etc/motd"); got != "inside the banger container\n" {
		t.Fatalf("exec cat /etc/motd: %q", got)
	}
	// CRI's hosts file is bind-mounted (copied) into the container.
	if got := exec(c1, "cat", "/etc/hosts"); !strings.Contains(got, "localhost") {
		t.Fatalf("exec cat /etc/hosts: %q", got)
	}

	c2 := start("two", "sh", "-c", "cat /proc/sys/kernel/random/boot_id; stat -c '%u:%g %a' /data/owned; exec sleep 3600")
	out2 := logs("two", 2)
	if out2[0] != out1[1] {
		t.Fatalf("the second container runs in another kernel: boot ids %q and %q", out1[1], out2[0])
	}
	if out2[1] != "1000:1000 640" {
		t.Fatalf("/data/owned in the second container: %q", out2[1])
	}
	if vms := podVMs(t, x); len(vms) != 1 {
		t.Fatalf("two containers of one pod should share its one VM, have %v", vms)
	}
	// One serving shim holds the whole pod.
	if shimPid(pod) == 0 || shimPid(c1) != 0 || shimPid(c2) != 0 {
		t.Fatalf("want one serving shim for the pod: pod %d, one %d, two %d", shimPid(pod), shimPid(c1), shimPid(c2))
	}
	// Each container has its own root: the first cannot see the second's files.
	if got := exec(c1, "sh", "-c", "ls /root/ctr 2>&1 || true"); strings.Contains(got, c2) {
		t.Fatalf("container one sees container two's directory: %q", got)
	}

	// Removing one container ends its processes and its directory; the pod lives on.
	if _, err := cc.rt.StopContainer(ctx, &cri.StopContainerRequest{ContainerId: c2, Timeout: 5}); err != nil {
		t.Fatal(err)
	}
	if _, err := cc.rt.RemoveContainer(ctx, &cri.RemoveContainerRequest{ContainerId: c2}); err != nil {
		t.Fatal(err)
	}
	vmName := strings.TrimSuffix(podVMs(t, x)[0], "(running)")
	if got := x.mustCLI(t, "vm", "exec", vmName, "--", "ls", "/root/ctr"); strings.Contains(got, c2) || !strings.Contains(got, c1) {
		t.Fatalf("after removing container two, /root/ctr in the pod's VM holds %q (one is %s, two %s)", got, c1, c2)
	}
	if got := exec(c1, "cat", "/etc/motd"); got != "inside the banger container\n" {
		t.Fatalf("container one after two's removal: %q", got)
	}
	// A container created after a removal still joins the pod's shim and VM (containerd's
	// cleanup after the removal once deleted the pod shim's socket, and the next container
	// got a shim of its own that knew no sandbox).
	c3 := start("three", "sh", "-c", "cat /proc/sys/kernel/random/boot_id; exec sleep 3600")
	if out3 := logs("three", 1); out3[0] != out1[1] {
		t.Fatalf("container three runs in another kernel: boot ids %q and %q", out1[1], out3[0])
	}
	if shimPid(c3) != 0 || len(podVMs(t, x)) != 1 {
		t.Fatalf("container three did not join the pod: its own shim %d, VMs %v", shimPid(c3), podVMs(t, x))
	}

	if _, err := cc.rt.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatalf("stopp: %v", err)
	}
	if _, err := cc.rt.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatalf("rmp: %v", err)
	}
	removed = true
	x.assertNothingLeft(t, before)
	if err := waitFor(func() bool { return shimPid(pod) == 0 }, 30*time.Second); err != nil {
		t.Fatalf("the pod's shim still runs after rmp")
	}
}

// The pod's one shim killed: containerd runs `shim delete` for each of the pod's
// containers; the sandbox's deletes the VM, the others' leave it to the sandbox's. Then
// CRI still stops and removes the pod.
func TestCRIPodShimKill9LeavesNothing(t *testing.T) {
	x := need(t)
	c := startContainerdWith(t, x, true)
	cc := dialCRI(t, c)
	before := x.bangerState(t)
	ctx, cancel := criCtx()
	defer cancel()
	podCfg := &cri.PodSandboxConfig{
		Metadata: &cri.PodSandboxMetadata{Name: "e2e-kill", Uid: "e2e-kill-uid", Namespace: "default"},
		Linux:    &cri.LinuxPodSandboxConfig{},
	}
	runp, err := cc.rt.RunPodSandbox(ctx, &cri.RunPodSandboxRequest{Config: podCfg, RuntimeHandler: "banger"})
	if err != nil {
		t.Fatalf("runp: %v\n%s", err, tail(readFile(c.log), 40))
	}
	pod := runp.PodSandboxId
	t.Cleanup(func() {
		ctx, cancel := criCtx()
		defer cancel()
		cc.rt.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: pod})
		cc.rt.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: pod})
	})
	cr, err := cc.rt.CreateContainer(ctx, &cri.CreateContainerRequest{PodSandboxId: pod, SandboxConfig: podCfg,
		Config: &cri.ContainerConfig{Metadata: &cri.ContainerMetadata{Name: "app"}, Image: &cri.ImageSpec{Image: ctrImage},
			Command: []string{"sleep", "600"}, Linux: &cri.LinuxContainerConfig{}}})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if _, err := cc.rt.StartContainer(ctx, &cri.StartContainerRequest{ContainerId: cr.ContainerId}); err != nil {
		t.Fatalf("start: %v", err)
	}
	if vms := podVMs(t, x); len(vms) != 1 {
		t.Fatalf("want the pod's one VM, have %v", vms)
	}
	pid := shimPid(pod)
	if pid == 0 {
		t.Fatal("the pod's serving shim not found")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	x.assertNothingLeft(t, before)
	if _, err := cc.rt.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatalf("stopp after the shim died: %v", err)
	}
	if _, err := cc.rt.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatalf("rmp after the shim died: %v", err)
	}
	x.assertNothingLeft(t, before)
}

// BenchmarkCRIPodContainer is one container of `true` created, started, run to its end and
// removed in a running pod: it joins the pod's VM, so no VM boots. Compare with
// BenchmarkCtrRunTrue (a VM per container) in the same invocation.
func BenchmarkCRIPodContainer(b *testing.B) {
	x := needB(b)
	x.warmImage(b)
	c := startContainerdWith(b, x, true)
	conn, err := grpc.Dial("unix://"+c.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	rt := cri.NewRuntimeServiceClient(conn)
	ctx, cancel := criCtx()
	defer cancel()
	podCfg := &cri.PodSandboxConfig{Metadata: &cri.PodSandboxMetadata{Name: "bench", Uid: "bench-uid", Namespace: "default"}, Linux: &cri.LinuxPodSandboxConfig{}}
	var pod string
	if err := waitFor(func() bool {
		r, err := rt.RunPodSandbox(ctx, &cri.RunPodSandboxRequest{Config: podCfg, RuntimeHandler: "banger"})
		if err == nil {
			pod = r.PodSandboxId
		}
		return err == nil
	}, 60*time.Second); err != nil {
		b.Fatalf("runp: %v", err)
	}
	defer func() {
		rt.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: pod})
		rt.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: pod})
	}()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cr, err := rt.CreateContainer(ctx, &cri.CreateContainerRequest{PodSandboxId: pod, SandboxConfig: podCfg,
			Config: &cri.ContainerConfig{Metadata: &cri.ContainerMetadata{Name: fmt.Sprintf("c%d", i)}, Image: &cri.ImageSpec{Image: ctrImage},
				Command: []string{"true"}, Linux: &cri.LinuxContainerConfig{}}})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := rt.StartContainer(ctx, &cri.StartContainerRequest{ContainerId: cr.ContainerId}); err != nil {
			b.Fatal(err)
		}
		// Polled every 10 ms (waitFor's 100 ms would dominate the number); bounded.
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
			st, err := rt.ContainerStatus(ctx, &cri.ContainerStatusRequest{ContainerId: cr.ContainerId})
			if err == nil && st.Status.State == cri.ContainerState_CONTAINER_EXITED {
				break
			}
			if time.Now().After(deadline) {
				b.Fatal("container did not exit within a minute")
			}
		}
		if _, err := rt.RemoveContainer(ctx, &cri.RemoveContainerRequest{ContainerId: cr.ContainerId}); err != nil {
			b.Fatal(err)
		}
	}
}
