package vmm

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// fakeVMM writes a shell script named name that loops until killed; run through sh, its
// command line is "sh SCRIPT ARGS", as an interpreted VMM would be.
func fakeVMM(t *testing.T, name string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte("while :; do sleep 0.2; done\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func startProc(t *testing.T, argv ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd
}

func TestFindOwnedAndKillOwned(t *testing.T) {
	vmsDir := filepath.Join(t.TempDir(), "vms")
	bin := fakeVMM(t, "qemu-system-x86_64")
	mine := startProc(t, "sh", bin, "-qmp", "unix:"+vmsDir+"/abc123/qmp.sock,server")
	// Same binary, another state directory: not ours.
	startProc(t, "sh", bin, "-qmp", "unix:"+vmsDir+"2/abc123/qmp.sock,server")
	// Our directory, but not a VMM binary.
	startProc(t, "sleep", "60", vmsDir+"/abc123/x")
	var found []Owned
	deadline := time.Now().Add(5 * time.Second)
	for {
		var err error
		if found, err = FindOwned(vmsDir, []string{"qemu-system-x86_64", "firecracker"}); err != nil {
			t.Fatal(err)
		}
		if len(found) > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(found) != 1 || found[0].PID != mine.Process.Pid || found[0].VMID != "abc123" || found[0].Start == 0 {
		t.Fatalf("FindOwned = %+v, want only pid %d of vm abc123", found, mine.Process.Pid)
	}
	bins := []string{"qemu-system-x86_64"}
	// A stale identity (another start time) is not signalled.
	stale := found[0]
	stale.Start++
	if err := KillOwned(stale, vmsDir, bins, time.Second); err != nil {
		t.Fatal(err)
	}
	if again, _ := FindOwned(vmsDir, bins); !slices.ContainsFunc(again, func(o Owned) bool { return o.PID == mine.Process.Pid }) {
		t.Fatal("KillOwned killed a process whose start time did not match")
	}
	exited := make(chan struct{})
	go func() { _, _ = mine.Process.Wait(); close(exited) }()
	if err := KillOwned(found[0], vmsDir, bins, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatal("owned VMM still running after KillOwned")
	}
}
