package e2e

import (
	"banger/internal/testkit"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The unprivileged deployment of docs/networking.md: the root helper runs as root with the
// daemon user allowed and owning the taps; bangerd, its VMMs and the CLI run as that user
// with no capabilities at all. This test builds its own pair of namespaces and its own
// helper and daemon; of the shared environment it uses only the binaries and the kernel
// package TestMain fetched.
const (
	unprivUID = 65534 // nobody
	unprivGID = 65534 // nogroup
	upPeerIP  = "198.18.0.2"
	upHostIP  = "198.18.0.1"
)

// unprivEnv is one helper + unprivileged daemon pair in namespaces of its own.
type unprivEnv struct {
	bin       string
	dir       string // root-owned 0755: config, logs, helper socket dir
	home      string // owned by the daemon user: state, runtime and cache dirs
	netns     string // bridge, taps, helper, daemon
	peerns    string // a host beyond the uplink, which guests without NAT must not reach
	config    string
	socket    string
	helperLog string
	daemonLog string
	helper    *exec.Cmd
	daemon    *exec.Cmd
	servers   []*exec.Cmd // web servers in the namespaces
	www       string      // what they serve: index.html "peer-ok"
	vmmPIDs   []int       // VMM processes the daemon started for this test, killed if left over
	t         *testing.T
}

func TestUnprivilegedDaemonThroughRootHelper(t *testing.T) {
	x := need(t)
	for _, tool := range []string{"setpriv", "mknod", "mount", "timeout"} {
		if _, err := exec.LookPath(tool); err != nil {
			msg := "the unprivileged e2e test needs " + tool + " (util-linux / coreutils)"
			if os.Getenv("CI") == "true" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	u := startUnprivEnv(t, x.bin)

	// The daemon really is unprivileged: uid/gid nobody, no capabilities.
	st := procStatus(t, u.daemon.Process.Pid)
	if want := idLine(unprivUID); st["Uid"] != want || st["Gid"] != idLine(unprivGID) {
		t.Fatalf("bangerd runs as Uid %q Gid %q, want %q", st["Uid"], st["Gid"], want)
	}
	if st["CapEff"] != "0000000000000000" || st["CapPrm"] != "0000000000000000" {
		t.Fatalf("bangerd has capabilities: CapEff %s CapPrm %s", st["CapEff"], st["CapPrm"])
	}

	// doctor, asked as the daemon user, finds the helper answering and the tun device usable.
	out, _, _ := u.cli(nil, "doctor", "--json") // exits 1 here anyway: no firecracker
	var checks []struct {
		Name   string `json:"name"`
		OK     bool   `json:"ok"`
		Detail string `json:"detail"`
	}
	if err := json.Unmarshal([]byte(out), &checks); err != nil {
		t.Fatalf("decoding doctor --json: %v\n%s", err, out)
	}
	for _, want := range []string{"root-helper", "tun"} {
		found := false
		for _, c := range checks {
			if c.Name == want {
				found = true
				if !c.OK {
					t.Errorf("doctor check %s failed for the unprivileged daemon: %s", want, c.Detail)
				}
			}
		}
		if !found {
			t.Errorf("doctor has no %s check: %s", want, out)
		}
	}

	// Create a VM without NAT: image build, disks, tap through the helper, qemu, agent,
	// and a shared folder, whose virtiofsd runs as the daemon's user in its sandbox.
	share := filepath.Join(u.home, "share")
	mkdirOwned(t, share)
	if err := os.WriteFile(filepath.Join(share, "f"), []byte("shared-unpriv\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := u.cli(nil, "vm", "create", "--name", "up-web", "--mount", share+":/mnt/host:rw")
	if code != 0 {
		t.Fatalf("vm create as uid %d: exit %d\nstdout: %s\nstderr: %s\n--- bangerd log ---\n%s", unprivUID, code, out, errOut,
			tail(readFile(u.daemonLog), 30))
	}
	vm := u.show(t, "up-web")
	if vm.PID > 0 {
		u.vmmPIDs = append(u.vmmPIDs, vm.PID)
	}
	if vm.State != "running" || vm.Tap == "" || vm.GuestIP == "" {
		t.Fatalf("vm after create: %+v", vm)
	}
	if got := u.mustCLI(t, "vm", "exec", "up-web", "--", "sh", "-c", "echo exec-ok; id -u"); got != "exec-ok\n0\n" {
		t.Fatalf("vm exec: %q", got)
	}
	if got := u.mustCLI(t, "vm", "exec", "up-web", "--", "sh", "-c", "cat /mnt/host/f; echo from-guest > /mnt/host/g"); got != "shared-unpriv\n" {
		t.Fatalf("shared folder of an unprivileged daemon: %q", got)
	}
	if fi, err := os.Stat(filepath.Join(share, "g")); err != nil || fi.Sys().(*syscall.Stat_t).Uid != unprivUID {
		t.Fatalf("a guest write to the shared folder of an unprivileged daemon: %v (want a file of uid %d)", err, unprivUID)
	}
	vfs := virtiofsdOf(t, vm.Dir)
	if len(vfs) == 0 {
		t.Fatalf("no virtiofsd for %s", vm.Dir)
	}
	for _, p := range vfs {
		pid, _ := strconv.Atoi(p)
		if st := procStatus(t, pid); st["Uid"] != idLine(unprivUID) {
			t.Fatalf("virtiofsd pid %d runs as Uid %q, want %d", pid, st["Uid"], unprivUID)
		}
	}
	// Images and disks made by an unprivileged daemon still belong to root inside the guest:
	// the image tree, the overlay's root and the work disk's root directory.
	owners := u.mustCLI(t, "vm", "exec", "up-web", "--", "stat", "-c", "%n %u:%g", "/", "/etc/passwd", "/bin/busybox", "/root", "/.banger/system")
	for _, line := range strings.Split(strings.TrimSpace(owners), "\n") {
		if !strings.HasSuffix(line, " 0:0") {
			t.Errorf("in the guest of an unprivileged daemon, %q is not owned by root", line)
		}
	}

	// The VMM runs as the daemon's user, and the helper gave it a tap it owns.
	st = procStatus(t, vm.PID)
	if st["Uid"] != idLine(unprivUID) || st["Gid"] != idLine(unprivGID) {
		t.Fatalf("VMM pid %d runs as Uid %q Gid %q, want %d/%d", vm.PID, st["Uid"], st["Gid"], unprivUID, unprivGID)
	}
	owner, err := u.inNetns("cat", "/sys/class/net/"+vm.Tap+"/owner", "/sys/class/net/"+vm.Tap+"/group")
	if err != nil || owner != fmt.Sprintf("%d\n%d\n", unprivUID, unprivGID) {
		t.Fatalf("tap %s owner/group: %v %q", vm.Tap, err, owner)
	}

	// The guest answers on its IP from the namespace, and its name resolves through the
	// daemon's DNS on the bridge address, port 53.
	u.mustCLI(t, "vm", "exec", "up-web", "--", "sh", "-c",
		"mkdir -p /root/www && echo hello-unpriv > /root/www/index.html && busybox httpd -p 8000 -h /root/www")
	if err := waitFor(func() bool {
		out, err := u.inNetns("timeout", "10", "busybox", "wget", "-q", "-O", "-", "http://"+vm.GuestIP+":8000/")
		return err == nil && strings.TrimSpace(out) == "hello-unpriv"
	}, 30*time.Second); err != nil {
		out, err := u.inNetns("timeout", "10", "busybox", "wget", "-q", "-O", "-", "http://"+vm.GuestIP+":8000/")
		t.Fatalf("netns -> guest %s:8000: %v %q", vm.GuestIP, err, out)
	}
	out, err = u.inNetns("dig", "+short", "+time=2", "+tries=1", "@"+bridgeIP, "up-web."+dnsDomain)
	if err != nil || strings.TrimSpace(out) != vm.GuestIP {
		t.Fatalf("dig up-web on %s:53: %v %q (want %s)", bridgeIP, err, out, vm.GuestIP)
	}

	// Without --nat the guest stays on the bridge: it reaches the host's bridge address,
	// but not the peer beyond the uplink, which the namespace itself reaches.
	u.serve(t, u.netns, bridgeIP+":8080")
	if err := waitFor(func() bool {
		out, _, code := u.cli(nil, "vm", "exec", "up-web", "--", "timeout", "5", "wget", "-q", "-O", "-", "http://"+bridgeIP+":8080/")
		return code == 0 && strings.TrimSpace(out) == "peer-ok"
	}, 20*time.Second); err != nil {
		t.Fatalf("guest -> bridge address %s:8080 (the control) failed", bridgeIP)
	}
	if out, err := u.inNetns("timeout", "10", "busybox", "wget", "-q", "-O", "-", "http://"+upPeerIP+":8080/"); err != nil || strings.TrimSpace(out) != "peer-ok" {
		t.Fatalf("netns -> peer %s:8080 (the control): %v %q", upPeerIP, err, out)
	}
	if _, _, code := u.cli(nil, "vm", "exec", "up-web", "--", "timeout", "5", "wget", "-q", "-O", "-", "http://"+upPeerIP+":8080/"); code == 0 {
		t.Fatal("a VM without --nat reached the host beyond the uplink")
	}

	// Every network change went through the helper on behalf of the unprivileged daemon.
	if log := readFile(u.helperLog); !strings.Contains(log, `"msg":"helper rpc completed"`) || !strings.Contains(log, vm.Tap) {
		t.Fatalf("the helper log has no completed call for tap %s:\n%s", vm.Tap, tail(log, 20))
	}

	u.mustCLI(t, "vm", "rm", "--force", "up-web")
	if _, err := u.inNetns("ip", "link", "show", vm.Tap); err == nil {
		t.Fatalf("tap %s still exists after vm rm", vm.Tap)
	}
	if err := waitFor(func() bool { return syscall.Kill(vm.PID, 0) != nil }, 10*time.Second); err != nil {
		t.Fatalf("VMM pid %d still alive after vm rm", vm.PID)
	}
	if pids := virtiofsdOf(t, vm.Dir); len(pids) != 0 {
		t.Fatalf("virtiofsd %v still runs after vm rm", pids)
	}
}

// startUnprivEnv creates the namespaces, directories, helper and daemon, and registers
// their teardown, which runs even when the test fails half-way.
func startUnprivEnv(t *testing.T, bin string) *unprivEnv {
	t.Helper()
	u := &unprivEnv{bin: bin, t: t}
	suffix := strconv.Itoa(os.Getpid())
	u.netns, u.peerns = "bgr-up-"+suffix, "bgr-upx-"+suffix
	var err error
	if u.dir, err = os.MkdirTemp(testkit.WorldTempBase(t), "banger-unpriv-"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(u.teardown)
	// The daemon user must reach its own files below this root-owned directory.
	if err := os.Chmod(u.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// The binaries too: the checkout they were built in may be private to root.
	u.bin = filepath.Join(u.dir, "bin")
	if err := os.Mkdir(u.bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"banger", "bangerd", "banger-agent"} {
		copyFile(t, filepath.Join(bin, name), filepath.Join(u.bin, name), 0o755)
	}
	bin = u.bin
	u.home = filepath.Join(u.dir, "home")
	for _, d := range []string{u.home, filepath.Join(u.home, "state"), filepath.Join(u.home, "run")} {
		mkdirOwned(t, d)
	}
	// A private, daemon-owned cache seeded from the shared one (which stays untouched).
	seedCache(t, testkit.CacheDir(), filepath.Join(u.home, "cache"))

	if err := linkedNamespaces(u.netns, u.peerns, "up0", "upx0", upHostIP, upPeerIP); err != nil {
		t.Fatal(err)
	}
	// The daemon binds DNS on the bridge address's port 53 without CAP_NET_BIND_SERVICE;
	// the per-namespace sysctl is the deployment option docs/networking.md describes.
	if err := run("ip", "netns", "exec", u.netns, "sysctl", "-q", "-w", "net.ipv4.ip_unprivileged_port_start=53"); err != nil {
		t.Fatal(err)
	}
	u.www = filepath.Join(u.dir, "www")
	if err := os.MkdirAll(u.www, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(u.www, "index.html"), []byte("peer-ok\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	u.serve(t, u.peerns, upPeerIP+":8080")

	helperDir := filepath.Join(u.dir, "helper")
	if err := os.Mkdir(helperDir, 0o755); err != nil {
		t.Fatal(err)
	}
	helperSock := filepath.Join(helperDir, "helper.sock")
	u.socket = filepath.Join(u.home, "run", "bangerd.sock")
	u.config = filepath.Join(u.dir, "bangerd.yaml")
	cfg := fmt.Sprintf(`state_dir: %s
runtime_dir: %s
cache_dir: %s
network:
  enabled: true
  helper_socket: %s
  bridge: banger0
  cidr: %s/24
  uplink: up0
dns:
  domain: %s
  listen: ["127.0.0.1:10053"]
  upstreams: ["127.0.0.1:9"]
defaults:
  memory: 256M
  system_overlay_size: 1G
  work_disk_size: 1G
vmm: qemu
agent_path: %s
`, filepath.Join(u.home, "state"), filepath.Join(u.home, "run"), filepath.Join(u.home, "cache"), helperSock, bridgeIP,
		dnsDomain, filepath.Join(bin, "banger-agent"))
	if err := os.WriteFile(u.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}

	// The root helper, configured exactly as the systemd unit in docs/networking.md.
	ids := func(n int) string { return strconv.Itoa(n) }
	u.helperLog = filepath.Join(u.dir, "helper.log")
	hl, err := os.Create(u.helperLog)
	if err != nil {
		t.Fatal(err)
	}
	defer hl.Close()
	u.helper = exec.Command("ip", "netns", "exec", u.netns, filepath.Join(bin, "bangerd"), "helper", "--config", u.config,
		"--socket-group", ids(unprivGID), "--allow-uid", ids(unprivUID), "--allow-gid", ids(unprivGID),
		"--tap-owner-uid", ids(unprivUID), "--tap-owner-gid", ids(unprivGID))
	u.helper.Stdout, u.helper.Stderr = hl, hl
	if err := u.helper.Start(); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(func() bool { _, err := os.Stat(helperSock); return err == nil }, 20*time.Second); err != nil {
		t.Fatalf("root helper did not create its socket: %s", readFile(u.helperLog))
	}

	// The daemon: `ip netns exec` must run as root; setpriv then drops to the daemon user
	// (a uid change from root clears every capability) and execs bangerd, so the pid we
	// hold is bangerd's own. --cleanup makes a SIGTERM stop the VMs and remove the network.
	u.daemonLog = filepath.Join(u.dir, "bangerd.log")
	dl, err := os.Create(u.daemonLog)
	if err != nil {
		t.Fatal(err)
	}
	defer dl.Close()
	script := tunAccessScript(t, u.dir) + `exec setpriv --reuid=` + ids(unprivUID) + ` --regid=` + ids(unprivGID) +
		` --clear-groups -- "$@"`
	u.daemon = exec.Command("ip", "netns", "exec", u.netns, "sh", "-ec", script, "sh",
		filepath.Join(bin, "bangerd"), "--config", u.config, "--socket", u.socket, "--cleanup")
	u.daemon.Env = u.userEnv()
	u.daemon.Stdout, u.daemon.Stderr = dl, dl
	if err := u.daemon.Start(); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(func() bool {
		out, _, code := u.cli(nil, "version")
		return code == 0 && strings.Contains(out, "(protocol 1, pid")
	}, 30*time.Second); err != nil {
		t.Fatalf("unprivileged bangerd did not come up:\n%s", readFile(u.daemonLog))
	}
	return u
}

// tunAccessScript returns shell lines that give the daemon's private mount namespace (the
// one `ip netns exec` creates) a /dev/net/tun the daemon user may open, when the host's is
// root-only. Distributions make it 0666 (udev's default rule) and banger relies on that;
// minimal containers without udev leave it 0600. The fix stays inside that mount
// namespace: a fresh 0666 node for the same device, bound over /dev/net/tun.
func tunAccessScript(t *testing.T, dir string) string {
	fi, err := os.Stat("/dev/net/tun")
	if err != nil {
		t.Fatalf("/dev/net/tun: %v", err)
	}
	if fi.Mode().Perm()&0o006 == 0o006 {
		return ""
	}
	st := fi.Sys().(*syscall.Stat_t)
	mnt := filepath.Join(dir, "devtun")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("/dev/net/tun is %v here; giving the daemon's mount namespace a 0666 node like a udev host has", fi.Mode().Perm())
	return fmt.Sprintf("mount -t tmpfs -o mode=0755,size=64k banger-devtun %[1]s\nmknod -m 0666 %[1]s/tun c %[2]d %[3]d\nmount --bind %[1]s/tun /dev/net/tun\n",
		mnt, unixMajor(st.Rdev), unixMinor(st.Rdev))
}

func unixMajor(dev uint64) uint64 { return ((dev >> 8) & 0xfff) | ((dev >> 32) & 0xfffff000) }
func unixMinor(dev uint64) uint64 { return (dev & 0xff) | ((dev >> 12) & 0xffffff00) }

// userEnv is a clean environment for the daemon user's processes.
func (u *unprivEnv) userEnv() []string {
	return []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + u.home, "LANG=C"}
}

// cli runs the banger CLI as the daemon user (its socket is the user's, mode 0660).
func (u *unprivEnv) cli(stdin io.Reader, args ...string) (string, string, int) {
	attr := &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: unprivUID, Gid: unprivGID, Groups: []uint32{}}}
	return runCLI(u.bin, u.socket, stdin, attr, u.userEnv(), args...)
}

func (u *unprivEnv) mustCLI(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := u.cli(nil, args...)
	if code != 0 {
		t.Fatalf("banger %s (as uid %d): exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), unprivUID, code, out, errOut)
	}
	return out
}

func (u *unprivEnv) show(t *testing.T, name string) vmRecord {
	t.Helper()
	var vm vmRecord
	out := u.mustCLI(t, "vm", "show", "--json", name)
	if err := json.Unmarshal([]byte(out), &vm); err != nil {
		t.Fatalf("decoding vm show: %v\n%s", err, out)
	}
	return vm
}

// serve runs busybox httpd on addr in namespace ns, serving u.www, until teardown.
func (u *unprivEnv) serve(t *testing.T, ns, addr string) {
	t.Helper()
	srv := exec.Command("ip", "netns", "exec", ns, "busybox", "httpd", "-f", "-p", addr, "-h", u.www)
	if err := srv.Start(); err != nil {
		t.Fatalf("starting httpd on %s in %s: %v", addr, ns, err)
	}
	u.servers = append(u.servers, srv)
}

func (u *unprivEnv) inNetns(name string, args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", u.netns, name}, args...)...).CombinedOutput()
	return string(out), err
}

// teardown stops the daemon (which, with --cleanup, stops VMs and removes taps and the
// bridge), kills any VMM it left, stops the helper and the peer server, deletes the
// namespaces and the directory. Every step runs whatever the earlier ones did.
func (u *unprivEnv) teardown() {
	t := u.t
	if u.daemon != nil && u.daemon.Process != nil {
		u.daemon.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { u.daemon.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			u.daemon.Process.Kill()
			<-done
		}
	}
	for _, pid := range u.vmmPIDs {
		if argv, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && bytes.Contains(argv, []byte("qemu")) {
			t.Logf("killing VMM pid %d left behind", pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if u.helper != nil && u.helper.Process != nil {
		u.helper.Process.Signal(syscall.SIGTERM)
		u.helper.Wait()
	}
	for _, srv := range u.servers {
		srv.Process.Kill()
		srv.Wait()
	}
	if t.Failed() {
		t.Logf("--- unprivileged bangerd log tail ---\n%s", tail(readFile(u.daemonLog), 40))
		t.Logf("--- its root helper log tail ---\n%s", tail(readFile(u.helperLog), 20))
	}
	exec.Command("ip", "netns", "del", u.netns).Run()
	exec.Command("ip", "netns", "del", u.peerns).Run()
	if os.Getenv("BANGER_E2E_KEEP_LOGS") != "" {
		t.Logf("unprivileged e2e files kept in %s", u.dir)
		return
	}
	os.RemoveAll(u.dir)
}

func mkdirOwned(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, unprivUID, unprivGID); err != nil {
		t.Fatal(err)
	}
}

// seedCache gives the daemon user a cache of its own with the kernel package TestMain
// fetched: directories are created and owned by the user, small files (the resolution
// record, which the daemon may rewrite) are copied, and the large kernel files are
// hard-linked, read-only to the user, so the shared cache is neither copied nor changed.
func seedCache(t *testing.T, shared, own string) {
	t.Helper()
	err := filepath.WalkDir(shared, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(shared, p)
		dst := filepath.Join(own, rel)
		switch {
		case d.IsDir():
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return err
			}
			return os.Chown(dst, unprivUID, unprivGID)
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, dst); err != nil {
				return err
			}
			return os.Lchown(dst, unprivUID, unprivGID)
		case d.Type().IsRegular():
			info, err := d.Info()
			if err != nil {
				return err
			}
			if info.Size() >= 1<<20 {
				return os.Link(p, dst)
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if err := os.WriteFile(dst, b, info.Mode().Perm()); err != nil {
				return err
			}
			return os.Chown(dst, unprivUID, unprivGID)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("seeding the daemon user's cache from %s: %v", shared, err)
	}
}

// procStatus reads /proc/PID/status into a map of field to tab-separated value.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("reading status of pid %d: %v", pid, err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// idLine is the Uid/Gid line of /proc/PID/status for a process with one id in all four
// slots (real, effective, saved, file system).
func idLine(id int) string {
	s := strconv.Itoa(id)
	return s + "\t" + s + "\t" + s + "\t" + s
}

// copyFile copies src to dst with mode.
func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		t.Fatal(err)
	}
}
