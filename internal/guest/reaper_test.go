package guest

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// zombieChildren lists zombies whose parent is this process.
func zombieChildren() []int {
	var zs []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if state, ppid, ok := procStat(pid); ok && ppid == os.Getpid() && state == 'Z' {
			zs = append(zs, pid)
		}
	}
	return zs
}

// TestReaper runs in a child test process made a child subreaper, which receives orphans
// the way PID 1 does, without touching the test binary itself.
func TestReaper(t *testing.T) {
	if os.Getenv("BANGER_REAPER_CHILD") != "1" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestReaper$", "-test.v")
		cmd.Env = append(os.Environ(), "BANGER_REAPER_CHILD=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestReaper") {
			t.Fatalf("reaper child: %v\n%s", err, out)
		}
		return
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Skipf("cannot become a child subreaper: %v", err)
	}
	procs := newProcTable()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go procs.reap(ctx, testLogger())

	// An exec child the agent waits for itself, running while orphans come and go.
	own := exec.Command("sh", "-c", "sleep 0.5; exit 5")
	if err := procs.start(func() (int, error) {
		if err := own.Start(); err != nil {
			return 0, err
		}
		return own.Process.Pid, nil
	}); err != nil {
		t.Fatal(err)
	}
	// Orphans: the shell exits at once, its background sleeps become our children.
	// The shells are registered like any child the agent waits for itself; otherwise the
	// reaper may collect one before os/exec does.
	for range 3 {
		sh := exec.Command("sh", "-c", "sleep 0.1 & sleep 0.2 & exit 0")
		if err := procs.start(func() (int, error) {
			if err := sh.Start(); err != nil {
				return 0, err
			}
			return sh.Process.Pid, nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := sh.Wait(); err != nil {
			t.Fatal(err)
		}
		procs.forget(sh.Process.Pid)
	}
	err := own.Wait()
	procs.forget(own.Process.Pid)
	if own.ProcessState == nil || own.ProcessState.ExitCode() != 5 {
		t.Fatalf("the registered child's status was taken: %v, %v", err, own.ProcessState)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(zombieChildren()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("zombies left: %v", zombieChildren())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
