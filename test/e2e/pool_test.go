package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// poolRecord is what `banger pool ls --json` prints per pool.
type poolRecord struct {
	Name      string `json:"name"`
	Size      int    `json:"size"`
	Ready     int    `json:"ready"`
	State     string `json:"state"`
	Snapshot  string `json:"snapshot"`
	LastError string `json:"last_error"`
	Served    int64  `json:"served"`
}

// withConfig restarts the shared daemon with extra appended to its configuration; when
// the test ends it is restarted with the original one (which removes what a pool left).
func (x *env) withConfig(tb testing.TB, extra string) {
	tb.Helper()
	orig := readFile(x.config)
	x.stopDaemon(syscall.SIGTERM)
	if err := os.WriteFile(x.config, []byte(orig+extra), 0o644); err != nil {
		tb.Fatal(err)
	}
	if err := x.startDaemon(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		x.stopDaemon(syscall.SIGTERM)
		os.WriteFile(x.config, []byte(orig), 0o644)
		if err := x.startDaemon(); err != nil {
			tb.Error(err)
		}
	})
}

// poolConfig is a pools section for one pool of the tiny image at the suite's defaults.
func poolConfig(name string, size int, mode string) string {
	s := fmt.Sprintf("pools:\n  - name: %s\n    image: tiny\n    size: %d\n", name, size)
	if mode != "" {
		s += "    mode: " + mode + "\n"
	}
	return s
}

func (x *env) pools(tb testing.TB) []poolRecord {
	tb.Helper()
	out, errOut, code := x.cli(nil, "pool", "ls", "--json")
	if code != 0 {
		tb.Fatalf("pool ls: %d %s", code, errOut)
	}
	var list []poolRecord
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		tb.Fatalf("decoding pool ls: %v: %s", err, out)
	}
	return list
}

// waitPoolReady waits until pool name has want ready VMs (mode vms) or its snapshot.
func (x *env) waitPoolReady(tb testing.TB, name string, want int) poolRecord {
	tb.Helper()
	var last poolRecord
	err := waitFor(func() bool {
		for _, p := range x.pools(tb) {
			if p.Name == name {
				last = p
				return p.Ready >= want && p.Snapshot != "" && p.State == "ready"
			}
		}
		return false
	}, 4*time.Minute)
	if err != nil {
		tb.Fatalf("pool %s never got %d ready: %+v\ndaemon log tail:\n%s", name, want, last, tail(readFile(x.daemonLog.Name()), 30))
	}
	return last
}

// identityRetries counts the daemon's fallback identity retries logged past offset: a
// restored or resumed guest that still held its old agent session.
func (x *env) identityRetries(offset int64) int {
	return strings.Count(readFileFrom(x.daemonLog.Name(), offset), "identity attempt failed")
}

// A warm pool fills in the background; a matching `vm run` is served from it (stage
// "pool"), runs its command with its own name and exit code, and the pool refills; `pool
// ls` shows all of it, `vm ls` never shows the pool's own VMs; a create the pool cannot
// serve boots as before.
func TestWarmPool(t *testing.T) {
	x := need(t)
	x.warmImageT(t)
	x.withConfig(t, poolConfig("e2e", 1, ""))
	offset := fileSize(x.daemonLog.Name())
	p := x.waitPoolReady(t, "e2e", 1)
	if p.Size != 1 || p.Served != 0 || p.LastError != "" {
		t.Fatalf("pool after filling: %+v", p)
	}
	if ls := x.mustCLI(t, "vm", "ls", "--json"); strings.Contains(ls, "pool-e2e") {
		t.Fatalf("vm ls shows the pool's vms: %s", ls)
	}
	if out := x.mustCLI(t, "pool", "ls"); !strings.Contains(out, "e2e") || !strings.Contains(out, "1/1") {
		t.Fatalf("pool ls:\n%s", out)
	}
	// A waiting pool VM has no DNS name: it is nobody's VM yet.
	ready := regexp.MustCompile(`"msg":"pool vm ready".*"vm":"(pool-e2e-[0-9a-f]{6})"`).FindAllStringSubmatch(readFileFrom(x.daemonLog.Name(), offset), -1)
	if len(ready) == 0 {
		t.Fatalf("no pool vm named in the daemon log:\n%s", tail(readFileFrom(x.daemonLog.Name(), offset), 30))
	}
	waiting := ready[len(ready)-1][1]
	if out, err := x.inNetns("dig", "+short", "+time=2", "+tries=1", "@"+bridgeIP, waiting+"."+dnsDomain); err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("waiting pool vm %s resolves: %v %q", waiting, err, out)
	}

	out, errOut, code := x.cli(nil, "vm", "run", "--rm", "--name", "e2e-pooled", "--", "sh", "-c", "echo out-$(hostname); echo err >&2; exit 7")
	if code != 7 {
		t.Fatalf("pooled vm run: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if !strings.Contains(out, "out-e2e-pooled\n") || !strings.Contains(errOut, "err\n") {
		t.Fatalf("pooled vm run output: stdout %q stderr %q", out, errOut)
	}
	if !strings.Contains(out+errOut, "served from warm pool e2e") {
		t.Fatalf("no pool stage in the run's output:\nstdout: %s\nstderr: %s", out, errOut)
	}
	// The pool refills, and the refill (a restore from the pool's snapshot) and the
	// hand-over (a resume) never needed the identity fallback: the pool's guests were
	// detached before their snapshot and their pause.
	p = x.waitPoolReady(t, "e2e", 1)
	if p.Served != 1 {
		t.Fatalf("pool served %d, want 1: %+v", p.Served, p)
	}
	if n := x.identityRetries(offset); n != 0 {
		t.Fatalf("%d identity retries while filling and serving the pool:\n%s", n, tail(readFileFrom(x.daemonLog.Name(), offset), 40))
	}
	// NAT is the host's rule, so a --nat run is served from the pool too, and reaches the
	// fake internet masqueraded.
	out, errOut, code = x.cli(nil, "vm", "run", "--rm", "--nat", "--", "timeout", "10", "wget", "-q", "-O", "-", "http://"+inetIP+":8080/")
	if code != 0 || !strings.Contains(out+errOut, "served from warm pool e2e") || !strings.Contains(out, "peer="+uplinkIP) {
		t.Fatalf("pooled --nat run: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	p = x.waitPoolReady(t, "e2e", 1)
	// The served VM was removed with its run.
	if err := waitFor(func() bool { return x.fate(t, "e2e-pooled") == "gone" }, 30*time.Second); err != nil {
		t.Fatalf("pooled --rm vm left behind: %s", x.fate(t, "e2e-pooled"))
	}
	// Another spec is not the pool's: it boots cold, no pool stage.
	out, errOut, code = x.cli(nil, "vm", "run", "--rm", "--memory", "300M", "--", "true")
	if code != 0 || strings.Contains(out+errOut, "warm pool") {
		t.Fatalf("non-matching run: %d\n%s\n%s", code, out, errOut)
	}
	// A pool VM served without --rm is an ordinary VM afterwards.
	x.mustCLI(t, "vm", "create", "--name", "e2e-pooled2")
	t.Cleanup(func() { x.cli(nil, "vm", "rm", "-f", "e2e-pooled2") })
	if id := x.identity(t, "e2e-pooled2"); id.host != "e2e-pooled2" {
		t.Fatalf("pooled vm's hostname %q", id.host)
	}
	// Once claimed it answers to its own name, and the pool's name is gone.
	if out, err := x.inNetns("dig", "+short", "+time=2", "+tries=1", "@"+bridgeIP, "e2e-pooled2."+dnsDomain); err != nil || strings.TrimSpace(out) == "" {
		t.Fatalf("claimed pool vm e2e-pooled2 does not resolve: %v %q", err, out)
	}
	x.mustCLI(t, "vm", "stop", "e2e-pooled2")
	x.mustCLI(t, "vm", "start", "e2e-pooled2")
	if got := x.mustCLI(t, "vm", "exec", "e2e-pooled2", "--", "hostname"); got != "e2e-pooled2\n" {
		t.Fatalf("after a cold restart: %q", got)
	}
}

// A pool whose daemon is SIGKILLed while it refills leaves nothing once bangerd starts
// without it: no pool VM, snapshot, VMM, directory or tap.
func TestWarmPoolCrashLeavesNothing(t *testing.T) {
	x := need(t)
	x.warmImageT(t)
	orig := readFile(x.config)
	x.withConfig(t, poolConfig("e2ecrash", 2, ""))
	x.waitPoolReady(t, "e2ecrash", 2)
	offset := fileSize(x.daemonLog.Name())
	x.mustCLI(t, "vm", "run", "--rm", "-q", "--", "true")
	// The refill restores a VM from the pool's snapshot: kill the daemon while it does.
	if !x.waitStage(offset, "vmm_launched", 2*time.Minute) {
		t.Fatalf("the refill never launched a VMM:\n%s", tail(readFileFrom(x.daemonLog.Name(), offset), 30))
	}
	x.stopDaemon(syscall.SIGKILL)
	// Restarted with the pool: it re-adopts the ready VM, undoes the interrupted one and
	// refills.
	if err := x.startDaemon(); err != nil {
		t.Fatal(err)
	}
	x.waitPoolReady(t, "e2ecrash", 2)
	// Restarted without it: everything the pool owned goes.
	x.stopDaemon(syscall.SIGKILL)
	os.WriteFile(x.config, []byte(orig), 0o644)
	if err := x.startDaemon(); err != nil {
		t.Fatal(err)
	}
	if err := x.groundTruth(); err != nil {
		t.Fatalf("after the pool was removed: %v", err)
	}
	if ls := x.mustCLI(t, "snapshot", "ls", "--json"); strings.Contains(ls, "pool-e2ecrash") {
		t.Fatalf("the removed pool's snapshot is still listed: %s", ls)
	}
	if err := x.snapshotGroundTruth(); err != nil {
		t.Fatal(err)
	}
}

// warmImageT builds or pulls the default image once, outside what a test measures.
func (x *env) warmImageT(t *testing.T) {
	t.Helper()
	x.mustCLI(t, "vm", "create", "-q", "--name", "pool-warm-img", "--no-start")
	x.mustCLI(t, "vm", "rm", "-f", "pool-warm-img")
}
