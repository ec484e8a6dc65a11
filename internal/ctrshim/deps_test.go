package ctrshim

import (
	"os/exec"
	"strings"
	"testing"

	"banger/internal/testkit"
)

// Only the shim links containerd: the CLI, the daemon and the agent stay as small as they
// were, and containerd's dependency tree cannot reach the guest.
func TestOnlyTheShimLinksContainerd(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		testkit.Missing(t, "the go tool: %v", err)
	}
	for _, cmd := range []string{"banger/cmd/banger", "banger/cmd/bangerd", "banger/cmd/banger-agent"} {
		out, err := exec.Command(goTool, "list", "-deps", cmd).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", cmd, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			if strings.Contains(dep, "containerd") || dep == "banger/internal/ctrshim" {
				t.Errorf("%s links %s", cmd, dep)
			}
		}
	}
}
