package vmm

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestMain lets this test binary stand in for bangerd's NoTHPArg mode.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == NoTHPArg {
		err := NoTHPMain(os.Args[2:])
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// thpLine launches a shell that prints its THP_enabled status line and waits, optionally
// through WithoutTHP, and returns that line and the process.
func thpLine(t *testing.T, launcher string) (string, *Process) {
	t.Helper()
	dir := t.TempDir()
	logPath := filepath.Join(dir, "vm.log")
	cmd := exec.Command("/bin/sh", "-c", "grep THP_enabled /proc/self/status; exec sleep 60", "vmm-test", dir)
	WithoutTHP(cmd, launcher)
	p, err := Launch(cmd, logPath, 0, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Kill(); <-p.Done() })
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		b, _ := os.ReadFile(logPath)
		if line, _, ok := strings.Cut(string(b), "\n"); ok {
			return strings.Join(strings.Fields(line), " "), p
		}
	}
	t.Fatal("the shell printed no THP_enabled line")
	return "", nil
}

// A VMM started through WithoutTHP runs with transparent huge pages off, and its recorded
// command line is its own, not the launcher's (Recover and detach read it).
func TestWithoutTHP(t *testing.T) {
	if _, err := os.Stat("/sys/kernel/mm/transparent_hugepage"); err != nil {
		t.Skip("kernel without transparent huge pages: nothing to turn off")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if line, _ := thpLine(t, ""); line != "THP_enabled: 1" {
		t.Fatalf("started directly: %q, want THP_enabled: 1", line)
	}
	line, p := thpLine(t, self)
	if line != "THP_enabled: 0" {
		t.Fatalf("started through WithoutTHP: %q, want THP_enabled: 0", line)
	}
	want := []string{"/bin/sh", "-c", "grep THP_enabled /proc/self/status; exec sleep 60", "vmm-test"}
	if got := p.Cmdline(); !slices.Equal(got[:len(want)], want) {
		t.Fatalf("recorded command line %q, want the VMM's %q", got, want)
	}
	if argv, _ := readCmdline(p.PID()); len(argv) == 0 || argv[0] != "sleep" {
		t.Fatalf("the launcher did not exec the VMM: %q", argv)
	}
}

func TestNoTHPMainArgs(t *testing.T) {
	if err := NoTHPMain([]string{"/bin/true"}); err == nil || !strings.Contains(err.Error(), NoTHPArg) {
		t.Fatalf("NoTHPMain without an argv: %v", err)
	}
}
