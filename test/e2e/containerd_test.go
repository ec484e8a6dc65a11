package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"

	"banger/internal/testkit"
)

// ctrd is a private containerd: its own root, state, socket and config, running in the
// test's network namespace with the banger shim on its PATH and bangerd's socket in its
// environment. Nothing of the host's containerd (if any) is touched.
type ctrd struct {
	x      *env
	dir    string
	socket string
	ns     string
	cmd    *exec.Cmd
	log    string
}

const ctrImage = "docker.io/library/banger-busybox:e2e"

func startContainerd(t testing.TB, x *env) *ctrd {
	t.Helper()
	return startContainerdWith(t, x, false)
}

// startContainerdWith starts the private containerd; with cri, its CRI plugin is enabled
// (namespace k8s.io) with the runtime handler banger → io.containerd.banger.v2, the pause
// image built here as its sandbox image and a CNI bridge network, all in the test's
// network namespace and private directories.
func startContainerdWith(t testing.TB, x *env, cri bool) *ctrd {
	t.Helper()
	for _, tool := range []string{"containerd", "ctr"} {
		if _, err := exec.LookPath(tool); err != nil {
			testkit.Missing(t, "%s not installed (Debian package containerd; scripts/install-deps.sh)", tool)
		}
	}
	shim := filepath.Join(x.bin, "containerd-shim-banger-v2")
	if _, err := os.Stat(shim); err != nil {
		t.Fatalf("shim binary missing: %v (make build)", err)
	}
	// A short directory: shim sockets live beside containerd's and sun_path holds 108 bytes.
	dir, err := os.MkdirTemp("", "ctrd-")
	if err != nil {
		t.Fatal(err)
	}
	c := &ctrd{x: x, dir: dir, socket: filepath.Join(dir, "containerd.sock"), ns: "banger-e2e", log: filepath.Join(dir, "containerd.log")}
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
[grpc]
  address = %q
[debug]
  level = "info"
[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.socket, filepath.Join(dir, "opt"))
	if cri {
		c.ns = "k8s.io"
		cfg += criConfig(t, dir)
	} else {
		cfg = strings.Replace(cfg, "[grpc]", "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]", 1)
	}
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(c.log)
	if err != nil {
		t.Fatal(err)
	}
	c.cmd = exec.Command("ip", "netns", "exec", x.netns, "containerd", "--config", cfgPath)
	c.cmd.Env = append(os.Environ(), "PATH="+x.bin+":"+os.Getenv("PATH"), "BANGER_SOCKET="+x.socket)
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { c.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			c.cmd.Process.Kill()
			<-done
		}
		logf.Close()
		if t.Failed() {
			t.Logf("containerd log:\n%s", tail(readFile(c.log), 60))
		}
		// Image snapshots are plain directories; nothing the test made is still mounted.
		os.RemoveAll(dir)
	})
	if err := waitFor(func() bool {
		_, err := os.Stat(c.socket)
		return err == nil
	}, 30*time.Second); err != nil {
		t.Fatalf("containerd did not create its socket: %v\n%s", err, readFile(c.log))
	}
	c.importBusybox(t)
	if cri {
		c.importImage(t, pauseImage, busyboxLayer(t), []string{"/bin/sleep", "2147483647"})
	}
	return c
}

// ctr runs ctr against the private containerd.
func (c *ctrd) ctr(t testing.TB, stdin io.Reader, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", c.socket, "--namespace", c.ns}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		code = -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
	}
	return out.String(), errb.String(), code
}

func (c *ctrd) mustCtr(t testing.TB, args ...string) string {
	t.Helper()
	out, errOut, code := c.ctr(t, nil, args...)
	if code != 0 {
		t.Fatalf("ctr %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// importBusybox builds an OCI image of the host's static busybox (Debian's busybox-static)
// as an OCI archive and imports it: no registry involved.
func (c *ctrd) importBusybox(t testing.TB) {
	t.Helper()
	c.importImage(t, ctrImage, busyboxLayer(t), nil)
}

// busyboxLayer is the test image's one layer: busybox, a few applets, /etc/motd, and what
// the rootfs must keep on its way into the guest: /data/owned (1000:1000, 0640) with a
// hard link /data/link, a FIFO /data/fifo (0620) and a character device /data/null (1,3).
func busyboxLayer(t testing.TB) []byte {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		testkit.Missing(t, "busybox-static not installed: %v", err)
	}
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	now := time.Unix(0, 0)
	for _, d := range []string{"bin", "dev", "proc", "sys", "tmp", "etc", "root", "data"} {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: now})
	}
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bb)), ModTime: now})
	tw.Write(bb)
	for _, a := range []string{"sh", "cat", "echo", "sleep", "uname", "tty", "stty", "hostname", "ls", "id", "true", "nproc", "grep", "head", "stat"} {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "/bin/busybox", ModTime: now})
	}
	motd := []byte("inside the banger container\n")
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "etc/motd", Mode: 0o644, Size: int64(len(motd)), ModTime: now})
	tw.Write(motd)
	owned := []byte("owned by 1000\n")
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "data/owned", Mode: 0o640, Uid: 1000, Gid: 1000, Size: int64(len(owned)), ModTime: now})
	tw.Write(owned)
	// A hard link header carries its inode's owner and mode, as tar writers do.
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeLink, Name: "data/link", Linkname: "data/owned", Mode: 0o640, Uid: 1000, Gid: 1000, ModTime: now})
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeFifo, Name: "data/fifo", Mode: 0o620, ModTime: now})
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeChar, Name: "data/null", Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: now})
	tw.Close()
	return layer.Bytes()
}

// importImage imports an OCI archive of one layer as ref; entrypoint nil means Cmd sh.
func (c *ctrd) importImage(t testing.TB, ref string, layer []byte, entrypoint []string) {
	t.Helper()
	now := time.Unix(0, 0)
	blobs := map[string][]byte{}
	put := func(b []byte) string {
		d := sha256.Sum256(b)
		h := hex.EncodeToString(d[:])
		blobs[h] = b
		return "sha256:" + h
	}
	layerDigest := put(layer)
	imgCfg := map[string]any{"Env": []string{"PATH=/bin"}, "Cmd": []string{"sh"}}
	if entrypoint != nil {
		imgCfg = map[string]any{"Env": []string{"PATH=/bin"}, "Entrypoint": entrypoint}
	}
	config, _ := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": imgCfg,
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
	})
	configDigest := put(config)
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": configDigest, "size": len(config)},
		"layers": []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layerDigest, "size": len(layer)}},
	})
	manifestDigest := put(manifest)
	index, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"manifests": []any{map[string]any{
			"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifestDigest, "size": len(manifest),
			"platform":    map[string]string{"architecture": "amd64", "os": "linux"},
			"annotations": map[string]string{"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": "e2e"},
		}},
	})
	var archive bytes.Buffer
	aw := tar.NewWriter(&archive)
	add := func(name string, b []byte) {
		aw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(b)), ModTime: now})
		aw.Write(b)
	}
	add("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`))
	add("index.json", index)
	for h, b := range blobs {
		add("blobs/sha256/"+h, b)
	}
	aw.Close()
	path := filepath.Join(c.dir, "image-oci.tar")
	if err := os.WriteFile(path, archive.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	c.mustCtr(t, "image", "import", path)
	if ls := c.mustCtr(t, "image", "ls", "-q"); !strings.Contains(ls, ref) {
		t.Fatalf("imported image %s not listed: %s", ref, ls)
	}
}

// bangerState is what the shim's containers may leave behind: VMs named ctr-*, taps in
// the test namespace, VM directories.
type bangerState struct {
	vms  []string
	taps []string
	dirs []string
}

func (x *env) bangerState(t *testing.T) bangerState {
	t.Helper()
	var st bangerState
	var vms []vmRecord
	if err := json.Unmarshal([]byte(x.mustCLI(t, "vm", "ls", "--json")), &vms); err != nil {
		t.Fatalf("decoding vm ls: %v", err)
	}
	for _, v := range vms {
		if strings.HasPrefix(v.Name, "ctr-") {
			st.vms = append(st.vms, v.Name+"("+v.State+")")
		}
	}
	out, _ := x.inNetns("ip", "-o", "link", "show")
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(f[1], "bgr") {
			st.taps = append(st.taps, strings.TrimSuffix(f[1], ":"))
		}
	}
	ents, _ := os.ReadDir(filepath.Join(x.stateDir, "vms"))
	for _, e := range ents {
		st.dirs = append(st.dirs, e.Name())
	}
	return st
}

// assertNothingLeft waits (bounded) until the banger state is back to before.
func (x *env) assertNothingLeft(t *testing.T, before bangerState) {
	t.Helper()
	var now bangerState
	err := waitFor(func() bool {
		now = x.bangerState(t)
		return len(now.vms) == 0 && len(now.taps) == len(before.taps) && len(now.dirs) == len(before.dirs)
	}, 60*time.Second)
	if err != nil {
		t.Fatalf("left behind: vms %v, taps %v (before %v), vm dirs %v (before %v)", now.vms, now.taps, before.taps, now.dirs, before.dirs)
	}
}

func TestContainerdRunPrintsGuestKernelAndExitCode(t *testing.T) {
	x := need(t)
	c := startContainerd(t, x)
	before := x.bangerState(t)
	host, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	out, errOut, code := c.ctr(t, nil, "run", "--runtime", "io.containerd.banger.v2", "--rm", "--fifo-dir", filepath.Join(c.dir, "fifo"),
		ctrImage, "e2e-run", "sh", "-c", "uname -r; cat /etc/motd; stat -c '%i %u:%g %a %F %h' /data/owned /data/fifo /data/null /data/link; exit 3")
	if code != 3 {
		t.Fatalf("ctr run: exit %d, want 3\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 6 || !strings.Contains(lines[0], "cloud-amd64") || lines[0] == strings.TrimSpace(string(host)) {
		t.Fatalf("want the guest's kernel release (not the host's %q), the image's /etc/motd and 4 stat lines, got %q", strings.TrimSpace(string(host)), out)
	}
	if lines[1] != "inside the banger container" {
		t.Fatalf("the process did not run in the image's rootfs: %q", out)
	}
	// The image's owners, modes, FIFO, device and hard link arrive as they are.
	inode := func(l string) string { return strings.SplitN(l, " ", 2)[0] }
	rest := func(l string) string { f := strings.SplitN(l, " ", 2); return f[len(f)-1] }
	for i, want := range []string{"1000:1000 640 regular file 2", "0:0 620 fifo 1", "0:0 666 character special file 1", "1000:1000 640 regular file 2"} {
		if got := rest(lines[2+i]); got != want {
			t.Errorf("stat line %d in the guest: %q, want %q", i, got, want)
		}
	}
	if inode(lines[2]) != inode(lines[5]) {
		t.Errorf("/data/link is not a hard link of /data/owned in the guest: %q vs %q", lines[2], lines[5])
	}
	x.assertNothingLeft(t, before)

	// The shim's op id for the create is in both containerd's (the shim's) log and bangerd's.
	m := regexp.MustCompile(`msg="vm ready".* op_id=(op-[a-z0-9]+)`).FindStringSubmatch(readFile(c.log))
	if m == nil {
		t.Fatalf("no op id on the shim's vm ready line:\n%s", tail(readFile(c.log), 20))
	}
	if !strings.Contains(readFile(x.daemonLog.Name()), `"op_id":"`+m[1]+`"`) {
		t.Fatalf("bangerd's log has no record with the shim's op id %s", m[1])
	}

	// The init process on a TTY (ctr run -t).
	out, err := c.ctrOnPTY(t, "run", "-t", "--runtime", "io.containerd.banger.v2", "--rm", "--fifo-dir", filepath.Join(c.dir, "fifo"),
		ctrImage, "e2e-tty", "sh", "-c", "tty; exit 5")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 5 || !strings.Contains(out, "/dev/pts/") {
		t.Fatalf("ctr run -t: %v, want exit 5 and a pts, got %q", err, out)
	}
	x.assertNothingLeft(t, before)

	// What a VM cannot honour is refused before any VM exists, naming the field.
	_, errOut, code = c.ctr(t, nil, "run", "--runtime", "io.containerd.banger.v2", "--rm", "--fifo-dir", filepath.Join(c.dir, "fifo"),
		"--with-ns", "pid:/proc/1/ns/pid", ctrImage, "e2e-hostpid", "true")
	if code == 0 || !strings.Contains(errOut, "linux.namespaces") || !strings.Contains(errOut, "/proc/1/ns/pid") {
		t.Fatalf("joining the host's pid namespace: exit %d, stderr %q", code, errOut)
	}
	c.ctr(t, nil, "container", "rm", "e2e-hostpid")
	x.assertNothingLeft(t, before)
}

func TestContainerdExecKillResourcesAndRemove(t *testing.T) {
	x := need(t)
	c := startContainerd(t, x)
	before := x.bangerState(t)
	fifo := filepath.Join(c.dir, "fifo")
	// 2 CPUs and 768 MiB become the VM's vCPUs and memory.
	c.mustCtr(t, "run", "-d", "--runtime", "io.containerd.banger.v2", "--fifo-dir", fifo, "--cpus", "2", "--memory-limit", strconv.Itoa(768<<20),
		ctrImage, "e2e-long", "sh", "-c", "trap 'exit 42' TERM; while true; do sleep 1; done")
	t.Cleanup(func() {
		c.ctr(t, nil, "task", "kill", "-s", "KILL", "e2e-long")
		c.ctr(t, nil, "task", "rm", "-f", "e2e-long")
		c.ctr(t, nil, "container", "rm", "e2e-long")
	})
	var vms []struct {
		Name      string `json:"name"`
		VCPU      int    `json:"vcpu"`
		MemoryMiB int    `json:"memory_mib"`
		PID       int    `json:"pid"`
	}
	json.Unmarshal([]byte(x.mustCLI(t, "vm", "ls", "--json")), &vms)
	var found bool
	for _, v := range vms {
		if strings.HasPrefix(v.Name, "ctr-e2e-long-") {
			found = true
			if v.VCPU != 2 || v.MemoryMiB != 768 {
				t.Errorf("VM %s has %d vCPUs and %d MiB, want 2 and 768", v.Name, v.VCPU, v.MemoryMiB)
			}
		}
	}
	if !found {
		t.Fatalf("no banger VM labelled for container e2e-long: %+v", vms)
	}
	if got := strings.TrimSpace(c.mustCtr(t, "task", "exec", "--exec-id", "n", "--fifo-dir", fifo, "e2e-long", "nproc")); got != "2" {
		t.Errorf("nproc in the container = %q, want 2", got)
	}
	// exec with stdin.
	out, errOut, code := c.ctr(t, strings.NewReader("hello through stdin\n"), "task", "exec", "--exec-id", "in", "--fifo-dir", fifo, "e2e-long", "cat")
	if code != 0 || out != "hello through stdin\n" {
		t.Fatalf("exec with stdin: exit %d out %q err %q", code, out, errOut)
	}
	// exec with a TTY: ctr needs a terminal as its stdin.
	ttyOut, werr := c.ctrOnPTY(t, "task", "exec", "-t", "--exec-id", "tty", "--fifo-dir", fifo, "e2e-long", "sh", "-c",
		// The size arrives through ResizePty after the start: wait for it (bounded).
		`tty; i=0; while [ "$(stty size)" != "33 111" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; stty size`)
	if werr != nil || !strings.Contains(ttyOut, "/dev/pts/") || !strings.Contains(ttyOut, "33 111") {
		t.Fatalf("exec -t: %v, want a pts and the size 33 111, got %q", werr, ttyOut)
	}
	// ps shows the VMM's pid (the task's host process); metrics are the VMM's.
	var vmmPID int
	for _, v := range vms {
		if strings.HasPrefix(v.Name, "ctr-e2e-long-") {
			vmmPID = v.PID
		}
	}
	if ps := c.mustCtr(t, "task", "ps", "e2e-long"); !strings.Contains(ps, strconv.Itoa(vmmPID)) {
		t.Errorf("task ps does not show the VMM's pid %d:\n%s", vmmPID, ps)
	}
	if m := c.mustCtr(t, "task", "metrics", "e2e-long"); !strings.Contains(m, "cpu.usage_usec") || !strings.Contains(m, "memory.usage") {
		t.Errorf("task metrics lacks cpu and memory:\n%s", m)
	}
	// kill -s TERM stops it; the exit status shows in task ls.
	c.mustCtr(t, "task", "kill", "-s", "TERM", "e2e-long")
	var ls string
	if err := waitFor(func() bool {
		ls = c.mustCtr(t, "task", "ls")
		return strings.Contains(ls, "STOPPED")
	}, 30*time.Second); err != nil {
		t.Fatalf("task not stopped after TERM:\n%s", ls)
	}
	// ctr 1.6's task ls has no exit column; task rm reports a non-zero exit status.
	out, errOut, code = c.ctr(t, nil, "task", "rm", "e2e-long")
	if code != 0 || !strings.Contains(errOut, "exit code 42") {
		t.Fatalf("task rm after TERM (the trap exits 42): exit %d out %q err %q", code, out, errOut)
	}
	c.mustCtr(t, "container", "rm", "e2e-long")
	x.assertNothingLeft(t, before)
}

// ctrOnPTY runs ctr with a 33x111 terminal as its stdin, stdout and stderr.
func (c *ctrd) ctrOnPTY(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", c.socket, "--namespace", c.ns}, args...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
	pty.Setsize(ptmx, &pty.Winsize{Rows: 33, Cols: 111})
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tty.Close()
	var out bytes.Buffer
	copied := make(chan struct{})
	go func() { io.Copy(&out, ptmx); close(copied) }()
	werr := cmd.Wait()
	select {
	case <-copied:
	case <-time.After(5 * time.Second):
	}
	return out.String(), werr
}

// shimPid finds the serving shim of container id, a process this test's containerd started.
func shimPid(id string) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) < 2 || filepath.Base(args[0]) != "containerd-shim-banger-v2" {
			continue
		}
		for i := 0; i+1 < len(args); i++ {
			if args[i] == "-id" && args[i+1] == id && args[len(args)-1] != "start" && args[len(args)-1] != "delete" {
				return pid
			}
		}
	}
	return 0
}

func TestContainerdShimKill9LeavesNothing(t *testing.T) {
	x := need(t)
	c := startContainerd(t, x)
	before := x.bangerState(t)
	c.mustCtr(t, "run", "-d", "--runtime", "io.containerd.banger.v2", "--fifo-dir", filepath.Join(c.dir, "fifo"),
		ctrImage, "e2e-crash", "sleep", "600")
	t.Cleanup(func() { c.ctr(t, nil, "container", "rm", "e2e-crash") })
	if st := x.bangerState(t); len(st.vms) != 1 {
		t.Fatalf("want one container VM, have %v", st.vms)
	}
	pid := shimPid("e2e-crash")
	if pid == 0 {
		t.Fatal("serving shim of e2e-crash not found")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// containerd sees the shim's connection drop and runs `containerd-shim-banger-v2 delete`.
	x.assertNothingLeft(t, before)
	out, _, _ := c.ctr(t, nil, "task", "ls")
	if strings.Contains(out, "RUNNING") {
		t.Fatalf("task still running after its shim died:\n%s", out)
	}
	// Nor is the dead shim's socket left beside containerd's.
	if ents, _ := os.ReadDir(filepath.Join(c.dir, "s")); len(ents) != 0 {
		t.Fatalf("shim sockets left in %s: %v", filepath.Join(c.dir, "s"), ents)
	}
}

// bangerd killed under a running container: the VM survives the daemon (re-adopted at its
// start), the container's process is reported lost (its agent stream went with the
// daemon), and containerd's delete still removes the VM through the new daemon.
func TestContainerdBangerdKill9ThenDelete(t *testing.T) {
	x := need(t)
	c := startContainerd(t, x)
	before := x.bangerState(t)
	c.mustCtr(t, "run", "-d", "--runtime", "io.containerd.banger.v2", "--fifo-dir", filepath.Join(c.dir, "fifo"),
		ctrImage, "e2e-daemon", "sleep", "600")
	t.Cleanup(func() {
		c.ctr(t, nil, "task", "rm", "-f", "e2e-daemon")
		c.ctr(t, nil, "container", "rm", "e2e-daemon")
	})
	x.stopDaemon(syscall.SIGKILL)
	if err := x.startDaemon(); err != nil {
		t.Fatal(err)
	}
	if st := x.bangerState(t); len(st.vms) != 1 || !strings.Contains(st.vms[0], "(running)") {
		t.Fatalf("the container's VM after the daemon restart: %v", st.vms)
	}
	var ls string
	if err := waitFor(func() bool {
		ls = c.mustCtr(t, "task", "ls")
		return strings.Contains(ls, "STOPPED")
	}, 30*time.Second); err != nil {
		t.Fatalf("task not reported stopped after its agent stream broke:\n%s", ls)
	}
	_, errOut, code := c.ctr(t, nil, "task", "rm", "e2e-daemon")
	if code != 0 || !strings.Contains(errOut, "exit code 255") {
		t.Fatalf("task rm: exit %d stderr %q, want the lost process's 255", code, errOut)
	}
	c.mustCtr(t, "container", "rm", "e2e-daemon")
	x.assertNothingLeft(t, before)
}
