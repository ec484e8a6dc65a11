package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The first test to run pulls the default image through the embedded catalog, which must
// show the auto_pull_image stage.
func TestRunAutoPullsDefaultImageAndPrintsGuestKernel(t *testing.T) {
	x := need(t)
	out, errOut, code := x.cli(nil, "vm", "run", "--rm", "--", "cat", "/proc/version")
	if code != 0 {
		t.Fatalf("vm run exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if !strings.HasPrefix(out, "Linux version ") || !strings.Contains(out, "cloud-amd64") {
		t.Fatalf("expected the guest's /proc/version, got %q", out)
	}
	if !strings.Contains(errOut, "agent_ready") {
		t.Errorf("expected create stages on stderr, got %q", errOut)
	}
	// Either this run fetched the image (auto_pull_image shown) or an earlier one did.
	images := x.mustCLI(t, "image", "ls")
	if !strings.Contains(images, "tiny") {
		t.Fatalf("default image not installed after run: %s", images)
	}
	t.Logf("stages:\n%s", errOut)
	// --rm removed the VM.
	if ls := x.mustCLI(t, "vm", "ls", "--json"); strings.Contains(ls, `"state": "running"`) {
		t.Fatalf("vm run --rm left a running VM: %s", ls)
	}
}

func TestRunPropagatesExitCode(t *testing.T) {
	x := need(t)
	_, errOut, code := x.cli(nil, "vm", "run", "--rm", "-q", "--", "sh", "-c", "echo to-stderr >&2; exit 3")
	if code != 3 {
		t.Fatalf("expected exit 3, got %d (stderr %s)", code, errOut)
	}
	if !strings.Contains(errOut, "to-stderr") {
		t.Fatalf("guest stderr not forwarded: %q", errOut)
	}
}

func TestExecStreamsStdinAndDisksPersist(t *testing.T) {
	x := need(t)
	vm := x.createVM(t, "e2e-disks")
	out, errOut, code := x.cli(strings.NewReader("hi from stdin\n"), "vm", "exec", "e2e-disks", "--", "cat")
	if code != 0 || out != "hi from stdin\n" {
		t.Fatalf("stdin streaming: exit %d out %q err %q", code, out, errOut)
	}
	x.mustCLI(t, "vm", "exec", "e2e-disks", "--", "sh", "-c", "echo work-data > /root/persist.txt && echo sys-data > /etc/banger-marker && sync")
	x.mustCLI(t, "vm", "stop", "e2e-disks")
	if st := x.show(t, "e2e-disks"); st.State != "stopped" {
		t.Fatalf("state after stop = %s", st.State)
	}
	// A stopped VM has no tap; start makes it again.
	if _, err := x.inNetns("ip", "link", "show", vm.Tap); err == nil {
		t.Errorf("tap %s still exists after stop", vm.Tap)
	}
	// A clean stop goes through the guest and leaves clean filesystems.
	logs := x.mustCLI(t, "vm", "logs", "e2e-disks")
	if !strings.Contains(logs, "guest shutdown") {
		t.Errorf("console log lacks the guest shutdown line:\n%s", tail(logs, 20))
	}
	for _, disk := range []string{"system.cow", "root.ext4"} {
		out, err := exec.Command("e2fsck", "-fn", filepath.Join(vm.Dir, disk)).CombinedOutput()
		if err != nil {
			t.Errorf("e2fsck -fn %s after stop: %v\n%s", disk, err, out)
		}
	}
	x.mustCLI(t, "vm", "start", "e2e-disks")
	if got := x.mustCLI(t, "vm", "exec", "e2e-disks", "--", "cat", "/root/persist.txt", "/etc/banger-marker"); got != "work-data\nsys-data\n" {
		t.Fatalf("after restart: got %q", got)
	}
	// Another VM of the same image does not see this VM's system writes.
	x.createVM(t, "e2e-other")
	_, _, code = x.cli(nil, "vm", "exec", "e2e-other", "--", "test", "-e", "/etc/banger-marker")
	if code == 0 {
		t.Fatal("a write to /etc in one VM is visible in another VM of the same image")
	}
}

func TestDaemonKill9KeepsVMRunning(t *testing.T) {
	x := need(t)
	x.createVM(t, "e2e-survivor")
	before := x.show(t, "e2e-survivor")
	x.stopDaemon(syscall.SIGKILL)
	if err := syscall.Kill(before.PID, 0); err != nil {
		t.Fatalf("VMM pid %d died with the daemon: %v", before.PID, err)
	}
	if err := x.startDaemon(); err != nil {
		t.Fatal(err)
	}
	after := x.show(t, "e2e-survivor")
	if after.State != "running" || after.PID != before.PID {
		t.Fatalf("after daemon restart: state %s pid %d (was %d)", after.State, after.PID, before.PID)
	}
	if out := x.mustCLI(t, "vm", "exec", "e2e-survivor", "--", "echo", "still-here"); out != "still-here\n" {
		t.Fatalf("exec after daemon restart: %q", out)
	}
}

func TestThreeConcurrentVMsBecomeReady(t *testing.T) {
	x := need(t)
	var wg sync.WaitGroup
	errs := make([]string, 3)
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			name := fmt.Sprintf("e2e-par-%d", i)
			out, errOut, code := x.cli(nil, "vm", "create", "-q", "--name", name)
			if code != 0 {
				errs[i] = fmt.Sprintf("%s: exit %d %s %s", name, code, out, errOut)
			}
		}(i)
	}
	wg.Wait()
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("e2e-par-%d", i)
		t.Cleanup(func() { x.cli(nil, "vm", "rm", "--force", name) })
		if errs[i] != "" {
			t.Error(errs[i])
			continue
		}
		if out := x.mustCLI(t, "vm", "exec", name, "--", "hostname"); strings.TrimSpace(out) != name {
			t.Errorf("hostname of %s = %q", name, out)
		}
	}
}

func TestFailedCreateLeavesNothing(t *testing.T) {
	x := need(t)
	before := x.mustCLI(t, "vm", "ls", "--json")
	vmDirsBefore := vmDirs(x)
	for _, args := range [][]string{
		{"--name", "Bad_Name"},
		{"--memory", "lots"},
		{"--vcpu", "999"},
		{"--work-disk-size", "-1G"},
		{"--image", "no-such-image"},
	} {
		_, errOut, code := x.cli(nil, append([]string{"vm", "create", "-q"}, args...)...)
		if code == 0 {
			t.Errorf("vm create %v succeeded", args)
			continue
		}
		if !strings.Contains(errOut, "op-") {
			t.Errorf("error for %v lacks the op id: %s", args, errOut)
		}
		val := args[1]
		if !strings.Contains(errOut, val) {
			t.Errorf("error for %v does not name the bad value: %s", args, errOut)
		}
	}
	if after := x.mustCLI(t, "vm", "ls", "--json"); after != before {
		t.Fatalf("failed creates changed the VM list:\nbefore %s\nafter %s", before, after)
	}
	if got, want := vmDirs(x), vmDirsBefore; got != want {
		t.Fatalf("failed creates left VM directories behind: before %q after %q", want, got)
	}
}

func vmDirs(x *env) string {
	entries, _ := os.ReadDir(filepath.Join(x.stateDir, "vms"))
	var names []string
	for _, en := range entries {
		names = append(names, en.Name())
	}
	return strings.Join(names, ",")
}

func TestCopyBothWaysAndTTY(t *testing.T) {
	x := need(t)
	x.createVM(t, "e2e-cp")
	src := t.TempDir()
	if err := os.MkdirAll(filepath.Join(src, "tree", "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(src, "tree", "a.txt"), []byte("alpha\n"), 0o644)
	os.WriteFile(filepath.Join(src, "tree", "sub", "run.sh"), []byte("#!/bin/sh\necho ran\n"), 0o755)
	x.mustCLI(t, "vm", "cp", filepath.Join(src, "tree"), "e2e-cp:/root/tree")
	if out := x.mustCLI(t, "vm", "exec", "e2e-cp", "--", "sh", "-c", "cat /root/tree/a.txt && /root/tree/sub/run.sh"); out != "alpha\nran\n" {
		t.Fatalf("copied tree in the guest: %q", out)
	}
	x.mustCLI(t, "vm", "exec", "e2e-cp", "--", "sh", "-c", "mkdir -p /root/out && echo from-guest > /root/out/r.txt")
	dst := t.TempDir()
	x.mustCLI(t, "vm", "cp", "e2e-cp:/root/out", dst)
	if b, err := os.ReadFile(filepath.Join(dst, "out", "r.txt")); err != nil || string(b) != "from-guest\n" {
		t.Fatalf("copied back: %q %v", b, err)
	}
	// A single file out to a new name: the guest's setuid bit does not come along.
	x.mustCLI(t, "vm", "exec", "e2e-cp", "--", "chmod", "4755", "/root/out/r.txt")
	single := filepath.Join(dst, "single.txt")
	x.mustCLI(t, "vm", "cp", "e2e-cp:/root/out/r.txt", single)
	if b, err := os.ReadFile(single); err != nil || string(b) != "from-guest\n" {
		t.Fatalf("single file copied back: %q %v", b, err)
	}
	if fi, err := os.Stat(single); err != nil || fi.Mode()&os.ModeSetuid != 0 || fi.Mode().Perm()&0o100 == 0 {
		t.Fatalf("single file mode %v (%v), want executable without setuid", fi.Mode(), err)
	}
	// Bad copies are refused with the field named.
	if _, errOut, code := x.cli(nil, "vm", "cp", "a", "b"); code == 0 || !strings.Contains(errOut, "NAME:/path") {
		t.Fatalf("cp without a VM side: %d %s", code, errOut)
	}
	// -t gives the command a terminal.
	out := x.mustCLI(t, "vm", "exec", "-t", "e2e-cp", "--", "tty")
	if !strings.HasPrefix(strings.TrimSpace(out), "/dev/pts/") {
		t.Fatalf("exec -t: tty printed %q", out)
	}
	// A missing command exits 127, like a shell.
	if _, errOut, code := x.cli(nil, "vm", "exec", "e2e-cp", "--", "no-such-cmd"); code != 127 || !strings.Contains(errOut, "no-such-cmd") {
		t.Fatalf("missing command: exit %d %s", code, errOut)
	}
}

func TestReconcileMarksVanishedVMStopped(t *testing.T) {
	x := need(t)
	vm := x.createVM(t, "e2e-vanish")
	x.stopDaemon(syscall.SIGKILL)
	if err := syscall.Kill(vm.PID, syscall.SIGKILL); err != nil {
		t.Fatalf("killing the VMM: %v", err)
	}
	if err := x.startDaemon(); err != nil {
		t.Fatal(err)
	}
	if st := x.show(t, "e2e-vanish"); st.State != "stopped" || st.PID != 0 {
		t.Fatalf("after restart with the VMM gone: state %s pid %d", st.State, st.PID)
	}
	if _, err := x.inNetns("ip", "link", "show", vm.Tap); err == nil {
		t.Fatalf("tap %s of the vanished VM was not reconciled away", vm.Tap)
	}
	if !strings.Contains(readFile(x.daemonLog.Name()), `"msg":"reconcile: vm's VMM process is gone; marking stopped"`) {
		t.Fatal("reconcile did not log the vanished VM")
	}
	// It starts again normally.
	x.mustCLI(t, "vm", "start", "e2e-vanish")
	if out := x.mustCLI(t, "vm", "exec", "e2e-vanish", "--", "echo", "back"); out != "back\n" {
		t.Fatalf("exec after restart: %q", out)
	}
}

// Ctrl-C during `vm run --rm` reaches the guest command, and the VM is still removed.
func TestRunRmCtrlCRemovesVM(t *testing.T) {
	x := need(t)
	cmd := exec.Command(filepath.Join(x.bin, "banger"), "--socket", x.socket, "vm", "run", "--rm", "-q", "--name", "e2e-ctrlc", "--", "sleep", "120")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.cli(nil, "vm", "rm", "-f", "e2e-ctrlc") })
	// Wait until the guest command runs, then interrupt the CLI as a terminal would.
	if err := waitFor(func() bool {
		_, _, code := x.cli(nil, "vm", "exec", "e2e-ctrlc", "--", "sh", "-c", "ps | grep -q '[s]leep 120'")
		return code == 0
	}, 2*time.Minute); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal("the guest command never started")
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code != 130 {
		t.Fatalf("vm run after Ctrl-C: exit %d (%v), want 130", code, err)
	}
	if _, _, code := x.cli(nil, "vm", "show", "e2e-ctrlc"); code == 0 {
		t.Fatal("vm run --rm left the VM behind after Ctrl-C")
	}
}

// A create whose boot fails (a kernel qemu cannot load) leaves no row, directory or tap.
func TestFailedBootLeavesNothing(t *testing.T) {
	x := need(t)
	dir := t.TempDir()
	rootfs := filepath.Join(dir, "rootfs.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", rootfs, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v %s", err, out)
	}
	// /bin/true is an x86_64 ELF, so the import accepts it, but it has no PVH entry point.
	x.mustCLI(t, "image", "import", "--name", "e2e-broken", "--kernel", "/bin/true", "--rootfs", rootfs)
	t.Cleanup(func() { x.cli(nil, "image", "rm", "e2e-broken") })
	before := x.mustCLI(t, "vm", "ls", "--json")
	dirsBefore := vmDirs(x)
	linksBefore, _ := x.inNetns("ip", "-o", "link")
	_, errOut, code := x.cli(nil, "vm", "create", "-q", "--name", "e2e-noboot", "--image", "e2e-broken")
	if code == 0 {
		t.Fatal("creating a VM with an unbootable kernel succeeded")
	}
	if !strings.Contains(errOut, "starting qemu") || !strings.Contains(errOut, "(op-") {
		t.Errorf("error should say the VMM failed and carry the op id: %s", errOut)
	}
	if after := x.mustCLI(t, "vm", "ls", "--json"); after != before {
		t.Errorf("failed boot changed the VM list:\n%s", after)
	}
	if got := vmDirs(x); got != dirsBefore {
		t.Errorf("failed boot left VM directories: %q", got)
	}
	if links, _ := x.inNetns("ip", "-o", "link"); strings.Count(links, "bgr") != strings.Count(linksBefore, "bgr") {
		t.Errorf("failed boot left a tap:\n%s", links)
	}
}
