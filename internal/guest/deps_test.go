package guest

import (
	"os/exec"
	"strings"
	"testing"

	"banger/internal/testkit"
)

// depsOf lists every package cmd links (go list -deps).
func depsOf(t *testing.T, cmd string) []string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		testkit.Missing(t, "the go tool: %v", err)
	}
	out, err := exec.Command(goTool, "list", "-deps", cmd).CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", cmd, err, out)
	}
	return strings.Fields(string(out))
}

// The CLI talks to the agent only through the host client (internal/agentclient): the
// guest's netlink, PTY and AF_VSOCK code, and the agent itself, stay out of it.
func TestCLIDoesNotLinkGuestOnlyCode(t *testing.T) {
	for _, dep := range depsOf(t, "banger/cmd/banger") {
		if dep == "banger/internal/guest" || strings.Contains(dep, "vishvananda/netlink") ||
			strings.Contains(dep, "creack/pty") || strings.Contains(dep, "mdlayher/vsock") {
			t.Errorf("banger/cmd/banger links %s", dep)
		}
	}
}

// The agent is the guest's init and links only itself and the protocol: no daemon, store,
// SQLite, host networking or host-side client.
func TestAgentDoesNotLinkHostCode(t *testing.T) {
	banned := []string{"banger/internal/daemon", "banger/internal/store", "banger/internal/agentclient",
		"banger/internal/helper", "banger/internal/hostnet", "banger/internal/vmm", "banger/internal/client"}
	for _, dep := range depsOf(t, "banger/cmd/banger-agent") {
		if strings.Contains(dep, "sqlite") {
			t.Errorf("banger/cmd/banger-agent links %s", dep)
		}
		for _, b := range banned {
			if dep == b || strings.HasPrefix(dep, b+"/") {
				t.Errorf("banger/cmd/banger-agent links %s", dep)
			}
		}
	}
}

// The agent links no regexp: the package's init and its Unicode tables cost ~15 ms of a
// guest's boot under emulation, before the agent's first instruction (model/spell.go).
func TestAgentDoesNotLinkRegexp(t *testing.T) {
	for _, dep := range depsOf(t, "banger/cmd/banger-agent") {
		if dep == "regexp" || dep == "regexp/syntax" {
			t.Errorf("banger/cmd/banger-agent links %s", dep)
		}
	}
}
