package e2e

import (
	"os"
	osexec "os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// virtiofsdOf lists the pids of virtiofsd processes whose command line names dir.
func virtiofsdOf(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []string
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		argv := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if filepath.Base(argv[0]) == "virtiofsd" && strings.Contains(string(b), dir+"/") {
			pids = append(pids, e.Name())
		}
	}
	return pids
}

// TestMountSharedFolder: --mount shares host directories live (virtiofs): host changes
// show at once, :ro refuses writes even after the guest remounts it read-write (the host
// enforces it), :rw writes reach the host, symlinks and .. do not lead out of HOSTDIR, the
// mounts survive stop/start, snapshots are refused, and deleting the VM leaves no
// virtiofsd.
func TestMountSharedFolder(t *testing.T) {
	x := need(t)
	base := t.TempDir()
	ro, rw := filepath.Join(base, "ro"), filepath.Join(base, "rw")
	for _, d := range []string{ro, rw} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	secret := filepath.Join(base, "secret")
	writeTree(t, base, map[string]string{"secret": "TOPSECRET\n", "ro/a.txt": "hello\n"})
	if err := os.Symlink("../secret", filepath.Join(ro, "esc")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, filepath.Join(ro, "abs")); err != nil {
		t.Fatal(err)
	}
	vm := x.createVM(t, "e2e-mount", "--mount", ro+":/mnt/ro", "--mount", rw+":/mnt/rw:rw")
	if n := len(virtiofsdOf(t, vm.Dir)); n == 0 {
		ps, _ := osexec.Command("ps", "-eo", "pid,user,args").CombinedOutput()
		t.Fatalf("no virtiofsd runs for %s:\n%s\nvirtiofsd log: %s\nconsole: %s", vm.Dir, ps,
			readFile(filepath.Join(vm.Dir, "virtiofsd-bgr0.log")), tail(readFile(filepath.Join(vm.Dir, "console.log")), 30))
	}
	exec := func(script string) (string, int) {
		out, errOut, code := x.cli(nil, "vm", "exec", "e2e-mount", "--", "sh", "-c", script)
		return out + errOut, code
	}
	if out, code := exec("cat /mnt/ro/a.txt"); code != 0 || out != "hello\n" {
		t.Fatalf("reading a host file: exit %d: %q", code, out)
	}
	// Live: a host change is visible without any sync.
	if err := os.WriteFile(filepath.Join(ro, "a.txt"), []byte("changed on the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := exec("cat /mnt/ro/a.txt"); code != 0 || out != "changed on the host\n" {
		t.Fatalf("host change not live: exit %d: %q", code, out)
	}
	// :ro refuses writes, also after the guest (root) remounts it read-write.
	if out, code := exec("echo x > /mnt/ro/new"); code == 0 {
		t.Fatalf("write to a :ro mount succeeded: %q", out)
	}
	if out, code := exec("mount -o remount,rw /mnt/ro; echo x > /mnt/ro/new2; touch /mnt/ro/a.txt; rm -f /mnt/ro/a.txt"); code == 0 {
		t.Errorf("guest changed a :ro mount after remounting it: %q", out)
	}
	for _, n := range []string{"new", "new2"} {
		if _, err := os.Lstat(filepath.Join(ro, n)); err == nil {
			t.Errorf("guest write reached the :ro host directory: %s", n)
		}
	}
	if b, err := os.ReadFile(filepath.Join(ro, "a.txt")); err != nil || string(b) != "changed on the host\n" {
		t.Errorf("guest changed a :ro host file: %q %v", b, err)
	}
	// :rw writes reach the host.
	if out, code := exec("echo from the guest > /mnt/rw/g.txt && mkdir /mnt/rw/d && echo y > /mnt/rw/d/f"); code != 0 {
		t.Fatalf("write to :rw mount: exit %d: %q", code, out)
	}
	if b, err := os.ReadFile(filepath.Join(rw, "g.txt")); err != nil || string(b) != "from the guest\n" {
		t.Fatalf("guest write did not reach the host: %q %v", b, err)
	}
	// Nothing outside HOSTDIR: symlinks resolve in the guest, .. stops at the mount.
	out, _ := exec("cat /mnt/ro/esc /mnt/ro/abs; ls -a /mnt/ro/.. /mnt/ro/../..; cat /mnt/ro/../secret /mnt/ro/../../secret; find /mnt -name secret")
	if strings.Contains(out, "TOPSECRET") || strings.Contains(out, "/mnt/ro/../secret\n") {
		t.Fatalf("the guest reached a host file outside HOSTDIR:\n%s", out)
	}
	// A VM with shared folders cannot be snapshotted (or forked).
	if _, errOut, code := x.cli(nil, "snapshot", "create", "e2e-mount"); code == 0 || !strings.Contains(errOut, "shared folders") {
		t.Errorf("snapshot of a VM with mounts: exit %d: %s", code, errOut)
	}
	// Stop/start keeps the mounts; a stopped VM has no virtiofsd.
	x.mustCLI(t, "vm", "stop", "e2e-mount")
	if pids := virtiofsdOf(t, vm.Dir); len(pids) != 0 {
		t.Errorf("virtiofsd %v still runs after stop", pids)
	}
	x.mustCLI(t, "vm", "start", "e2e-mount")
	if out, code := exec("cat /mnt/ro/a.txt /mnt/rw/g.txt"); code != 0 || out != "changed on the host\nfrom the guest\n" {
		t.Fatalf("after stop/start: exit %d: %q", code, out)
	}
	// A daemon crash keeps the VM and its shared folders (re-adopted)...
	x.stopDaemon(syscall.SIGKILL)
	if err := x.startDaemon(); err != nil {
		t.Fatal(err)
	}
	if out, code := exec("cat /mnt/ro/a.txt"); code != 0 || out != "changed on the host\n" {
		t.Fatalf("after a daemon crash: exit %d: %q", code, out)
	}
	// ...and a VMM that dies while no daemon runs leaves no virtiofsd once it is back. The
	// virtiofsd are stopped first so they cannot exit on QEMU's disconnect themselves: the
	// daemon's reconcile must kill them.
	pid := x.show(t, "e2e-mount").PID
	x.stopDaemon(syscall.SIGKILL)
	for _, p := range virtiofsdOf(t, vm.Dir) {
		n, _ := strconv.Atoi(p)
		syscall.Kill(n, syscall.SIGSTOP)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := x.startDaemon(); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(func() bool { return len(virtiofsdOf(t, vm.Dir)) == 0 }, 15*time.Second); err != nil {
		t.Errorf("virtiofsd %v still runs after its VMM died with the daemon down", virtiofsdOf(t, vm.Dir))
	}
	x.mustCLI(t, "vm", "start", "e2e-mount")
	x.mustCLI(t, "vm", "rm", "--force", "e2e-mount")
	// vm run takes --mount too.
	if out, errOut, code := x.cli(nil, "vm", "run", "--rm", "-q", "--mount", ro+":/mnt/x", "--", "cat", "/mnt/x/a.txt"); code != 0 || out != "changed on the host\n" {
		t.Fatalf("vm run --mount: exit %d: %q %s", code, out, errOut)
	}
	if pids := virtiofsdOf(t, vm.Dir); len(pids) != 0 {
		t.Fatalf("virtiofsd %v still runs after vm rm", pids)
	}
}

// TestMountRefusals: bad --mount values are refused naming the flag and the value, and
// leave no VM.
func TestMountRefusals(t *testing.T) {
	x := need(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ value, want string }{
		{filepath.Join(dir, "missing") + ":/x", "not accessible"},
		{file + ":/x", "not a directory"},
		{dir + ":/", "GUESTPATH"},
		{dir + ":/proc", "GUESTPATH"},
		{dir + ":/sys/x", "GUESTPATH"},
		{dir + ":/dev", "GUESTPATH"},
		{dir + ":rel", "GUESTPATH"},
		{dir, "HOSTDIR:GUESTPATH"},
		{dir + ":/x:rx", `mode "rx" must be ro or rw`},
	} {
		for _, verb := range [][]string{{"vm", "create", "--name", "e2e-badmount"}, {"vm", "run", "--rm", "--name", "e2e-badmount"}} {
			args := append(append([]string{}, verb...), "--mount", c.value)
			if verb[1] == "run" {
				args = append(args, "--", "true")
			}
			_, errOut, code := x.cli(nil, args...)
			if code == 0 || !strings.Contains(errOut, "--mount") || !strings.Contains(errOut, c.value) || !strings.Contains(errOut, c.want) {
				t.Errorf("%s --mount %q: exit %d, want an error naming --mount, the value and %q: %s", verb[1], c.value, code, c.want, errOut)
			}
		}
	}
	if out := x.mustCLI(t, "vm", "list"); strings.Contains(out, "e2e-badmount") {
		t.Fatalf("a refused create left a VM:\n%s", out)
	}
}
