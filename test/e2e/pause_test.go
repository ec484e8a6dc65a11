package e2e

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// A process keeps its in-memory state across pause and resume: a shell counting in a
// variable continues from its own count (same pid, same variable), it does not start over,
// and while paused exec is refused.
func TestPauseResumeKeepsProcessState(t *testing.T) {
	x := need(t)
	x.createVM(t, "e2e-pause")
	// The counter lives in the shell's memory; the file only shows it.
	x.mustCLI(t, "vm", "exec", "e2e-pause", "--", "sh", "-c",
		"(n=0; while :; do n=$((n+1)); echo \"$$ $n\" > /tmp/count; sleep 0.1; done) </dev/null >/dev/null 2>&1 &")
	read := func() (string, int) {
		t.Helper()
		out := strings.Fields(x.mustCLI(t, "vm", "exec", "e2e-pause", "--", "cat", "/tmp/count"))
		if len(out) != 2 {
			t.Fatalf("counter file: %q", out)
		}
		n, err := strconv.Atoi(out[1])
		if err != nil {
			t.Fatal(err)
		}
		return out[0], n
	}
	if err := waitFor(func() bool { _, n := read(); return n >= 3 }, time.Minute); err != nil {
		t.Fatalf("counter never advanced: %v", err)
	}
	pid1, n1 := read()
	x.mustCLI(t, "vm", "pause", "e2e-pause")
	if st := x.show(t, "e2e-pause"); st.State != "paused" {
		t.Fatalf("state after pause = %s", st.State)
	}
	_, errOut, code := x.cli(nil, "vm", "exec", "e2e-pause", "--", "true")
	if code == 0 || !strings.Contains(errOut, "is paused") {
		t.Fatalf("exec while paused: exit %d, stderr %q", code, errOut)
	}
	x.mustCLI(t, "vm", "resume", "e2e-pause")
	if st := x.show(t, "e2e-pause"); st.State != "running" {
		t.Fatalf("state after resume = %s", st.State)
	}
	pid2, n2 := read()
	if pid2 != pid1 || n2 < n1 {
		t.Fatalf("after resume: counter %s %d, before pause %s %d: the process did not keep its state", pid2, n2, pid1, n1)
	}
	if err := waitFor(func() bool { _, n := read(); return n > n2 }, time.Minute); err != nil {
		t.Fatalf("counter stopped after resume: %v", err)
	}
	// A paused VM stops cleanly (the daemon resumes it for the guest's shutdown).
	x.mustCLI(t, "vm", "pause", "e2e-pause")
	x.mustCLI(t, "vm", "stop", "e2e-pause")
	if logs := x.mustCLI(t, "vm", "logs", "e2e-pause"); !strings.Contains(logs, "guest shutdown") {
		t.Errorf("a paused VM's stop did not go through the guest:\n%s", tail(logs, 20))
	}
}
