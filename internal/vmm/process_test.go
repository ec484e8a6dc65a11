package vmm

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func waitDone(t *testing.T, p *Process) {
	t.Helper()
	select {
	case <-p.Done():
	case <-time.After(5 * time.Second):
		t.Fatalf("pid %d: Done not closed", p.PID())
	}
}

func TestLaunchAdoptKill(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "vm.log")
	if err := os.WriteFile(logPath, []byte("earlier boot\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", "-c", "echo to-stdout; echo to-stderr >&2; exec sleep 60", "vmm-test", dir)
	p, err := Launch(cmd, logPath, 0, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Kill() })
	if pid, err := ReadPIDFile(dir); err != nil || pid != p.PID() {
		t.Fatalf("pidfile: %d, %v", pid, err)
	}
	if sid, _ := unix.Getsid(p.PID()); sid != p.PID() {
		t.Errorf("VMM not in its own session: sid %d, pid %d", sid, p.PID())
	}

	// Wait until the shell has exec'd sleep (after writing both lines).
	deadline := time.Now().Add(5 * time.Second)
	for {
		argv, _ := readCmdline(p.PID())
		if len(argv) > 0 && argv[0] == "sleep" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sleep not exec'd: %q", argv)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The console drain writes the log asynchronously: give it a moment.
	var b []byte
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if b, _ = os.ReadFile(logPath); strings.Contains(string(b), "to-stdout") && strings.Contains(string(b), "to-stderr") {
			break
		}
	}
	if !strings.HasPrefix(string(b), "earlier boot\n") ||
		!strings.Contains(string(b), "to-stdout") || !strings.Contains(string(b), "to-stderr") {
		t.Fatalf("log not appended with stdout and stderr: %q", b)
	}

	// sleep's argv is "sleep 60": adopt it by its binary, and refuse a wrong needle.
	if _, err := Adopt(p.PID(), 0, MatchCmdline("sleep", "no-such-arg")); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Adopt with a non-matching needle: %v", err)
	}
	if _, err := Adopt(p.PID(), 0, MatchCmdline("qemu-system-x86_64")); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Adopt of another binary: %v", err)
	}
	// A recorded start time that differs is another process that reused the pid.
	if p.StartTime() == 0 {
		t.Fatal("Launch recorded no start time")
	}
	if _, err := Adopt(p.PID(), p.StartTime()+1, MatchCmdline("sleep", "60")); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Adopt with another start time: %v", err)
	}
	a, err := Adopt(p.PID(), p.StartTime(), MatchCmdline("/usr/bin/sleep", "60"))
	if err != nil {
		t.Fatalf("Adopt: %v", err)
	}
	if err := a.Kill(); err != nil {
		t.Fatal(err)
	}
	waitDone(t, a)
	waitDone(t, p)
	if err := a.Kill(); err != nil {
		t.Errorf("Kill after exit: %v", err)
	}
	if _, err := Adopt(p.PID(), 0, MatchCmdline("sleep")); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Adopt of a dead pid: %v", err)
	}
	if _, err := Adopt(0, 0, MatchCmdline("sleep")); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Adopt of pid 0: %v", err)
	}
}

func TestAdoptNoticesExitByPolling(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &Process{pid: cmd.Process.Pid, done: make(chan struct{}), pidfd: -1}
	go p.watch()
	_ = cmd.Process.Kill()
	// Not reaped yet: the zombie must count as exited.
	waitDone(t, p)
	_ = cmd.Wait()
}

func TestMatchCmdline(t *testing.T) {
	m := MatchCmdline("firecracker", "/vms/a/firecracker.sock")
	for argv, want := range map[string]bool{
		"/usr/local/bin/firecracker\x00--api-sock\x00/vms/a/firecracker.sock":  true,
		"firecracker\x00--api-sock\x00/vms/b/firecracker.sock":                 false,
		"/bin/sh\x00/opt/firecracker\x00--api-sock\x00/vms/a/firecracker.sock": true,
		"qemu\x00/vms/a/firecracker.sock":                                      false,
		"":                                                                     false,
	} {
		var args []string
		if argv != "" {
			args = strings.Split(argv, "\x00")
		}
		if got := m(args); got != want {
			t.Errorf("%q: got %v, want %v", argv, got, want)
		}
	}
}

func TestReadPIDFileErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := ReadPIDFile(dir); err == nil {
		t.Error("missing pidfile: no error")
	}
	os.WriteFile(filepath.Join(dir, PIDFileName), []byte("abc\n"), 0o644)
	if _, err := ReadPIDFile(dir); err == nil || !strings.Contains(err.Error(), "bad pid") {
		t.Errorf("bad pidfile: %v", err)
	}
}

func TestProbeKVM(t *testing.T) {
	dir := t.TempDir()
	if st := probeKVM(filepath.Join(dir, "kvm"), dir); st.Usable || !strings.Contains(st.Detail, "does not exist") || st.Fix == "" {
		t.Errorf("missing device: %+v", st)
	}
	notKVM := filepath.Join(dir, "file")
	os.WriteFile(notKVM, nil, 0o666)
	if st := probeKVM(notKVM, filepath.Join(dir, "none")); st.Usable || !strings.Contains(st.Detail, "KVM_GET_API_VERSION") {
		t.Errorf("not a KVM device: %+v", st)
	}
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skip("no /dev/kvm on this host")
	}
	if st := probeKVM("/dev/kvm", dir); st.Usable || !strings.Contains(st.Detail, "PVM") {
		t.Errorf("PVM module present: %+v", st)
	}
	if st := probeKVM("/dev/kvm", filepath.Join(dir, "none")); !st.Usable {
		t.Errorf("working /dev/kvm without PVM: %+v", st)
	}
}
