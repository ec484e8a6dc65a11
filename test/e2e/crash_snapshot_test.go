package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// snapshotGroundTruth checks the snapshot store against its directory: every row has its
// complete directory (memory file and both disks), every directory has a row, and no
// staging directory is left.
func (x *env) snapshotGroundTruth() error {
	out, errOut, code := x.cli(nil, "snapshot", "ls", "--json")
	if code != 0 {
		return fmt.Errorf("snapshot ls: %s", errOut)
	}
	var list []snapRecord
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		return fmt.Errorf("decoding snapshot ls: %v", err)
	}
	dir := filepath.Join(x.stateDir, "snapshots")
	rows := map[string]bool{}
	for _, sn := range list {
		rows[sn.ID] = true
		for _, f := range []string{"memory", "system.cow", "root.ext4", "snapshot.json"} {
			if _, err := os.Stat(filepath.Join(dir, sn.ID, f)); err != nil {
				return fmt.Errorf("snapshot %s has a row but not its %s: %v", sn.Name, f, err)
			}
		}
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			return fmt.Errorf("staging directory %s left", e.Name())
		}
		if !rows[e.Name()] {
			return fmt.Errorf("snapshot directory %s has no row", e.Name())
		}
	}
	// No fork template VMM may outlive its fork.
	if procs := vmmProcesses(x.socketDir() + "/"); len(procs) > 0 {
		return fmt.Errorf("fork-template VMMs left: %v", procs)
	}
	return nil
}

// socketDir is the daemon's runtime directory (fork templates live there).
func (x *env) socketDir() string { return filepath.Dir(x.socket) }

// crashAt starts the CLI with args, SIGKILLs bangerd once stage is logged, restarts it and
// returns the CLI's output. A CLI that ends before the stage fails the test at once.
func (x *env) crashAt(t *testing.T, stage string, args ...string) string {
	t.Helper()
	offset := fileSize(x.daemonLog.Name())
	var out bytes.Buffer
	cli := exec.Command(filepath.Join(x.bin, "banger"), append([]string{"--socket", x.socket}, args...)...)
	cli.Stdout, cli.Stderr = &out, &out
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cli.Wait(); close(exited) }()
	needle := `"stage":"` + stage + `"`
	if strings.HasPrefix(stage, `"`) {
		needle = stage // a raw log fragment
	}
	deadline := time.Now().Add(3 * time.Minute)
	for !strings.Contains(readFileFrom(x.daemonLog.Name(), offset), needle) {
		select {
		case <-exited:
			t.Fatalf("banger %s ended before stage %s:\n%s\n%s", strings.Join(args, " "), stage, out.String(),
				tail(readFileFrom(x.daemonLog.Name(), offset), 20))
		case <-time.After(2 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("banger %s: stage %s never logged", strings.Join(args, " "), stage)
		}
	}
	x.stopDaemon(syscall.SIGKILL)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		cli.Process.Kill()
		<-exited
	}
	if err := x.startDaemon(); err != nil {
		t.Fatal(err)
	}
	return out.String()
}

// bangerd SIGKILLed during a snapshot create, a restore and a fork, at each of their
// steps, leaves after its restart: no half snapshot (files without a row, a row without
// files), no VMM without a row, no row without its files, no tap of a VM that does not
// run, the source running again, and nothing of an interrupted fork (forks or its
// snapshot).
func TestKill9DuringSnapshotRestoreFork(t *testing.T) {
	x := need(t)
	x.createVM(t, "ks-src")
	check := func(what string) {
		t.Helper()
		if err := x.groundTruth(); err != nil {
			t.Fatalf("after a kill during %s: %v\ndaemon log tail:\n%s", what, err, tail(readFile(x.daemonLog.Name()), 30))
		}
		if err := x.snapshotGroundTruth(); err != nil {
			t.Fatalf("after a kill during %s: %v", what, err)
		}
		if st := x.fate(t, "ks-src"); st != "running" {
			t.Fatalf("after a kill during %s: the source is %s", what, st)
		}
		// Running in the record and in fact: its guest answers.
		x.mustCLI(t, "vm", "exec", "ks-src", "--", "true")
	}
	// `"msg":"vmm migration started"` is the qemu driver's log line once QEMU writes the
	// state: a daemon killed then leaves QEMU migrating to a descriptor it still holds.
	for i, stage := range []string{"agent_detached", "vm_paused", `"msg":"vmm migration started`, "memory_saved", "disks_copied"} {
		name := fmt.Sprintf("ks-snap-%d", i)
		x.crashAt(t, stage, "snapshot", "create", "ks-src", "--name", name)
		check("snapshot create at " + stage)
		x.cli(nil, "snapshot", "rm", "--force", name)
	}
	// The source still works after all that.
	x.mustCLI(t, "vm", "exec", "ks-src", "--", "true")

	x.mustCLI(t, "snapshot", "create", "-q", "ks-src", "--name", "ks-base")
	t.Cleanup(func() { x.cli(nil, "snapshot", "rm", "--force", "ks-base") })
	for i, stage := range []string{"disks_ready", "vmm_launched", "vmm_started"} {
		name := fmt.Sprintf("ks-r-%d", i)
		x.crashAt(t, stage, "vm", "create", "--from-snapshot", "ks-base", "--name", name)
		if st := x.fate(t, name); st != "gone" {
			t.Fatalf("a restore killed at %s left its vm: %s", stage, st)
		}
		check("restore at " + stage)
	}

	for i, stage := range []string{"memory_saved", "snapshot_shared", "vmm_launched", "fork_ready"} {
		prefix := fmt.Sprintf("ks-f%d", i)
		x.crashAt(t, stage, "vm", "fork", "ks-src", "--count", "2", "--name-prefix", prefix)
		for j := 1; j <= 2; j++ {
			if st := x.fate(t, fmt.Sprintf("%s-%d", prefix, j)); st != "gone" {
				t.Fatalf("a fork killed at %s left fork %d: %s", stage, j, st)
			}
		}
		check("fork at " + stage)
		if ls := x.mustCLI(t, "snapshot", "ls", "--json"); strings.Contains(ls, "ks-src-fork") {
			t.Fatalf("a fork killed at %s left its snapshot: %s", stage, ls)
		}
	}
}
