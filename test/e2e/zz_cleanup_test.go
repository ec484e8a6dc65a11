package e2e

import (
	"encoding/json"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
)

// One op id follows a create from the CLI through bangerd into the root helper's log.
func TestOpIDReachesTheHelper(t *testing.T) {
	x := need(t)
	x.createVM(t, "e2e-opid")
	var opID string
	for _, line := range strings.Split(readFile(x.daemonLog.Name()), "\n") {
		if strings.Contains(line, `"stage":"persisted"`) && strings.Contains(line, `"vm":"e2e-opid"`) {
			var rec struct {
				OpID string `json:"op_id"`
			}
			json.Unmarshal([]byte(line), &rec)
			opID = rec.OpID
		}
	}
	if !regexp.MustCompile(`^op-[a-z0-9]{8,}$`).MatchString(opID) {
		t.Fatalf("no op id for the create in the daemon log")
	}
	var found bool
	for _, line := range strings.Split(readFile(x.helperLog.Name()), "\n") {
		if strings.Contains(line, opID) && strings.Contains(line, `"msg":"helper rpc completed"`) &&
			strings.Contains(line, "create_tap") && strings.Contains(line, `"duration_ms"`) {
			found = true
		}
	}
	if !found {
		t.Fatalf("helper log has no completed create_tap line for %s", opID)
	}
	// The readiness ping of that create carries the same id into the guest agent's log.
	// The serial console trails the agent's answers, so give its lines a moment.
	vm := x.show(t, "e2e-opid")
	var console string
	waitFor(func() bool { console = readFile(vm.Dir + "/console.log"); return strings.Contains(console, opID) }, 10e9)
	if !strings.Contains(console, opID) {
		t.Fatalf("the guest agent's console log does not mention %s:\n%s", opID, tail(console, 30))
	}
}

// Runs last: a daemon shutdown with --cleanup stops every VM and leaves no tap, no nft
// table and no bridge behind. The daemon is started again for any later test.
func TestCleanupLeavesNoNetworkObjects(t *testing.T) {
	x := need(t)
	x.createVM(t, "e2e-cleanup", "--nat")
	x.stopDaemon(syscall.SIGTERM)
	cmd := exec.Command("ip", "netns", "exec", x.netns, x.bin+"/bangerd", "--config", x.config, "--socket", x.socket, "--cleanup")
	cmd.Stdout, cmd.Stderr = x.daemonLog, x.daemonLog
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	x.daemon = cmd
	if err := waitFor(func() bool { _, _, code := x.cli(nil, "vm", "ls"); return code == 0 }, 30e9); err != nil {
		t.Fatal(err)
	}
	x.stopDaemon(syscall.SIGTERM)
	links, _ := x.inNetns("ip", "-o", "link")
	if regexp.MustCompile(`(?m)^\d+: (bgr[0-9a-f]+|banger0)[:@]`).MatchString(links) {
		t.Fatalf("links left after --cleanup:\n%s", links)
	}
	if nft, _ := x.inNetns("nft", "list", "ruleset"); strings.Contains(nft, "banger") {
		t.Fatalf("nft ruleset left after --cleanup:\n%s", nft)
	}
	if err := x.startDaemon(); err != nil {
		t.Fatal(err)
	}
	if st := x.show(t, "e2e-cleanup"); st.State != "stopped" {
		t.Fatalf("vm state after --cleanup: %s", st.State)
	}
}
