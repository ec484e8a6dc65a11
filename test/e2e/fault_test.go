package e2e

import (
	"bytes"
	"database/sql"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	_ "modernc.org/sqlite"
)

// Fault injection: bangerd is killed with SIGKILL at many points of create, start, stop,
// delete and run --rm (random delays, plus the moments that matter: right after the VMM
// process appears and right after the tap is made), restarted, and the host's ground
// truth checked each time; then the root helper is killed mid-call and the daemon must
// converge once it is back. BANGER_FAULT_ITERATIONS sets the number of daemon kills
// (default 40, about three minutes of TCG boots on two cores); BANGER_FAULT_SEED replays a run;
// BANGER_FAULT_STAGE pins the boot kills to one stage.
func TestFaultInjection(t *testing.T) {
	x := need(t)
	iters := envInt(t, "BANGER_FAULT_ITERATIONS", 40)
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("BANGER_FAULT_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	rng := rand.New(rand.NewPCG(seed, 1))
	t.Logf("fault injection: %d daemon kills, seed %d", iters, seed)
	// The default image is built or pulled once, outside the measured kills.
	x.mustCLI(t, "vm", "create", "-q", "--name", "fi-warm", "--no-start")
	x.mustCLI(t, "vm", "rm", "-f", "fi-warm")
	t.Cleanup(func() { x.removeFaultVMs() })

	scenarios := []string{"create", "run-rm", "start", "stop", "delete"}
	outcomes := map[string]int{}
	for i := range iters {
		sc := scenarios[i%len(scenarios)]
		name := fmt.Sprintf("fi-%d", i)
		point := x.killDaemonDuring(t, rng, i, sc, name)
		became := x.fate(t, name)
		outcomes[fmt.Sprintf("%s@%s→%s", sc, point, became)]++
		if err := x.groundTruth(); err != nil {
			t.Fatalf("kill %d (%s at %s): %v\ndaemon log tail:\n%s", i, sc, point, err, tail(readFile(x.daemonLog.Name()), 30))
		}
		// A run --rm's VM never outlives its run, whatever the moment of the kill.
		if sc == "run-rm" && became != "gone" {
			t.Fatalf("kill %d: vm run --rm left its VM behind (%s)", i, became)
		}
		x.removeFaultVMs()
	}

	helperKills := max(4, iters/5)
	for i := range helperKills {
		name := fmt.Sprintf("fi-h%d", i)
		point := x.killHelperDuring(t, rng, i, name)
		if err := waitFor(func() bool { return x.groundTruth() == nil }, 30*time.Second); err != nil {
			t.Fatalf("helper kill %d (%s): host did not converge: %v\ndaemon log tail:\n%s", i, point, x.groundTruth(),
				tail(readFile(x.daemonLog.Name()), 30))
		}
		outcomes[fmt.Sprintf("helper@%s→%s", point, x.fate(t, name))]++
		x.removeFaultVMs()
	}
	keys := make([]string, 0, len(outcomes))
	for k := range outcomes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "  %-40s %d\n", k, outcomes[k])
	}
	t.Logf("fault injection: %d daemon kills + %d helper kills, ground truth held after every one (seed %d):\n%s",
		iters, helperKills, seed, b.String())
}

// killDaemonDuring starts scenario sc on VM name, SIGKILLs bangerd at a chosen moment,
// checks what the CLI said, and restarts the daemon. It returns the moment used.
func (x *env) killDaemonDuring(t *testing.T, rng *rand.Rand, i int, sc, name string) string {
	t.Helper()
	nat := []string{}
	if i%2 == 0 {
		nat = []string{"--nat"}
	}
	var args []string
	switch sc {
	case "create":
		args = append([]string{"vm", "create", "-q", "--name", name}, nat...)
	case "run-rm":
		args = append(append([]string{"vm", "run", "--rm", "-q", "--name", name}, nat...), "--", "sleep", "5")
	case "start":
		x.mustCLI(t, append([]string{"vm", "create", "-q", "--no-start", "--name", name}, nat...)...)
		args = []string{"vm", "start", name}
	case "stop":
		x.mustCLI(t, append([]string{"vm", "create", "-q", "--name", name}, nat...)...)
		args = []string{"vm", "stop", name}
	case "delete":
		x.mustCLI(t, append([]string{"vm", "create", "-q", "--name", name}, nat...)...)
		args = []string{"vm", "rm", "-f", name}
	}
	boots := sc == "create" || sc == "run-rm" || sc == "start"
	point := fmt.Sprintf("%dms", rng.IntN(1500))
	switch {
	case boots && i%3 == 0:
		point = "vmm_launched"
	case boots && i%3 == 1:
		point = "network_ready"
	case boots:
		point = fmt.Sprintf("%dms", rng.IntN(6000))
	}
	// BANGER_FAULT_STAGE pins every boot's kill to one stage (e.g. network_ready, which
	// older daemons log too, to run this test against them).
	if st := os.Getenv("BANGER_FAULT_STAGE"); st != "" && boots {
		point = st
	}
	offset := fileSize(x.daemonLog.Name())
	cli, out := x.startCLI(args...)
	if strings.HasSuffix(point, "ms") {
		ms, _ := strconv.Atoi(strings.TrimSuffix(point, "ms"))
		time.Sleep(time.Duration(ms) * time.Millisecond)
	} else if !x.waitStage(offset, point, 2*time.Minute) {
		t.Fatalf("kill %d: stage %s never logged", i, point)
	}
	x.stopDaemon(syscall.SIGKILL)
	code := waitCLI(cli, 30*time.Second)
	if code != 0 && !strings.Contains(out.String(), "(op-") {
		t.Errorf("kill %d (%s at %s): the CLI's error carries no op id: %s", i, sc, point, out.String())
	}
	if err := x.startDaemon(); err != nil {
		t.Fatal(err)
	}
	// An auto-remove VM goes at start-up; the run's own cleanup may still be racing it.
	if sc == "run-rm" {
		waitFor(func() bool { return x.fate(t, name) == "gone" }, 10*time.Second)
	}
	return point
}

// killHelperDuring SIGKILLs the root helper while a networked VM is created or deleted,
// then restarts it. It returns the moment used.
func (x *env) killHelperDuring(t *testing.T, rng *rand.Rand, i int, name string) string {
	t.Helper()
	var point string
	if i%2 == 0 {
		// During a create's helper calls (create_tap, enable_nat).
		offset := fileSize(x.helperLog.Name())
		cli, _ := x.startCLI("vm", "create", "-q", "--nat", "--name", name)
		n := rng.IntN(3)
		point = fmt.Sprintf("create-after-%d-helper-calls", n)
		waitFor(func() bool { return strings.Count(readFileFrom(x.helperLog.Name(), offset), "helper rpc") >= n }, 30*time.Second)
		x.killHelper()
		waitCLI(cli, 3*time.Minute)
	} else {
		// A delete with the helper gone: it must not claim success, and must finish later.
		x.mustCLI(t, "vm", "create", "-q", "--nat", "--name", name)
		x.killHelper()
		point = "delete-while-down"
		if _, errOut, code := x.cli(nil, "vm", "rm", "-f", name); code == 0 {
			t.Fatalf("helper kill %d: vm rm with the helper down claimed success", i)
		} else if st := x.fate(t, name); st != "deleting" {
			t.Fatalf("helper kill %d: after a delete with the helper down the VM is %s (%s)", i, st, errOut)
		}
	}
	if err := x.startHelper(); err != nil {
		t.Fatal(err)
	}
	return point
}

// startCLI runs the banger CLI in the background, collecting stdout and stderr.
func (x *env) startCLI(args ...string) (*exec.Cmd, *bytes.Buffer) {
	var out bytes.Buffer
	cmd := exec.Command(filepath.Join(x.bin, "banger"), append([]string{"--socket", x.socket}, args...)...)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Start()
	return cmd, &out
}

// waitCLI waits for the CLI to exit and returns its code (killing it after d).
func waitCLI(cmd *exec.Cmd, d time.Duration) int {
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		cmd.Process.Kill()
		<-done
	}
	if cmd.ProcessState == nil {
		return -1
	}
	return cmd.ProcessState.ExitCode()
}

// waitStage polls the daemon log past offset for an operation stage record.
func (x *env) waitStage(offset int64, stage string, d time.Duration) bool {
	needle := `"stage":"` + stage + `"`
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if strings.Contains(readFileFrom(x.daemonLog.Name(), offset), needle) {
			return true
		}
		time.Sleep(2 * time.Millisecond)
	}
	return false
}

// fate is what became of VM name: its state, or "gone".
func (x *env) fate(t *testing.T, name string) string {
	t.Helper()
	out, _, code := x.cli(nil, "vm", "show", "--json", name)
	if code != 0 {
		return "gone"
	}
	var vm vmRecord
	json.Unmarshal([]byte(out), &vm)
	return vm.State
}

func (x *env) removeFaultVMs() {
	out, _, _ := x.cli(nil, "vm", "ls", "--json")
	var vms []vmRecord
	json.Unmarshal([]byte(out), &vms)
	for _, vm := range vms {
		if strings.HasPrefix(vm.Name, "fi-") {
			x.cli(nil, "vm", "rm", "-f", vm.Name)
		}
	}
}

// groundTruth checks the host against the store: every row's state against its VMM
// process, no banger VMM without a running row, VM directories against rows, taps and NAT
// set elements against the running VMs, unique guest IPs, and SQLite's integrity check.
func (x *env) groundTruth() error {
	out, errOut, code := x.cli(nil, "vm", "ls", "--json")
	if code != 0 {
		return fmt.Errorf("vm ls: %s", errOut)
	}
	var vms []struct {
		vmRecord
		NAT bool `json:"nat"`
	}
	if err := json.Unmarshal([]byte(out), &vms); err != nil {
		return fmt.Errorf("decoding vm ls: %v", err)
	}
	vmsDir := filepath.Join(x.stateDir, "vms") + "/"
	procs := vmmProcesses(vmsDir) // vm id → pids
	ips := map[string]string{}
	wantTaps, wantNAT := []string{}, []string{}
	for _, vm := range vms {
		if other, dup := ips[vm.GuestIP]; dup {
			return fmt.Errorf("guest IP %s held by %s and %s", vm.GuestIP, other, vm.Name)
		}
		ips[vm.GuestIP] = vm.Name
		pids := procs[vm.ID]
		delete(procs, vm.ID)
		switch vm.State {
		case "running":
			if len(pids) != 1 || pids[0] != vm.PID {
				return fmt.Errorf("vm %s is running with pid %d, but its VMM processes are %v", vm.Name, vm.PID, pids)
			}
			wantTaps = append(wantTaps, vm.Tap)
			if vm.NAT {
				wantNAT = append(wantNAT, vm.GuestIP)
			}
		case "stopped", "error":
			if len(pids) != 0 {
				return fmt.Errorf("vm %s is %s, but VMM processes %v run on its disks", vm.Name, vm.State, pids)
			}
		default:
			return fmt.Errorf("vm %s is %s with no operation in progress", vm.Name, vm.State)
		}
	}
	if len(procs) > 0 {
		return fmt.Errorf("banger VMMs without a row: %v", procs)
	}
	dirs, _ := os.ReadDir(vmsDir)
	if len(dirs) != len(vms) {
		return fmt.Errorf("%d VM directories for %d rows", len(dirs), len(vms))
	}
	links, _ := x.inNetns("ip", "-o", "link", "show")
	taps := regexp.MustCompile(`\d+: (bgr[0-9a-f]+)[:@]`).FindAllStringSubmatch(links, -1)
	gotTaps := []string{}
	for _, m := range taps {
		gotTaps = append(gotTaps, m[1])
	}
	if !sameSet(gotTaps, wantTaps) {
		return fmt.Errorf("taps %v, want those of the running VMs %v", gotTaps, wantTaps)
	}
	gotNAT, err := natElements(x)
	if err != nil {
		return err
	}
	if !sameSet(gotNAT, wantNAT) {
		return fmt.Errorf("NAT elements %v, want those of the running --nat VMs %v", gotNAT, wantNAT)
	}
	return integrityCheck(filepath.Join(x.stateDir, "banger.db"))
}

// vmmProcesses maps VM ids to the pids of qemu processes running on them.
func vmmProcesses(vmsDir string) map[string][]int {
	out := map[string][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(b, []byte("qemu-system")) {
			continue
		}
		if st, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); bytes.Contains(st, []byte(") Z ")) {
			continue
		}
		i := bytes.Index(b, []byte(vmsDir))
		if i < 0 {
			continue
		}
		rest := b[i+len(vmsDir):]
		if j := bytes.IndexByte(rest, '/'); j > 0 {
			out[string(rest[:j])] = append(out[string(rest[:j])], pid)
		}
	}
	return out
}

// natElements lists the guest IPs in banger's nftables NAT set in the test namespace.
func natElements(x *env) ([]string, error) {
	out, err := x.inNetns("nft", "-j", "list", "set", "ip", "banger", "nat_guests")
	if err != nil && strings.Contains(out, "No such file or directory") {
		return nil, nil // no VM has had NAT yet: the table is made on first use
	}
	if err != nil {
		return nil, fmt.Errorf("listing the NAT set: %v: %s", err, out)
	}
	var doc struct {
		Nftables []struct {
			Set *struct {
				Elem json.RawMessage `json:"elem"`
			} `json:"set"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		return nil, fmt.Errorf("decoding the NAT set: %v", err)
	}
	var ips []string
	for _, o := range doc.Nftables {
		if o.Set != nil {
			ips = append(ips, regexp.MustCompile(`\d+\.\d+\.\d+\.\d+`).FindAllString(string(o.Set.Elem), -1)...)
		}
	}
	return ips, nil
}

func integrityCheck(path string) error {
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		return err
	}
	defer db.Close()
	var res string
	if err := db.QueryRow(`PRAGMA integrity_check`).Scan(&res); err != nil {
		return fmt.Errorf("integrity_check: %w", err)
	}
	if res != "ok" {
		return fmt.Errorf("integrity_check: %s", res)
	}
	return nil
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func fileSize(p string) int64 {
	st, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return st.Size()
}

func readFileFrom(p string, offset int64) string {
	f, err := os.Open(p)
	if err != nil {
		return ""
	}
	defer f.Close()
	f.Seek(offset, 0)
	var b bytes.Buffer
	b.ReadFrom(f)
	return b.String()
}

func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}
